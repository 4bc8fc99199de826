"""Issue 14 (trends drive procedure): a release rolled back in the last 30 days soaks in
staging before it may pass and needs one production approval more, and its approvers are
shown the trend; a soak set to success by hand over REST proves nothing."""

from __future__ import annotations

import datetime

import pytest

from tests.e2e.records import the_refusal

# long scenarios: make test-extended (CI runs them after make test)
pytestmark = [pytest.mark.e2e, pytest.mark.extended]

DAG, STG, PROD = "release_trendy", "trend-stg", "trend-prod"


def at(event) -> datetime.datetime:
    return datetime.datetime.fromisoformat(event.at.replace("Z", "+00:00"))


def test_a_recent_rollback_adds_a_soak_and_an_approval_and_a_soak_set_by_hand_proves_nothing(
    author, approver, approver2_client, fleet, ledger
):
    # history: 1.0.1 fails in production and is rolled back (its change closes unsuccessful)
    fleet.post("/faults", {"environment": PROD, "version": "1.0.1", "error_rate": 1.0})
    first = author.trigger(DAG, {"version": "1.0.1", "change_summary": "trendy 1.0.1"})["dag_run_id"]
    request = approver.wait_for_approval(DAG, first, f"{PROD}.approve")
    assert "Recent trend" in request["body"] and "0 rollback(s) in 30 days" in request["body"]
    assert approver.answer(DAG, first, f"{PROD}.approve", "Approve") == "success"
    assert author.wait_for_run(DAG, first, timeout=300)["state"] == "failed"
    states = author.task_states(DAG, first)
    assert (states[f"{PROD}.rollback"], states[f"{PROD}.approve_2"]) == ("success", "skipped"), states
    [calm] = [e.details for e in ledger.events("trendy", first) if e.kind == "soaked"]
    assert calm["minutes"] == 0 and calm["reason"] == "no trend rule asks for a soak"

    # now the trend: a soak in trend-stg and a second production approval
    second = author.trigger(DAG, {"version": "1.0.2", "change_summary": "trendy 1.0.2"})["dag_run_id"]
    assert author.wait_for_task(DAG, second, f"{STG}.soak", ("deferred",), timeout=300) == "deferred"

    [risk] = [e.details for e in ledger.events("trendy", second) if e.kind == "risk_assessed"]
    assert risk["trend"] == {"rollbacks_30": 1, "rollbacks_90": 1, "failed_changes_30": 1, "failed_changes_90": 1}
    [rule] = risk["trend_rules"]
    assert rule["when"] == "1 or more rollbacks in 30 days" and rule["counted"] == 1
    assert risk["gates"][PROD]["quorum"] == 2, "the spec's quorum of 1, plus the trend's extra approval"

    request = approver.wait_for_approval(DAG, second, f"{PROD}.approve")
    assert "1 rollback(s) in 30 days" in request["body"] and "1 failed change(s) in 30 days" in request["body"]
    assert "policy: 1 or more rollbacks in 30 days (counted 1)" in request["body"]
    events = ledger.events("trendy", second)
    [deployed] = [e for e in events if e.kind == "deployed" and e.environment == STG]
    [soaked] = [e for e in events if e.kind == "soaked"]
    assert soaked.details["minutes"] == 0.25 and (at(soaked) - at(deployed)).total_seconds() >= 15
    [passed] = [e for e in events if e.kind == "environment_passed" and e.environment == STG]
    assert at(passed) >= at(soaked), "trend-stg passed only after its soak"

    assert approver.answer(DAG, second, f"{PROD}.approve", "Approve") == "success"
    second_request = approver2_client.wait_for_approval(DAG, second, f"{PROD}.approve_2")
    assert sorted(u["id"] for u in second_request["assigned_users"]) == ["approver2", "secops"], (
        "one person never counts twice"
    )
    assert approver2_client.answer(DAG, second, f"{PROD}.approve_2", "Approve") == "success"
    assert author.wait_for_run(DAG, second, timeout=300)["state"] == "success"
    assert fleet(PROD)["version"] == "1.0.2"

    # the attack: a third run's soak set to success by hand over REST while it waits
    third = author.trigger(DAG, {"version": "1.0.3", "change_summary": "trendy 1.0.3"})["dag_run_id"]
    assert author.wait_for_task(DAG, third, f"{STG}.soak", ("deferred",), timeout=300) == "deferred"
    author.set_task_state(DAG, third, f"{STG}.soak", "success")
    assert author.wait_for_run(DAG, third, timeout=300)["state"] == "failed"
    states = author.task_states(DAG, third)
    assert (states[f"{STG}.passed"], states[f"{PROD}.deploy"]) == ("failed", "upstream_failed"), states
    reason = the_refusal(ledger.events("trendy", third))
    assert f"{STG}.soak" in reason and "'soaked'" in reason and "by hand" in reason
    assert fleet(PROD)["version"] == "1.0.2"
