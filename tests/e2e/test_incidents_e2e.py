"""Issue 14 (incidents): a rollback's postmortem review asked of its owners and kept in the
evidence; alerts from Alertmanager attached to the deploys they follow, rolling one back
during its watch; every deploy and rollback marked on the deployment's Grafana."""

from __future__ import annotations

import json

import pytest

from releasetrain.client import AirflowAPIError
from tests.e2e.test_governance_e2e import releasetrain

pytestmark = pytest.mark.e2e


def test_a_rollback_asks_its_owners_for_a_blameless_postmortem_that_the_evidence_keeps(
    stack, author, fleet, ledger, tmp_path
):
    """Issue 14: after a rollback the owners (operations) are asked for a blameless review
    beside it: the environment is back and unlocked while they think, the change record waits
    in Review, the answer closes it and is in the evidence (the deadline passing is
    tests/adapters/test_postmortem.py's)."""
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


def test_a_version_that_converts_worse_is_rolled_back_by_its_session_watch(stack, author, fleet, ledger):
    """Issue 14 (user-session analysis): after a plain deploy, the share of sessions reaching
    checkout on the new version is compared with the old version's share before the deploy
    (Prometheus scraping the fleet's sessions); 2.0.0 converts a fifth as well: rolled back."""
    dag, env = "release_conversion", "sess-env"
    fleet.post("/faults", {"environment": env, "version": "2.0.0", "error_rate": 0, "conversion": 0.1})
    run_id = author.trigger(dag, {"version": "2.0.0", "change_summary": "conversion 2.0.0"})["dag_run_id"]
    assert author.wait_for_run(dag, run_id, timeout=300)["state"] == "failed"
    states = author.task_states(dag, run_id)
    assert (states[f"{env}.smoke"], states[f"{env}.watch"], states[f"{env}.rollback"]) == (
        "success",
        "failed",
        "success",
    ), states
    assert fleet(env)["version"] == "1.0.0"
    [analysis] = [e.details for e in ledger.events("conversion", run_id) if e.kind == "analysis"]
    assert analysis["outcome"] == "failed" and "checkout" in analysis["reason"]
    [metric] = analysis["measurements"][0]["metrics"]
    # the new version's share against the old version's, both counted from real sessions
    assert metric["canary"] < 0.25 < 0.35 < metric["baseline"], metric
    assert min(metric["samples"]) >= 60 and metric["p_value"] < 0.05

    # the change record is a Jira issue: walked through the workflow, closed as failed
    import requests

    from tests.e2e.session import JIRA_CREDENTIALS

    [opened] = [e.details for e in ledger.events("conversion", run_id) if e.kind == "change_opened"]
    key = opened["number"]
    assert opened["backend"] == "jira" and key.startswith("CHG-")
    walk = requests.get(f"{stack.jira_url}/_test/walk/{key}", auth=JIRA_CREDENTIALS, timeout=10).json()
    assert walk[0] == "New" and walk[-3:] == ["Implement", "Review", "Closed"], walk
    issue = requests.get(f"{stack.jira_url}/rest/api/2/issue/{key}", auth=JIRA_CREDENTIALS, timeout=10).json()
    assert issue["fields"]["resolution"] == {"name": "Failed"}
    assert "change-normal" in issue["fields"]["labels"]
