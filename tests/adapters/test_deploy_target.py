"""Hooks and triggers against the real demo fleet (a local HTTP server in a thread)."""

from __future__ import annotations

import asyncio

import pytest
import requests

from releasetrain.core.spec import HttpCheck
from releasetrain.hooks.deploy_target import DeployTargetError, DeployTargetHook
from releasetrain.hooks.http_check import HttpCheckHook
from releasetrain.triggers.deployment import DeploymentCompletionTrigger
from releasetrain.triggers.health import HealthVerificationTrigger
from tests.helpers import http_connection, running_fleet

DIGEST = "sha256:" + "a" * 64
AUTH = ("deployer", "s3cret-pass")


@pytest.fixture
def fleet(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}) as (state, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        monkeypatch.setenv("AIRFLOW_CONN_T_NOAUTH", http_connection(f"{url}/environments/prod", None))
        yield state, url


def first_event(trigger):
    async def run():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(asyncio.wait_for(run(), timeout=30))


def test_deploy_and_wait_through_the_trigger(fleet):
    hook = DeployTargetHook("t_prod")
    assert hook.get_status()["version"] == "1.0.0"
    started = hook.start_deployment(release="shop", version="2.0.0", digest=DIGEST, run_id="r1")
    assert started["state"] == "in_progress"
    trigger = DeploymentCompletionTrigger(
        deploy_target_conn_id="t_prod", deployment_id=started["deployment_id"], poll_interval=0.1, timeout_seconds=20
    )
    event = first_event(trigger)
    assert event["state"] == "succeeded" and event["deployment"]["version"] == "2.0.0"
    status = hook.get_status()
    assert (status["version"], status["digest"], status["previous_version"]) == ("2.0.0", DIGEST, "1.0.0")


def test_redeploying_the_live_version_is_a_noop(fleet):
    hook = DeployTargetHook("t_prod")
    dep = hook.start_deployment(release="shop", version="2.0.0", digest=DIGEST, run_id="r1")
    first_event(
        DeploymentCompletionTrigger(
            deploy_target_conn_id="t_prod", deployment_id=dep["deployment_id"], poll_interval=0.1
        )
    )
    again = hook.start_deployment(release="shop", version="2.0.0", digest=DIGEST, run_id="r2")
    assert again["noop"] is True and again["state"] == "succeeded"


def test_failed_deployment_reaches_the_operator_as_failed(fleet):
    _, url = fleet
    requests.post(
        f"{url}/faults",
        json={"environment": "prod", "version": "2.0.0", "error_rate": 0, "fail_deploy": True},
        auth=AUTH,
    ).raise_for_status()
    dep = DeployTargetHook("t_prod").start_deployment(release="shop", version="2.0.0", digest=DIGEST, run_id="r")
    event = first_event(
        DeploymentCompletionTrigger(
            deploy_target_conn_id="t_prod", deployment_id=dep["deployment_id"], poll_interval=0.1
        )
    )
    assert event["state"] == "failed" and "failed to start" in event["message"]
    assert DeployTargetHook("t_prod").get_status()["version"] == "1.0.0"


def test_trigger_times_out(fleet):
    state, _ = fleet
    state.deploy_seconds = 60
    dep = DeployTargetHook("t_prod").start_deployment(release="shop", version="2.0.0", digest=DIGEST, run_id="r")
    event = first_event(
        DeploymentCompletionTrigger(
            deploy_target_conn_id="t_prod", deployment_id=dep["deployment_id"], poll_interval=0.1, timeout_seconds=0.5
        )
    )
    assert event["state"] == "timeout"


def test_trigger_serializes_to_its_import_path():
    trigger = DeploymentCompletionTrigger(
        deploy_target_conn_id="c", deployment_id="d1", poll_interval=3, timeout_seconds=60, started_at=100.0
    )
    path, kwargs = trigger.serialize()
    assert path == "releasetrain.triggers.deployment.DeploymentCompletionTrigger"
    assert kwargs == {
        "deploy_target_conn_id": "c",
        "deployment_id": "d1",
        "poll_interval": 3.0,
        "timeout_seconds": 60.0,
        "max_consecutive_errors": 5,
        "started_at": 100.0,
    }
    assert DeploymentCompletionTrigger(**kwargs).serialize() == (path, kwargs)


def test_target_errors_name_the_target_and_status_without_secrets(fleet):
    with pytest.raises(DeployTargetError) as info:
        DeployTargetHook("t_noauth").get_status()
    assert "'t_noauth'" in str(info.value) and "HTTP 401" in str(info.value)
    with pytest.raises(DeployTargetError, match="HTTP 409: .*never ran in prod"):
        DeployTargetHook("t_prod").start_rollback(version="0.9.0", digest=None, reason="test")
    with pytest.raises(DeployTargetError) as info:
        DeployTargetHook("t_prod").start_deployment(release="s", version="", digest="x", run_id="r")
    assert "HTTP 400" in str(info.value) and "s3cret-pass" not in str(info.value)


def test_unreachable_target_is_named(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_T_GONE", http_connection("http://127.0.0.1:9/environments/prod"))
    with pytest.raises(DeployTargetError, match="deploy target 't_gone': GET status failed"):
        DeployTargetHook("t_gone").get_status()


def test_smoke_check_hook_sync_and_async_agree(fleet):
    hook = HttpCheckHook("t_prod")
    check = HttpCheck(name="version", endpoint="app/version", expect_json={"version": "1.0.0"}, max_latency_ms=5000)
    sync = hook.run_check(check)
    result = asyncio.run(hook.arun_check(check))
    assert sync.passed and result.passed, (sync, result)
    wrong = HttpCheck(name="version", endpoint="app/version", expect_json={"version": "9.9.9"})
    assert hook.run_check(wrong).failures == ["JSON field 'version' is '1.0.0', expected '9.9.9'"]


def test_health_trigger_healthy_and_unhealthy(fleet):
    _, url = fleet
    checks = [HttpCheck(name="healthy", endpoint="health", expect_json={"healthy": True}).model_dump(mode="json")]
    healthy = first_event(
        HealthVerificationTrigger(http_conn_id="t_prod", checks=checks, period_seconds=1, interval_seconds=0.3)
    )
    assert healthy["healthy"] is True and healthy["rounds"] >= 2
    requests.post(
        f"{url}/faults", json={"environment": "prod", "version": "1.0.0", "error_rate": 1.0}, auth=AUTH
    ).raise_for_status()
    sick = first_event(
        HealthVerificationTrigger(http_conn_id="t_prod", checks=checks, period_seconds=30, interval_seconds=0.3)
    )
    assert sick["healthy"] is False and sick["rounds"] == 1, "an unhealthy target is reported at once"
    assert "status 503" in sick["last_failures"][0]["failures"][0]


def test_answers_outside_the_contract_are_named(monkeypatch):
    import http.server
    import threading

    class Odd(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _send(self, code, body):
            self.send_response(code)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):  # noqa: N802
            self._send(200, b"<html>maintenance</html>")

        def do_POST(self):  # noqa: N802
            self._send(202, b'{"state": "in_progress"}')

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Odd)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("AIRFLOW_CONN_T_ODD", http_connection(f"http://127.0.0.1:{server.server_address[1]}", None))
        with pytest.raises(
            DeployTargetError, match="GET status answered '<html>maintenance</html>', not a JSON object"
        ):
            DeployTargetHook("t_odd").get_status()
        with pytest.raises(DeployTargetError, match="POST deployments answered without a deployment_id"):
            DeployTargetHook("t_odd").start_deployment(release="s", version="1.0.0", digest=DIGEST, run_id="r")
    finally:
        server.shutdown()


def test_injected_faults_a_500_starts_nothing_and_a_late_answer_started_already(fleet):
    """The fleet's fault injection used by the distributed fault tests (issue 12)."""
    state, url = fleet
    requests.post(
        f"{url}/faults", json={"environment": "prod", "version": "6.6.6", "deploy_status": 500}, auth=AUTH, timeout=5
    ).raise_for_status()
    hook = DeployTargetHook("t_prod")
    with pytest.raises(DeployTargetError, match="HTTP 500"):
        hook.start_deployment(release="shop", version="6.6.6", digest=DIGEST, run_id="r1")
    assert hook.get_status()["version"] == "1.0.0" and not hook.get_status().get("in_progress")
    requests.post(
        f"{url}/faults",
        json={"environment": "prod", "version": "7.0.0", "accept_delay_seconds": 3, "deploy_seconds": 10},
        auth=AUTH,
        timeout=5,
    ).raise_for_status()
    slow = DeployTargetHook("t_prod", timeout=0.5)
    with pytest.raises(DeployTargetError, match="(?i)timed out|timeout"):
        slow.start_deployment(release="shop", version="7.0.0", digest=DIGEST, run_id="r7")
    running = hook.get_status()["in_progress"]  # the fleet is not blocked meanwhile, and it started
    assert (running["version"], running["run_id"]) == ("7.0.0", "r7")
    for bad in ({"deploy_status": 200}, {"deploy_status": "x"}, {"accept_delay_seconds": -1}):
        answer = requests.post(
            f"{url}/faults", json={"environment": "prod", "version": "8.0.0", **bad}, auth=AUTH, timeout=5
        )
        assert answer.status_code == 400, bad
