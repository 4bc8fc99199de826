"""Operators called directly with a task context: packaging, verification, deploy,
approval and rollback decisions (the end-to-end tests run them inside Airflow)."""

from __future__ import annotations

import datetime
import json
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
from tests.helpers import FakeTI, context, http_connection, running_fleet, tamper_bundle

REQUEST = {
    "release": "storefront",
    "version": "2.0.0",
    "triggered_by": "author",
    "requested_by": "dev-lead",
    "change_summary": "x",
    "run_id": "manual__test",
}
COMPONENTS = [{"name": "storefront-web", "source": "include/demo_fleet/artifacts/storefront-web", "version": None}]


@pytest.fixture
def signing(monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_RELEASETRAIN_SIGNING",
        json.dumps({"conn_type": "generic", "password": generate_private_key_pem()}),
    )


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
    return op.execute(context(FakeTI({("prepare", "return_value"): REQUEST})))


def verify(store: str, packaged: dict) -> dict:
    op = BundleVerifyOperator(task_id="dev.verify", release="storefront", environment="dev", artifact_store=store)
    return op.execute(context(FakeTI({("package", "return_value"): packaged})))


def test_package_then_verify(signing, store, tmp_path):
    packaged = package(store)
    folder = tmp_path / "artifacts" / "storefront" / "2.0.0"
    assert sorted(p.name for p in folder.iterdir()) == ["bundle.sig.json", "bundle.tar.gz", "manifest.json"]
    assert packaged["files"] == 2 and packaged["digest"].startswith("sha256:")
    assert verify(store, packaged) == {
        "environment": "dev",
        "version": "2.0.0",
        "digest": packaged["digest"],
        "verified": True,
    }
    assert package(store)["digest"] == packaged["digest"], "re-packaging the same inputs reuses the bundle"


def test_bundle_altered_after_packaging_fails_verification(signing, store, tmp_path):
    packaged = package(store)
    tamper_bundle(tmp_path / "artifacts" / "storefront" / "2.0.0" / "bundle.tar.gz")
    with pytest.raises(
        AirflowFailException,
        match="dev: bundle storefront 2.0.0 failed verification, nothing will "
        "be deployed: file storefront-web/index.html was changed",
    ):
        verify(store, packaged)


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
        op.execute(context(FakeTI({("prepare", "return_value"): REQUEST})))


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
        op.execute(context(FakeTI({("prepare", "return_value"): REQUEST})))


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
        promotion_gate_task_id="staging.smoke",
        poll_interval=0.1,
    )
    return EnvironmentDeployOperator(**{**defaults, **kw})


def deploy_ti(gate_digest=DIGEST):
    return FakeTI(
        {
            ("prepare", "return_value"): REQUEST,
            ("prod.verify", "return_value"): {"digest": DIGEST},
            ("staging.smoke", "return_value"): {"environment": "staging", "digest": gate_digest, "passed": True},
        }
    )


def test_deploy_defers_and_records_what_ran_before(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}) as (_, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        ti = deploy_ti()
        with pytest.raises(TaskDeferred) as info:
            deploy_op().execute(context(ti))
        assert isinstance(info.value.trigger, DeploymentCompletionTrigger)
        assert info.value.method_name == "execute_complete"
        assert ti.xcoms[("__self__", PRE_DEPLOY_KEY)]["version"] == "1.0.0"


def test_deploy_refuses_a_digest_that_did_not_pass_before(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(AirflowFailException, match="is not the digest that passed staging"):
            deploy_op().execute(context(deploy_ti(gate_digest="sha256:" + "c" * 64)))
        assert fleet.deployments == {}, "nothing was sent to the target"


def test_deploy_of_the_live_version_is_a_noop(monkeypatch):
    with running_fleet(seed={}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        fleet.env("prod").update(version="2.0.0", digest=DIGEST)
        result = deploy_op().execute(context(deploy_ti()))
        assert result["noop"] is True and fleet.deployments == {}


def test_failed_deployment_fails_the_task():
    with pytest.raises(Exception, match="deploying storefront 2.0.0 to prod ended failed: boom"):
        deploy_op().execute_complete(
            context(deploy_ti()), {"state": "failed", "message": "boom", "deployment_id": "d1", "deployment": {}}
        )


# --- approval ---------------------------------------------------------------------------
def approval_op():
    return ReleaseApprovalOperator(
        task_id="prod.approve", release="storefront", environment="prod", approvers=["author", "dev-lead", "approver"]
    )


def event(user, option="Approve", timedout=False):
    return {
        "chosen_options": [option],
        "params_input": {},
        "responded_at": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        "responded_by_user": {"id": user, "name": user} if user else None,
        "timedout": timedout,
    }


def _ledger(run_id="manual__test"):
    from releasetrain.hooks.ledger import LedgerHook

    return [e for e in LedgerHook().events(release="storefront", run_id=run_id)]


@pytest.mark.parametrize(
    "user, reason",
    [
        ("author", "author is an author of this release"),
        ("dev-lead", "dev-lead is an author of this release"),
        ("mallory", "mallory is not an approver"),
    ],
)
def test_refused_response_is_recorded_and_the_request_asked_again(monkeypatch, user, reason):
    asked = []
    monkeypatch.setattr(
        "releasetrain.operators.approval.ApprovalOperator.execute", lambda self, ctx: asked.append(self.assigned_users)
    )
    before = len(_ledger())
    ti = FakeTI({("prepare", "return_value"): REQUEST, ("package", "return_value"): {"digest": DIGEST}})
    approval_op().execute_complete(context(ti), event(user))
    assert asked == [[{"id": "approver", "name": "approver"}]], "asked again, of the eligible approvers only"
    refused = [e for e in _ledger()[before:] if e.kind == "approval_refused"]
    assert len(refused) == 1 and refused[0].actor == user and reason in refused[0].details["reason"]


def test_same_person_never_counts_twice_across_an_environments_approvals(monkeypatch):
    asked = []
    monkeypatch.setattr(
        "releasetrain.operators.approval.ApprovalOperator.execute", lambda self, ctx: asked.append(self.assigned_users)
    )
    slot2 = ReleaseApprovalOperator(
        task_id="prod.approve_2",
        release="storefront",
        environment="prod",
        approvers=["approver", "approver2", "admin"],
        slot=2,
        quorum=2,
        sibling_task_ids=["prod.approve", "prod.approve_2"],
    )
    first = {"chosen_options": ["Approve"], "responded_by_user": {"id": "approver"}}
    ti = FakeTI(
        {
            ("prepare", "return_value"): REQUEST,
            ("package", "return_value"): {"digest": DIGEST},
            ("prod.approve", "return_value"): first,
        }
    )
    slot2.execute(context(ti))
    assert asked[-1] == [{"id": "approver2", "name": "approver2"}, {"id": "admin", "name": "admin"}]
    slot2.execute_complete(context(ti), event("approver"))  # the first approver again: refused, asked again
    assert len(asked) == 2
    assert "already approved prod.approve" in _ledger()[-2].details["reason"]
    result = slot2.execute_complete(context(ti), event("approver2"))
    assert result["responded_by_user"]["id"] == "approver2" and result["slot"] == 2


def test_slot_beyond_the_quorum_skips_itself():
    slot2 = ReleaseApprovalOperator(
        task_id="prod.approve_2", release="storefront", environment="prod", approvers=["a", "b"], slot=2
    )
    ti = FakeTI({("prepare", "return_value"): REQUEST, ("assess_risk", "return_value"): {"gates": {}}})
    with pytest.raises(AirflowSkipException, match="quorum needed: 1"):
        slot2.execute(context(ti))
    ti.xcoms[("assess_risk", "return_value")] = {"gates": {"prod": {"quorum": 2, "reviews": ["security"]}}}
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
            {**context(ti), "task_instance": type("T", (), {"id": "x"})()}
        )  # needed: asks (no supervisor here)


def test_approval_by_an_approver_passes_and_reject_fails_cleanly():
    ti = FakeTI({("prepare", "return_value"): REQUEST, ("package", "return_value"): {"digest": DIGEST}})
    result = approval_op().execute_complete(context(ti), event("approver"))
    assert result["responded_by_user"]["id"] == "approver" and result["digest"] == DIGEST
    assert _ledger()[-1].kind == "approval_given" and _ledger()[-1].details["digest"] == DIGEST
    with pytest.raises(AirflowFailException, match="rejected for prod by approver"):
        approval_op().execute_complete(context(ti), event("approver", "Reject"))
    assert _ledger()[-1].kind == "approval_rejected"
    with pytest.raises(AirflowFailException, match="no answer before the timeout"):
        approval_op().execute_complete(context(ti), event(None, "Reject", timedout=True))
    assert _ledger()[-1].kind == "approval_timed_out"


def test_request_assigns_only_non_authors(monkeypatch):
    captured = {}
    monkeypatch.setattr(
        "releasetrain.operators.approval.ApprovalOperator.execute",
        lambda self, ctx: captured.update(users=self.assigned_users, body=self.body),
    )
    ti = FakeTI({("prepare", "return_value"): REQUEST, ("package", "return_value"): {"digest": DIGEST}})
    approval_op().execute({**context(ti), "dag": None})
    assert captured["users"] == [{"id": "approver", "name": "approver"}]
    assert DIGEST in captured["body"] and "2.0.0" in captured["body"]


def test_request_without_eligible_approver_fails():
    op = ReleaseApprovalOperator(task_id="a", release="storefront", environment="prod", approvers=["author"])
    with pytest.raises(AirflowFailException, match="no eligible approver"):
        op.execute(context(FakeTI({("prepare", "return_value"): REQUEST})))


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


@pytest.mark.parametrize(
    "pre, reason",
    [(None, "deployed nothing to prod"), ({"version": "2.0.0", "digest": DIGEST, "noop": True}, "changed nothing")],
)
def test_rollback_only_undoes_what_this_run_did(pre, reason):
    ti = FakeTI({("prod.deploy", PRE_DEPLOY_KEY): pre} if pre else {})
    with pytest.raises(AirflowSkipException, match=reason):
        rollback_op().execute(context(ti))


def test_rollback_starts_and_defers(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        old = fleet.env("prod")["digest"]
        fleet.env("prod")["history"].append({"version": "2.0.0", "digest": DIGEST})
        fleet.env("prod").update(version="2.0.0", digest=DIGEST)
        ti = FakeTI({("prod.deploy", PRE_DEPLOY_KEY): {"version": "1.0.0", "digest": old, "noop": False}})
        with pytest.raises(TaskDeferred):
            rollback_op().execute(context(ti))
        [dep] = fleet.deployments.values()
        assert (dep["kind"], dep["version"]) == ("rollback", "1.0.0")


def test_approval_retries_for_infrastructure_failures_only():
    op = approval_op()
    assert op.retries == 2
    # decisions raise AirflowFailException, which Airflow never retries
    ti = FakeTI({("prepare", "return_value"): REQUEST})
    with pytest.raises(AirflowFailException):
        op.execute_complete(context(ti), event("approver", "Reject"))


# --- approvals are checked again where they are used ------------------------------------
def approved_deploy_op(**over):
    options = dict(
        approval_task_ids=["prod.approve", "prod.approve_2", "prod.review_security"],
        approvers=["approver", "approver2"],
        review_members={"security": ["secops", "approver2"]},
    )
    return deploy_op(**{**options, **over})


def yes(user, digest=DIGEST, group=None):
    return {"chosen_options": ["Approve"], "responded_by_user": {"id": user}, "digest": digest, "group": group}


HIGH = {"gates": {"prod": {"quorum": 2, "reviews": ["security"]}}}


@pytest.mark.parametrize(
    "approvals, risk, reason",
    [
        pytest.param({}, None, "0 of 1 required distinct approvals", id="marked-success-by-hand"),
        pytest.param(
            {"prod.approve": {"chosen_options": ["Reject"], "responded_by_user": {"id": "approver"}}},
            None,
            "0 of 1 required",
            id="rejected",
        ),
        pytest.param({"prod.approve": yes("author")}, None, "author is an author of this release", id="author"),
        pytest.param(
            {"prod.approve": yes("approver", digest="sha256:" + "e" * 64)},
            None,
            "approved bundle sha256:eee",
            id="digest-changed-after-approval",
        ),
        pytest.param({"prod.approve": yes("approver")}, HIGH, "1 of 2 required distinct approvals", id="quorum"),
        pytest.param(
            {"prod.approve": yes("approver"), "prod.approve_2": yes("approver")},
            HIGH,
            "one person never counts twice",
            id="same-user-twice",
        ),
        pytest.param(
            {"prod.approve": yes("approver"), "prod.approve_2": yes("approver2")},
            HIGH,
            "readiness review of \\['security'\\] has not approved",
            id="review-missing",
        ),
        pytest.param(
            {
                "prod.approve": yes("approver"),
                "prod.approve_2": yes("approver2"),
                "prod.review_security": yes("approver2", group="security"),
            },
            HIGH,
            "approver2 gave both",
            id="review-by-a-quorum-approver",
        ),
    ],
)
def test_deploy_refuses_without_valid_recorded_approvals(monkeypatch, approvals, risk, reason):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        ti = deploy_ti()
        for task_id, value in approvals.items():
            ti.xcoms[(task_id, "return_value")] = value
        if risk:
            ti.xcoms[("assess_risk", "return_value")] = risk
        with pytest.raises(AirflowFailException, match=reason):
            approved_deploy_op().execute(context(ti))
        assert fleet.deployments == {}


def test_deploy_proceeds_with_valid_recorded_approvals(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}) as (_, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        ti = deploy_ti()
        ti.xcoms[("prod.approve", "return_value")] = yes("approver")
        with pytest.raises(TaskDeferred):
            approved_deploy_op().execute(context(ti))
        ti = deploy_ti()
        ti.xcoms.update(
            {
                ("assess_risk", "return_value"): HIGH,
                ("prod.approve", "return_value"): yes("approver"),
                ("prod.approve_2", "return_value"): yes("approver2"),
                ("prod.review_security", "return_value"): yes("secops", group="security"),
            }
        )
        with pytest.raises(TaskDeferred):
            approved_deploy_op().execute(context(ti))


def test_only_the_owning_team_releases_into_its_environment(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(AirflowFailException, match="may not release into prod: only its owners"):
            deploy_op(owners=["approver", "admin"]).execute(context(deploy_ti()))
        assert fleet.deployments == {}


def test_deploy_refuses_what_the_target_did_not_deploy():
    event = {
        "state": "succeeded",
        "message": "",
        "deployment_id": "d1",
        "deployment": {"version": "2.0.0", "digest": "sha256:" + "f" * 64},
    }
    with pytest.raises(Exception, match="the target reports 2.0.0 .* but 2.0.0 .* was deployed"):
        deploy_op().execute_complete(context(deploy_ti()), event)


def test_approval_request_shows_user_input_as_plain_text(monkeypatch):
    captured = {}
    monkeypatch.setattr(
        "releasetrain.operators.approval.ApprovalOperator.execute", lambda self, ctx: captured.update(body=self.body)
    )
    forged = {**REQUEST, "change_summary": "fix |\n| Security review | passed [ok](http://evil)"}
    ti = FakeTI({("prepare", "return_value"): forged, ("package", "return_value"): {"digest": DIGEST}})
    approval_op().execute({**context(ti), "dag": None})
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
    result = request_op().execute(context(FakeTI(), params=params, triggered_by="author"))
    assert (result["requested_by"], result["triggered_by"], result["version"]) == ("author", "author", "2.0.0")


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
    with pytest.raises(AirflowFailException, match="lies outside the project"):
        op.execute(context(FakeTI({("prepare", "return_value"): REQUEST})))


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
        op.execute(context(FakeTI({("prepare", "return_value"): REQUEST})))


def test_deploy_refuses_without_a_window_decision(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(AirflowFailException, match="no decision recorded by prod.window"):
            deploy_op(window_task_id="prod.window").execute(context(deploy_ti()))
        assert fleet.deployments == {}


def test_a_cleared_deploy_still_knows_what_to_roll_back_to(monkeypatch):
    """A deploy task run again (retry/clear) after it succeeded: the target says this run
    deployed the live version, so the rollback point is what ran before it."""
    with running_fleet(seed={"prod": "1.0.0"}, deploy_seconds=0) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        seed_digest = fleet.env("prod")["digest"]
        with pytest.raises(TaskDeferred):
            deploy_op().execute(context(deploy_ti()))
        ti = deploy_ti()
        result = deploy_op().execute(context(ti))  # the earlier try's deployment finished meanwhile
        assert result["noop"] is True
        assert ti.xcoms[("__self__", PRE_DEPLOY_KEY)] == {"version": "1.0.0", "digest": seed_digest, "noop": False}


def test_a_retried_deploy_reattaches_to_its_running_deployment(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}, deploy_seconds=60) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(TaskDeferred) as first:
            deploy_op().execute(context(deploy_ti()))
        with pytest.raises(TaskDeferred) as again:
            deploy_op().execute(context(deploy_ti()))
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


def risk_context():
    import uuid

    ctx = context(FakeTI({("prepare", "return_value"): REQUEST}))
    ctx["run_id"] = f"manual__{uuid.uuid4().hex[:8]}"
    return ctx


def test_risk_assessment_opens_the_change_and_selects_gates():
    ctx = risk_context()
    result = risk_op().execute(ctx)
    assert result["level"] == "moderate" and result["gates"]["prod"] == {"quorum": 1, "reviews": []}
    assert result["change"]["state"] == "authorize" and result["change"]["number"].startswith("RTC-")
    kinds = [e.kind for e in _ledger(ctx["run_id"])]
    assert kinds == ["change_opened", "change_transition", "risk_assessed", "change_transition"]


def test_high_risk_without_rollback_plan_is_refused_before_packaging_and_its_change_canceled():
    ctx = risk_context()
    with pytest.raises(AirflowFailException, match="without a rollback plan and without a backout estimate"):
        risk_op(schema_migration=True, rollback_plan=None, backout_minutes=None).execute(ctx)
    events = _ledger(ctx["run_id"])
    assert events[0].kind == "risk_assessed" and "refused" in events[0].details
    assert events[-1].kind == "change_closed" and events[-1].details["state"] == "canceled"


def test_high_risk_with_a_plan_raises_the_production_gates():
    result = risk_op(schema_migration=True, components=6).execute(risk_context())
    assert result["level"] == "high"
    assert result["gates"]["prod"] == {"quorum": 2, "reviews": ["security"]}


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
        ctx = risk_context()
        request = {**REQUEST, "emergency": emergency}
        ctx["ti"].xcoms[("prepare", "return_value")] = request
        risk = risk_op(change_backend="servicenow", change_conn_id="snow_ops").execute(ctx)
        ctx["ti"].xcoms[("assess_risk", "return_value")] = risk
        assert risk["change"]["change_type"] == ("emergency" if emergency else "normal")
        move_change(ctx, "storefront", ChangeState.IMPLEMENT, "deploying to prod")
        close_change(ctx, "storefront", outcome, "done")
        sys_id = risk["change"]["id"]
        assert snow.walk(sys_id) == walk
        assert snow.records[sys_id]["close_code"] == close_code
        mirrored = [e.details["state"] for e in _ledger(ctx["run_id"]) if e.kind.startswith("change_")]
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
    import uuid

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
        ti = FakeTI(
            {
                ("prepare", "return_value"): REQUEST,
                ("prod.deploy", PRE_DEPLOY_KEY): {"version": "1.0.0", "digest": old, "noop": False},
                ("prod.deploy", "return_value"): {"version": "2.0.0", "digest": DIGEST, "deployment_id": None},
            }
        )
        ctx = context(ti)
        ctx["run_id"] = f"manual__{uuid.uuid4().hex[:6]}"
        from releasetrain.operators._common import record

        record(
            ctx,
            "checks_failed",
            "storefront",
            environment="prod",
            details={"kind": "health", "reason": "5 of 5 rounds failed"},
        )
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
    [(path, payload)] = receiver.received
    assert path == "/incidents" and payload["event"] == "releasetrain.rollback"
    assert payload["restored_version"] == "1.0.0" and payload["snapshot"] == snapshot_path
    assert result["notified"] == ["hook_ok"] and "HTTP 500" in result["notification_errors"][0]
    last = _ledger(ctx["run_id"])[-1]
    assert last.kind == "rollback" and last.details["postmortem"] == result["postmortem"]
