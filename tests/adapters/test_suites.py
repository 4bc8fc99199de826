"""Test suites after a deploy: each records its result in the ledger (what production's
deploy and the release's completion ask), a failure naming the failed checks."""

from __future__ import annotations

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from releasetrain.operators.checks import TestSuiteOperator
from releasetrain.operators.deploy import EnvironmentDeployOperator
from tests.helpers import FakeTI, context, http_connection, run_events, running_fleet, seed

DIGEST = "sha256:" + "c" * 64


def suite_op() -> TestSuiteOperator:
    return TestSuiteOperator(
        task_id="dev.tests_api",
        release="storefront",
        environment="dev",
        suite="api",
        deploy_task_id="dev.deploy",
        http_conn_id="t_dev",
        checks=[
            {"name": "serves it", "endpoint": "app/version", "expect_json": {"version": "${version}"}},
            {"name": "cart answers", "endpoint": "app/cart", "expect_json": {"ok": True}},
        ],
    )


def test_a_suite_records_its_result_and_a_failure_names_the_failed_checks(monkeypatch):
    with running_fleet(seed={"dev": "2.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_DEV", http_connection(f"{url}/environments/dev"))
        seed("deployed", environment="dev", task_id="dev.deploy", version="2.0.0", digest=DIGEST)
        result = suite_op().execute(context(FakeTI(), task_id="dev.tests_api"))
        assert result["passed"] and [c["name"] for c in result["checks"]] == ["serves it", "cart answers"]
        fleet.faults[("dev", "2.0.0")] = {"error_rate": 1.0}
        with pytest.raises(AirflowException, match=r"dev: 1 of 2 test suite api checks failed: cart answers: .*500"):
            suite_op().execute(context(FakeTI(), task_id="dev.tests_api"))
    passed, failed = run_events("tests_passed"), run_events("tests_failed")
    assert [e.details["suite"] for e in passed + failed] == ["api", "api"]
    assert passed[0].details["digest"] == DIGEST and failed[0].details["failures"][0].startswith("cart answers:")
    assert not run_events("checks_passed"), "a suite is no smoke check"


def test_production_is_not_deployed_before_the_earlier_suites_passed(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        seed("verified", environment="prod", task_id="prod.verify", version="2.0.0", digest=DIGEST, verified=True)
        seed("tests_failed", environment="dev", task_id="dev.tests_api", digest=DIGEST, failures=["cart: HTTP 500"])
        seed("task_state", task_id="dev.tests_api", state="success", by_hand=True)

        def deploy():
            return EnvironmentDeployOperator(
                task_id="prod.deploy",
                release="storefront",
                environment="prod",
                deploy_target_conn_id="t_prod",
                verify_task_id="prod.verify",
                suite_task_ids=["dev.tests_api"],
            ).execute(context(FakeTI(), task_id="prod.deploy"))

        with pytest.raises(AirflowFailException, match=r"test suite dev.tests_api failed in dev \(cart: HTTP 500\)"):
            deploy()
        assert fleet.deployments == {}
        [refused] = run_events("gate_refused")
        assert "set to success by hand, which proves nothing" in refused.details["reasons"][0]
        seed("tests_passed", environment="dev", task_id="dev.tests_api", digest=DIGEST)  # cleared, run again, passed
        with pytest.raises(TaskDeferred):
            deploy()


def test_a_release_is_not_complete_while_a_suite_has_not_passed():
    from releasetrain.operators.complete import ReleaseCompleteOperator

    seed("packaged", task_id="package", digest=DIGEST)
    complete = ReleaseCompleteOperator(
        task_id="release_complete", release="storefront", gate_task_ids=[], suite_task_ids=["staging.tests_load"]
    )
    with pytest.raises(AirflowFailException, match="no test suite result recorded in the ledger by staging.tests_load"):
        complete.execute(context(FakeTI(), task_id="release_complete"))
    seed("tests_passed", environment="staging", task_id="staging.tests_load", digest=DIGEST)
    assert complete.execute(context(FakeTI(), task_id="release_complete"))["digest"] == DIGEST
