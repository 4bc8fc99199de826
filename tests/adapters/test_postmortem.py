"""The postmortem review operator's deadline and its repeats (unit: the ledger and the change
record are stand-ins; the answered path runs end to end in tests/e2e/test_incidents_e2e.py)."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowFailException

from releasetrain.core.gatekeeper import RunLedger
from tests.core.test_gatekeeper import ev


@pytest.fixture
def world(monkeypatch):
    from releasetrain.operators import governance, postmortem

    seen = {"records": [], "closed": [], "events": []}
    monkeypatch.setattr(postmortem, "run_ledger", lambda context, release: RunLedger(seen["events"]))
    monkeypatch.setattr(postmortem, "record", lambda context, kind, release, **f: seen["records"].append((kind, f)))
    monkeypatch.setattr(
        governance, "close_change", lambda context, release, outcome, notes: seen["closed"].append(outcome)
    )
    operator = postmortem.PostmortemReviewOperator(
        task_id="prod.postmortem",
        release="shop",
        environment="prod",
        rollback_task_ids=["prod.rollback"],
        owners=["olga"],
        deadline_minutes=60,
    )
    return operator, seen


def test_the_deadline_passing_is_recorded_and_closes_the_change_without_the_review(world):
    operator, seen = world
    seen["events"] += [
        ev("rollback_started", "prod.rollback", "prod"),
        ev("rollback_started", "prod.rollback", "prod"),  # its retry after a lost worker
        ev("rollback", "prod.rollback", "prod", restored_version="1.0.0"),
    ]
    with pytest.raises(AirflowFailException, match="nobody answered within 60 minutes"):
        operator.execute_complete({"run_id": "r"}, {"error": "timeout passed", "error_type": "timeout"})
    assert seen["records"] == [("postmortem_overdue", {"environment": "prod", "details": {
        "deadline_minutes": 60, "owners": ["olga"]}})]  # fmt: skip
    assert seen["closed"] == ["rolled_back"]


def test_a_rollback_that_did_not_bring_the_environment_back_closes_the_change_as_failed(world):
    operator, seen = world
    seen["events"] += [ev("rollback_started", "prod.rollback", "prod")]  # started, never ended
    with pytest.raises(AirflowFailException):
        operator.execute_complete({"run_id": "r"}, {"error": "timeout passed", "error_type": "timeout"})
    assert seen["closed"] == ["failed"]


def test_an_answer_on_record_is_never_asked_or_recorded_again(world):
    operator, seen = world
    seen["events"] += [
        ev("rollback", "prod.rollback", "prod", restored_version="1.0.0"),
        ev("postmortem_reviewed", "prod.postmortem", "prod", findings="f"),
    ]
    assert operator.execute({"run_id": "r"}) == {"on_record": "postmortem_reviewed"}
    assert operator.execute_complete({"run_id": "r"}, {"chosen_options": ["Postmortem reviewed"]}) == {
        "on_record": "postmortem_reviewed"
    }
    assert seen["records"] == [] and seen["closed"] == []
