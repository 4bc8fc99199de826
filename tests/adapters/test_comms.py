"""Rollback communications (issue 14): each audience is told when a rollback starts (with
the backout estimate), succeeds or fails, and when a bundle fails verification; a failed
rollback and a tampered bundle reach every audience. A real deploy target (the demo fleet),
a real webhook receiver, the adapter tests' ledger."""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowException, AirflowFailException, TaskDeferred

from releasetrain.core.bundle import generate_private_key_pem
from releasetrain.operators.rollback import RollbackOperator
from tests.helpers import FakeTI, context, http_connection, run_events, running_fleet, seed, tamper_bundle
from tests.servers.webhook import running_receiver

DIGEST = "sha256:" + "b" * 64


def routes() -> list[dict]:
    return [
        {
            "kind": "webhook",
            "conn_id": "hooks",
            "endpoint": "business",
            "audience": "business",
            "moments": ["succeeded"],
        },
        {"kind": "webhook", "conn_id": "hooks", "endpoint": "oncall", "audience": "on-call"},
    ]


def rollback_op() -> RollbackOperator:
    return RollbackOperator(
        task_id="prod.rollback",
        release="storefront",
        environment="prod",
        deploy_target_conn_id="t_prod",
        deploy_task_id="prod.deploy",
        poll_interval=0.1,
        notifications=routes(),
        backout_minutes=12,
    )


@pytest.fixture
def told(monkeypatch):
    with running_receiver() as (receiver, url):
        monkeypatch.setenv("AIRFLOW_CONN_HOOKS", http_connection(url))
        yield receiver


def messages(receiver) -> list[tuple[str, str, str]]:
    """(path, event, audience) of everything the receiver got, in order."""
    return [(r["path"], r["body"]["event"], r["body"]["audience"]) for r in receiver.received]


def test_a_rollback_start_is_told_with_the_backout_estimate_to_who_asked_for_it(monkeypatch, told):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        _failed_prod(fleet)
        with pytest.raises(TaskDeferred):
            rollback_op().execute(context(FakeTI(), task_id="prod.rollback"))
    assert messages(told) == [("/oncall", "releasetrain.rollback.started", "on-call")], "business asked for less"
    body = told.received[0]["body"]
    assert (body["failed_version"], body["restore_to"], body["expected_minutes"]) == ("2.0.0", "1.0.0", 12)
    assert "expected to take about 12 min" in body["text"]
    [notified] = run_events("notified")
    assert (notified.details["moment"], notified.details["audiences"]) == ("started", ["on-call"])


def test_a_failed_rollback_is_told_to_every_audience(monkeypatch, told):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        seed(
            "deploy_started",
            environment="prod",
            task_id="prod.deploy",
            version="2.0.0",
            digest=DIGEST,
            before={"version": "1.0.0", "digest": fleet.env("prod")["digest"], "noop": False},
        )
        event = {"state": "failed", "message": "1.0.0 failed to start in prod", "deployment_id": "d1"}
        with pytest.raises(AirflowException, match="ROLLBACK OF prod FAILED"):
            rollback_op().execute_complete(context(FakeTI(), task_id="prod.rollback"), event)
    assert sorted(messages(told)) == [
        ("/business", "releasetrain.rollback.failed", "business"),
        ("/oncall", "releasetrain.rollback.failed", "on-call"),
    ]
    assert "1.0.0 failed to start in prod" in told.received[0]["body"]["reason"]


def test_a_rollback_that_needs_a_human_is_told_as_failed(monkeypatch, told):
    """The environment ran nothing before this release: nothing to return to, a human must act."""
    seed(
        "deploy_started",
        environment="prod",
        task_id="prod.deploy",
        version="2.0.0",
        digest=DIGEST,
        before={"version": None, "digest": None, "noop": False},
    )
    with pytest.raises(AirflowFailException, match="needs manual recovery"):
        rollback_op().execute(context(FakeTI(), task_id="prod.rollback"))
    assert {m[1] for m in messages(told)} == {"releasetrain.rollback.failed"} and len(told.received) == 2


def test_nothing_to_roll_back_tells_nobody(told):
    from airflow.sdk.exceptions import AirflowSkipException

    with pytest.raises(AirflowSkipException):
        rollback_op().execute(context(FakeTI(), task_id="prod.rollback"))
    assert told.received == [] and not run_events("notified")


def test_a_route_that_fails_is_recorded_and_the_others_are_still_told(monkeypatch, told):
    from releasetrain.notifiers.routes import tell

    monkeypatch.setenv("AIRFLOW_CONN_DEAD", http_connection("http://127.0.0.1:9"))
    dead = {"kind": "webhook", "conn_id": "dead", "audience": "change-management"}
    sent, errors = tell(
        context(FakeTI()),
        release="storefront",
        environment="prod",
        routes=[dead, *routes()],
        moment="failed",
        payload={"event": "releasetrain.rollback.failed", "text": "x"},
    )
    assert sent == ["hooks", "hooks"] and len(errors) == 1 and errors[0].startswith("dead: ")
    [notified] = run_events("notified")
    assert notified.details["audiences"] == ["business", "on-call"] and notified.details["errors"] == errors


def test_a_tampered_bundle_is_told_to_every_audience(monkeypatch, told, tmp_path: Path):
    from releasetrain.devstack import signing_connection
    from releasetrain.operators.package import BundlePackageOperator
    from releasetrain.operators.verify import BundleVerifyOperator
    from tests.conftest import PROJECT_ROOT

    monkeypatch.setenv("AIRFLOW_CONN_RELEASETRAIN_SIGNING", signing_connection(generate_private_key_pem()))
    store = f"file://{tmp_path / 'artifacts'}"
    BundlePackageOperator(
        task_id="package",
        release="storefront",
        components=[{"name": "storefront-web", "source": "include/demo_fleet/artifacts/storefront-web"}],
        project_root=str(PROJECT_ROOT),
        artifact_store=store,
    ).execute(context(FakeTI(), task_id="package"))
    tamper_bundle(tmp_path / "artifacts" / "storefront" / "2.0.0" / "bundle.tar.gz")
    verify = BundleVerifyOperator(
        task_id="prod.verify", release="storefront", environment="prod", artifact_store=store, notifications=routes()
    )
    with pytest.raises(AirflowFailException, match="failed verification"):
        verify.execute(context(FakeTI(), task_id="prod.verify"))
    assert sorted(messages(told)) == [
        ("/business", "releasetrain.bundle.tampered", "business"),
        ("/oncall", "releasetrain.bundle.tampered", "on-call"),
    ]
    assert "storefront-web/index.html was changed" in told.received[0]["body"]["reason"]


def test_a_fast_targets_failed_rollback_is_told_once(monkeypatch, told):
    """The target ends the rollback before the first look: its completion runs inside the
    first call (no deferral). The failure is still told once per route, not once per frame."""
    with running_fleet(seed={"prod": "1.0.0"}, deploy_seconds=0) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        _failed_prod(fleet)
        fleet.faults[("prod", "1.0.0")] = {"error_rate": 0.0, "fail_deploy": True}
        with pytest.raises(AirflowException, match="ROLLBACK OF prod FAILED"):
            rollback_op().execute(context(FakeTI(), task_id="prod.rollback"))
    assert sorted(messages(told)) == [
        ("/business", "releasetrain.rollback.failed", "business"),
        ("/oncall", "releasetrain.rollback.failed", "on-call"),
        ("/oncall", "releasetrain.rollback.started", "on-call"),
    ]


def test_what_fails_after_a_told_success_is_not_told_as_a_failed_rollback(monkeypatch, told):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        seed(
            "deploy_started",
            environment="prod",
            task_id="prod.deploy",
            version="2.0.0",
            digest=DIGEST,
            before={"version": "1.0.0", "digest": fleet.env("prod")["digest"], "noop": False},
        )

        def broken(*args, **kwargs):
            raise RuntimeError("the ledger is gone")

        monkeypatch.setattr("releasetrain.operators.rollback.record_rollback", broken)
        with pytest.raises(AirflowFailException, match="the ledger is gone"):
            rollback_op().execute_complete(
                context(FakeTI(), task_id="prod.rollback"), {"state": "succeeded", "message": "", "deployment_id": "d"}
            )
    assert sorted(messages(told)) == [
        ("/business", "releasetrain.rollback.succeeded", "business"),
        ("/oncall", "releasetrain.rollback.succeeded", "on-call"),
    ]


def test_a_told_reason_is_masked_like_a_log_and_short():
    from airflow.sdk.log import mask_secret

    from releasetrain.operators.rollback import REASON_CHARS, told_reason

    mask_secret("t0p-s3cret-pw")
    reason = told_reason(RuntimeError("GET http://deployer:t0p-s3cret-pw@target/status failed: " + "x" * 900))
    assert "t0p-s3cret-pw" not in reason and "***" in reason
    assert len(reason) == REASON_CHARS and reason.endswith("…")


def test_a_notifiers_placeholders_are_filled_in_one_pass(monkeypatch):
    from airflow.sdk.bases.notifier import BaseNotifier

    from releasetrain.notifiers import routes

    class Kept(BaseNotifier):
        def __init__(self, **kwargs):
            super().__init__()
            self.kwargs = kwargs

        def notify(self, context):
            pass

    monkeypatch.setattr("releasetrain.core.policy.Policy.notifier_allowed", lambda self, name: True)
    import types

    module = types.ModuleType("kept_notifiers")
    module.Kept = Kept
    monkeypatch.setitem(__import__("sys").modules, "kept_notifiers", module)
    built = routes.build_notifier(
        {"notifier": "kept_notifiers.Kept", "args": {"text": "${text}", "blocks": ["${json}"]}},
        {"text": "reason: ${json} and ${text}", "event": "e"},
    )
    assert built.kwargs["text"] == "reason: ${json} and ${text}", "text from the run is never expanded again"
    assert '"event": "e"' in built.kwargs["blocks"][0]


def _failed_prod(fleet) -> None:
    """prod runs 2.0.0 (this run's deploy, on record), 1.0.0 before it."""
    old = fleet.env("prod")["digest"]
    fleet.env("prod")["history"].append({"version": "2.0.0", "digest": DIGEST})
    fleet.env("prod").update(version="2.0.0", digest=DIGEST)
    seed(
        "deploy_started",
        environment="prod",
        task_id="prod.deploy",
        version="2.0.0",
        digest=DIGEST,
        before={"version": "1.0.0", "digest": old, "noop": False},
    )


def _rollback_deployments(fleet) -> list[dict]:
    return [d for d in fleet.deployments.values() if d["environment"] == "prod"]


def test_a_rollback_on_record_is_neither_redone_nor_told_again_when_retried(monkeypatch, told):
    """Airflow 3.3's fast-trigger race can fail a rollback that finished: its retry (the
    rollback has race retries) returns the recorded outcome and does nothing else."""
    with running_fleet(seed={"prod": "1.0.0"}, deploy_seconds=0) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        _failed_prod(fleet)
        first = rollback_op().execute(context(FakeTI(), task_id="prod.rollback"))
        heard = len(told.received)
        again = rollback_op().execute(context(FakeTI(), task_id="prod.rollback"))
        assert len(_rollback_deployments(fleet)) == 1, "the retry started no second rollback"
    assert again["restored_version"] == first["restored_version"] == "1.0.0"
    assert len(told.received) == heard == 3, "started (on-call), succeeded (both): nobody hears twice"
    assert len(run_events("rollback_started")) == len(run_events("rollback")) == 1


def test_a_retry_finishes_the_rollback_an_earlier_try_started_without_starting_another(monkeypatch, told):
    """The first try started the rollback and deferred; Airflow lost it. The retry waits for
    that deployment (it starts none) and tells only the success."""
    import time

    with running_fleet(seed={"prod": "1.0.0"}, deploy_seconds=1.0) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        _failed_prod(fleet)
        with pytest.raises(TaskDeferred):
            rollback_op().execute(context(FakeTI(), task_id="prod.rollback"))
        with pytest.raises(TaskDeferred) as waiting:  # still going: the retry waits for it
            rollback_op().execute(context(FakeTI(), task_id="prod.rollback"))
        assert waiting.value.method_name == "execute_complete"
        assert len(_rollback_deployments(fleet)) == 1
        deadline = time.monotonic() + 10
        while fleet.view("prod")["version"] != "1.0.0" and time.monotonic() < deadline:
            time.sleep(0.1)
        result = rollback_op().execute(context(FakeTI(), task_id="prod.rollback"))
        assert len(_rollback_deployments(fleet)) == 1
    assert result["restored_version"] == "1.0.0" and not result.get("noop")
    assert messages(told)[0] == ("/oncall", "releasetrain.rollback.started", "on-call")
    assert sorted(messages(told)[1:]) == [
        ("/business", "releasetrain.rollback.succeeded", "business"),
        ("/oncall", "releasetrain.rollback.succeeded", "on-call"),
    ]
    assert len(messages(told)) == 3
    assert len(run_events("rollback_started")) == len(run_events("rollback")) == 1


def test_a_failed_rollback_is_not_retried(monkeypatch, told):
    """Its own failure is told once and fails the task for good: a retry would be a new rollback."""
    seed(
        "deploy_started",
        environment="prod",
        task_id="prod.deploy",
        version="2.0.0",
        digest=DIGEST,
        before={"version": "1.0.0", "digest": "sha256:" + "c" * 64, "noop": False},
    )
    event = {"state": "failed", "message": "1.0.0 failed to start in prod", "deployment_id": "d1"}
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(AirflowFailException, match="ROLLBACK OF prod FAILED"):
            rollback_op().execute_complete(context(FakeTI(), task_id="prod.rollback"), event)
    assert rollback_op().retries == 2, "race retries, which this failure must not use"


def test_a_rollback_on_record_before_a_newer_deploy_is_done_again(monkeypatch, told):
    """A user clears the deploy after its rollback: the version is live again, and the rollback's
    old record must not make the cleared rollback a green no-op."""
    with running_fleet(seed={"prod": "1.0.0"}, deploy_seconds=0) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        _failed_prod(fleet)
        rollback_op().execute(context(FakeTI(), task_id="prod.rollback"))
        # the deploy, cleared, puts 2.0.0 back (a newer record of the deploy step)
        old = fleet.env("prod")["digest"]
        fleet.env("prod").update(version="2.0.0", digest=DIGEST)
        seed(
            "deploy_started",
            environment="prod",
            task_id="prod.deploy",
            version="2.0.0",
            digest=DIGEST,
            before={"version": "1.0.0", "digest": old, "noop": False},
        )
        again = rollback_op().execute(context(FakeTI(), task_id="prod.rollback"))
        assert fleet.view("prod")["version"] == "1.0.0" and len(_rollback_deployments(fleet)) == 2
    assert again["restored_version"] == "1.0.0" and len(run_events("rollback")) == 2


def test_a_failed_rollback_retried_after_airflows_race_stays_failed_and_tells_nobody_again(monkeypatch, told):
    """Airflow 3.3's fast-trigger race can retry even an AirflowFailException: the retry finds
    the failure on record, neither rolls back again nor tells anyone again."""
    with running_fleet(seed={"prod": "1.0.0"}, deploy_seconds=0) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        _failed_prod(fleet)
        fleet.faults[("prod", "1.0.0")] = {"error_rate": 0.0, "fail_deploy": True}
        with pytest.raises(AirflowFailException, match="ROLLBACK OF prod FAILED"):
            rollback_op().execute(context(FakeTI(), task_id="prod.rollback"))
        heard, tried = len(told.received), len(_rollback_deployments(fleet))
        with pytest.raises(AirflowFailException, match="this rollback already failed"):
            rollback_op().execute(context(FakeTI(), task_id="prod.rollback"))
        assert len(_rollback_deployments(fleet)) == tried == 1
    assert len(told.received) == heard == 3, "started (on-call), failed (both), once"
    [failed] = run_events("rollback_failed")
    assert "1.0.0 failed to start" in failed.details["reason"]
