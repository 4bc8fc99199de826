"""Operators called directly with a task context: packaging, verification, deploy,
approval and rollback decisions (the end-to-end tests run them inside Airflow).

Gates read the run's ledger, never XCom: each test seeds the ledger records the earlier
tasks would have written (:func:`tests.helpers.seed`) and builds the request from the DAG
run's params (:func:`tests.helpers.context`). XCom appears only where a test shows that a
forged or edited XCom changes nothing.
"""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, TaskDeferred

from releasetrain.core.bundle import generate_private_key_pem
from releasetrain.operators.approval import ReleaseApprovalOperator
from releasetrain.operators.deploy import PRE_DEPLOY_KEY, EnvironmentDeployOperator
from releasetrain.operators.package import BundlePackageOperator
from releasetrain.operators.rollback import RollbackOperator
from releasetrain.operators.verify import BundleVerifyOperator
from releasetrain.triggers.deployment import DeploymentCompletionTrigger
from tests.conftest import PROJECT_ROOT
from tests.helpers import (
    PARAMS,
    RUN_ID,
    FakeTI,
    context,
    http_connection,
    run_events,
    running_fleet,
    seed,
    tamper_bundle,
)

COMPONENTS = [{"name": "storefront-web", "source": "include/demo_fleet/artifacts/storefront-web", "version": None}]


@pytest.fixture
def signing(monkeypatch):
    from releasetrain.devstack import signing_connection

    monkeypatch.setenv("AIRFLOW_CONN_RELEASETRAIN_SIGNING", signing_connection(generate_private_key_pem()))


@pytest.fixture
def store(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'artifacts'}"


def package(store: str) -> dict:
    op = BundlePackageOperator(
        task_id="package",
        release="storefront",
        components=COMPONENTS,
        project_root=str(PROJECT_ROOT),
        artifact_store=store,
    )
    return op.execute(context(FakeTI(), task_id="package"))


def verify(store: str, xcoms: dict | None = None) -> dict:
    op = BundleVerifyOperator(task_id="dev.verify", release="storefront", environment="dev", artifact_store=store)
    return op.execute(context(FakeTI(xcoms), task_id="dev.verify"))


def test_package_then_verify(signing, store, tmp_path):
    packaged = package(store)
    folder = tmp_path / "artifacts" / "storefront" / "2.0.0"
    assert sorted(p.name for p in folder.iterdir()) == ["bundle.sig.json", "bundle.tar.gz", "manifest.json"]
    assert packaged["files"] == 3 and packaged["digest"].startswith("sha256:")
    assert [lib["name"] for lib in packaged["sbom"]["libraries"]] == ["htm", "preact"], "package-lock.json"
    [recorded] = run_events("packaged")
    assert recorded.details["task_id"] == "package" and recorded.details["digest"] == packaged["digest"]
    assert verify(store) == {
        "environment": "dev",
        "version": "2.0.0",
        "digest": packaged["digest"],
        "verified": True,
    }
    [verified] = run_events("verified")
    assert (verified.environment, verified.details["task_id"]) == ("dev", "dev.verify")
    assert verified.details["digest"] == packaged["digest"]
    assert package(store)["digest"] == packaged["digest"], "re-packaging the same inputs reuses the bundle"


def test_verify_reads_the_packaged_record_not_the_package_xcom(signing, store):
    packaged = package(store)
    forged = {("package", "return_value"): {**packaged, "digest": "sha256:" + "0" * 64}}
    assert verify(store, forged)["digest"] == packaged["digest"], "an edited XCom digest is ignored"


def test_verify_refuses_a_bundle_only_xcom_says_was_packaged(signing, store):
    op = BundlePackageOperator(
        task_id="package",
        release="storefront",
        components=COMPONENTS,
        project_root=str(PROJECT_ROOT),
        artifact_store=store,
    )
    other_run = context(FakeTI(), task_id="package")
    other_run["run_id"] = "manual__other"
    packaged = op.execute(other_run)  # a valid bundle in the store, packaged by another run
    with pytest.raises(AirflowFailException, match="no packaged bundle recorded in the ledger by package in this run"):
        verify(store, {("package", "return_value"): packaged})
    assert not run_events("verified")
    [refused] = run_events("gate_refused")
    assert refused.details["task_id"] == "dev.verify"


def test_bundle_altered_after_packaging_fails_verification(signing, store, tmp_path):
    package(store)
    tamper_bundle(tmp_path / "artifacts" / "storefront" / "2.0.0" / "bundle.tar.gz")
    with pytest.raises(
        AirflowFailException,
        match="dev: bundle storefront 2.0.0 failed verification, nothing will "
        "be deployed: file storefront-web/index.html was changed",
    ):
        verify(store)
    assert not run_events("verified")


def test_released_versions_are_immutable(signing, store, tmp_path):
    package(store)
    changed = tmp_path / "src"
    changed.mkdir()
    (changed / "index.html").write_text("different")
    op = BundlePackageOperator(
        task_id="package",
        release="storefront",
        project_root=str(tmp_path),
        components=[{"name": "storefront-web", "source": "src"}],
        artifact_store=store,
    )
    with pytest.raises(AirflowFailException, match="already packaged .* Released versions are immutable"):
        op.execute(context(FakeTI(), task_id="package"))


def test_missing_signing_key_is_named(monkeypatch, store):
    monkeypatch.delenv("AIRFLOW_CONN_RELEASETRAIN_SIGNING", raising=False)
    with pytest.raises(Exception, match="releasetrain_signing"):
        package(store)


def test_missing_component_source_is_named(signing, store):
    op = BundlePackageOperator(
        task_id="package",
        release="storefront",
        project_root=str(PROJECT_ROOT),
        components=[{"name": "web", "source": "include/nowhere"}],
        artifact_store=store,
    )
    with pytest.raises(AirflowFailException, match="component 'web': source include/nowhere does not exist"):
        op.execute(context(FakeTI(), task_id="package"))


# --- deploy -----------------------------------------------------------------------------
DIGEST = "sha256:" + "b" * 64


def deploy_op(**kw):
    defaults = dict(
        task_id="prod.deploy",
        release="storefront",
        environment="prod",
        deploy_target_conn_id="t_prod",
        verify_task_id="prod.verify",
        previous_environment="staging",
        promotion_gate_task_id="staging.passed",
        poll_interval=0.1,
    )
    return EnvironmentDeployOperator(**{**defaults, **kw})


def deploy_ready(gate_digest=DIGEST) -> None:
    """What the run recorded before prod's deploy: prod verified DIGEST, staging passed ``gate_digest``."""
    seed("verified", environment="prod", task_id="prod.verify", version="2.0.0", digest=DIGEST, verified=True)
    seed("environment_passed", environment="staging", task_id="staging.passed", version="2.0.0", digest=gate_digest)


def deploy_ctx(xcoms: dict | None = None, **kw) -> dict:
    return context(FakeTI(xcoms), task_id="prod.deploy", **kw)


def refusals(task_id: str = "prod.deploy") -> list[str]:
    """The reasons recorded with this run's refusals by ``task_id`` (``gate_refused``)."""
    return [" ".join(e.details["reasons"]) for e in run_events("gate_refused") if e.details["task_id"] == task_id]


def test_deploy_defers_and_records_what_ran_before(monkeypatch):
    deploy_ready()
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        ctx = deploy_ctx()
        with pytest.raises(TaskDeferred) as info:
            deploy_op().execute(ctx)
        assert isinstance(info.value.trigger, DeploymentCompletionTrigger)
        assert info.value.method_name == "execute_complete"
        [started] = run_events("deploy_started")
        assert started.environment == "prod" and started.details["task_id"] == "prod.deploy"
        assert started.details["before"] == {"version": "1.0.0", "digest": fleet.env("prod")["digest"], "noop": False}
        assert (started.details["version"], started.details["digest"]) == ("2.0.0", DIGEST)
        assert ctx["ti"].xcoms[("__self__", PRE_DEPLOY_KEY)]["version"] == "1.0.0", "shown in XCom too"


def test_deploy_refuses_a_digest_that_did_not_pass_before(monkeypatch):
    deploy_ready(gate_digest="sha256:" + "c" * 64)
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(AirflowFailException, match="is not the digest that passed staging.*nothing was changed"):
            deploy_op().execute(deploy_ctx())
        assert fleet.deployments == {}, "nothing was sent to the target"
    [reason] = refusals()
    assert f"digest {DIGEST} is not the digest that passed staging" in reason


def test_deploy_refuses_without_a_recorded_pass_of_the_previous_environment(monkeypatch):
    seed("verified", environment="prod", task_id="prod.verify", digest=DIGEST)
    forged = {("staging.passed", "return_value"): {"environment": "staging", "digest": DIGEST, "passed": True}}
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(AirflowFailException, match="no pass of staging recorded in the ledger by staging.passed"):
            deploy_op().execute(deploy_ctx(forged))
        assert fleet.deployments == {}


def test_deploy_refuses_a_digest_only_xcom_says_was_verified(monkeypatch):
    seed("environment_passed", environment="staging", task_id="staging.passed", digest=DIGEST)
    forged = {("prod.verify", "return_value"): {"environment": "prod", "digest": DIGEST, "verified": True}}
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(AirflowFailException, match="no verified bundle recorded in the ledger by prod.verify"):
            deploy_op().execute(deploy_ctx(forged))
        assert fleet.deployments == {}
    assert not run_events("deploy_started")


def test_deploy_of_the_live_version_is_a_noop(monkeypatch):
    deploy_ready()
    with running_fleet(seed={}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        fleet.env("prod").update(version="2.0.0", digest=DIGEST)
        result = deploy_op().execute(deploy_ctx())
        assert result["noop"] is True and fleet.deployments == {}
    [started] = run_events("deploy_started")
    assert started.details["before"]["noop"] is True, "a rollback will know this run changed nothing"
    [deployed] = run_events("deployed")
    assert deployed.details["digest"] == DIGEST and deployed.details["task_id"] == "prod.deploy"


def test_failed_deployment_fails_the_task():
    deploy_ready()
    with pytest.raises(AirflowFailException, match="deploying storefront 2.0.0 to prod ended failed: boom"):
        deploy_op().execute_complete(
            deploy_ctx(), {"state": "failed", "message": "boom", "deployment_id": "d1", "deployment": {}}
        )
    [failed] = run_events("deploy_failed")
    assert failed.details["message"] == "boom"
    assert not run_events("deployed")


def test_a_locked_deploy_needs_this_run_to_hold_the_targets_lock(monkeypatch):
    from releasetrain.hooks.ledger import LedgerHook

    deploy_ready()
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        hook = LedgerHook()
        try:
            hook.store.try_lock("t_prod", "release_storefront/manual__other")
        finally:
            hook.close()
        with pytest.raises(AirflowFailException, match="does not hold the lock of deploy target t_prod"):
            deploy_op(locked=True).execute(deploy_ctx())
        assert fleet.deployments == {}
        assert "held by release_storefront/manual__other" in refusals()[0]
        hook = LedgerHook()
        try:
            hook.store.unlock("release_storefront/manual__other", "t_prod")
            assert hook.store.try_lock("t_prod", f"release_storefront/{RUN_ID}") == f"release_storefront/{RUN_ID}"
        finally:
            hook.close()
        with pytest.raises(TaskDeferred):
            deploy_op(locked=True).execute(deploy_ctx())
        assert len(fleet.deployments) == 1


# --- approval ---------------------------------------------------------------------------
def approval_op(**kw):
    options = dict(
        task_id="prod.approve", release="storefront", environment="prod", approvers=["author", "dev-lead", "approver"]
    )
    return ReleaseApprovalOperator(**{**options, **kw})


def event(user, option="Approve", timedout=False):
    return {
        "chosen_options": [option],
        "params_input": {},
        "responded_at": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        "responded_by_user": {"id": user, "name": user} if user else None,
        "timedout": timedout,
    }


def assessed(gates: dict | None = None, level: str = "moderate") -> None:
    """The risk assessment's ledger record (``gates``: environment -> {quorum, reviews})."""
    seed("risk_assessed", task_id="assess_risk", level=level, gates=gates or {})


def packaged() -> None:
    seed("packaged", task_id="package", version="2.0.0", digest=DIGEST)


def approval_ctx(task_id: str = "prod.approve", xcoms: dict | None = None, **kw) -> dict:
    return context(FakeTI(xcoms), task_id=task_id, **kw)


@pytest.fixture
def asked(monkeypatch) -> list:
    """Who each HITL request was assigned to (Airflow's own request is not made)."""
    calls: list = []
    monkeypatch.setattr(
        "releasetrain.operators.approval.ApprovalOperator.execute",
        lambda self, ctx: calls.append(self.assigned_users),
    )
    return calls


@pytest.mark.parametrize(
    "user, reason",
    [
        ("author", "author is an author of this release"),
        ("dev-lead", "dev-lead is an author of this release"),
        ("mallory", "mallory is not an approver"),
    ],
)
def test_refused_response_is_recorded_and_the_request_asked_again(asked, user, reason):
    assessed()
    packaged()
    approval_op().execute_complete(approval_ctx(), event(user))
    assert asked == [[{"id": "approver", "name": "approver"}]], "asked again, of the eligible approvers only"
    [refused] = run_events("approval_refused")
    assert refused.actor == user and reason in refused.details["reason"]
    assert not run_events("approval_given")


def test_same_person_never_counts_twice_across_an_environments_approvals(asked):
    assessed()  # no gates for prod: the spec's quorum of 2 applies
    packaged()
    seed("approval_given", environment="prod", actor="approver", task_id="prod.approve", digest=DIGEST, group=None)
    slot2 = ReleaseApprovalOperator(
        task_id="prod.approve_2",
        release="storefront",
        environment="prod",
        approvers=["approver", "approver2", "admin"],
        slot=2,
        quorum=2,
        sibling_task_ids=["prod.approve", "prod.approve_2"],
    )
    ctx = approval_ctx("prod.approve_2")
    slot2.execute(ctx)
    assert asked[-1] == [{"id": "approver2", "name": "approver2"}, {"id": "admin", "name": "admin"}]
    slot2.execute_complete(ctx, event("approver"))  # the first approver again: refused, asked again
    assert len(asked) == 2
    [refused] = run_events("approval_refused")
    assert "already approved prod.approve" in refused.details["reason"]
    result = slot2.execute_complete(ctx, event("approver2"))
    assert result["responded_by_user"]["id"] == "approver2" and result["slot"] == 2
    given = [(e.actor, e.details["task_id"]) for e in run_events("approval_given")]
    assert given == [("approver", "prod.approve"), ("approver2", "prod.approve_2")]


def test_slot_beyond_the_quorum_skips_itself():
    assessed()
    slot2 = ReleaseApprovalOperator(
        task_id="prod.approve_2", release="storefront", environment="prod", approvers=["a", "b"], slot=2
    )
    with pytest.raises(AirflowSkipException, match="quorum needed: 1"):
        slot2.execute(approval_ctx("prod.approve_2"))
    assessed({"prod": {"quorum": 2, "reviews": ["security"]}}, level="high")
    review = ReleaseApprovalOperator(
        task_id="prod.review_security",
        release="storefront",
        environment="prod",
        approvers=["secops"],
        slot=None,
        review_group="security",
    )
    with pytest.raises(Exception, match="SUPERVISOR_COMMS|supervisor|comms"):
        review.execute(
            {**approval_ctx("prod.review_security"), "task_instance": type("T", (), {"id": "x"})()}
        )  # needed: asks (no supervisor here)


def test_an_approval_is_not_asked_without_a_recorded_risk_assessment(asked):
    forged = {("assess_risk", "return_value"): {"level": "low", "gates": {"prod": {"quorum": 1, "reviews": []}}}}
    with pytest.raises(AirflowFailException, match="no risk assessment recorded in the ledger by assess_risk"):
        approval_op().execute(approval_ctx(xcoms=forged))
    assert asked == []


def test_approval_by_an_approver_passes_and_reject_fails_cleanly():
    packaged()
    result = approval_op().execute_complete(approval_ctx(), event("approver"))
    assert result["responded_by_user"]["id"] == "approver" and result["digest"] == DIGEST
    [given] = run_events("approval_given")
    assert (given.actor, given.environment, given.details["digest"]) == ("approver", "prod", DIGEST)
    assert given.details["task_id"] == "prod.approve" and given.details["group"] is None
    with pytest.raises(AirflowFailException, match="rejected for prod by approver"):
        approval_op().execute_complete(approval_ctx(), event("approver", "Reject"))
    assert run_events()[-1].kind == "approval_rejected"
    with pytest.raises(AirflowFailException, match="no answer before the timeout"):
        approval_op().execute_complete(approval_ctx(), event(None, "Reject", timedout=True))
    assert run_events()[-1].kind == "approval_timed_out"


def test_request_assigns_only_non_authors(monkeypatch):
    assessed()
    packaged()
    captured = {}
    monkeypatch.setattr(
        "releasetrain.operators.approval.ApprovalOperator.execute",
        lambda self, ctx: captured.update(users=self.assigned_users, body=self.body),
    )
    approval_op().execute({**approval_ctx(), "dag": None})
    assert captured["users"] == [{"id": "approver", "name": "approver"}]
    assert DIGEST in captured["body"] and "2.0.0" in captured["body"]
    [requested] = run_events("approval_requested")
    assert requested.details["assigned"] == ["approver"] and requested.details["digest"] == DIGEST


def test_request_without_eligible_approver_fails():
    assessed()
    op = ReleaseApprovalOperator(task_id="a", release="storefront", environment="prod", approvers=["author"])
    with pytest.raises(AirflowFailException, match="no eligible approver"):
        op.execute(approval_ctx("a"))


# --- rollback ---------------------------------------------------------------------------
def rollback_op():
    return RollbackOperator(
        task_id="prod.rollback",
        release="storefront",
        environment="prod",
        deploy_target_conn_id="t_prod",
        deploy_task_id="prod.deploy",
        poll_interval=0.1,
    )


def deploy_started(before: dict) -> None:
    """The deploy's record of what prod ran before it touched it."""
    seed("deploy_started", environment="prod", task_id="prod.deploy", version="2.0.0", digest=DIGEST, before=before)


@pytest.mark.parametrize(
    "pre, reason",
    [(None, "deployed nothing to prod"), ({"version": "2.0.0", "digest": DIGEST, "noop": True}, "changed nothing")],
)
def test_rollback_only_undoes_what_this_run_did(pre, reason):
    if pre:
        deploy_started(pre)
    with pytest.raises(AirflowSkipException, match=reason):
        rollback_op().execute(context(FakeTI(), task_id="prod.rollback"))


def test_rollback_starts_and_defers(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        old = fleet.env("prod")["digest"]
        fleet.env("prod")["history"].append({"version": "2.0.0", "digest": DIGEST})
        fleet.env("prod").update(version="2.0.0", digest=DIGEST)
        deploy_started({"version": "1.0.0", "digest": old, "noop": False})
        with pytest.raises(TaskDeferred):
            rollback_op().execute(context(FakeTI(), task_id="prod.rollback"))
        [dep] = fleet.deployments.values()
        assert (dep["kind"], dep["version"], dep["digest"]) == ("rollback", "1.0.0", old)


def test_rollback_returns_to_the_recorded_version_not_an_edited_xcom(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        old = fleet.env("prod")["digest"]
        fleet.env("prod").update(version="2.0.0", digest=DIGEST)
        deploy_started({"version": "1.0.0", "digest": old, "noop": False})
        edited = {("prod.deploy", PRE_DEPLOY_KEY): {"version": "2.0.0", "digest": DIGEST, "noop": True}}
        with pytest.raises(TaskDeferred):  # an XCom saying "nothing changed" would have skipped
            rollback_op().execute(context(FakeTI(edited), task_id="prod.rollback"))
        [dep] = fleet.deployments.values()
        assert (dep["kind"], dep["version"]) == ("rollback", "1.0.0")


def test_approval_retries_for_infrastructure_failures_only():
    op = approval_op()
    assert op.retries == 2
    # decisions raise AirflowFailException, which Airflow never retries
    with pytest.raises(AirflowFailException, match="was rejected for prod by approver"):
        op.execute_complete(approval_ctx(), event("approver", "Reject"))


# --- approvals are checked again where they are used ------------------------------------
def approved_deploy_op(**over):
    options = dict(
        approval_task_ids=["prod.approve", "prod.approve_2", "prod.review_security"],
        approvers=["approver", "approver2"],
        review_members={"security": ["secops", "approver2"]},
    )
    return deploy_op(**{**options, **over})


def yes(user, task_id="prod.approve", digest=DIGEST, group=None) -> tuple:
    """An approval as the approval task ``task_id`` records it in the ledger."""
    return ("approval_given", user, task_id, digest, group)


def no(user, task_id="prod.approve") -> tuple:
    return ("approval_rejected", user, task_id, DIGEST, None)


HIGH = {"prod": {"quorum": 2, "reviews": ["security"]}}


def seed_approvals(approvals: list[tuple]) -> None:
    for kind, user, task_id, digest, group in approvals:
        seed(kind, environment="prod", actor=user, task_id=task_id, digest=digest, group=group)


@pytest.mark.parametrize(
    "approvals, risk, reason",
    [
        pytest.param([], None, "0 of 1 required distinct approvals recorded", id="marked-success-by-hand"),
        pytest.param([no("approver")], None, "prod.approve was rejected by approver .*final for prod", id="rejected"),
        pytest.param(  # a quorum slot rejected, then the slot cleared and someone else asked: the Reject stands
            [no("approver"), yes("approver2", "prod.approve")],
            None,
            "prod.approve was rejected by approver .*final for prod",
            id="rejected-then-approved-by-another",
        ),
        pytest.param([yes("author")], None, "author is an author of this release", id="author"),
        pytest.param(
            [yes("approver", digest="sha256:" + "e" * 64)],
            None,
            "approved bundle sha256:eee",
            id="digest-changed-after-approval",
        ),
        pytest.param([yes("approver")], HIGH, "1 of 2 required distinct approvals", id="quorum"),
        pytest.param(
            [yes("approver"), yes("approver", "prod.approve_2")],
            HIGH,
            "one person never counts twice",
            id="same-user-twice",
        ),
        pytest.param(
            [yes("approver"), yes("approver2", "prod.approve_2")],
            HIGH,
            "readiness review of \\['security'\\] has not approved",
            id="review-missing",
        ),
        pytest.param(
            [
                yes("approver"),
                yes("approver2", "prod.approve_2"),
                yes("approver2", "prod.review_security", group="security"),
            ],
            HIGH,
            "approver2 gave both",
            id="review-by-a-quorum-approver",
        ),
    ],
)
def test_deploy_refuses_without_valid_recorded_approvals(monkeypatch, approvals, risk, reason):
    deploy_ready()
    assessed(risk, level="high" if risk else "moderate")
    seed_approvals(approvals)
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(AirflowFailException, match=f"prod.deploy refused: .*{reason}.*nothing was changed"):
            approved_deploy_op().execute(deploy_ctx())
        assert fleet.deployments == {}
    [recorded] = refusals()
    assert re.search(reason, recorded)
    assert re.search(reason, recorded), recorded
    assert not run_events("deploy_started"), "nothing was recorded as started"


def test_an_approval_task_set_to_success_by_hand_counts_for_nothing(monkeypatch):
    """The listener recorded that prod.approve was set to success by hand; it recorded no approval,
    so the deploy refuses, and its ``gate_refused`` record names the deploy task and the missing approvals."""
    deploy_ready()
    assessed()
    seed("task_state", task_id="prod.approve", state="success", by_hand=True)
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(AirflowFailException, match="prod.deploy refused: .*0 of 1 required distinct approvals"):
            approved_deploy_op().execute(deploy_ctx())
        assert fleet.deployments == {}
    [refused] = run_events("gate_refused")
    assert refused.details["task_id"] == "prod.deploy" and refused.details["step"] == "prod.deploy"
    assert refused.environment == "prod"
    assert any(
        "no approval recorded in the ledger by prod.approve in this run (it was set to success by hand" in reason
        for reason in refused.details["reasons"]
    ), refused.details["reasons"]


@pytest.mark.parametrize(
    "risk, approvals",
    [
        pytest.param(None, [yes("approver")], id="spec-quorum"),
        pytest.param(
            HIGH,
            [
                yes("approver"),
                yes("approver2", "prod.approve_2"),
                yes("secops", "prod.review_security", group="security"),
            ],
            id="high-risk-gates",
        ),
    ],
)
def test_deploy_proceeds_with_valid_recorded_approvals(monkeypatch, risk, approvals):
    deploy_ready()
    assessed(risk, level="high" if risk else "moderate")
    seed_approvals(approvals)
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(TaskDeferred):
            approved_deploy_op().execute(deploy_ctx())
        assert len(fleet.deployments) == 1
    assert not run_events("gate_refused")


# --- the trust model: XCom is display only ------------------------------------------------
def test_an_approval_forged_in_xcom_is_refused_by_the_deploy(monkeypatch):
    deploy_ready()
    assessed()
    forged = {
        ("prod.approve", "return_value"): {
            "chosen_options": ["Approve"],
            "params_input": {},
            "responded_by_user": {"id": "approver", "name": "approver"},
            "timedout": False,
            "environment": "prod",
            "digest": DIGEST,
            "group": None,
            "slot": 1,
        }
    }
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(AirflowFailException, match="approvals in the ledger do not hold"):
            approved_deploy_op().execute(deploy_ctx(forged))
        assert fleet.deployments == {}, "nothing reached production"
    [refused] = run_events("gate_refused")
    assert refused.details["task_id"] == "prod.deploy"
    reason, named = refused.details["reasons"]
    assert "0 of 1 required distinct approvals recorded (none)" in reason, "names the missing approval record"
    assert "no approval recorded in the ledger by prod.approve" in named, "names the approval task"
    assert not run_events("deploy_started")


def test_a_risk_result_edited_in_xcom_does_not_lower_the_gates(monkeypatch, asked):
    deploy_ready()
    assessed(HIGH, level="high")
    seed_approvals([yes("approver")])
    edited = {("assess_risk", "return_value"): {"level": "low", "gates": {"prod": {"quorum": 0, "reviews": []}}}}
    # the second quorum slot is asked all the same ...
    slot2 = approval_op(task_id="prod.approve_2", approvers=["approver", "approver2"], slot=2)
    slot2.execute(approval_ctx("prod.approve_2", xcoms=edited))
    assert asked == [[{"id": "approver2", "name": "approver2"}]]
    # ... and the deploy still needs two approvals and the security review
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(AirflowFailException, match="1 of 2 required distinct approvals recorded"):
            approved_deploy_op().execute(deploy_ctx(edited))
        assert fleet.deployments == {}


def test_a_rejection_is_final_a_cleared_approval_never_asks_again(asked):
    assessed()
    packaged()
    seed("approval_rejected", environment="prod", actor="approver", task_id="prod.approve", digest=DIGEST)
    with pytest.raises(AirflowFailException, match="prod.approve was rejected by approver .*a rejection is final"):
        approval_op().execute(approval_ctx())  # the approval task cleared and run again
    assert asked == [], "the request was never asked again"
    assert not run_events("approval_requested")
    [refused] = run_events("gate_refused")
    assert refused.details["task_id"] == "prod.approve" and "trigger a new run" in refused.details["reasons"][0]


@pytest.mark.parametrize(
    "user, option, kind",
    [("approver", "Reject", "approval_rejected"), ("author", "Approve", "approval_refused")],
    ids=["reject", "refused-response"],
)
def test_a_decision_the_ledger_cannot_record_fails_without_asking_again(monkeypatch, asked, user, option, kind):
    from releasetrain.hooks.ledger import LedgerHook

    assessed()
    packaged()

    def broken(self, kind, **kwargs):
        raise OSError("disk full")

    original = LedgerHook.append
    monkeypatch.setattr(LedgerHook, "append", broken)
    with pytest.raises(AirflowFailException, match=f"the {kind} decision could not be recorded .*disk full") as info:
        approval_op().execute_complete(approval_ctx(), event(user, option))
    assert type(info.value) is AirflowFailException, "never retried: a retry would ask again"
    assert "without asking again" in str(info.value)
    assert asked == [], "the request was not re-opened"
    monkeypatch.setattr(LedgerHook, "append", original)  # (undo() would also drop this test's ledger)
    assert not run_events(kind)


def test_only_the_owning_team_releases_into_its_environment(monkeypatch):
    deploy_ready()
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(AirflowFailException, match="may not release into prod: only its owners"):
            deploy_op(owners=["approver", "admin"]).execute(deploy_ctx())
        assert fleet.deployments == {}
        with pytest.raises(TaskDeferred):
            deploy_op(owners=["author", "dev-lead"]).execute(deploy_ctx())


def test_deploy_refuses_what_the_target_did_not_deploy():
    deploy_ready()
    event = {
        "state": "succeeded",
        "message": "",
        "deployment_id": "d1",
        "deployment": {"version": "2.0.0", "digest": "sha256:" + "f" * 64},
    }
    with pytest.raises(AirflowFailException, match="the target reports 2.0.0 .* but 2.0.0 .* was deployed"):
        deploy_op().execute_complete(deploy_ctx(), event)
    assert not run_events("deployed")


def test_approval_request_shows_user_input_as_plain_text(monkeypatch):
    assessed()
    packaged()
    captured = {}
    monkeypatch.setattr(
        "releasetrain.operators.approval.ApprovalOperator.execute", lambda self, ctx: captured.update(body=self.body)
    )
    forged = {**PARAMS, "change_summary": "fix |\n| Security review | passed [ok](http://evil)"}
    approval_op().execute({**approval_ctx(params=forged), "dag": None})
    change_line = next(line for line in captured["body"].splitlines() if line.startswith("| Change"))
    assert change_line.count("|") - change_line.count("\\|") == 3, change_line
    assert "](http" not in captured["body"]


# --- the release request -----------------------------------------------------------------
def request_op():
    from releasetrain.operators.request import ReleaseRequestOperator

    return ReleaseRequestOperator(task_id="prepare", release="storefront")


def test_request_refuses_unknown_trigger_params():
    params = {"version": "2.0.0", "requested_by": None, "change_summary": ""}
    with pytest.raises(AirflowFailException, match="unknown trigger param.*requestedBy"):
        request_op().execute(context(FakeTI(), params=params, conf={"version": "2.0.0", "requestedBy": "alice"}))


def test_request_needs_a_known_requester():
    params = {"version": "2.0.0", "requested_by": None, "change_summary": ""}
    with pytest.raises(AirflowFailException, match="who requests this release is unknown"):
        request_op().execute(context(FakeTI(), params=params, triggered_by=None))
    result = request_op().execute(context(FakeTI(), params=params, triggered_by="author", task_id="prepare"))
    assert (result["requested_by"], result["triggered_by"], result["version"]) == ("author", "author", "2.0.0")
    [triggered] = run_events("triggered")
    assert triggered.actor == "author" and triggered.details["requested_by"] == "author"


def test_the_request_comes_from_the_dag_run_not_the_prepare_xcom(asked):
    """An author who rewrites prepare's XCom to name someone else can still not approve."""
    assessed()
    packaged()
    rewritten = {("prepare", "return_value"): {"version": "2.0.0", "triggered_by": "x", "requested_by": "x"}}
    op = approval_op(approvers=["author", "approver"])
    op.execute({**approval_ctx(xcoms=rewritten), "dag": None})
    assert asked == [[{"id": "approver", "name": "approver"}]], "the DAG run says who triggered it"
    op.execute_complete(approval_ctx(xcoms=rewritten), event("author"))
    [refused] = run_events("approval_refused")
    assert refused.actor == "author" and "author is an author of this release" in refused.details["reason"]


# --- packaging stays inside the project ----------------------------------------------------
def test_package_refuses_sources_outside_the_project(signing, store, tmp_path):
    (tmp_path / "project").mkdir()
    op = BundlePackageOperator(
        task_id="package",
        release="storefront",
        project_root=str(tmp_path / "project"),
        components=[{"name": "web", "source": "../"}],
        artifact_store=store,
    )
    with pytest.raises(AirflowFailException, match="stay inside the project"):
        op.execute(context(FakeTI(), task_id="package"))


def test_package_refuses_a_source_url_outside_the_configured_roots(signing, store, tmp_path):
    """Issue 11 finding 4: a file:// source packaged the process environment (keys, secrets)."""
    op = BundlePackageOperator(
        task_id="package",
        release="storefront",
        project_root=str(tmp_path),
        components=[{"name": "web", "source": "file:///proc/self/environ"}],
        artifact_store=store,
    )
    with pytest.raises(AirflowFailException, match="not under a configured source root"):
        op.execute(context(FakeTI(), task_id="package"))
    assert not run_events("packaged") and not list((tmp_path / "artifacts").glob("**/bundle.tar.gz"))


def test_package_refuses_symlinks(signing, store, tmp_path):
    src = tmp_path / "project" / "web"
    src.mkdir(parents=True)
    (src / "index.html").write_text("ok")
    (src / "key.pem").symlink_to("/etc/hostname")
    op = BundlePackageOperator(
        task_id="package",
        release="storefront",
        project_root=str(tmp_path / "project"),
        components=[{"name": "web", "source": "web"}],
        artifact_store=store,
    )
    with pytest.raises(AirflowFailException, match="is a symbolic link"):
        op.execute(context(FakeTI(), task_id="package"))


def test_a_file_source_root_cannot_be_left_through_a_link(signing, store, tmp_path, monkeypatch):
    """A link under a file:// source root that leads out of it is not followed; sources
    really under the root are packaged."""
    root = tmp_path / "sources"
    (root / "web").mkdir(parents=True)
    (root / "web" / "index.html").write_text("ok")
    (root / "leak").symlink_to("/proc/self")
    monkeypatch.setenv("RELEASETRAIN_SOURCE_ROOTS", f"file://{root}")

    def package(source):
        return BundlePackageOperator(
            task_id="package",
            release="storefront",
            project_root=str(tmp_path),
            components=[{"name": "web", "source": source, "version": "1.0.0"}],
            artifact_store=store,
        ).execute(context(FakeTI(), task_id="package"))

    for scheme in ("file", "FILE", "File"):
        with pytest.raises(AirflowFailException, match="outside its source root"):
            package(f"{scheme}://{root}/leak/environ")
    assert not run_events("packaged")
    assert package(f"file://{root}/web")["files"] == 1


def test_deploy_refuses_without_a_window_decision(monkeypatch):
    deploy_ready()
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(AirflowFailException, match="no window decision recorded in the ledger by prod.window"):
            deploy_op(window_task_id="prod.window").execute(deploy_ctx())
        assert fleet.deployments == {}
    # a window decision recorded by another task (or for another environment) is no decision
    seed("window_passed", environment="prod", task_id="prod.other")
    seed("window_passed", environment="staging", task_id="prod.window")
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(AirflowFailException, match="no window decision recorded in the ledger by prod.window"):
            deploy_op(window_task_id="prod.window").execute(deploy_ctx())
        assert fleet.deployments == {}


def test_a_recorded_emergency_exception_passes_the_window_gate(monkeypatch):
    deploy_ready()
    seed("exception", environment="prod", task_id="prod.window", reason="incident 42")
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(TaskDeferred):
            deploy_op(window_task_id="prod.window").execute(deploy_ctx())
        assert len(fleet.deployments) == 1


def test_a_cleared_deploy_still_knows_what_to_roll_back_to(monkeypatch):
    """A deploy task run again (retry/clear) after it succeeded: the ledger's ``deploy_started``
    record of its first try says what ran before, not the target (which now runs the new version)."""
    deploy_ready()
    with running_fleet(seed={"prod": "1.0.0"}, deploy_seconds=0) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        seed_digest = fleet.env("prod")["digest"]
        first = deploy_op().execute(deploy_ctx())  # a target this fast: done at the first look
        assert first["version"] == "2.0.0" and first["noop"] is False
        ctx = deploy_ctx()  # a new try: nothing in XCom
        result = deploy_op().execute(ctx)  # the earlier try's deployment is live
        assert result["noop"] is False, "this run changed prod: its own earlier try deployed it"
        assert (result["previous_version"], result["previous_digest"]) == ("1.0.0", seed_digest)
        before = {"version": "1.0.0", "digest": seed_digest, "noop": False}
        assert ctx["ti"].xcoms[("__self__", PRE_DEPLOY_KEY)] == before, "shown in XCom too"
    [started] = run_events("deploy_started")  # recorded once, by the first try
    assert started.details["before"] == before


def test_a_deployment_over_at_the_first_look_is_not_deferred(monkeypatch):
    """Issue 12 (orchestration overhead): a deploy the target finished at once goes on in the
    same task process, exactly as the trigger's event would have resumed it (a deploy still
    running is waited for in the triggerer, never in the worker: the next test)."""
    deploy_ready()
    with running_fleet(seed={"prod": "1.0.0"}, deploy_seconds=0) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        result = deploy_op().execute(deploy_ctx())
        assert (result["version"], result["noop"]) == ("2.0.0", False)
        assert fleet.env("prod")["version"] == "2.0.0" and len(fleet.deployments) == 1
    assert [e.details["version"] for e in run_events("deployed")] == ["2.0.0"]


def test_a_deployment_still_running_at_the_first_look_is_waited_for_in_the_triggerer(monkeypatch):
    deploy_ready()
    with running_fleet(seed={"prod": "1.0.0"}, deploy_seconds=30) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(TaskDeferred):
            deploy_op().execute(deploy_ctx())
        assert fleet.env("prod")["version"] == "1.0.0"


def test_a_retried_deploy_reattaches_to_its_running_deployment(monkeypatch):
    deploy_ready()
    with running_fleet(seed={"prod": "1.0.0"}, deploy_seconds=60) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(TaskDeferred) as first:
            deploy_op().execute(deploy_ctx())
        with pytest.raises(TaskDeferred) as again:
            deploy_op().execute(deploy_ctx())
        assert again.value.trigger.deployment_id == first.value.trigger.deployment_id
        assert len(fleet.deployments) == 1, "no second deployment was started"


# --- risk assessment and change record ----------------------------------------------------
def risk_op(**over):
    from releasetrain.operators.governance import RiskAssessmentOperator

    options = dict(
        task_id="assess_risk",
        release="storefront",
        environments=["dev", "staging", "prod"],
        production=["prod"],
        components=2,
        schema_migration=False,
        rollback_plan="redeploy the previous version with prod.rollback",
        backout_minutes=10,
        declared_gates={"prod": {"quorum": 1, "reviews": []}},
        available_reviews={"prod": ["security"]},
    )
    return RiskAssessmentOperator(**{**options, **over})


def risk_context(params: dict | None = None):
    return context(FakeTI(), task_id="assess_risk", params=params)


def test_risk_assessment_opens_the_change_and_selects_gates():
    result = risk_op().execute(risk_context())
    assert result["level"] == "moderate" and result["gates"]["prod"] == {"quorum": 1, "reviews": []}
    assert result["change"]["state"] == "authorize" and result["change"]["number"].startswith("RTC-")
    kinds = [e.kind for e in run_events()]
    assert kinds == ["change_opened", "change_transition", "risk_assessed", "change_transition"]
    [assessment] = run_events("risk_assessed")
    assert assessment.details["task_id"] == "assess_risk" and assessment.details["level"] == "moderate"
    assert assessment.details["gates"]["prod"] == {"quorum": 1, "reviews": []}
    assert assessment.details["change"]["number"] == result["change"]["number"]


def test_high_risk_without_rollback_plan_is_refused_before_packaging_and_its_change_canceled():
    with pytest.raises(AirflowFailException, match="without a rollback plan and without a backout estimate"):
        risk_op(schema_migration=True, rollback_plan=None, backout_minutes=None).execute(risk_context())
    events = run_events()
    assert events[0].kind == "risk_assessed" and "refused" in events[0].details
    assert "level" not in events[0].details, "a refused assessment selects no gates"
    assert events[-1].kind == "change_closed" and events[-1].details["state"] == "canceled"


def test_high_risk_with_a_plan_raises_the_production_gates():
    result = risk_op(schema_migration=True, components=6).execute(risk_context())
    assert result["level"] == "high"
    assert result["gates"]["prod"] == {"quorum": 2, "reviews": ["security"]}
    [assessment] = run_events("risk_assessed")
    assert assessment.details["gates"]["prod"] == {"quorum": 2, "reviews": ["security"]}


@pytest.mark.parametrize(
    ("emergency", "outcome", "walk", "close_code"),
    [
        (False, "success", ["New", "Assess", "Authorize", "Scheduled", "Implement", "Review", "Closed"], "successful"),
        (True, "rolled_back", ["New", "Authorize", "Scheduled", "Implement", "Review", "Closed"], "unsuccessful"),
    ],
)
def test_a_release_run_drives_its_servicenow_change_through_the_state_model(
    monkeypatch, emergency, outcome, walk, close_code
):
    from releasetrain.core.change import ChangeState
    from releasetrain.operators.governance import close_change, move_change
    from tests.servers.servicenow import running_servicenow

    with running_servicenow("svc", "pw") as (snow, url):
        monkeypatch.setenv("AIRFLOW_CONN_SNOW_OPS", http_connection(url, ("svc", "pw")))
        params = {
            **PARAMS,
            "emergency": emergency,
            "emergency_justification": "incident 42: checkout is down for every customer" if emergency else "",
        }
        ctx = risk_context(params)
        risk = risk_op(change_backend="servicenow", change_conn_id="snow_ops").execute(ctx)
        assert risk["change"]["change_type"] == ("emergency" if emergency else "normal")
        # later tasks find the change through the risk assessment's ledger record, not its XCom
        later = context(FakeTI(), params=params, task_id="prod.deploy")
        move_change(later, "storefront", ChangeState.IMPLEMENT, "deploying to prod")
        close_change(later, "storefront", outcome, "done")
        sys_id = risk["change"]["id"]
        assert snow.walk(sys_id) == walk
        assert snow.records[sys_id]["close_code"] == close_code
        mirrored = [e.details["state"] for e in run_events() if e.kind.startswith("change_")]
        assert mirrored == [state.lower() for state in walk], "every ServiceNow state is in the ledger too"


class _Receiver:
    """A local webhook receiver that keeps what it was sent."""

    def __init__(self, status: int = 200):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server API
                received.append((self.path, json.loads(self.rfile.read(int(self.headers["Content-Length"])))))
                self.send_response(status)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


def test_every_rollback_leaves_snapshot_postmortem_and_notification(monkeypatch, tmp_path):
    import time

    receiver, broken = _Receiver(), _Receiver(status=500)
    monkeypatch.setenv("AIRFLOW_CONN_HOOK_OK", json.dumps({"conn_type": "http", "host": receiver.url}))
    monkeypatch.setenv("AIRFLOW_CONN_HOOK_BROKEN", json.dumps({"conn_type": "http", "host": broken.url}))
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        old = fleet.env("prod")["digest"]
        fleet.env("prod").update(version="2.0.0", digest=DIGEST)
        op = RollbackOperator(
            task_id="prod.rollback",
            release="storefront",
            environment="prod",
            deploy_target_conn_id="t_prod",
            deploy_task_id="prod.deploy",
            notifications=[{"conn_id": "hook_ok", "endpoint": "incidents"}, {"conn_id": "hook_broken"}],
            artifact_store=f"file://{tmp_path}",
        )
        deploy_started({"version": "1.0.0", "digest": old, "noop": False})
        from releasetrain.operators._common import record

        record(  # as prod.health records it (``seed`` cannot take a ``kind`` detail)
            context(FakeTI(), task_id="prod.health"),
            "checks_failed",
            "storefront",
            environment="prod",
            details={"kind": "health", "reason": "5 of 5 rounds failed"},
        )
        # the deploy's result stays in XCom for the snapshot's display
        ti = FakeTI({("prod.deploy", "return_value"): {"version": "2.0.0", "digest": DIGEST, "deployment_id": None}})
        ctx = context(ti, task_id="prod.rollback")
        with pytest.raises(TaskDeferred):
            op.execute(ctx)
        # the snapshot exists before anything was rolled back, and shows what ran then
        snapshot_path = ti.xcoms[("__self__", "snapshot")]
        ti.xcoms[("prod.rollback", "snapshot")] = snapshot_path
        snapshot = json.loads(open(snapshot_path.removeprefix("file://")).read())
        assert snapshot["target_status"]["version"] == "2.0.0"
        assert any(e["kind"] == "checks_failed" for e in snapshot["ledger_events"])
        deadline = time.monotonic() + 10
        from releasetrain.hooks.deploy_target import DeployTargetHook

        while DeployTargetHook("t_prod").get_status()["version"] != "1.0.0":  # the fleet finishes on reads
            assert time.monotonic() < deadline
            time.sleep(0.1)
        result = op.execute_complete(ctx, {"state": "succeeded", "message": "", "deployment_id": "x"})
    postmortem = open(result["postmortem"].removeprefix("file://")).read()
    assert "storefront 2.0.0 rolled back in prod" in postmortem and "5 of 5 rounds failed" in postmortem
    assert "## Timeline" in postmortem and "health checks FAILED" in postmortem
    (_, started), (path, payload) = receiver.received  # issue 14: the start was told first
    assert started["event"] == "releasetrain.rollback.started" and started["restore_to"] == "1.0.0"
    assert path == "/incidents" and payload["event"] == "releasetrain.rollback.succeeded"
    assert payload["restored_version"] == "1.0.0" and payload["snapshot"] == snapshot_path
    assert result["notified"] == ["hook_ok"] and "HTTP 500" in result["notification_errors"][0]
    last = run_events()[-1]
    assert last.kind == "rollback" and last.details["postmortem"] == result["postmortem"]
    assert last.details["failed_version"] == "2.0.0" and last.details["task_id"] == "prod.rollback"


def test_a_retried_deploy_that_finds_its_own_deployment_live_is_no_noop(monkeypatch):
    """Issue 11 finding 7: a retried deploy recorded `noop` with the new version as previous."""
    deploy_ready()
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        old = dict(fleet.env("prod"))
        # the first try recorded what ran before it, deployed, and died before recording the end
        seed(
            "deploy_started",
            environment="prod",
            task_id="prod.deploy",
            version="2.0.0",
            digest=DIGEST,
            before={"version": "1.0.0", "digest": old["digest"], "noop": False},
        )
        fleet.env("prod").update(version="2.0.0", digest=DIGEST)
        result = deploy_op().execute(deploy_ctx())
        assert (result["noop"], result["previous_version"]) == (False, "1.0.0")
        [deployed] = run_events("deployed")
        assert deployed.details["noop"] is False and deployed.details["previous_version"] == "1.0.0"


# --- component versions (issue 13, packaging): one version, the same bytes everywhere -----------
def _packager(release: str, root: Path, components: list[dict], store: str) -> BundlePackageOperator:
    return BundlePackageOperator(
        task_id="package", release=release, project_root=str(root), components=components, artifact_store=store
    )


def test_a_component_version_means_the_same_bytes_in_every_release(signing, store, tmp_path):
    for name, text in (("a", "<h1>3.1.0</h1>"), ("b", "<h1>3.1.0, rebuilt</h1>"), ("c", "<h1>3.1.0</h1>")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "index.html").write_text(text)
    (tmp_path / "api").mkdir()
    (tmp_path / "api" / "main.py").write_text("print('api')")
    first = _packager("storefront", tmp_path, [{"name": "web", "source": "a", "version": "3.1.0"}], store)
    packaged = first.execute(context(FakeTI(), task_id="package"))
    [web] = packaged["components"]
    assert web["version"] == "3.1.0" and web["digest"].startswith("sha256:")
    # the same component version with the same bytes, from another team's release: fine
    same = _packager("checkout", tmp_path, [{"name": "web", "source": "c", "version": "3.1.0"}], store)
    assert same.execute(context(FakeTI(), task_id="package"))["components"] == [web]
    # other bytes under the same version: refused naming both digests, recorded, nothing stored
    other = _packager(
        "payments",
        tmp_path,
        [{"name": "web", "source": "b", "version": "3.1.0"}, {"name": "api", "source": "api", "version": "1.0.0"}],
        store,
    )
    with pytest.raises(AirflowFailException, match="component web 3.1.0 is already packaged with digest") as refused:
        other.execute(context(FakeTI(), task_id="package"))
    assert web["digest"] in str(refused.value) and "first by release storefront 2.0.0" in str(refused.value)
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    [event] = hook.events(release="payments", run_id=RUN_ID, kind="gate_refused")
    hook.close()
    assert event.details["step"] == "package" and web["digest"] in event.details["reasons"][0]
    base = tmp_path / "artifacts"
    assert not (base / "payments").exists(), "no bundle of the refused release"
    assert not (base / "_components" / "api").exists(), "a refusal indexes none of the release's components"
    index = json.loads((base / "_components" / "web" / "3.1.0.json").read_text())
    assert (index["digest"], index["release"]) == (web["digest"], "storefront")


# --- the version class from the API contract (issue 13, scope) --------------------------------
def test_a_breaking_contract_change_needs_a_major_version(signing, store, tmp_path):
    import copy

    import yaml

    from tests.core.test_contract import BASE

    source = tmp_path / "cart"
    source.mkdir()
    (source / "main.py").write_text("print('cart')")

    def package_version(version: str, contract: dict) -> dict:
        (source / "openapi.yaml").write_text(yaml.safe_dump(contract))
        op = BundlePackageOperator(
            task_id="package",
            release="storefront",
            project_root=str(tmp_path),
            components=[{"name": "cart-api", "source": "cart", "contract": "openapi.yaml"}],
            artifact_store=store,
            production=["prod"],
        )
        return op.execute(context(FakeTI(), task_id="package", params={**PARAMS, "version": version}))

    first = package_version("1.0.0", BASE)
    assert first["contracts"] == [
        {
            "component": "cart-api",
            "contract": "openapi.yaml",
            "version": "1.0.0",
            "live_release": None,
            "live_version": None,
            "class": None,
            "changes": [],
        }
    ], "nothing live in production yet: nothing to compare"
    seed("deployed", environment="prod", version="1.0.0", digest=first["digest"])
    breaking = copy.deepcopy(BASE)
    del breaking["paths"]["/carts/{id}"]["put"]
    with pytest.raises(AirflowFailException, match="package refused: component cart-api 1.0.0 -> 1.1.0 is a minor"):
        package_version("1.1.0", breaking)
    [refused] = run_events("gate_refused")
    assert refused.details["reasons"] == [
        "component cart-api 1.0.0 -> 1.1.0 is a minor version step, but its API contract changes need a major "
        "version: removed endpoint PUT /carts/{id}"
    ]
    base = tmp_path / "artifacts"
    assert not (base / "storefront" / "1.1.0").exists()
    assert not (base / "_components" / "cart-api" / "1.1.0.json").exists(), "a refusal claims no version"
    major = package_version("2.0.0", breaking)
    [contract] = major["contracts"]
    assert (contract["live_version"], contract["class"]) == ("1.0.0", "major")
    assert contract["changes"] == ["removed endpoint PUT /carts/{id}"]
    [packaged] = [e for e in run_events("packaged") if e.details["version"] == "2.0.0"]
    assert packaged.details["contracts"] == [contract], "the decision is recorded with the bundle"
    # an invalid contract is refused naming the file
    with pytest.raises(AirflowFailException, match="cart-api/openapi.yaml: not a valid OpenAPI document"):
        package_version("2.1.0", {"openapi": "3.0.3", "info": {"title": "x"}, "paths": {}})


# --- retention (issue 13, packaging) ------------------------------------------------------------
def test_retention_plans_first_then_deletes_only_what_its_recorded_plan_allowed(signing, store, tmp_path):
    from releasetrain.hooks.bundle_store import BundleStoreHook
    from releasetrain.hooks.ledger import LedgerHook
    from releasetrain.operators.retention import RetentionDeleteOperator, RetentionPlanOperator

    for i in range(4):
        op = BundlePackageOperator(
            task_id="package",
            release="storefront",
            components=COMPONENTS,
            project_root=str(PROJECT_ROOT),
            artifact_store=store,
        )
        op.execute(context(FakeTI(), task_id="package", params={**PARAMS, "version": f"2.{i}.0"}))
    seed("deployed", environment="prod", version="2.0.0")
    seed("run_state", actor="airflow", state="success")  # the packaging run is over
    policy = tmp_path / "retention.yaml"
    policy.write_text("keep_last: 1\nlegal_holds: [{release: storefront, version: 2.1.0, reason: audit AUD-17}]\n")
    retention = {"dag_id": "releasetrain_retention", "run_id": "scheduled__weekly"}

    def run(op, dry_run: bool):
        ctx = context(FakeTI(), task_id=op.task_id, params={"dry_run": dry_run})
        ctx["run_id"] = retention["run_id"]
        ctx["dag_run"].dag_id = retention["dag_id"]
        return op.execute(ctx)

    plan = run(RetentionPlanOperator(task_id="plan", artifact_store=store, policy_file=str(policy)), False)
    assert plan["delete"] == [["storefront", "2.2.0"]]
    assert plan["keep"]["storefront"]["2.0.0"] == ["one of the last 1 deployed to prod", "live in prod"]
    assert plan["keep"]["storefront"]["2.1.0"] == ["legal hold: audit AUD-17"]
    assert plan["keep"]["storefront"]["2.3.0"] == ["one of the last 1 packaged"]
    delete = RetentionDeleteOperator(task_id="delete", artifact_store=store, policy_file=str(policy))
    assert run(delete, True) == {"deleted": [], "dry_run": True}
    hook = BundleStoreHook(store)
    assert hook.stored_bundles() == {"storefront": ["2.0.0", "2.1.0", "2.2.0", "2.3.0"]}
    # 2.2.0 is deployed after the plan: still deletable by the recorded plan, kept by today's
    seed("deployed", environment="staging", version="2.2.0")
    assert run(delete, False) == {"deleted": [], "dry_run": False}
    ledger = LedgerHook()
    try:
        kinds = [e.kind for e in ledger.events(release="storefront", run_id=retention["run_id"])]
    finally:
        ledger.close()
    assert kinds == ["retention_planned"]
    # planned again now: 2.2.0 is kept (last deployed to staging); with 2.2.0 forgotten, it goes
    policy.write_text("keep_last: 1\n")
    plan = run(RetentionPlanOperator(task_id="plan", artifact_store=store, policy_file=str(policy)), False)
    assert plan["delete"] == [["storefront", "2.1.0"]], "the hold is lifted: 2.1.0 may go"
    assert run(delete, False) == {"deleted": [["storefront", "2.1.0"]], "dry_run": False}
    assert hook.stored_bundles() == {"storefront": ["2.0.0", "2.2.0", "2.3.0"]}
    assert not (tmp_path / "artifacts" / "storefront" / "2.1.0").exists()
    assert (tmp_path / "artifacts" / "_components").exists(), "the component index outlives its bundles"
    ledger = LedgerHook()
    try:
        [deleted] = [e for e in ledger.events(release="storefront", kind="bundle_deleted")]
    finally:
        ledger.close()
    assert deleted.details["version"] == "2.1.0" and deleted.details["digest"].startswith("sha256:")
    assert deleted.dag_id == "releasetrain_retention"
    # a delete without a recorded plan in its own run deletes nothing (2.2.0 may go by now)
    seed("deployed", environment="staging", version="2.3.0")
    retention["run_id"] = "manual__unplanned"
    assert run(delete, False) == {"deleted": [], "dry_run": False}
    assert hook.stored_bundles() == {"storefront": ["2.0.0", "2.2.0", "2.3.0"]}


# --- shared services (issue 13, environments): depends_on is a gate ------------------------------
NEEDS = [{"release": "cart", "environment": "cart-prod", "min_version": "2.1.0", "wait_minutes": 30}]


def cart_deployed(version: str) -> None:
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    try:
        hook.append(
            "deployed",
            release="cart",
            run_id=f"manual__cart_{version}",
            dag_id="release_cart",
            environment="cart-prod",
            details={"version": version, "noop": False},
        )
    finally:
        hook.close()


def test_a_deploy_waits_deferred_for_the_shared_service_it_needs_and_records_when_it_is_there():
    import asyncio

    from releasetrain.operators.dependency import DependencyGateOperator
    from releasetrain.triggers.dependency import DependencyTrigger

    op = DependencyGateOperator(
        task_id="prod.dependencies", release="storefront", environment="prod", requirements=NEEDS
    )
    cart_deployed("2.0.0")
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context(FakeTI(), task_id="prod.dependencies"))
    trigger = deferred.value.trigger
    assert isinstance(trigger, DependencyTrigger) and trigger.timeout_seconds == 30 * 60
    assert not run_events("dependencies_met")
    # the event's word is not taken: still unmet in the ledger -> refused, recorded
    with pytest.raises(AirflowFailException, match=r"cart runs 2.0.0 in cart-prod \(needs 2.1.0 or newer\)"):
        op.execute_complete(context(FakeTI(), task_id="prod.dependencies"), {"met": True, "problems": []})
    assert "cart runs 2.0.0 in cart-prod" in refusals("prod.dependencies")[0]

    fast = DependencyTrigger(
        requirements=NEEDS, ledger_conn_id="releasetrain_ledger", timeout_seconds=5, poll_interval=0.05
    )

    async def wait_and_release():
        async def later():
            await asyncio.sleep(0.3)
            await asyncio.to_thread(cart_deployed, "2.1.0")

        task = asyncio.create_task(later())
        async for event in fast.run():
            await task
            return event.payload

    assert asyncio.run(wait_and_release()) == {"met": True, "problems": []}
    result = op.execute_complete(context(FakeTI(), task_id="prod.dependencies"), {"met": True, "problems": []})
    assert result["requirements"] == NEEDS
    [met] = run_events("dependencies_met")
    assert met.environment == "prod" and met.details["task_id"] == "prod.dependencies"


def test_a_dependency_without_waiting_fails_at_once():
    from releasetrain.operators.dependency import DependencyGateOperator

    op = DependencyGateOperator(
        task_id="prod.dependencies",
        release="storefront",
        environment="prod",
        requirements=[{**NEEDS[0], "wait_minutes": 0}],
    )
    with pytest.raises(AirflowFailException, match="cart runs nothing in cart-prod yet"):
        op.execute(context(FakeTI(), task_id="prod.dependencies"))


def test_the_deploy_asks_again_a_dependency_step_marked_success_by_hand_proves_nothing(monkeypatch):
    deploy_ready()
    cart_deployed("2.0.0")
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(AirflowFailException, match="cart runs 2.0.0 in cart-prod"):
            deploy_op(requires=NEEDS).execute(deploy_ctx())
        assert fleet.deployments == {}, "nothing was sent to the target"


def test_a_component_record_is_never_read_half_written_while_packagings_race(store):
    """Two packagings of one component version at once (the CI run where two releases of
    the same web bundle started together): one claim wins, the other reads its whole record,
    and no reader ever sees an empty or cut-short file."""
    import threading

    from releasetrain.hooks.bundle_store import BundleStoreHook

    hook = BundleStoreHook(store)
    claims = [
        {"component": "web", "version": f"9.{i}.0", "sha256": "a" * 64, "release": f"r{n}", "padding": "x" * 200_000}
        for i in range(20)
        for n in range(2)
    ]
    results, errors, read = {}, [], []

    def claim(c: dict) -> None:
        try:
            results[(c["version"], c["release"])] = hook.claim_component(c)
        except Exception as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    def reader() -> None:
        for _ in range(200):
            for i in range(20):
                try:
                    record = hook.component_record("web", f"9.{i}.0")
                except Exception as exc:  # noqa: BLE001
                    errors.append(exc)
                    return
                if record is not None:
                    read.append(record["version"])

    threads = [threading.Thread(target=claim, args=(c,)) for c in claims] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for i in range(20):  # exactly one claim per version won; the other saw the winner's record
        outcomes = [results[(f"9.{i}.0", f"r{n}")] for n in range(2)]
        assert sum(o is None for o in outcomes) == 1, outcomes
        [seen] = [o for o in outcomes if o is not None]
        assert seen["version"] == f"9.{i}.0" and seen["padding"] == "x" * 200_000
    index = Path(store.removeprefix("file://")) / "_components" / "web"
    leftovers = [p for p in index.iterdir() if p.suffix != ".json"]
    assert not leftovers, leftovers


def test_a_rollback_of_several_deploy_units_counts_once_in_the_risk_history():
    """Packaging modular: one environment's rollback records one ``rollback`` per unit; the
    release rolled back once there, not once per unit."""
    from releasetrain.hooks.ledger import LedgerHook
    from tests.helpers import DAG_ID, RELEASE

    hook = LedgerHook()
    try:
        for run_id, environment, unit in (("r1", "prod", "web"), ("r1", "prod", "api"), ("r2", "staging", "web")):
            details = {"unit": unit, "restored_version": "1.0.0", "failed_version": "1.1.0"}
            hook.append(
                "rollback", release=RELEASE, run_id=run_id, dag_id=DAG_ID, environment=environment, details=details
            )
    finally:
        hook.close()
    result = risk_op().execute(risk_context())
    text = json.dumps(result)
    assert "2 rollback(s) of this release in the last 30 days" in text, text
