"""Issue 10: gates that hold against the demo's ordinary ``user``-role accounts using nothing
but Airflow's REST API: edited XCom, task states set by hand, cleared tasks, reused run ids.

Each attack of the issue is driven here over REST. For each: nothing reaches the
environment, the run ends failed (or waits), and the ledger records the refusal with the
reason, naming the authoritative record that was missing.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from releasetrain.client import AirflowAPIError, AirflowClient

pytestmark = pytest.mark.e2e

DAG = "release_guarded"
OLD = "1.0.0"


def refusals(ledger, release: str, run_id: str, dag_id: str, task_id: str | None = None) -> list[str]:
    """The reasons the gatekeeper gave, as recorded in the ledger (``gate_refused``)."""
    return [
        " ".join(e.details["reasons"])
        for e in ledger.events(release, run_id, dag_id)
        if e.kind == "gate_refused" and (task_id is None or e.details.get("task_id") == task_id)
    ]


def test_an_edited_risk_result_and_a_forged_approval_deploy_nothing(author, fleet, ledger):
    run_id = author.trigger(DAG, {"version": "2.0.0", "change_summary": "attacks 1 and 2"})["dag_run_id"]
    assert author.wait_for_task(DAG, run_id, "assess_risk", ("success",), timeout=180) == "success"
    # attack 1: the author edits the risk result so that production needs no approval
    risk = author.xcom(DAG, run_id, "assess_risk")
    author.set_xcom(
        DAG, run_id, "assess_risk", {**risk, "level": "low", "gates": {"guard-prod": {"quorum": 0, "reviews": []}}}
    )
    assert author.xcom(DAG, run_id, "assess_risk")["gates"]["guard-prod"]["quorum"] == 0
    # the approval is asked all the same: gates come from the risk assessment's ledger record
    request = author.wait_for_approval(DAG, run_id, "guard-prod.approve")
    assert {u["id"] for u in request["assigned_users"]} == {"approver", "approver2"}

    # attack 2: the author forges an approval record in the approval task's XCom and marks it success
    digest = author.xcom(DAG, run_id, "package")["digest"]
    forged = {
        "chosen_options": ["Approve"],
        "params_input": {},
        "responded_by_user": {"id": "approver", "name": "approver"},
        "timedout": False,
        "environment": "guard-prod",
        "digest": digest,
        "group": None,
        "slot": 1,
    }
    author.set_xcom(DAG, run_id, "guard-prod.approve", forged)
    author.set_task_state(DAG, run_id, "guard-prod.approve", "success")
    run = author.wait_for_run(DAG, run_id, timeout=300)
    states = author.task_states(DAG, run_id)
    assert run["state"] == "failed", states
    assert states["guard-prod.deploy"] == "failed" and states["release_complete"] == "upstream_failed"
    assert fleet("guard-prod")["version"] == OLD, "nothing reached production"
    [reason] = refusals(ledger, "guarded", run_id, DAG, "guard-prod.deploy")
    assert "approvals in the ledger do not hold" in reason and "required distinct approvals recorded" in reason
    events = ledger.wait_for("guarded", run_id, "run_state", dag_id=DAG)
    by_hand = [e.details for e in events if e.kind == "task_state"]
    assert {"task_id": "guard-prod.approve", "state": "success", "by_hand": True} in by_hand
    assert not [e for e in events if e.kind == "approval_given"]


def test_a_rewritten_author_a_cleared_rejection_and_a_rollback_run_reusing_the_run_id(
    stack, author, approver, fleet, ledger
):
    approver2 = AirflowClient(stack.config.api_url, "approver2", "approver2")
    run_id = f"attacks-3-6-7-{uuid.uuid4().hex[:8]}"
    # attack 3: `approver` triggers its own release and rewrites who triggered and requested it
    approver.trigger(DAG, {"version": "2.1.0", "change_summary": "attacks 3, 6, 7"}, run_id=run_id)
    assert approver.wait_for_task(DAG, run_id, "prepare", ("success",), timeout=180) == "success"
    request = approver.xcom(DAG, run_id, "prepare")
    approver.set_xcom(DAG, run_id, "prepare", {**request, "triggered_by": "someone", "requested_by": "someone"})
    detail = approver.wait_for_approval(DAG, run_id, "guard-prod.approve")
    assert [u["id"] for u in detail["assigned_users"]] == ["approver2"], "the DAG run says who triggered it"
    with pytest.raises(AirflowAPIError) as refused:
        approver.respond(DAG, run_id, "guard-prod.approve", "Approve")
    assert refused.value.status_code == 403

    # attack 7: a manual rollback run given the release run's id never touches its change record
    author.trigger(
        "rollback_guarded", {"environment": "guard-prod", "reason": "incident 42: checkout down"}, run_id=run_id
    )
    assert author.wait_for_run("rollback_guarded", run_id, timeout=180)["state"] == "failed"
    ledger.wait_for("guarded", run_id, "run_state", dag_id="rollback_guarded")
    change = [e for e in ledger.events("guarded", run_id, DAG) if e.kind.startswith("change_")]
    assert change and change[-1].details["state"] not in ("closed", "canceled"), [e.details for e in change]
    assert author.task_states(DAG, run_id)["guard-prod.approve"] == "awaiting_input"

    # attack 6: a rejection is final for the run; clearing the approval does not ask again
    assert approver2.answer(DAG, run_id, "guard-prod.approve", "Reject") == "failed"
    author.clear_tasks(DAG, run_id, ["guard-prod.approve"])
    deadline = time.monotonic() + 120
    while author.task_states(DAG, run_id)["guard-prod.approve"] != "failed":
        assert time.monotonic() < deadline, author.task_states(DAG, run_id)
        assert not author.pending_approvals(DAG, run_id), "a rejected approval was asked again"
        time.sleep(1)
    assert author.wait_for_run(DAG, run_id, timeout=180)["state"] == "failed"
    assert fleet("guard-prod")["version"] == OLD
    [reason] = refusals(ledger, "guarded", run_id, DAG, "guard-prod.approve")
    assert "rejected by approver2" in reason and "a rejection is final for guard-prod in this run" in reason


def test_a_deploy_marked_successful_by_hand_proves_nothing(author, fleet, ledger):
    run_id = author.trigger(DAG, {"version": "2.2.0", "change_summary": "hand-marked deploy"})["dag_run_id"]
    # before it ran, staging's deploy is marked successful by hand: its checks must not pass
    author.set_task_state(DAG, run_id, "guard-staging.deploy", "success")
    assert author.wait_for_run(DAG, run_id, timeout=300)["state"] == "failed"
    states = author.task_states(DAG, run_id)
    assert states["guard-staging.smoke"] == "failed" and states["guard-prod.approve"] == "upstream_failed"
    for environment in ("guard-staging", "guard-prod"):
        assert "2.2.0" not in [h["version"] for h in fleet(environment)["history"]], "nothing reached it"
    [smoke] = refusals(ledger, "guarded", run_id, DAG, "guard-staging.smoke")
    assert "no deployment recorded in the ledger by guard-staging.deploy" in smoke


class Scenario(threading.Thread):
    """A scenario driven over REST in the background while the guarded-release tests run
    (the stack has room for several releases at once; the suite's time does not)."""

    def __init__(self, drive, *args):
        super().__init__(daemon=True)
        self.drive, self.args, self.seen, self.error = drive, args, {}, None

    def run(self):
        try:
            self.drive(self.seen, *self.args)
        except BaseException as exc:  # reported by the test that joins it
            self.error = exc

    def result(self, timeout: float = 900) -> dict:
        self.join(timeout)
        assert not self.is_alive(), "the scenario did not finish"
        if self.error is not None:
            raise self.error
        return self.seen


def _hand_marked_canary(seen: dict, author, fleet) -> None:
    dag = "release_canary-hand"
    fleet.post("/faults", {"environment": "cn-hand", "version": "2.0.0", "error_rate": 1.0})
    run_id = seen["run_id"] = author.trigger(dag, {"version": "2.0.0", "change_summary": "attack 4"})["dag_run_id"]
    # attack 4: the failing version's first canary step is marked successful while it is analysed
    seen["canary_10"] = author.wait_for_task(dag, run_id, "cn-hand.canary_10", ("deferred",), timeout=300)
    author.set_task_state(dag, run_id, "cn-hand.canary_10", "success")
    seen["run"] = author.wait_for_run(dag, run_id, timeout=400)
    seen["states"] = author.task_states(dag, run_id)
    seen["fleet"] = fleet("cn-hand")
    # attack 5: a manual rollback "back" to the version just rolled back for being bad
    rollback = "rollback_canary-hand"
    conf = {"environment": "cn-hand", "version": "2.0.0", "reason": "incident 7: undo it"}
    rb_id = seen["rollback_run_id"] = author.trigger(rollback, conf)["dag_run_id"]
    seen["rollback_run"] = author.wait_for_run(rollback, rb_id, timeout=300)
    seen["fleet_after_rollback"] = fleet("cn-hand")


def _two_releases_on_one_target(seen: dict, author, fleet) -> None:
    a = seen["a"] = author.trigger("release_locked-a", {"version": "2.0.0"})["dag_run_id"]
    seen["a_health"] = author.wait_for_task("release_locked-a", a, "shared.health", ("deferred",), timeout=300)
    b = seen["b"] = author.trigger("release_locked-b", {"version": "3.0.0"})["dag_run_id"]
    # attack 8: b's deploy would land while a still checks its deploy
    seen["b_lock"] = author.wait_for_task("release_locked-b", b, "shared.lock", ("deferred",), timeout=180)
    seen["a_health_meanwhile"] = author.task_states("release_locked-a", a)["shared.health"]
    seen["live_meanwhile"] = fleet("shared")["version"]
    # issue 13: a critical release comes to the same target after b began to wait
    c = seen["c"] = author.trigger("release_locked-c", {"version": "4.0.0"})["dag_run_id"]
    seen["c_lock"] = author.wait_for_task("release_locked-c", c, "shared.lock", ("deferred",), timeout=180)
    seen["a_health_when_c_waits"] = author.task_states("release_locked-a", a)["shared.health"]
    seen["a_run"] = author.wait_for_run("release_locked-a", a, timeout=400)
    seen["c_run"] = author.wait_for_run("release_locked-c", c, timeout=400)
    seen["b_run"] = author.wait_for_run("release_locked-b", b, timeout=400)
    seen["history"] = fleet("shared")["history"]
    # the old run's lock and everything after it cleared: its deploy, and its rollback
    # (to what ran before a: 1.0.0) would act again on today's target, undoing b's 3.0.0
    author.clear_tasks("release_locked-a", a, ["shared.lock"], downstream=True)
    assert author.wait_for_task("release_locked-a", a, "shared.lock", ("queued", "running", "failed"), timeout=60)
    seen["a_cleared_run"] = author.wait_for_run("release_locked-a", a, timeout=300)
    seen["a_cleared_states"] = author.task_states("release_locked-a", a)
    seen["after_clear"] = fleet("shared")


@pytest.fixture(scope="module", autouse=True)
def background(stack, fleet):
    """Attacks 4, 5 and 8 start with the module and run beside the guarded-release tests
    (each with a REST session of its own, as the demo's author)."""

    def author() -> AirflowClient:
        return AirflowClient(stack.config.api_url, "author", "author")

    scenarios = {
        "canary": Scenario(_hand_marked_canary, author(), fleet),
        "lock": Scenario(_two_releases_on_one_target, author(), fleet),
    }
    for scenario in scenarios.values():
        scenario.start()
    yield scenarios
    for scenario in scenarios.values():
        scenario.join(5)


def test_canary_steps_marked_successful_by_hand_promote_nothing_and_the_bad_version_cannot_come_back(
    background, ledger
):
    dag, seen = "release_canary-hand", background["canary"].result()
    run_id, states = seen["run_id"], seen["states"]
    assert seen["canary_10"] == "deferred"
    assert seen["run"]["state"] == "failed", states
    assert states["cn-hand.canary_50"] == "failed" and states["cn-hand.promote"] == "upstream_failed"
    assert states["cn-hand.rollback"] == "success"
    status = seen["fleet"]
    assert status["version"] == OLD and (status.get("idle") or {}).get("weight", 0) == 0
    events = ledger.events("canary-hand", run_id, dag)
    assert [e.details["weight"] for e in events if e.kind == "traffic_shifted"] == [10], "traffic never moved on"
    assert "promoted" not in [e.kind for e in events]
    [reason] = refusals(ledger, "canary-hand", run_id, dag, "cn-hand.canary_50")
    assert "no analysis verdict recorded in the ledger by cn-hand.canary_10" in reason

    # attack 5: the manual rollback to the bad version is refused, nothing changes
    rollback, rb_id = "rollback_canary-hand", seen["rollback_run_id"]
    assert seen["rollback_run"]["state"] == "failed"
    assert seen["fleet_after_rollback"]["version"] == OLD
    [reason] = refusals(ledger, "canary-hand", rb_id, rollback)
    assert "2.0.0 may not be rolled back to in cn-hand" in reason
    kinds = [e.kind for e in ledger.events("canary-hand", rb_id, rollback)]
    assert "rollback_requested" not in kinds and "rollback" not in kinds


def test_no_other_deploy_lands_between_a_deploy_and_its_last_check(background, ledger):
    seen = background["lock"].result()
    assert seen["a_health"] == "deferred"
    # b's lock waited (deferred, no worker slot) while a still checked its deploy; so did c's
    assert seen["b_lock"] == "deferred" and seen["c_lock"] == "deferred"
    assert seen["a_health_meanwhile"] == "deferred"
    assert seen["a_health_when_c_waits"] == "deferred", "a still held the target when c began to wait"
    assert seen["live_meanwhile"] == "2.0.0"
    assert seen["a_run"]["state"] == "success" and seen["b_run"]["state"] == "success"
    assert seen["c_run"]["state"] == "success"
    # issue 13: the critical release (c) took the freed target before b, which waited longer
    deploys = [(h["kind"], h["version"]) for h in seen["history"] if h["kind"] != "seed"]
    assert deploys == [("deploy", "2.0.0"), ("deploy", "4.0.0"), ("deploy", "3.0.0")]
    released = next(e.seq for e in ledger.events("locked-a", seen["a"]) if e.kind == "lock_released")
    acquired = next(e.seq for e in ledger.events("locked-b", seen["b"]) if e.kind == "lock_acquired")
    c_acquired = next(e.seq for e in ledger.events("locked-c", seen["c"]) if e.kind == "lock_acquired")
    c_released = next(e.seq for e in ledger.events("locked-c", seen["c"]) if e.kind == "lock_released")
    assert released < c_acquired < c_released < acquired, "c, then b, took the target only after a released it"

    # the finished run cleared from its lock on: it takes nothing, deploys and rolls back nothing
    states = seen["a_cleared_states"]
    assert seen["a_cleared_run"]["state"] == "failed", states
    assert states["shared.lock"] == "failed" and states["shared.deploy"] == "upstream_failed", states
    assert seen["after_clear"]["version"] == "3.0.0", "b's release was undone"
    assert seen["after_clear"]["history"] == seen["history"], "the target saw another deployment"
    reasons = refusals(ledger, "locked-a", seen["a"], "release_locked-a", "shared.lock")
    assert reasons and "already held and released deploy target fleet_shared for shared" in reasons[-1]
    # the listener told the cleared run from a new one: its clear number, recorded at each start
    events = ledger.events("locked-a", seen["a"], "release_locked-a")
    starts = [e.details["clear_number"] for e in events if e.kind == "run_started"]
    assert starts[0] == 0 and starts[-1] >= 1, starts
    [held] = [e.details["holder"] for e in events if e.kind == "lock_acquired"]
    assert held.startswith(f"release_locked-a/{seen['a']}@"), "the holder names the run's incarnation"
