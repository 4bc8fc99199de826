"""Release windows on real Airflow: the gate defers through blackouts and goes on by
itself, emergencies pass with the exception recorded and a review required, deploys to a
shared target never overlap, and the scheduler starts releases only at open windows."""

from __future__ import annotations

import datetime
import threading
import time

import pytest

from tests.e2e.conftest import write_calendar

pytestmark = pytest.mark.e2e
UTC = datetime.UTC


def now() -> datetime.datetime:
    return datetime.datetime.now(UTC)


def parse(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def wait_for_state(client, dag_id, run_id, task_id, states, timeout=180):
    deadline = time.monotonic() + timeout
    while True:
        state = client.task_states(dag_id, run_id).get(task_id)
        if state in states:
            return state
        assert time.monotonic() < deadline, f"{task_id} still {state}"
        time.sleep(1)


def test_run_in_a_blackout_waits_deferred_and_goes_on_by_itself(stack, author, approver, fleet):
    end = now() + datetime.timedelta(seconds=40)
    write_calendar(
        stack.calendars,
        "e2e-gate",
        blackouts=[
            {"name": "e2e freeze", "start": (now() - datetime.timedelta(minutes=5)).isoformat(), "end": end.isoformat()}
        ],
    )
    run_id = author.trigger("release_gated", {"version": "1.0.0"})["dag_run_id"]
    assert wait_for_state(author, "release_gated", run_id, "gated-dev.window", {"deferred", "failed"}) == "deferred"
    assert fleet("gated-dev")["version"] is None
    # a blackout declared while the run waits is honoured: the freeze is extended
    end = now() + datetime.timedelta(seconds=70)
    write_calendar(
        stack.calendars,
        "e2e-gate",
        blackouts=[
            {"name": "e2e freeze", "start": (now() - datetime.timedelta(minutes=5)).isoformat(), "end": end.isoformat()}
        ],
    )
    wait_for_state(author, "release_gated", run_id, "gated-dev.deploy", {"success", "failed"}, timeout=240)
    gate = author.task_instance("release_gated", run_id, "gated-dev.window")
    assert parse(gate["end_date"]) >= end, "the gate let the run through only after the (extended) blackout"
    assert author.xcom("release_gated", run_id, "gated-dev.window")["open"] is True
    assert fleet("gated-dev")["version"] == "1.0.0"
    author.wait_for_approval("release_gated", run_id, "gated-prod.approve")
    assert approver.answer("release_gated", run_id, "gated-prod.approve", "Approve") == "success"
    run = author.wait_for_run("release_gated", run_id)
    assert run["state"] == "success", author.task_states("release_gated", run_id)
    assert author.task_states("release_gated", run_id)["post_implementation_review"] == "skipped"


def test_emergency_passes_with_the_exception_recorded_and_needs_a_review(stack, author, approver, fleet):
    write_calendar(
        stack.calendars,
        "e2e-gate",
        blackouts=[
            {"name": "e2e freeze", "start": now().isoformat(), "end": (now() + datetime.timedelta(hours=2)).isoformat()}
        ],
    )
    why = "Payment outage INC-4711: the fix cannot wait for the freeze to end"
    run_id = author.trigger("release_gated", {"version": "1.0.1", "emergency": True, "emergency_justification": why})[
        "dag_run_id"
    ]
    author.wait_for_approval("release_gated", run_id, "gated-prod.approve")
    gate = author.xcom("release_gated", run_id, "gated-dev.window")
    exception = gate["emergency_exception"]
    assert exception["rules"] == ["e2e freeze"] and exception["justification"] == why
    assert exception["requested_by"] == "author" and exception["at"].endswith("Z")
    assert fleet("gated-dev")["version"] == "1.0.1"
    assert approver.answer("release_gated", run_id, "gated-prod.approve", "Approve") == "success"
    review = author.wait_for_approval("release_gated", run_id, "post_implementation_review")
    assert [u["id"] for u in review["assigned_users"]] == ["approver"]
    assert "e2e freeze" in review["body"]
    assert author.run("release_gated", run_id)["state"] == "running", "no success before the review"
    assert (
        approver.answer(
            "release_gated",
            run_id,
            "post_implementation_review",
            "Reviewed",
            params_input={"findings": "Fix verified in dev and prod, no side effects"},
        )
        == "success"
    )
    assert author.wait_for_run("release_gated", run_id)["state"] == "success"


def test_concurrent_runs_sharing_a_target_never_overlap_their_deploys(author, fleet):
    # each deploy takes 6 s: without the target's pool the two would surely overlap
    fleet.post("/faults", {"environment": "twin", "version": "1.0.0", "error_rate": 0, "deploy_seconds": 6})
    runs = {}

    def start(dag_id):
        runs[dag_id] = author.trigger(dag_id, {"version": "1.0.0"})["dag_run_id"]

    threads = [threading.Thread(target=start, args=(d,)) for d in ("release_twin-a", "release_twin-b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    spans = []
    for dag_id, run_id in runs.items():
        assert author.wait_for_run(dag_id, run_id)["state"] == "success", author.task_states(dag_id, run_id)
        ti = author.task_instance(dag_id, run_id, "twin.deploy")
        assert ti["pool"] == "releasetrain_target_fleet_twin"
        spans.append((parse(ti["start_date"]), parse(ti["end_date"])))
    (a_start, a_end), (b_start, b_end) = sorted(spans)
    assert a_end <= b_start, f"deploys overlapped: {spans}"
    assert [h["kind"] for h in fleet("twin")["history"]] == ["deploy", "deploy"], "both deployed, one after the other"


def test_scheduler_starts_a_release_only_at_an_open_window(stack, admin):
    (w1_start, w1_end), (w2_start, _) = stack.scheduled_windows
    seen_at, planned = stack.windowed_plan
    assert seen_at < w1_start, f"the stack took too long to start ({seen_at} >= {w1_start}): test inconclusive"
    assert planned and parse(planned) == w2_start, f"planned {planned}; the blacked-out window starts {w1_start}"
    deadline = time.monotonic() + max(60.0, (w2_start - now()).total_seconds() + 120)
    scheduled = []
    while not scheduled:
        scheduled = [r for r in admin.runs("release_windowed") if r["run_type"] == "scheduled"]
        assert time.monotonic() < deadline, "no scheduled run was created"
        time.sleep(3)
    run_after = [parse(r["run_after"]) for r in scheduled]
    assert run_after == [w2_start], f"expected one run at {w2_start}, not in the blacked-out {w1_start}-{w1_end}"
    run = admin.wait_for_run("release_windowed", scheduled[0]["dag_run_id"])
    assert run["state"] == "success", admin.task_states("release_windowed", scheduled[0]["dag_run_id"])
    assert admin.xcom("release_windowed", scheduled[0]["dag_run_id"], "prepare")["requested_by"] == "scheduler"
