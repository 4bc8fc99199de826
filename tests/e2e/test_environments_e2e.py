"""Issue 13 (environments): configuration drift blocks a promotion until an owner accepts it.

``drifty`` deploys its profile to ``drift-env``; then the environment's settings are
changed by hand (the demo fleet's ``POST config``). The next release's ``drift`` step finds
the difference against the baseline, records it, and asks the environment's approver (never
the release's author) to accept it: a rejection stops the promotion, the step marked success
by hand proves nothing to the deploy, an acceptance lets it go on, with who accepted what.
"""

from __future__ import annotations

import pytest

from releasetrain.client import AirflowAPIError
from tests.e2e.records import the_decision, the_refusal

# long scenarios: make test-extended (CI runs them after make test)
pytestmark = [pytest.mark.e2e, pytest.mark.extended]

DAG, ENV = "release_drifty", "drift-env"
DRIFT, DEPLOY = f"{ENV}.drift", f"{ENV}.deploy"


def events(ledger, run_id: str, kind: str) -> list:
    return [e for e in ledger.events("drifty", run_id, DAG) if e.kind == kind]


def test_drift_stops_the_promotion_until_an_owner_accepts_it(author, approver, fleet, ledger):
    first = author.trigger(DAG, {"version": "1.0.0", "change_summary": "first"})["dag_run_id"]
    assert author.wait_for_run(DAG, first, timeout=300)["state"] == "success", author.task_states(DAG, first)
    assert fleet(ENV)["config"]["values"] == {"LOG_LEVEL": "info", "POOL_SIZE": 8}
    [checked] = events(ledger, first, "drift_checked")
    assert checked.details["drift"] == []

    # someone changes the environment by hand, outside any release
    fleet.post(f"/environments/{ENV}/config", {"values": {"LOG_LEVEL": "debug", "DEBUG_TOOLBAR": True}})
    rejected = author.trigger(DAG, {"version": "1.1.0", "change_summary": "over a drift"})["dag_run_id"]
    request = author.wait_for_approval(DAG, rejected, DRIFT, timeout=300)
    assert [u["id"] for u in request["assigned_users"]] == ["approver"]
    assert 'LOG\\_LEVEL: "info" in the baseline, "debug" on the target' in request["body"]
    assert "DEBUG\\_TOOLBAR: true on the target, not in the baseline" in request["body"]
    with pytest.raises(AirflowAPIError) as refused:
        author.respond(DAG, rejected, DRIFT, "Accept the drift")
    assert refused.value.status_code == 403, "the release's author cannot accept a drift"
    assert approver.answer(DAG, rejected, DRIFT, "Reject") == "failed"
    assert author.wait_for_run(DAG, rejected, timeout=300)["state"] == "failed"
    assert author.task_states(DAG, rejected)[DEPLOY] == "upstream_failed"
    # one record per try: Airflow may retry a HITL step answered very fast (see the operator)
    detected = events(ledger, rejected, "drift_detected")
    assert detected and all(d.details["drift"] == detected[0].details["drift"] for d in detected)
    assert len(detected[-1].details["drift"]) == 2 and detected[-1].details["baseline"]["version"] == "1"
    reason = the_refusal(events(ledger, rejected, "gate_refused"))
    assert f"configuration drift in {ENV} rejected by approver" in reason

    # the drift step marked successful by hand: the deploy finds no record of it and refuses
    by_hand = author.trigger(DAG, {"version": "1.2.0", "change_summary": "drift by hand"})["dag_run_id"]
    author.wait_for_approval(DAG, by_hand, DRIFT, timeout=300)
    author.set_task_state(DAG, by_hand, DRIFT, "success")
    assert author.wait_for_run(DAG, by_hand, timeout=300)["state"] == "failed"
    assert author.task_states(DAG, by_hand)[DEPLOY] == "failed"
    [reason] = [" ".join(e.details["reasons"]) for e in events(ledger, by_hand, "gate_refused")]
    assert f"{DRIFT} found configuration drift in {ENV} that nobody accepted" in reason
    assert "set to success by hand, which proves nothing" in reason
    assert fleet(ENV)["version"] == "1.0.0", "neither run deployed over the drift"

    accepted = author.trigger(DAG, {"version": "1.3.0", "change_summary": "drift accepted"})["dag_run_id"]
    author.wait_for_approval(DAG, accepted, DRIFT, timeout=300)
    assert approver.answer(DAG, accepted, DRIFT, "Accept the drift") == "success"
    assert author.wait_for_run(DAG, accepted, timeout=300)["state"] == "success"
    record = the_decision(events(ledger, accepted, "drift_accepted"), "drift_accepted")  # the fast-answer race
    assert record.actor == "approver" and len(record.details["drift"]) == 2
    status = fleet(ENV)
    assert status["version"] == "1.3.0"
    assert status["config"]["values"] == {"LOG_LEVEL": "info", "POOL_SIZE": 8}, "the deploy restored the profile"


# --- baselines under change control --------------------------------------------------------
CAB_DAG, CAB_ENV = "release_baselined", "cab-env"
BASELINE, CAB_DEPLOY = f"{CAB_ENV}.baseline", f"{CAB_ENV}.deploy"


def test_a_profile_is_deployed_only_after_the_change_advisory_board_approved_it(
    stack, author, approver2_client, fleet, ledger
):
    from releasetrain.client import AirflowClient

    ops = AirflowClient(stack.config.api_url, "ops", "ops")

    def kinds(run_id: str, kind: str) -> list:
        return [e for e in ledger.events("baselined", run_id, CAB_DAG) if e.kind == kind]

    # the board's step marked successful by hand: the deploy finds no approval and refuses
    by_hand = author.trigger(CAB_DAG, {"version": "1.0.0", "change_summary": "first profile"})["dag_run_id"]
    request = author.wait_for_approval(CAB_DAG, by_hand, BASELINE, timeout=300)
    assert sorted(u["id"] for u in request["assigned_users"]) == ["approver2", "ops"]
    assert "first profile under change control" in request["body"]
    assert "DB\\_PASSWORD \\(secret\\): new, from connection storefront\\_db\\_dev" in request["body"]
    with pytest.raises(AirflowAPIError) as refused:
        author.respond(CAB_DAG, by_hand, BASELINE, "Approve the profile")
    assert refused.value.status_code == 403, "the release's author is no member of the board"
    author.set_task_state(CAB_DAG, by_hand, BASELINE, "success")
    assert author.wait_for_run(CAB_DAG, by_hand, timeout=300)["state"] == "failed"
    assert author.task_states(CAB_DAG, by_hand)[CAB_DEPLOY] == "failed"
    [reason] = [" ".join(e.details["reasons"]) for e in kinds(by_hand, "gate_refused")]
    assert f"the configuration profile of {CAB_ENV}" in reason and "no approval of the change advisory board" in reason
    assert "set to success by hand, which proves nothing" in reason
    assert fleet(CAB_ENV)["version"] is None, "nothing was deployed"

    rejected = author.trigger(CAB_DAG, {"version": "1.0.1", "change_summary": "rejected"})["dag_run_id"]
    author.wait_for_approval(CAB_DAG, rejected, BASELINE, timeout=300)
    assert ops.answer(CAB_DAG, rejected, BASELINE, "Reject") == "failed"
    assert author.wait_for_run(CAB_DAG, rejected, timeout=300)["state"] == "failed"
    reason = the_refusal(kinds(rejected, "gate_refused"))
    assert f"profile 2026.11-1 of {CAB_ENV} rejected by ops (change-advisory-board)" in reason

    approved = author.trigger(CAB_DAG, {"version": "1.1.0", "change_summary": "approved"})["dag_run_id"]
    author.wait_for_approval(CAB_DAG, approved, BASELINE, timeout=300)
    assert approver2_client.answer(CAB_DAG, approved, BASELINE, "Approve the profile") == "success"
    assert author.wait_for_run(CAB_DAG, approved, timeout=300)["state"] == "success"
    [record] = kinds(approved, "baseline_approved")
    assert record.actor == "approver2" and record.details["board"] == "change-advisory-board"
    assert record.details["secrets"] == {"DB_PASSWORD": {"connection": "storefront_db_dev"}}, "references only"
    status = fleet(CAB_ENV)
    assert status["version"] == "1.1.0" and status["config"]["sha256"] == record.details["sha256"]

    # the same profile in a later run: the board's approval stands, nobody is asked
    again = author.trigger(CAB_DAG, {"version": "1.2.0", "change_summary": "same profile"})["dag_run_id"]
    assert author.wait_for_run(CAB_DAG, again, timeout=300)["state"] == "success"
    [checked] = kinds(again, "baseline_checked")
    assert checked.details["approved_by"] == "approver2" and checked.details["approved_in"] == approved
    assert not kinds(again, "baseline_change_requested")


# --- the parallel test stage -----------------------------------------------------------------
SUITE_DAG = "release_suited"
API, JOURNEYS = "suite-dev.tests_api", "suite-dev.tests_journeys"


def test_suites_do_not_hold_up_the_next_environment_but_production_waits_for_them(author, fleet, ledger):
    def kinds(run_id: str, kind: str) -> list:
        return [e for e in ledger.events("suited", run_id, SUITE_DAG) if e.kind == kind]

    # 1.0.0 is broken in suite-dev (every application request fails; its version page answers)
    fleet.post("/faults", {"environment": "suite-dev", "version": "1.0.0", "error_rate": 1.0})
    failing = author.trigger(SUITE_DAG, {"version": "1.0.0", "change_summary": "suites fail"})["dag_run_id"]
    assert author.wait_for_run(SUITE_DAG, failing, timeout=300)["state"] == "failed"
    states = author.task_states(SUITE_DAG, failing)
    assert states[API] == "failed" and states[JOURNEYS] == "failed", states
    assert states["suite-staging.passed"] == "success", "staging did not wait for dev's suites"
    assert states["suite-prod.verify"] == "upstream_failed" and states["suite-prod.deploy"] == "upstream_failed"
    assert fleet("suite-staging")["version"] == "1.0.0" and fleet("suite-prod")["version"] is None
    failed = {e.details["suite"]: e.details["failures"] for e in kinds(failing, "tests_failed")}
    assert sorted(failed) == ["api", "journeys"] and failed["api"][0].startswith("cart answers:")

    # a suite marked successful by hand before it ran: production's deploy asks the ledger
    skipped = author.trigger(SUITE_DAG, {"version": "1.0.1", "change_summary": "suite by hand"})["dag_run_id"]
    author.set_task_state(SUITE_DAG, skipped, API, "success")
    assert author.wait_for_run(SUITE_DAG, skipped, timeout=300)["state"] == "failed"
    states = author.task_states(SUITE_DAG, skipped)
    assert states[JOURNEYS] == "success" and states["suite-prod.deploy"] == "failed", states
    [reason] = [" ".join(e.details["reasons"]) for e in kinds(skipped, "gate_refused")]
    assert f"no test suite result recorded in the ledger by {API} in this run" in reason
    assert JOURNEYS not in reason, "the suite that ran and passed holds nothing up"
    assert fleet("suite-prod")["version"] is None, "production got nothing the suites did not pass"

    passing = author.trigger(SUITE_DAG, {"version": "1.1.0", "change_summary": "suites pass"})["dag_run_id"]
    assert author.wait_for_run(SUITE_DAG, passing, timeout=300)["state"] == "success"
    assert sorted(e.details["suite"] for e in kinds(passing, "tests_passed")) == ["api", "journeys"]
    assert fleet("suite-prod")["version"] == "1.1.0"
