"""The metrics releasetrain emits, derived from the ledger event just written."""

from __future__ import annotations

from datetime import UTC, datetime

from releasetrain.core import telemetry
from releasetrain.core.ledger import LedgerEvent
from releasetrain.core.vocabulary import Event

NOW = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def event(kind, at, environment="prod", **details):
    return LedgerEvent(
        seq=1, at=at, release="shop", run_id="r1", environment=environment, kind=kind, actor="", details=details,
        dag_id="release_shop",
    )  # fmt: skip


def stats(kind, run, environment="prod", **details):
    return telemetry.stats_of(kind, release="shop", environment=environment, details=details, run_events=run, now=NOW)


def test_a_deploy_counts_and_times_the_lead_from_the_runs_first_record():
    run = [
        event(Event.RUN_STARTED, "2026-12-07T11:30:00Z", environment=""),
        event(Event.PACKAGED, "2026-12-07T11:40:00Z"),
    ]
    [count, lead] = stats(Event.DEPLOYED, run, version="2.0.0")
    assert (count.kind, count.name, count.tags) == (
        "incr",
        "releasetrain.deploys",
        {"release": "shop", "environment": "prod"},
    )
    assert (lead.name, lead.seconds) == ("releasetrain.lead_time", 1800.0)
    assert count.dotted == "releasetrain.deploys.shop.prod"
    assert stats(Event.DEPLOYED, run, noop=True) == [] and stats(Event.DEPLOYED, run, slot="idle") == []


def test_a_rollback_counts_and_times_the_restore_from_its_start():
    run = [
        event(Event.ROLLBACK_STARTED, "2026-12-07T11:57:00Z"),
        event(Event.ROLLBACK_STARTED, "2026-12-07T11:00:00Z", "qa"),
    ]
    [count, restore] = stats(Event.ROLLBACK, run, restored_version="1.0.0")
    assert (count.name, restore.name, restore.seconds) == (
        "releasetrain.rollbacks",
        "releasetrain.time_to_restore",
        180.0,
    )
    assert stats(Event.ROLLBACK, run, noop=True) == []


def test_an_answered_approval_times_its_wait_by_task():
    run = [
        event(Event.APPROVAL_REQUESTED, "2026-12-07T10:00:00Z", task_id="prod.approve"),
        event(Event.APPROVAL_REQUESTED, "2026-12-07T11:00:00Z", task_id="prod.approve_2"),
    ]
    [wait] = stats(Event.APPROVAL_GIVEN, run, task_id="prod.approve")
    assert (wait.name, wait.seconds, wait.tags["decision"]) == ("releasetrain.approval_wait", 7200.0, "approved")
    [rejected] = stats(Event.APPROVAL_REJECTED, run, task_id="prod.approve_2")
    assert (rejected.seconds, rejected.tags["decision"]) == (3600.0, "rejected")
    assert stats(Event.APPROVAL_GIVEN, [], task_id="prod.approve") == []


def test_other_events_emit_nothing_and_every_name_is_documented():
    assert stats(Event.CHECKS_PASSED, []) == []
    assert [stats(Event.DEPLOY_FAILED, [])[0].name] == ["releasetrain.deploy_failures"]
    for name in telemetry.NAMES:
        assert f"``{name}``" in telemetry.__doc__
