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


def test_a_rollback_asks_its_owners_for_a_blameless_postmortem_that_the_evidence_keeps(
    stack, author, fleet, ledger, tmp_path
):
    """Issue 14: after a rollback the owners (operations) are asked for a blameless review
    beside it: the environment is back and unlocked while they think, the change record waits
    in Review, the answer closes it and is in the evidence; a review nobody gives is recorded
    overdue at its deadline and the change closes without it."""
    from releasetrain.client import AirflowClient

    dag, task = "release_postmortem", "pm-env.postmortem"
    ops = AirflowClient(stack.config.api_url, "ops", "ops")

    def change_states(run_id: str) -> list[str]:
        kinds = ("change_opened", "change_transition", "change_closed")
        return [e.details.get("state") for e in ledger.events("postmortem", run_id) if e.kind in kinds]

    fleet.post("/faults", {"environment": "pm-env", "version": "2.0.0", "error_rate": 1.0})
    run_id = author.trigger(dag, {"version": "2.0.0", "change_summary": "pm 2.0.0"})["dag_run_id"]
    request = author.wait_for_approval(dag, run_id, task)
    states = author.task_states(dag, run_id)
    assert (states["pm-env.rollback"], states["pm-env.unlock"]) == ("success", "success"), "nothing waits for it"
    assert fleet("pm-env")["version"] == "1.0.0"
    assert sorted(u["id"] for u in request["assigned_users"]) == ["admin", "ops"]
    assert change_states(run_id)[-1] == "review" and author.run(dag, run_id)["state"] == "running"
    answer = {
        "findings": "2.0.0 answered every health request with errors; the smoke check caught it in 40 s.",
        "contributing_causes": "no error-rate check in staging\n  the release skipped staging  ",
        "actions": "add a staging environment to the release (release team)",
    }
    with pytest.raises(AirflowAPIError) as refused:  # not one of the owners
        author.respond(dag, run_id, task, "Postmortem reviewed", params_input=answer)
    assert refused.value.status_code == 403
    assert ops.answer(dag, run_id, task, "Postmortem reviewed", params_input=answer) == "success"
    assert author.wait_for_run(dag, run_id)["state"] == "failed", "a rollback is never a green release"
    assert change_states(run_id)[-2:] == ["review", "closed"]

    out = tmp_path / "evidence.json"
    export = releasetrain(stack, "evidence", "postmortem", run_id, "--out", str(out))
    assert export.returncode == 0, export.stderr
    [review] = json.loads(out.read_text())["summary"]["postmortems"]
    assert (review["kind"], review["actor"], review["environment"]) == ("postmortem_reviewed", "ops", "pm-env")
    assert review["contributing_causes"] == "no error-rate check in staging\nthe release skipped staging"
    assert review["findings"] == answer["findings"] and review["actions"] == answer["actions"]
    assert (
        releasetrain(stack, "evidence", "verify", str(out), "--key-conn", "releasetrain_evidence_signing").returncode
        == 0
    )

    # nobody answers the next one: overdue at its deadline (a minute), recorded, the change closes
    fleet.post("/faults", {"environment": "pm-env", "version": "2.0.1", "error_rate": 1.0})
    late = author.trigger(dag, {"version": "2.0.1", "change_summary": "pm 2.0.1"})["dag_run_id"]
    assert author.wait_for_run(dag, late, timeout=420)["state"] == "failed"
    assert author.task_states(dag, late)[task] == "failed"
    [overdue] = [e for e in ledger.events("postmortem", late) if e.kind == "postmortem_overdue"]
    assert overdue.details["deadline_minutes"] == 1 and overdue.environment == "pm-env"
    assert change_states(late)[-2:] == ["review", "closed"]


def test_an_alert_during_the_watch_rolls_the_release_back_and_every_change_is_marked(stack, author, fleet, ledger):
    """Issue 14: Alertmanager posts an alert for alert-env while the deploy is watched: it is
    attached to the release run and rolls it back; the deploy and the rollback are annotations
    on the deployment's Grafana (the local annotations server) and in the ledger."""
    import datetime

    import requests

    from tests.e2e.session import ALERT_TOKEN, GRAFANA_TOKEN

    dag, env = "release_alerted", "alert-env"
    run_id = author.trigger(dag, {"version": "2.0.0", "change_summary": "alerted 2.0.0"})["dag_run_id"]
    assert author.wait_for_task(dag, run_id, f"{env}.alerts", ("deferred",), timeout=300) == "deferred"
    now = datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")
    body = {
        "version": "4",
        "status": "firing",
        "receiver": "releasetrain",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "CheckoutErrors", "environment": env, "severity": "page"},
                "annotations": {"summary": "checkout 5xx above 5%"},
                "startsAt": now,
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": "8c1a2b",
            }
        ],
    }
    url = f"{stack.config.api_url}/releasetrain/alerts/alertmanager"
    assert requests.post(url, json=body, timeout=30).status_code == 401
    assert requests.post(url, json=body, headers={"Authorization": "Bearer guess"}, timeout=30).status_code == 401
    token = {"Authorization": f"Bearer {ALERT_TOKEN}"}
    malformed = requests.post(url, json={"alerts": [{"status": "firing"}]}, headers=token, timeout=30)
    assert malformed.status_code == 400 and "alerts[0].labels" in malformed.text
    posted = requests.post(url, json=body, headers=token, timeout=30)
    assert posted.status_code == 200, posted.text
    [attached] = posted.json()["attached"]
    assert (attached["release"], attached["run_id"], attached["deployed_version"]) == ("alerted", run_id, "2.0.0")
    again = requests.post(url, json=body, headers=token, timeout=30)
    assert again.json()["attached"] == [], "the same alert is attached once"

    assert author.wait_for_run(dag, run_id, timeout=300)["state"] == "failed"
    states = author.task_states(dag, run_id)
    assert (states[f"{env}.alerts"], states[f"{env}.rollback"], states[f"{env}.passed"]) == (
        "failed",
        "success",
        "upstream_failed",
    )
    assert fleet(env)["version"] == "1.0.0"
    [received] = [e for e in ledger.events("alerted", run_id) if e.kind == "alert_received"]
    assert received.details["alert"] == "CheckoutErrors" and received.details["minutes_after_deploy"] < 2
    assert received.details["labels"]["severity"] == "page" and received.actor == "alertmanager"

    marked = requests.get(
        f"{stack.grafana_url}/api/annotations",
        params={"tags": ["release:alerted"]},
        headers={"Authorization": f"Bearer {GRAFANA_TOKEN}"},
        timeout=10,
    ).json()
    texts = sorted(a["text"] for a in marked if run_id in a["text"])
    assert texts == sorted(
        [f"alerted 2.0.0 deployed to {env} (run {run_id})", f"alerted rolled back in {env} to 1.0.0 (run {run_id})"]
    )
    annotated = [e.details for e in ledger.events("alerted", run_id) if e.kind == "annotated"]
    assert sorted(a["of"] for a in annotated) == ["deployed", "rollback"] and all(a.get("id") for a in annotated)
