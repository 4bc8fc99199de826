"""The window timetable, the gate sensor and its trigger, the post-implementation review."""

from __future__ import annotations

import asyncio
import datetime as dt

import pendulum
import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, TaskDeferred
from airflow.timetables.base import DataInterval, TimeRestriction

from releasetrain.core.spec import CalendarLibrary, load_spec
from releasetrain.core.windows import CalendarSpec
from releasetrain.factory import build_release_dag
from releasetrain.operators._common import record
from releasetrain.operators.review import PostImplementationReviewOperator
from releasetrain.operators.window import ReleaseWindowSensor
from releasetrain.plugin import ReleaseTrainPlugin
from releasetrain.timetables.release_window import ReleaseWindowTimetable
from releasetrain.triggers.window import ReleaseWindowTrigger
from tests.conftest import PROJECT_ROOT
from tests.helpers import PARAMS, RELEASE, FakeTI, context, run_events, seed

UTC = dt.UTC


def timetable(**spec) -> ReleaseWindowTimetable:
    calendar = CalendarLibrary(PROJECT_ROOT).resolve([CalendarSpec.model_validate(spec)])
    return ReleaseWindowTimetable(calendar.to_dict())


def runs(table: ReleaseWindowTimetable, earliest: dt.datetime, count: int) -> list[str]:
    found, last = [], None
    restriction = TimeRestriction(earliest=pendulum.instance(earliest), latest=None, catchup=True)
    for _ in range(count):
        info = table.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
        found.append(info.run_after.in_timezone("UTC").strftime("%a %m-%d %H:%M"))
        last = info.data_interval
    return found


def test_timetable_runs_only_at_openings_that_are_not_blacked_out():
    table = timetable(
        timezone="Europe/Berlin",
        windows=[{"days": ["mon", "wed"], "start": "09:00", "end": "12:00"}],
        blackouts=[
            {"name": "freeze", "start": "2026-12-21T00:00", "end": "2027-01-04T00:00"},
            {"name": "DE", "holidays": {"country": "DE"}},
        ],
    )
    assert runs(table, dt.datetime(2026, 12, 14, tzinfo=UTC), 4) == [
        "Mon 12-14 08:00",
        "Wed 12-16 08:00",
        "Mon 01-04 08:00",
        "Wed 01-06 08:00",
    ]


def test_timetable_follows_dst_and_cuts_windows_at_blackouts():
    table = timetable(
        timezone="America/New_York",
        windows=[{"days": ["sun"], "start": "01:00", "end": "05:00"}],
        blackouts=[{"name": "batch", "cron": "0 1 * * *", "duration_minutes": 60}],
    )
    # 2026-03-08 and 2026-11-01 are the New York DST change days; 01:00-02:00 is blacked out
    assert runs(table, dt.datetime(2026, 3, 1, tzinfo=UTC), 2) == ["Sun 03-01 07:00", "Sun 03-08 07:00"]
    # On 11-01 01:00 happens twice; cron starts the batch at both, so the blackout covers both hours
    assert runs(table, dt.datetime(2026, 10, 25, tzinfo=UTC), 2) == ["Sun 10-25 06:00", "Sun 11-01 07:00"]


def test_timetable_respects_latest_and_serializes():
    table = timetable(windows=[{"start": "09:00", "end": "10:00"}])
    restriction = TimeRestriction(
        earliest=pendulum.datetime(2026, 1, 1), latest=pendulum.datetime(2026, 1, 1, 8), catchup=True
    )
    assert table.next_dagrun_info(last_automated_data_interval=None, restriction=restriction) is None
    again = ReleaseWindowTimetable.deserialize(table.serialize())
    last = DataInterval.exact(pendulum.datetime(2026, 1, 1, 9))
    info = again.next_dagrun_info(last_automated_data_interval=last, restriction=TimeRestriction(None, None, True))
    assert info.run_after == pendulum.datetime(2026, 1, 2, 9)
    assert table.summary == "daily 09:00-10:00 UTC" and "Starts at each opening" in table.description


def test_without_catchup_a_window_open_now_is_not_skipped():
    now = dt.datetime.now(UTC).replace(second=0, microsecond=0)
    start, end = now - dt.timedelta(minutes=5), now + dt.timedelta(minutes=55)
    table = ReleaseWindowTimetable(
        CalendarLibrary(PROJECT_ROOT)
        .resolve([CalendarSpec.model_validate({"windows": [{"start": f"{start:%H:%M}", "end": f"{end:%H:%M}"}]})])
        .to_dict(),
        min_duration_minutes=10,
    )
    no_catchup = TimeRestriction(earliest=None, latest=None, catchup=False)
    # parsed after the window opened, before the scheduler made its run: the run is still due
    info = table.next_dagrun_info(last_automated_data_interval=None, restriction=no_catchup)
    assert info.run_after == pendulum.instance(start)
    # once it ran, the next opening is tomorrow's
    ran = DataInterval.exact(pendulum.instance(start))
    info = table.next_dagrun_info(last_automated_data_interval=ran, restriction=no_catchup)
    assert info.run_after == pendulum.instance(start + dt.timedelta(days=1))
    # a window with less time left than the release needs is not started
    short = ReleaseWindowTimetable(table.calendar_data, min_duration_minutes=58)
    info = short.next_dagrun_info(last_automated_data_interval=None, restriction=no_catchup)
    assert info.run_after > pendulum.instance(now)


def test_timetable_is_registered_by_the_plugin():
    assert ReleaseWindowTimetable in ReleaseTrainPlugin.timetables


def test_payments_dag_is_scheduled_by_its_windows_and_gated():
    spec = load_spec(PROJECT_ROOT / "include" / "releases" / "payments.yaml", display_root=PROJECT_ROOT)
    dag = build_release_dag(spec, project_root=PROJECT_ROOT)
    assert isinstance(dag.timetable, ReleaseWindowTimetable)
    tasks = dag.task_dict
    assert tasks["payments-prod.window"].upstream_task_ids == {
        "payments-prod.approve_2",
        "payments-prod.review_security",
    }
    assert tasks["payments-prod.verify"].upstream_task_ids == {"payments-prod.window"}
    assert tasks["payments-staging.verify"].upstream_task_ids == {"payments-staging.window"}
    assert tasks["payments-prod.deploy"].pool == "releasetrain_target_fleet_payments_prod"
    assert tasks["payments-prod.rollback"].pool == "releasetrain_target_fleet_payments_prod"
    # the review follows prod's last gate (its recorded pass), not just the smoke checks
    assert tasks["post_implementation_review"].upstream_task_ids == {"payments-prod.passed"}
    assert tasks["post_implementation_review"].gate_task_ids == ["payments-staging.window", "payments-prod.window"]
    assert tasks["release_complete"].trigger_rule == "none_failed_min_one_success"
    assert {"emergency", "emergency_justification"} <= set(dag.params)
    assert "## Release windows" in dag.doc_md and "releasetrain calendar" in dag.doc_md
    assert "Mon-Thu" in dag.doc_md or "window" in dag.doc_md.split("## Release windows")[1]


# --- the gate ------------------------------------------------------------------------------
# The run's request is its DAG run's params (never XCom): the author asks, "author" triggers.
NORMAL = {**PARAMS, "requested_by": "author"}
EMERGENCY = {**NORMAL, "emergency": True, "emergency_justification": "payment outage INC-4711 needs the fix now"}


def gate(blackouts=(), windows=(), minutes=30) -> ReleaseWindowSensor:
    layer = {"timezone": "UTC", "windows": list(windows), "blackouts": list(blackouts)}
    return ReleaseWindowSensor(
        task_id="prod.window",
        release=RELEASE,
        environment="prod",
        layers=[layer],
        calendar_dirs=[],
        project_root=str(PROJECT_ROOT),
        expected_duration_minutes=minutes,
        recheck_seconds=60,
    )


def blackout(minutes_from_now: float, minutes_long: float, name="change freeze"):
    start = dt.datetime.now(UTC) + dt.timedelta(minutes=minutes_from_now)
    return {"name": name, "start": start.isoformat(), "end": (start + dt.timedelta(minutes=minutes_long)).isoformat()}


def test_gate_passes_an_open_environment():
    result = gate().execute(context(FakeTI(), params=NORMAL, task_id="prod.window"))
    assert result["open"] is True and "emergency_exception" not in result
    [passed] = run_events("window_passed")  # what the deploy's window gate reads
    assert (passed.environment, passed.details["task_id"]) == ("prod", "prod.window") and not run_events("exception")


def test_gate_defers_in_a_blackout_and_says_why():
    with pytest.raises(TaskDeferred) as info:
        gate([blackout(-5, 60)]).execute(context(FakeTI(), params=NORMAL, task_id="prod.window"))
    assert isinstance(info.value.trigger, ReleaseWindowTrigger)
    assert info.value.method_name == "execute_complete"
    assert not run_events("window_passed") and not run_events("exception")


def test_gate_needs_the_expected_duration_left():
    now = dt.datetime.now(UTC)
    window = {
        "start": (now - dt.timedelta(minutes=30)).time().isoformat(timespec="seconds"),
        "end": (now + dt.timedelta(minutes=10)).time().isoformat(timespec="seconds"),
    }
    if window["end"] < window["start"]:
        pytest.skip("window would cross midnight UTC")
    with pytest.raises(TaskDeferred):
        gate(windows=[window], minutes=30).execute(context(FakeTI(), params=NORMAL))
    assert gate(windows=[window], minutes=5).execute(context(FakeTI(), params=NORMAL))["open"]


def test_emergency_passes_a_closed_gate_with_the_exception_recorded():
    result = gate([blackout(-5, 60)]).execute(context(FakeTI(), params=EMERGENCY, task_id="prod.window"))
    exception = result["emergency_exception"]
    assert exception["rules"] == ["change freeze"] and exception["requested_by"] == "author"
    assert (
        exception["justification"].startswith("payment outage")
        and "blacked out by change freeze" in exception["bypassed"]
    )
    # recorded in the ledger by the window task: the deploy's gate and the review read it there
    [recorded] = run_events("exception")
    assert (recorded.environment, recorded.actor, recorded.details["task_id"]) == ("prod", "author", "prod.window")
    assert recorded.details["rules"] == ["change freeze"] and not run_events("window_passed")


def test_an_emergency_param_without_a_justification_is_refused():
    with pytest.raises(AirflowFailException, match="emergency_justification"):
        gate([blackout(-5, 60)]).execute(context(FakeTI(), params={**EMERGENCY, "emergency_justification": "now"}))
    assert not run_events("exception")


def test_gate_resume_checks_the_calendar_again():
    with pytest.raises(TaskDeferred):
        gate([blackout(-5, 60)]).execute_complete(
            context(FakeTI(), params=NORMAL), {"open": True, "at": "x", "reason": "r"}
        )


def test_trigger_fires_when_the_blackout_ends():
    trigger = ReleaseWindowTrigger(
        layers=[{"timezone": "UTC", "blackouts": [blackout(-1, 1.5 / 60)]}],
        calendar_dirs=[],
        project_root=str(PROJECT_ROOT),
        min_duration_seconds=0,
        recheck_seconds=30,
    )

    async def first():
        async for event in trigger.run():
            return event.payload

    started = dt.datetime.now(UTC)
    event = asyncio.run(asyncio.wait_for(first(), 20))
    assert event["open"] is True and (dt.datetime.now(UTC) - started).total_seconds() < 10
    path, kwargs = trigger.serialize()
    assert path == "releasetrain.triggers.window.ReleaseWindowTrigger"
    assert ReleaseWindowTrigger(**kwargs).serialize() == (path, kwargs)


# --- post-implementation review -------------------------------------------------------------
def review() -> PostImplementationReviewOperator:
    return PostImplementationReviewOperator(
        task_id="post_implementation_review",
        release=RELEASE,
        reviewers=["author", "approver"],
        gate_task_ids=["prod.window"],
    )


def test_review_skips_normal_runs():
    with pytest.raises(AirflowSkipException, match="not an emergency"):
        review().execute(context(FakeTI(), params=NORMAL))


def window_exception(exception: dict, task_id: str) -> None:
    """The ``exception`` event a window task records (its details name the environment too)."""
    details = {"kind": "release_window", **exception}
    ti = FakeTI(task_id=task_id)
    record(context(ti, params=EMERGENCY), "exception", RELEASE, environment="prod", actor="author", details=details)


def test_review_is_asked_of_non_authors_with_the_exceptions(monkeypatch):
    captured = {}
    monkeypatch.setattr(
        "releasetrain.operators.review.HITLOperator.execute",
        lambda self, ctx: captured.update(users=self.assigned_users, body=self.body),
    )
    exception = {
        "environment": "prod",
        "at": "2026-01-01T00:00:00Z",
        "requested_by": "author",
        "rules": ["change freeze"],
        "bypassed": "blacked out",
    }
    # the window task's ledger record is what is reviewed; a forged XCom exception is not
    window_exception(exception, "prod.window")
    forged = {**exception, "rules": ["forged freeze"]}
    window_exception(forged, "prod.other")  # not a gate of the review
    ti = FakeTI({("prod.window", "return_value"): {"emergency_exception": forged}})
    review().execute(context(ti, params=EMERGENCY, task_id="post_implementation_review"))
    assert captured["users"] == [{"id": "approver", "name": "approver"}]
    assert "change freeze" in captured["body"] and "forged freeze" not in captured["body"]
    assert "payment outage INC" in captured["body"]


def test_review_by_an_author_is_refused():
    event = {
        "chosen_options": ["Reviewed"],
        "params_input": {"findings": "all fine, checked logs"},
        "responded_at": dt.datetime(2026, 1, 1, tzinfo=UTC),
        "responded_by_user": {"id": "author", "name": "a"},
    }
    with pytest.raises(AirflowFailException, match="author is an author"):
        review().execute_complete(context(FakeTI(), params=EMERGENCY, task_id="post_implementation_review"), event)
    assert not run_events("review")


def test_review_needs_findings():
    event = {
        "chosen_options": ["Reviewed"],
        "params_input": {"findings": "ok"},
        "responded_at": dt.datetime(2026, 1, 1, tzinfo=UTC),
        "responded_by_user": {"id": "approver", "name": "a"},
    }
    ti = FakeTI(task_id="post_implementation_review")
    with pytest.raises(AirflowFailException, match="'findings' must say what was checked"):
        review().execute_complete(context(ti, params=EMERGENCY), event)
    assert not run_events("review")
    event["params_input"] = {"findings": "Logs and metrics checked, no side effects"}
    result = review().execute_complete(context(ti, params=EMERGENCY), event)
    assert result["responded_by_user"]["id"] == "approver"
    [recorded] = run_events("review")  # what release_complete reads
    assert (recorded.actor, recorded.details["task_id"]) == ("approver", "post_implementation_review")
    assert recorded.details["findings"] == "Logs and metrics checked, no side effects"


def test_gate_fails_when_the_calendar_never_opens_long_enough():
    with pytest.raises(AirflowFailException, match="never opens long enough"):
        gate(windows=[{"start": "09:00", "end": "09:30"}], minutes=45).execute(context(FakeTI(), params=NORMAL))


def test_completion_of_an_emergency_needs_the_recorded_review():
    from releasetrain.operators.complete import ReleaseCompleteOperator

    digest = "sha256:" + "a" * 64
    op = ReleaseCompleteOperator(
        task_id="release_complete",
        release=RELEASE,
        gate_task_ids=["prod.passed"],
        review_task_id="post_implementation_review",
    )
    seed("packaged", task_id="package", version="2.0.0", digest=digest)
    seed("environment_passed", environment="prod", task_id="prod.passed", version="2.0.0", digest=digest)
    # a review "result" in XCom (forged, or the task marked success by hand) is no review
    forged = FakeTI({("post_implementation_review", "return_value"): {"responded_by_user": {"id": "approver"}}})
    with pytest.raises(
        AirflowFailException,
        match="complete refused: no post-implementation review recorded in the ledger by post_implementation_review",
    ):
        op.execute(context(forged, params=EMERGENCY, task_id="release_complete"))
    assert not run_events("closure")
    seed("review", actor="approver", task_id="post_implementation_review", findings="Logs checked, all fine")
    result = op.execute(context(forged, params=EMERGENCY, task_id="release_complete"))
    assert (result["release"], result["digest"], result["environments"]) == (RELEASE, digest, ["prod"])
    assert [e.details["outcome"] for e in run_events("closure")] == ["success"]


def test_completion_of_a_normal_run_owes_no_review_but_every_pass():
    from releasetrain.operators.complete import ReleaseCompleteOperator

    digest = "sha256:" + "a" * 64
    op = ReleaseCompleteOperator(
        task_id="release_complete",
        release=RELEASE,
        gate_task_ids=["staging.passed", "prod.passed"],
        review_task_id="post_implementation_review",
    )
    seed("packaged", task_id="package", version="2.0.0", digest=digest)
    seed("environment_passed", environment="staging", task_id="staging.passed", version="2.0.0", digest=digest)
    with pytest.raises(AirflowFailException, match="no pass of prod recorded in the ledger by prod.passed"):
        op.execute(context(FakeTI(), params=NORMAL, task_id="release_complete"))
    seed("environment_passed", environment="prod", task_id="prod.passed", version="2.0.0", digest=digest)
    result = op.execute(context(FakeTI(), params=NORMAL, task_id="release_complete"))
    assert result["environments"] == ["staging", "prod"] and not run_events("review")
