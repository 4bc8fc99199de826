"""The release cockpit's views, computed from ledger events: what runs where (and whether it
is the last good version), the DORA measures, a run's story, and what waits for people."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from itertools import count

from releasetrain.core import cockpit
from releasetrain.core.ledger import LedgerEvent
from releasetrain.core.vocabulary import Event

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
_seq = count(1)


def event(kind, at, run_id="r1", environment="prod", release="shop", dag_id="release_shop", actor="", **details):
    return LedgerEvent(
        seq=next(_seq), at=at, release=release, run_id=run_id, environment=environment, kind=kind, actor=actor,
        details=details, dag_id=dag_id,
    )  # fmt: skip


def released(run_id, version, deployed_at, *, started_at=None, env="prod", state="success", rollback_at=None):
    """One run: started, deployed ``version`` to ``env``, (rolled back), ended."""
    events = [event(Event.RUN_STARTED, started_at or deployed_at, run_id, environment="")]
    events.append(event(Event.DEPLOYED, deployed_at, run_id, environment=env, version=version, digest=f"d-{version}"))
    if rollback_at:
        events.append(event(Event.CHECKS_FAILED, rollback_at - timedelta(minutes=4), run_id, environment=env))
        events.append(event(Event.ROLLBACK_STARTED, rollback_at - timedelta(minutes=3), run_id, environment=env))
        events.append(event(Event.ROLLBACK, rollback_at, run_id, environment=env, restored_version="1.0.0"))
    else:
        events.append(event(Event.CHECKS_PASSED, deployed_at, run_id, environment=env))
    events.append(event(Event.RUN_STATE, deployed_at, run_id, environment="", state=state))
    return events


ROLLED_BACK = datetime(2026, 12, 2, 10, 9, tzinfo=UTC)


def test_the_live_version_is_the_newest_deploy_promotion_or_rollback_with_its_health():
    events = [
        *released("r1", "1.0.0", "2026-12-01T10:00:00Z"),
        *released("r2", "1.1.0", "2026-12-02T10:00:00Z", state="failed", rollback_at=ROLLED_BACK),
        *released("r3", "1.2.0", "2026-12-03T10:00:00Z", env="staging"),
        event(Event.DEPLOYED, "2026-12-03T11:00:00Z", "r4", environment="staging", version="1.3.0", noop=True),
        event(Event.DEPLOYED, "2026-12-03T11:00:00Z", "r5", environment="staging", version="9.9.9", slot="idle"),
    ]  # fmt: skip
    live = {(row.release, row.environment): row for row in cockpit.live_matrix(events)}
    prod, staging = live[("shop", "prod")], live[("shop", "staging")]
    assert (prod.version, prod.how, prod.run_id, prod.last_good) == ("1.0.0", "rolled back", "r2", True)
    assert prod.since == ROLLED_BACK
    assert (staging.version, staging.run_id, staging.health, staging.last_good) == ("1.2.0", "r3", "healthy", True)


def test_a_version_whose_run_failed_or_is_failing_is_not_the_last_good_one():
    events = [
        *released("r1", "2.0.0", "2026-12-01T10:00:00Z", state="failed"),
        event(Event.DEPLOYED, "2026-12-01T10:00:00Z", "r2", environment="qa", version="2.1.0"),
        event(Event.CHECKS_FAILED, "2026-12-01T10:01:00Z", "r2", environment="qa"),
        event(Event.ANALYSIS, "2026-12-01T10:02:00Z", "r3", environment="qa", outcome="failed"),  # another run's
    ]
    live = {row.environment: row for row in cockpit.live_matrix(events)}
    assert live["prod"].last_good is False and live["prod"].run_state == "failed"
    assert (live["qa"].health, live["qa"].health_reason, live["qa"].last_good) == ("failing", "checks failed", False)


def test_dora_measures_per_release_and_environment():
    failed_at = datetime(2026, 12, 3, 10, 30, tzinfo=UTC)
    events = [
        *released("r1", "1.0.0", "2026-12-01T10:00:00Z", started_at="2026-12-01T09:00:00Z"),
        *released("r2", "1.1.0", "2026-12-03T10:00:00Z", started_at="2026-12-03T09:30:00Z", rollback_at=failed_at),
        *released("r3", "1.2.0", "2026-12-05T10:00:00Z", started_at="2026-12-05T08:00:00Z"),
        *released("r0", "0.9.0", "2026-10-01T10:00:00Z"),  # 67 days ago: in 90, not in 30
        # a modular run: two units, one deployment
        event(Event.DEPLOYED, "2026-12-06T10:00:00Z", "r4", environment="staging", version="1.3.0", unit="a"),
        event(Event.DEPLOYED, "2026-12-06T10:01:00Z", "r4", environment="staging", version="1.3.0", unit="b"),
    ]
    month = cockpit.dora(events, NOW, 30)
    rows = {(m["release"], m["environment"]): m for m in month["measures"]}
    prod = rows[("shop", "prod")]
    assert prod["deployments"] == 3 and prod["per_week"] == 0.7
    assert prod["lead_time_minutes"] == 60.0, "median of 60, 30 and 120 minutes"
    assert prod["change_failure_rate"] == 0.333
    assert prod["time_to_restore_minutes"] == 4.0, "from the failed checks to the rollback's record"
    assert rows[("shop", "staging")]["deployments"] == 1
    per_day = {d["day"]: d["rollbacks"] for d in month["rollbacks_per_day"]}
    assert len(per_day) == 30 and per_day["2026-12-03"] == 1 and sum(per_day.values()) == 1
    quarter = {(m["release"], m["environment"]): m for m in cockpit.dora(events, NOW, 90)["measures"]}
    assert quarter[("shop", "prod")]["deployments"] == 4


def test_a_run_without_a_failure_restores_nothing_and_an_empty_ledger_measures_nothing():
    assert cockpit.dora([], NOW, 30)["measures"] == []
    only_ok = cockpit.dora(released("r1", "1.0.0", "2026-12-01T10:00:00Z"), NOW, 30)["measures"][0]
    assert (only_ok["change_failure_rate"], only_ok["time_to_restore_minutes"]) == (0.0, None)


def test_a_story_is_the_runs_events_in_order_with_who_did_what():
    events = [
        event(Event.RUN_STARTED, "2026-12-01T09:00:00Z", environment="", actor="author"),
        event(Event.APPROVAL_GIVEN, "2026-12-01T09:05:00Z", actor="approver", task_id="prod.approve", note="ok"),
    ]
    timeline = cockpit.story(events)
    assert [(t["kind"], t["actor"], t["task_id"]) for t in timeline] == [
        ("run_started", "author", None),
        ("approval_given", "approver", "prod.approve"),
    ]
    assert timeline[1]["summary"] == "ok" and timeline[1]["at"] == "2026-12-01T09:05:00+00:00"


def test_what_waits_longest_comes_first_with_who_may_answer_and_where():
    pending = [
        {
            "dag_id": "release_shop", "run_id": "r1", "task_id": "prod.approve", "map_index": -1,
            "subject": "Approve shop 1.0.0 for prod", "assignees": [{"id": "approver", "name": "approver"}],
            "created_at": NOW - timedelta(minutes=5),
        },
        {
            "dag_id": "release_shop", "run_id": "r0", "task_id": "prod.postmortem", "map_index": 2,
            "subject": "Postmortem", "assignees": [], "created_at": NOW - timedelta(hours=3),
        },
    ]  # fmt: skip
    rows = cockpit.waits(pending, NOW)
    assert [(r["what"], r["waiting_minutes"], r["may_answer"]) for r in rows] == [
        ("review", 180.0, ["anyone"]),
        ("approval", 5.0, ["approver"]),
    ]
    assert rows[1]["answer_url"] == "/dags/release_shop/runs/r1/tasks/prod.approve/required_actions"
    assert rows[0]["answer_url"] == "/dags/release_shop/runs/r0/tasks/prod.postmortem/mapped/2/required_actions"
