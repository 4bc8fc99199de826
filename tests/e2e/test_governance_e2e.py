"""Governance on real Airflow: quorum, readiness review, segregation of duties on REST and
clear, change record through the state model, ledger and evidence."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from releasetrain.client import AirflowAPIError

pytestmark = pytest.mark.e2e

DAG = "release_governed"


def assigned(client, run_id: str, task_id: str) -> list[str]:
    request = client.wait_for_approval(DAG, run_id, task_id)
    return [u["id"] for u in request["assigned_users"]]


def refused(client, run_id: str, task_id: str) -> int:
    with pytest.raises(AirflowAPIError) as info:
        client.respond(DAG, run_id, task_id, "Approve")
    return info.value.status_code


def releasetrain(stack, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "releasetrain", *args],
        env=stack.env(),
        cwd=stack.config.home,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_quorum_review_and_segregation_of_duties_end_to_end(stack, author, approver, admin, ledger, tmp_path):
    from releasetrain.client import AirflowClient

    url = stack.config.api_url
    approver2 = AirflowClient(url, "approver2", "approver2")
    ops = AirflowClient(url, "ops", "ops")
    run_id = author.trigger(DAG, {"version": "1.0.0", "requested_by": "approver2"})["dag_run_id"]

    # slot 1 and the operations review are asked in parallel; authors are never assigned
    assert assigned(author, run_id, "gov-prod.approve") == ["approver", "admin"]
    assert assigned(author, run_id, "gov-prod.review_operations") == ["ops", "admin"]
    risk = author.xcom(DAG, run_id, "assess_risk")
    assert risk["level"] == "moderate" and risk["gates"]["gov-prod"] == {"quorum": 2, "reviews": ["operations"]}
    assert author.task_states(DAG, run_id)["gov-prod.review_security"] == "skipped"  # not needed below high risk
    # the triggering user and requested_by are refused through REST
    assert refused(author, run_id, "gov-prod.approve") == 403
    assert refused(approver2, run_id, "gov-prod.approve") == 403
    assert approver.answer(DAG, run_id, "gov-prod.approve", "Approve") == "success"

    # the second approval goes to those who have not approved: the same user twice does not count
    assert assigned(author, run_id, "gov-prod.approve_2") == ["admin"]
    assert refused(approver, run_id, "gov-prod.approve_2") == 403
    assert admin.answer(DAG, run_id, "gov-prod.approve_2", "Approve") == "success"

    # the quorum is met, but the readiness review has not approved: nothing is deployed
    states = author.task_states(DAG, run_id)
    assert states["gov-prod.review_operations"] == "awaiting_input"
    assert states["gov-prod.deploy"] in (None, "none", "scheduled")
    # admin was asked for the review before approving slot 2; the review is refused at
    # response time (one person never counts twice), recorded, and asked again
    admin.respond(DAG, run_id, "gov-prod.review_operations", "Approve")
    author.wait_for_approval(DAG, run_id, "gov-prod.review_operations")
    refusals = [e for e in ledger.events("governed", run_id) if e.kind == "approval_refused"]
    assert [(e.actor, e.details["task_id"]) for e in refusals] == [("admin", "gov-prod.review_operations")]
    assert "already approved gov-prod.approve_2" in refusals[0].details["reason"]
    assert ops.answer(DAG, run_id, "gov-prod.review_operations", "Approve") == "success"

    # closure: the runbook update is recorded before the change record closes
    author.wait_for_approval(DAG, run_id, "closure")
    assert (
        author.answer(DAG, run_id, "closure", "OK", params_input={"runbook_update": "https://wiki/runbooks/gov#1.0.0"})
        == "success"
    )
    run = author.wait_for_run(DAG, run_id)
    assert run["state"] == "success", author.task_states(DAG, run_id)
    deployed = author.xcom(DAG, run_id, "gov-prod.deploy")
    packaged = author.xcom(DAG, run_id, "package")
    assert deployed["digest"] == packaged["digest"]

    # the ledger is intact, and the evidence bundle names both approvers with the digest
    verify = releasetrain(stack, "ledger", "verify")
    assert verify.returncode == 0, verify.stderr
    # anchored: the listener signs a checkpoint of the head with the ledger key as runs end
    assert "anchored up to event" in verify.stdout, verify.stdout
    out = tmp_path / "evidence.json"
    export = releasetrain(stack, "evidence", "governed", run_id, "--out", str(out))
    assert export.returncode == 0, export.stderr
    evidence = json.loads(out.read_text())
    approvals = {(a["approver"], a["group"], a["digest"]) for a in evidence["summary"]["approvals"]}
    assert approvals == {
        ("approver", None, packaged["digest"]),
        ("admin", None, packaged["digest"]),
        ("ops", "operations", packaged["digest"]),
    }
    walk = [t["state"] for t in evidence["summary"]["change_record"]["transitions"]]
    assert walk == ["new", "assess", "authorize", "scheduled", "implement", "review", "closed"]
    # the change record itself lives in ServiceNow and went through every state there
    change = evidence["summary"]["change_record"]
    assert change["backend"] == "servicenow" and change["number"].startswith("CHG")
    record = stack.servicenow.records[change["id"]]
    assert record["correlation_id"] == f"governed/release_governed/{run_id}" and record["close_code"] == "successful"
    assert stack.servicenow.walk(change["id"]) == [
        "New", "Assess", "Authorize", "Scheduled", "Implement", "Review", "Closed"
    ]  # fmt: skip
    assert evidence["summary"]["closure"]["runbook_update"] == "https://wiki/runbooks/gov#1.0.0"
    pinned = ("--key-conn", "releasetrain_evidence_signing")
    assert releasetrain(stack, "evidence", "verify", str(out), *pinned).returncode == 0
    # the evidence key is its own: the file verifies with neither the bundle key nor its own embedded key
    unpinned = releasetrain(stack, "evidence", "verify", str(out))
    assert unpinned.returncode == 1 and "no trusted public key" in unpinned.stderr
    assert releasetrain(stack, "evidence", "verify", str(out), "--key-conn", "releasetrain_signing").returncode == 1
    evidence["summary"]["approvals"][0]["approver"] = "mallory"
    out.write_text(json.dumps(evidence))
    assert releasetrain(stack, "evidence", "verify", str(out), *pinned).returncode == 1

    # clearing the approval does not reopen it to the author
    admin.request(
        "POST",
        f"/dags/{DAG}/clearTaskInstances",
        json={"dag_run_id": run_id, "task_ids": ["gov-prod.approve"], "only_failed": False, "dry_run": False},
    )
    assert "author" not in assigned(author, run_id, "gov-prod.approve")
    assert refused(author, run_id, "gov-prod.approve") == 403
    admin.request("PATCH", f"/dags/{DAG}/dagRuns/{run_id}", json={"state": "failed"})
    # the listener records what happened outside the tasks: the run success, then the hand-made failure
    # (queued off the API server's request: it lands a moment later)
    import time

    deadline = time.monotonic() + 30
    while True:
        states = [e.details["state"] for e in ledger.events("governed", run_id) if e.kind == "run_state"]
        if len(states) >= 2 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert states == ["success", "failed"]
    assert ledger.verify().ok


def test_a_rollback_is_told_by_audience_and_a_failed_one_to_everyone(stack, author, fleet, ledger):
    """Issue 14 (rollback communications): production's health fails and its rollback fails
    too (the old version cannot start again). On-call hears the start (with the backout
    estimate) and the failure; the business, which asked only for successes, hears the failure:
    a failed rollback is always told."""
    import time

    fleet.post("/faults", {"environment": "comms-env", "version": "2.0.0", "error_rate": 1.0})
    fleet.post("/faults", {"environment": "comms-env", "version": "1.0.0", "error_rate": 0.0, "fail_deploy": True})
    run_id = author.trigger("release_comms", {"version": "2.0.0", "change_summary": "comms 2.0.0"})["dag_run_id"]
    run = author.wait_for_run("release_comms", run_id, timeout=300)
    states = author.task_states("release_comms", run_id)
    assert run["state"] == "failed" and states["comms-env.rollback"] == "failed", states
    deadline = time.monotonic() + 30
    while not (failed := stack.receiver.bodies(release="comms", run_id=run_id, event="releasetrain.rollback.failed")):
        assert time.monotonic() < deadline, "no failed-rollback notification reached the receiver"
        time.sleep(1)
    assert sorted(b["audience"] for b in failed) == ["business", "on-call"]
    assert all("failed to start" in b["reason"] for b in failed), failed
    started = stack.receiver.bodies(release="comms", run_id=run_id, event="releasetrain.rollback.started")
    assert [(b["audience"], b["expected_minutes"], b["restore_to"]) for b in started] == [("on-call", 7, "1.0.0")]
    assert not stack.receiver.bodies(release="comms", run_id=run_id, event="releasetrain.rollback.succeeded")
    notified = [e.details for e in ledger.events("comms", run_id) if e.kind == "notified"]
    assert [(n["moment"], n["audiences"]) for n in notified] == [
        ("started", ["on-call"]),
        ("failed", ["business", "on-call"]),
    ]
