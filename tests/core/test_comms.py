"""Who is told what (issue 14, rollback communications): pure rules, no Airflow."""

from __future__ import annotations

import pytest

from releasetrain.core.incident import addressed, rollback_started_payload, route_moments
from releasetrain.core.spec import Notification


@pytest.mark.parametrize(
    "on, told",
    [
        (None, {"started", "succeeded", "failed", "tampered"}),
        (["succeeded"], {"succeeded", "failed", "tampered"}),  # failures and tampering: always
        ([], {"failed", "tampered"}),
    ],
)
def test_a_route_hears_what_it_asked_for_and_always_failures(on, told):
    route = Notification(conn_id="hooks", **({} if on is None else {"moments": on})).model_dump(mode="json")
    assert route_moments(route) == told


def test_each_route_gets_its_audience_and_the_default_is_on_call():
    assert addressed({"event": "x"}, {"audience": "business"}) == {"event": "x", "audience": "business"}
    assert Notification(conn_id="hooks").audience == "on-call"


@pytest.mark.parametrize("bad", [{"audience": "Business Units"}, {"moments": ["failed"]}, {"moments": ["tampered"]}])
def test_routes_name_an_audience_and_ask_only_for_what_they_may_choose(bad):
    with pytest.raises(ValueError):
        Notification(conn_id="hooks", **bad)


def test_the_start_message_carries_the_backout_estimate():
    payload = rollback_started_payload(
        release="shop",
        run_id="r",
        environment="prod",
        failed_version="2.0.0",
        restore_to="1.0.0",
        how="redeploy",
        expected_minutes=15,
        unit="web",
        started_at="2026-11-29T13:00:00Z",
    )
    assert payload["event"] == "releasetrain.rollback.started" and payload["expected_minutes"] == 15
    assert (
        payload["text"] == "shop: rolling prod (web) back from 2.0.0 to 1.0.0 (redeploy); expected to take about 15 min"
    )
