"""Issue 13 (scope): after the scope freeze, other contents need an exception.

``frozen`` freezes its scope once a run passed ``frozen-dev``. The first run passes it (and
is stopped at production's approval, so the release's cycle goes on). A run with another
version then waits at ``scope`` for an exception: the author may not grant it (403), the step
marked success by hand deploys nothing, and production's approver grants it with a reason,
recorded with the changes; the run then deploys.
"""

from __future__ import annotations

import pytest

from releasetrain.client import AirflowAPIError
from tests.e2e.records import the_refusal

# long scenarios: make test-extended (CI runs them after make test)
pytestmark = [pytest.mark.e2e, pytest.mark.extended]

DAG, SCOPE = "release_frozen", "scope"
DEV, PROD = "frozen-dev", "frozen-prod"


def test_contents_changed_after_the_freeze_need_an_exception_from_someone_else(author, approver, fleet, ledger):
    def kinds(run_id: str, kind: str) -> list:
        return [e for e in ledger.events("frozen", run_id, DAG) if e.kind == kind]

    def stopped_at_production(run_id: str) -> None:
        author.wait_for_approval(DAG, run_id, f"{PROD}.approve", timeout=300)
        approver.answer(DAG, run_id, f"{PROD}.approve", "Reject")
        assert author.wait_for_run(DAG, run_id, timeout=300)["state"] == "failed"

    first = author.trigger(DAG, {"version": "1.0.0", "change_summary": "before the freeze"})["dag_run_id"]
    stopped_at_production(first)
    [checked] = kinds(first, "scope_checked")
    assert checked.details["outcome"] == "open" and fleet(DEV)["version"] == "1.0.0"

    # frozen now (1.0.0 passed frozen-dev): the step marked success by hand deploys nothing
    by_hand = author.trigger(DAG, {"version": "1.0.1", "change_summary": "a late fix"})["dag_run_id"]
    request = author.wait_for_approval(DAG, by_hand, SCOPE, timeout=300)
    assert [u["id"] for u in request["assigned_users"]] == ["approver"]
    assert "frozen\\-web: 1\\.0\\.1, frozen at 1\\.0\\.0" in request["body"]
    with pytest.raises(AirflowAPIError) as refused:
        author.respond(DAG, by_hand, SCOPE, "Grant the exception", params_input={"reason": "my own fix, trust me"})
    assert refused.value.status_code == 403, "the author cannot grant their own exception"
    author.set_task_state(DAG, by_hand, SCOPE, "success")
    assert author.wait_for_run(DAG, by_hand, timeout=300)["state"] == "failed"
    assert author.task_states(DAG, by_hand)[f"{DEV}.deploy"] == "failed"
    [reason] = [" ".join(e.details["reasons"]) for e in kinds(by_hand, "gate_refused")]
    assert "the contents changed after the scope freeze (frozen-web: 1.0.1, frozen at 1.0.0)" in reason
    assert "set to success by hand, which proves nothing" in reason
    assert fleet(DEV)["version"] == "1.0.0", "nothing out of scope was deployed"

    granted = author.trigger(DAG, {"version": "1.0.1", "change_summary": "the late fix, granted"})["dag_run_id"]
    author.wait_for_approval(DAG, granted, SCOPE, timeout=300)
    why = "payment timeout fix INC-4711 must ship with this release"
    assert approver.answer(DAG, granted, SCOPE, "Grant the exception", params_input={"reason": why}) == "success"
    stopped_at_production(granted)
    [exception] = kinds(granted, "scope_exception")
    assert exception.actor == "approver" and exception.details["reason"] == why
    assert exception.details["changes"] == ["frozen-web: 1.0.1, frozen at 1.0.0"]
    assert fleet(DEV)["version"] == "1.0.1"


def test_a_hotfix_goes_only_within_its_policy_decided_before_packaging(author, fleet, ledger):
    dag = "release_hotfixed"

    def kinds(run_id: str, kind: str) -> list:
        return [e for e in ledger.events("hotfixed", run_id, dag) if e.kind == kind]

    first = author.trigger(dag, {"version": "1.0.0", "change_summary": "the release"})["dag_run_id"]
    assert author.wait_for_run(dag, first, timeout=300)["state"] == "success", author.task_states(dag, first)

    hotfix = {"version": "1.0.1", "change_summary": "fix", "hotfix": True, "incident": "INC-100"}
    refused = author.trigger(dag, {**hotfix, "severity": "sev3"})["dag_run_id"]
    assert author.wait_for_run(dag, refused, timeout=300)["state"] == "failed"
    states = author.task_states(dag, refused)
    assert states["hotfix_policy"] == "failed" and states["package"] == "upstream_failed", states
    [decided] = kinds(refused, "hotfix_decided")
    assert decided.details["allowed"] is False and decided.details["changed"] == {"hot-api": "1.0.1"}
    assert decided.details["reasons"] == ["severity sev3 is not one a hotfix may be for (sev1, sev2)"]
    # the decision set to success by hand, packaging run again: it asks the ledger
    author.set_task_state(dag, refused, "hotfix_policy", "success")
    author.clear_tasks(dag, refused, ["package"], downstream=True)
    assert author.wait_for_run(dag, refused, timeout=300)["state"] == "failed"
    assert author.task_states(dag, refused)["package"] == "failed"
    reasons = [
        " ".join(e.details["reasons"]) for e in kinds(refused, "gate_refused") if e.details["step"] == "hotfix_policy"
    ]
    assert any("the hotfix policy refused this run" in r and "set to success by hand" in r for r in reasons), reasons
    assert not kinds(refused, "packaged") and fleet("hot-prod")["version"] == "1.0.0"

    allowed = author.trigger(dag, {**hotfix, "severity": "sev1"})["dag_run_id"]
    assert author.wait_for_run(dag, allowed, timeout=300)["state"] == "success", author.task_states(dag, allowed)
    [decided] = kinds(allowed, "hotfix_decided")
    assert decided.details["allowed"] is True and decided.details["incident"] == "INC-100"
    assert decided.details["production"] == {"hot-web": "1.0.0", "hot-api": "1.0.0"}
    assert fleet("hot-prod")["version"] == "1.0.1"


def test_a_hotfix_never_queues_behind_a_normal_run_waiting_in_a_gate(author, approver, fleet, ledger):
    dag, stg, prod = "release_trained", "train-stg", "train-prod"
    approve, lock = f"{prod}.approve", f"{prod}.lock"

    def kinds(run_id: str, kind: str) -> list:
        return [e for e in ledger.events("trained", run_id, dag) if e.kind == kind]

    normal = author.trigger(dag, {"version": "1.1.0", "change_summary": "the train"})["dag_run_id"]
    author.wait_for_approval(dag, normal, approve, timeout=300)
    # the next normal run waits for it in the train (deferred: no worker, no Airflow queue)
    queued = author.trigger(dag, {"version": "1.2.0", "change_summary": "the next train"})["dag_run_id"]
    assert author.wait_for_task(dag, queued, "admit", ("deferred",), timeout=180) == "deferred"

    # the hotfix goes beside the normal run waiting at production's approval
    fix = {"version": "1.0.1", "change_summary": "fix", "hotfix": True, "severity": "sev1", "incident": "INC-200"}
    hotfix = author.trigger(dag, fix)["dag_run_id"]
    author.wait_for_approval(dag, hotfix, approve, timeout=300)
    assert fleet(stg)["version"] == "1.0.1", "the hotfix passed staging while the train waited"
    [admitted] = kinds(hotfix, "run_admitted")
    assert admitted.details["lane"] == "hotfix" and admitted.details["kind"] == "hotfix"
    [held] = kinds(hotfix, "run_held")  # once its policy allowed it
    assert held.details["held"] == normal and held.details["why"] == "hotfix for INC-200 (sev1)"
    assert held.details["task_id"] == "hotfix_policy"

    # the normal run approved meanwhile: held at its lock (deferred) while the hotfix is underway
    assert approver.answer(dag, normal, approve, "Approve") == "success"
    assert author.wait_for_task(dag, normal, lock, ("deferred",), timeout=180) == "deferred"
    [meets] = kinds(normal, "run_held")
    assert meets.details["by"] == hotfix and meets.environment == prod
    assert fleet(prod)["version"] is None, "nothing went to production before the hotfix"

    assert approver.answer(dag, hotfix, approve, "Approve") == "success"
    assert author.wait_for_run(dag, hotfix, timeout=300)["state"] == "success", author.task_states(dag, hotfix)
    assert fleet(prod)["version"] == "1.0.1"
    # the train, cut before the fix, is superseded: deploying it would take the fix out again
    assert author.wait_for_run(dag, normal, timeout=300)["state"] == "failed"
    states = author.task_states(dag, normal)
    assert states[lock] == "failed" and states[f"{prod}.deploy"] == "upstream_failed", states
    [superseded] = kinds(normal, "run_superseded")
    assert superseded.details["by"] == hotfix and superseded.details["environment"] == prod
    reason = the_refusal(kinds(normal, "gate_refused"))
    assert f"superseded by hotfix run {hotfix} (hotfix for INC-200 (sev1))" in reason
    assert "with trained-web 1.0.1, which this run's bundle does not carry" in reason
    assert fleet(prod)["version"] == "1.0.1"

    # the next train, admitted once the superseded one ended and cut after the fix, goes on
    author.wait_for_approval(dag, queued, approve, timeout=300)
    assert approver.answer(dag, queued, approve, "Approve") == "success"
    assert author.wait_for_run(dag, queued, timeout=300)["state"] == "success", author.task_states(dag, queued)
    assert fleet(prod)["version"] == "1.2.0"
    [ended] = [e for e in kinds(normal, "run_state") if e.details.get("state") == "failed"]
    [next_admitted] = kinds(queued, "run_admitted")
    assert next_admitted.details["lane"] == "normal" and next_admitted.seq > ended.seq
    assert not kinds(queued, "run_superseded")
