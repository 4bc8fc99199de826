"""Progressive delivery's acceptance (issue 5) on real Airflow processes, the demo fleet
(two colours per environment, synthetic traffic) and a real Prometheus scraping it.

The five rollouts start together (each has its own fleet environment, seeded with 1.0.0)
and are checked one by one; every rollout deploys 2.0.0.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import requests

pytestmark = pytest.mark.e2e

NEW, OLD = "2.0.0", "1.0.0"


@pytest.fixture(scope="module")
def rollouts(stack, author, fleet):
    """Start every rollout at once: the failing ones get their fault first."""
    fleet.post("/faults", {"environment": "cn-bad", "version": NEW, "error_rate": 1.0})
    # fails only under live traffic: the pre-promotion analysis (preview traffic) passes
    fleet.post("/faults", {"environment": "bg", "version": NEW, "error_rate": 1.0, "scope": "live"})
    runs = {}
    for release in ("canary", "canary-bad", "canary-unsure", "canary-abort", "bluegreen"):
        runs[release] = author.trigger(f"release_{release}", {"version": NEW, "change_summary": "progressive"})[
            "dag_run_id"
        ]
    return runs


def served_versions(stack, environment: str, n: int = 40) -> set[str]:
    """What users get: the version of ``n`` live requests."""
    seen = set()
    for _ in range(n):
        response = requests.get(
            f"{stack.config.fleet_url}/environments/{environment}/app/version", auth=stack.fleet_auth(), timeout=10
        )
        seen.add(response.json().get("version"))
    return seen


def rollback_evidence(stack, author, dag_id: str, run_id: str, environment: str, release: str) -> dict:
    """Every rollback leaves a snapshot, a postmortem draft and a webhook notification."""
    restored = author.xcom(dag_id, run_id, f"{environment}.rollback")
    assert restored["restored_version"] == OLD and restored["healthy"] is True
    snapshot = json.loads(Path(restored["snapshot"].removeprefix("file://")).read_text())
    assert snapshot["environment"] == environment and snapshot["target_status"]["environment"] == environment
    postmortem = Path(restored["postmortem"].removeprefix("file://")).read_text()
    assert f"{release} {NEW} rolled back in {environment}" in postmortem
    deadline = time.monotonic() + 30
    done = "releasetrain.rollback.succeeded"
    while not (notes := stack.receiver.bodies(release=release, run_id=run_id, event=done)):
        assert time.monotonic() < deadline, "no rollback notification reached the receiver"
        time.sleep(1)
    assert notes[0]["audience"] == "on-call" and notes[0]["restored_version"] == OLD
    assert notes[0]["failed_version"] == NEW and notes[0]["postmortem"] == restored["postmortem"]
    # issue 14: the start was told first, with the backout estimate as the expected duration
    [started] = stack.receiver.bodies(release=release, run_id=run_id, event="releasetrain.rollback.started")
    assert (started["restore_to"], started["expected_minutes"], started["audience"]) == (OLD, 5, "on-call")
    return {"restored": restored, "snapshot": snapshot, "postmortem": postmortem, "notification": notes[0]}


def test_a_healthy_canary_goes_10_50_100_and_succeeds(stack, author, fleet, ledger, rollouts):
    dag, run_id = "release_canary", rollouts["canary"]
    run = author.wait_for_run(dag, run_id, timeout=300)
    states = author.task_states(dag, run_id)
    assert run["state"] == "success", states
    assert [states[f"cn-ok.canary_{w}"] for w in (10, 50, 100)] == ["success"] * 3
    assert [states[f"cn-ok.decide_{w}"] for w in (10, 50, 100)] == ["skipped"] * 3  # conclusive: nobody asked
    assert states["cn-ok.promote"] == "success" and states["cn-ok.rollback"] == "skipped"
    assert states["cn-ok.abort"] == "skipped"  # the standing abort request closed when the rollout ended
    events = ledger.events("canary", run_id)
    assert [e.details["weight"] for e in events if e.kind == "traffic_shifted"] == [10, 50, 100]
    analyses = [e.details for e in events if e.kind == "analysis"]
    assert [(a["weight"], a["outcome"]) for a in analyses] == [
        (10, "successful"),
        (50, "successful"),
        (100, "successful"),
    ]
    # the analysis judged real Prometheus data and the synthetic journey
    metrics = {m["name"]: m for m in analyses[0]["measurements"][0]["metrics"]}
    assert metrics["error_rate"]["phase"] == "pass" and metrics["error_rate"]["samples"][0] > 0
    assert metrics["checkout_journey"]["phase"] == "pass"
    # the XCom carries the JSON-safe result for the UI
    assert author.xcom(dag, run_id, "cn-ok.canary_50")["outcome"] == "successful"
    status = fleet("cn-ok")
    assert status["version"] == NEW and status["previous_version"] == OLD
    assert status["idle"]["version"] == OLD and status["idle"]["weight"] == 0
    assert served_versions(stack, "cn-ok") == {NEW}
    weights = [h["weight"] for h in status["history"] if h["kind"] == "traffic"]
    assert weights == [10, 50, 100]


def test_an_unhealthy_canary_is_rolled_back_at_the_first_analysis(stack, author, fleet, ledger, rollouts):
    dag, run_id = "release_canary-bad", rollouts["canary-bad"]
    run = author.wait_for_run(dag, run_id, timeout=300)
    states = author.task_states(dag, run_id)
    assert run["state"] == "failed", states
    assert states["cn-bad.canary_10"] == "failed"
    assert states["cn-bad.canary_50"] == states["cn-bad.promote"] == "upstream_failed"
    assert states["cn-bad.rollback"] == "success" and states["release_complete"] == "upstream_failed"
    # the fleet serves only the old version: the canary got no more than its 10%
    status = fleet("cn-bad")
    assert status["version"] == OLD and status["idle"] is None, status
    assert served_versions(stack, "cn-bad") == {OLD}
    assert [h["weight"] for h in status["history"] if h["kind"] == "traffic"] == [10]
    events = ledger.events("canary-bad", run_id)
    failed = [e.details for e in events if e.kind == "analysis"]
    assert [(a["weight"], a["outcome"]) for a in failed] == [(10, "failed")]
    assert "error_rate" in failed[0]["reason"]
    evidence = rollback_evidence(stack, author, dag, run_id, "cn-bad", "canary-bad")
    assert evidence["restored"]["action"] == "traffic taken off the canary"
    # the snapshot holds the target as it was (canary at 10%) and the analysis window's metrics
    assert evidence["snapshot"]["target_status"]["idle"]["weight"] == 10
    assert evidence["snapshot"]["analysis"][0]["measurements"][0]["verdict"] == "fail"
    assert "Canary analysis" in evidence["postmortem"] and "canary 10% analysis failed" in evidence["postmortem"]
    assert evidence["notification"]["analysis"][0]["outcome"] == "failed"
    assert any(e.kind == "rollback" for e in events)


def test_an_inconclusive_canary_waits_for_a_human_and_follows_the_choice(
    stack, author, approver, fleet, ledger, rollouts
):
    dag, run_id = "release_canary-unsure", rollouts["canary-unsure"]
    request = author.wait_for_approval(dag, run_id, "cn-unsure.decide_50")
    assert "Promote" in request["options"] and "Roll back" in request["options"]
    assert "saturation" in request["body"] and "error_rate: pass" in request["body"]  # the measurements
    assert "author" not in {u["id"] for u in request["assigned_users"]}
    # the author cannot decide on their own release
    from releasetrain.client import AirflowAPIError

    with pytest.raises(AirflowAPIError) as refused:
        author.respond(dag, run_id, "cn-unsure.decide_50", "Promote")
    assert refused.value.status_code == 403
    assert approver.answer(dag, run_id, "cn-unsure.decide_50", "Promote") == "success"
    assert fleet("cn-unsure")["idle"]["weight"] == 50
    author.wait_for_approval(dag, run_id, "cn-unsure.decide_100")
    assert approver.answer(dag, run_id, "cn-unsure.decide_100", "Roll back") == "failed"
    run = author.wait_for_run(dag, run_id, timeout=300)
    states = author.task_states(dag, run_id)
    assert run["state"] == "failed" and states["cn-unsure.promote"] == "upstream_failed", states
    assert states["cn-unsure.rollback"] == "success"
    status = fleet("cn-unsure")
    assert status["version"] == OLD and status["idle"] is None
    assert served_versions(stack, "cn-unsure") == {OLD}
    decisions = [
        (e.actor, e.details["choice"]) for e in ledger.events("canary-unsure", run_id) if e.kind == "analysis_decision"
    ]
    assert decisions == [("approver", "Promote"), ("approver", "Roll back")]
    evidence = rollback_evidence(stack, author, dag, run_id, "cn-unsure", "canary-unsure")
    assert "rolled back by approver after an inconclusive analysis" in evidence["postmortem"]


def test_a_human_aborts_a_rollout_over_rest(stack, author, approver, fleet, ledger, rollouts):
    dag, run_id = "release_canary-abort", rollouts["canary-abort"]
    deadline = time.monotonic() + 300
    while author.task_states(dag, run_id).get("cn-abort.canary_10") != "deferred":
        assert time.monotonic() < deadline, author.task_states(dag, run_id)
        time.sleep(1)
    assert fleet("cn-abort")["idle"]["weight"] == 10
    assert approver.abort(dag, run_id, "cn-abort", "checkout errors reported by support") == "failed"
    run = author.wait_for_run(dag, run_id, timeout=300)
    states = author.task_states(dag, run_id)
    assert run["state"] == "failed", states
    assert states["cn-abort.canary_10"] == "failed"  # the running analysis stopped
    assert states["cn-abort.canary_50"] == "upstream_failed" and states["cn-abort.rollback"] == "success"
    status = fleet("cn-abort")
    assert status["version"] == OLD and status["idle"] is None
    aborted = [e for e in ledger.events("canary-abort", run_id) if e.kind == "aborted"]
    assert [(e.actor, e.details["reason"]) for e in aborted] == [("approver", "checkout errors reported by support")]
    evidence = rollback_evidence(stack, author, dag, run_id, "cn-abort", "canary-abort")
    assert "aborted by approver" in evidence["postmortem"]


def test_blue_green_switches_back_when_the_post_promotion_analysis_fails(stack, author, fleet, ledger, rollouts):
    dag, run_id = "release_bluegreen", rollouts["bluegreen"]
    run = author.wait_for_run(dag, run_id, timeout=300)
    states = author.task_states(dag, run_id)
    assert run["state"] == "failed", states
    assert states["bg.analysis"] == "success" and states["bg.promote"] == "success"  # preview traffic was fine
    assert states["bg.watch"] == "failed" and states["bg.rollback"] == "success"
    status = fleet("bg")
    assert status["version"] == OLD and status["idle"]["version"] == NEW and status["idle"]["weight"] == 0
    assert served_versions(stack, "bg") == {OLD}
    assert [h["kind"] for h in status["history"][-3:]] == ["deploy_idle", "promote", "promote"]  # switch, switch back
    outcomes = [
        (e.details["stage"], e.details["outcome"]) for e in ledger.events("bluegreen", run_id) if e.kind == "analysis"
    ]
    assert outcomes == [("pre-promotion", "successful"), ("post-promotion", "failed")]
    evidence = rollback_evidence(stack, author, dag, run_id, "bg", "bluegreen")
    assert evidence["restored"]["action"] == "switched back to the previous colour"


def test_the_manual_rollback_dag_returns_to_the_last_good_version_over_rest(
    stack, author, admin, approver, fleet, ledger, rollouts
):
    author.wait_for_run("release_canary", rollouts["canary"], timeout=300)
    assert fleet("cn-ok")["version"] == NEW
    # a wrong environment is refused by the form's schema (HTTP 400), nothing runs
    from releasetrain.client import AirflowAPIError

    with pytest.raises(AirflowAPIError) as bad:
        admin.trigger("rollback_canary", {"environment": "nowhere", "reason": "incident 4711: errors"})
    assert bad.value.status_code == 400
    run_id = admin.trigger("rollback_canary", {"environment": "cn-ok", "reason": "incident 4711: checkout errors"})[
        "dag_run_id"
    ]
    # the rollback is an emergency change: it ends with a review by someone other than admin
    review = admin.wait_for_approval("rollback_canary", run_id, "rollback_review", timeout=300)
    assert "admin" not in [u["id"] for u in review["assigned_users"]]
    assert fleet("cn-ok")["version"] == OLD, "rolled back before the review is asked"
    findings = {"findings": "checkout error rate back to normal after the rollback"}
    assert approver.answer("rollback_canary", run_id, "rollback_review", "Reviewed", params_input=findings) == "success"
    run = admin.wait_for_run("rollback_canary", run_id, timeout=300)
    assert run["state"] == "success", admin.task_states("rollback_canary", run_id)
    plan = admin.xcom("rollback_canary", run_id, "plan")
    assert (plan["from_version"], plan["version"], plan["requested_by"]) == (NEW, OLD, "admin")
    status = fleet("cn-ok")
    assert status["version"] == OLD and status["healthy"] is True
    deadline = time.monotonic() + 30
    while True:
        events = ledger.events("canary", run_id)
        kinds = [e.kind for e in events]
        if "run_state" in kinds:
            break
        assert time.monotonic() < deadline, kinds  # the listener records the run's end
        time.sleep(1)
    assert (
        kinds.index("rollback_requested") < kinds.index("rollback") < kinds.index("review") < kinds.index("run_state")
    )
    requested = next(e for e in events if e.kind == "rollback_requested")
    assert requested.actor == "admin" and requested.details["reason"] == "incident 4711: checkout errors"
    assert requested.details["change"]["change_type"] == "emergency"
    change = [e.details["state"] for e in events if e.kind.startswith("change_")]
    assert change[0] == "new" and change[-1] == "closed", change
    assert ledger.verify().ok
