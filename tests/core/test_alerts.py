"""Alerts from Alertmanager's webhook, attached to the deploys they follow."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from releasetrain.core.alerts import AlertError, Deploy, attached_to, attachment, parse_alertmanager

T0 = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def webhook(*alerts, **extra):
    return {"version": "4", "status": "firing", "receiver": "releasetrain", "alerts": list(alerts), **extra}


def alert(env="prod", status="firing", at=T0, **labels):
    return {
        "status": status,
        "labels": {"alertname": "HighErrorRate", **({"environment": env} if env else {}), **labels},
        "annotations": {"summary": "5xx above 5% for 2 minutes"},
        "startsAt": at.isoformat().replace("+00:00", "Z"),
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "f1",
    }


def deploy(release="shop", env="prod", minutes_before=5, version="1.2.0", run="r1"):
    return Deploy(release, f"release_{release}", run, env, version, T0 - timedelta(minutes=minutes_before))


def test_an_alert_reads_from_alertmanagers_format():
    [found] = parse_alertmanager(webhook(alert()))
    assert (found.name, found.status, found.environment, found.starts_at, found.summary) == (
        "HighErrorRate",
        "firing",
        "prod",
        T0,
        "5xx above 5% for 2 minutes",
    )


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ([], "not a JSON object"),
        (webhook(version="3"), "is not Alertmanager's webhook format 4"),
        ({"version": "4"}, "alerts: a list is required"),
        (webhook({**alert(), "status": "pending"}), r"alerts\[0\].status: 'pending'"),
        (webhook({**alert(), "labels": {"a": 1}}), r"alerts\[0\].labels: an object of strings"),
        (webhook({**alert(), "startsAt": "yesterday"}), r"alerts\[0\].startsAt: 'yesterday' is not an RFC 3339"),
        (webhook({**alert(), "startsAt": "2026-11-29T12:00:00"}), "has no time zone"),
    ],
)
def test_a_body_that_is_not_alertmanagers_is_refused_naming_where(payload, error):
    with pytest.raises(AlertError, match=error):
        parse_alertmanager(payload)


def test_an_alert_is_attached_to_each_releases_newest_deploy_in_its_environment_within_the_window():
    [fired] = parse_alertmanager(webhook(alert()))
    window = timedelta(minutes=30)
    newest, older = deploy(minutes_before=5, run="r2"), deploy(minutes_before=20, run="r1")
    other = deploy(release="cart", minutes_before=10)
    assert attached_to(fired, [older, newest, other], window) == [newest, other]
    assert attached_to(fired, [deploy(minutes_before=31)], window) == [], "outside the window"
    assert attached_to(fired, [deploy(env="staging")], window) == []
    assert attached_to(fired, [deploy(minutes_before=-1)], window) == [], "a deploy after the alert started"
    [narrowed] = parse_alertmanager(webhook(alert(release="cart")))
    assert attached_to(narrowed, [newest, other], window) == [other]
    [unlabelled] = parse_alertmanager(webhook(alert(env=None)))
    assert attached_to(unlabelled, [newest], window) == []
    assert attachment(fired, newest)["minutes_after_deploy"] == 5.0


def test_a_watched_release_waits_for_a_quiet_watch_before_its_gate_and_rolls_back_on_an_alert():
    from releasetrain.core import gatekeeper
    from releasetrain.core.gatekeeper import RunLedger
    from releasetrain.core.plan import PlanContext, plan_release
    from releasetrain.core.spec import parse_spec
    from releasetrain.core.vocabulary import Kind

    spec = parse_spec(
        {
            "name": "shop",
            "owner_team": "qa",
            "components": [{"name": "web", "source": "include/web"}],
            "environments": [{"name": "prod", "deploy_target": "fleet_prod"}],
            "alerts": {"watch_minutes": 20},
        },
        "test",
    )
    plan = plan_release(spec, PlanContext(project_root="/srv", calendar_dirs=[], groups={}))
    step = plan.steps["prod.alerts"]
    assert (
        step.kind == Kind.ALERTS and step.args["watch_minutes"] == 20 and step.args["deploy_task_id"] == "prod.deploy"
    )
    assert plan.upstream("prod.alerts") == ["prod.smoke"] and plan.upstream("prod.passed") == ["prod.alerts"]
    assert "prod.alerts" in plan.steps["prod.passed"].args["proof_task_ids"]
    assert "prod.alerts" in plan.upstream("prod.rollback")
    refused = gatekeeper.step_proof(RunLedger([]), "prod.alerts", "prod")
    assert not refused.allowed and "'alerts_quiet'" in refused.message()


def test_an_alert_rolls_back_only_the_release_it_concerns_and_a_late_one_still_stops_the_gate():
    from releasetrain.core import gatekeeper
    from releasetrain.core.alerts import concerns
    from releasetrain.core.gatekeeper import RunLedger
    from tests.core.test_gatekeeper import ev

    assert concerns({"status": "firing", "labels": {}, "releases_attached": 1})
    assert not concerns({"status": "firing", "labels": {}, "releases_attached": 3}), "a shared environment"
    assert concerns({"status": "firing", "labels": {"release": "shop"}, "releases_attached": 3})
    assert not concerns({"status": "resolved", "labels": {"release": "shop"}})
    quiet = ev("alerts_quiet", "prod.alerts", "prod", until="2026-11-29T12:30:00+00:00")
    assert gatekeeper.step_proof(RunLedger([quiet]), "prod.alerts", "prod").allowed
    late = ev("alert_received", "", "prod", status="firing", alert="Errors", labels={},
              starts_at="2026-11-29T12:29:00+00:00")  # fmt: skip
    refused = gatekeeper.step_proof(RunLedger([quiet, late]), "prod.alerts", "prod")
    assert not refused.allowed and "alert Errors started during the watch" in refused.message()
    after = ev("alert_received", "", "prod", status="firing", alert="Errors", labels={},
               starts_at="2026-11-29T12:31:00+00:00")  # fmt: skip
    assert gatekeeper.step_proof(RunLedger([quiet, after]), "prod.alerts", "prod").allowed
