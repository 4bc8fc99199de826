"""Issue 11, finding 6: application checks run as the application's user, not as the deployer."""

from __future__ import annotations

import asyncio

from releasetrain.core.checks import render_check
from releasetrain.core.spec import HttpCheck
from releasetrain.hooks.http_check import HttpCheckHook
from tests.helpers import http_connection, running_fleet


def test_checks_reach_the_application_without_the_deploy_credentials(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        # the connection carries the deploy credentials; the fleet's app routes need none
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        hook = HttpCheckHook("t_prod")
        ok = HttpCheck(name="serves", endpoint="app/version", expect_json={"version": "1.0.0"})
        assert hook.run_check(ok).passed
        assert asyncio.run(hook.arun_check(ok)).passed
        # the deploy API itself needs the credentials, which checks never send
        status = HttpCheck(name="status", endpoint="health", expect_status=200)
        assert hook.run_check(status).passed


def test_a_check_can_never_call_the_targets_api(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        hook = HttpCheckHook("t_prod")
        for endpoint in ("promote", "app/../promote", "app/%2e%2e/rollback"):
            check = HttpCheck(name="steered", endpoint=endpoint, method="POST")
            result = hook.run_check(check)
            assert not result.passed and "not sent" in "; ".join(result.failures), endpoint
        # a value put into an endpoint is one encoded segment
        rendered = render_check(HttpCheck(name="v", endpoint="app/${version}"), {"version": "../../promote"})
        assert rendered.endpoint == "app/..%2F..%2Fpromote"
        assert not hook.run_check(rendered).passed
        assert fleet.deployments == {} and fleet.env("prod")["version"] == "1.0.0"
