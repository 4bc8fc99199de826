"""Configuration profiles at packaging and deploy time: a bundle with an environment's
file is refused before anything is signed; a deploy sends the environment's profile with
its secrets resolved from connections and variables, and records only version and digest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from releasetrain.core.bundle import generate_private_key_pem
from releasetrain.core.profile import profile_digest, secret_fingerprint
from releasetrain.operators.deploy import EnvironmentDeployOperator
from releasetrain.operators.package import BundlePackageOperator
from tests.helpers import FakeTI, context, http_connection, run_events, running_fleet, seed

DIGEST = "sha256:" + "b" * 64
DB_PASSWORD, API_KEY = "pa55-w0rd-for-db", "k3y-for-payments"


@pytest.fixture
def signing(monkeypatch):
    from releasetrain.devstack import signing_connection

    monkeypatch.setenv("AIRFLOW_CONN_RELEASETRAIN_SIGNING", signing_connection(generate_private_key_pem()))


def packager(root: Path, store: str, **kw) -> BundlePackageOperator:
    return BundlePackageOperator(
        task_id="package",
        release="storefront",
        project_root=str(root),
        components=[{"name": "web", "source": "web", "version": None}],
        artifact_store=store,
        environments=["dev", "staging", "prod"],
        **kw,
    )


def test_a_bundle_with_an_environments_configuration_is_refused_before_signing(signing, tmp_path):
    (tmp_path / "web" / "config").mkdir(parents=True)
    (tmp_path / "web" / "index.html").write_text("<h1>shop</h1>")
    (tmp_path / "web" / "config" / "application-prod.properties").write_text("db.url=jdbc:prod")
    store = f"file://{tmp_path / 'artifacts'}"
    with pytest.raises(AirflowFailException, match="config/application-prod.properties is configuration for one"):
        packager(tmp_path, store).execute(context(FakeTI(), task_id="package"))
    [refused] = run_events("gate_refused")
    assert refused.details["step"] == "package" and "matches '*-prod.properties'" in refused.details["reasons"][0]
    assert not (tmp_path / "artifacts" / "storefront").exists(), "nothing signed or stored"
    # the release's own rules: this file is allowed when the release says so
    result = packager(tmp_path, store, config_patterns=[]).execute(context(FakeTI(), task_id="package"))
    assert result["digest"].startswith("sha256:")


PROFILE_SECRETS = {"DB_PASSWORD": {"connection": "shop_db"}, "PAYMENT_API_KEY": {"variable": "shop_payment_key"}}
PROFILE = {
    "version": "7",
    "sha256": profile_digest("7", {"LOG_LEVEL": "warning"}, PROFILE_SECRETS),
    "values": {"LOG_LEVEL": "warning"},
    "secrets": PROFILE_SECRETS,
}


def deploy_op(**kw) -> EnvironmentDeployOperator:
    return EnvironmentDeployOperator(
        task_id="prod.deploy",
        release="storefront",
        environment="prod",
        deploy_target_conn_id="t_prod",
        verify_task_id="prod.verify",
        poll_interval=0.1,
        config=PROFILE,
        **kw,
    )


def ready(monkeypatch, url: str) -> None:
    seed("verified", environment="prod", task_id="prod.verify", version="2.0.0", digest=DIGEST, verified=True)
    monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
    monkeypatch.setenv("AIRFLOW_CONN_SHOP_DB", json.dumps({"conn_type": "generic", "password": DB_PASSWORD}))
    monkeypatch.setenv("AIRFLOW_VAR_SHOP_PAYMENT_KEY", API_KEY)


def test_a_deploy_sends_the_profile_with_its_secrets_resolved_and_records_only_its_digest(monkeypatch, caplog, capsys):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        ready(monkeypatch, url)
        ctx = context(FakeTI(), task_id="prod.deploy")
        with pytest.raises(TaskDeferred):
            deploy_op().execute(ctx)
        [deployment] = fleet.deployments.values()
        sent = deployment["config"]
        assert (sent["version"], sent["sha256"], sent["values"]) == ("7", PROFILE["sha256"], {"LOG_LEVEL": "warning"})
        assert sent["secrets"] == {
            "DB_PASSWORD": secret_fingerprint(DB_PASSWORD),
            "PAYMENT_API_KEY": secret_fingerprint(API_KEY),
        }, "the target got the resolved values (it keeps only fingerprints)"
        [started] = run_events("deploy_started")
        assert started.details["config"] == {"version": "7", "sha256": PROFILE["sha256"], "values": PROFILE["values"]}
    recorded = json.dumps([e.details for e in run_events()]) + json.dumps(list(ctx["ti"].xcoms.values()), default=str)
    assert DB_PASSWORD not in recorded and API_KEY not in recorded, "no secret in the ledger or XCom"
    logged = caplog.text + "".join(capsys.readouterr())
    assert "Deploying storefront 2.0.0" in logged, "the task's log was captured"
    assert DB_PASSWORD not in logged and API_KEY not in logged


def test_the_same_version_with_another_profile_is_deployed_again(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        ready(monkeypatch, url)
        env = fleet.env("prod")
        env.update(version="2.0.0", digest=DIGEST, config={"version": "6", "sha256": "sha256:" + "0" * 64})
        with pytest.raises(TaskDeferred):
            deploy_op().execute(context(FakeTI(), task_id="prod.deploy"))
        assert [d["config"]["version"] for d in fleet.deployments.values()] == ["7"]


def test_a_secret_reference_that_does_not_resolve_fails_the_deploy_naming_it(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        ready(monkeypatch, url)
        monkeypatch.delenv("AIRFLOW_CONN_SHOP_DB")
        with pytest.raises(AirflowFailException, match="prod: config secret DB_PASSWORD: connection 'shop_db' is not"):
            deploy_op().execute(context(FakeTI(), task_id="prod.deploy"))
        assert fleet.deployments == {}, "nothing was sent"


# --- drift ------------------------------------------------------------------------------
from releasetrain.operators.drift import ConfigDriftOperator  # noqa: E402


def drift_op(**kw) -> ConfigDriftOperator:
    return ConfigDriftOperator(
        task_id="prod.drift",
        release="storefront",
        environment="prod",
        deploy_target_conn_id="t_prod",
        config=PROFILE,
        owners=["approver", "author"],
        **kw,
    )


def answer(user, option="Accept the drift"):
    import datetime

    return {
        "chosen_options": [option],
        "params_input": {},
        "responded_at": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        "responded_by_user": {"id": user, "name": user},
        "timedout": False,
    }


@pytest.fixture
def asked(monkeypatch) -> list:
    """What each HITL request was (Airflow's own request is not made)."""
    calls: list = []
    monkeypatch.setattr(
        "releasetrain.operators.drift.HITLOperator.execute",
        lambda self, ctx: calls.append({"users": self.assigned_users, "body": self.body}),
    )
    return calls


def test_no_drift_is_recorded_and_asks_nobody(monkeypatch, asked):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        ready(monkeypatch, url)
        fleet.env("prod")["config"] = {**PROFILE, "secrets": {}}
        report = drift_op().execute(context(FakeTI(), task_id="prod.drift"))
    assert report["drift"] == [] and asked == []
    [checked] = run_events("drift_checked")
    assert checked.environment == "prod" and checked.details["baseline"]["sha256"] == PROFILE["sha256"]


def test_drift_asks_a_non_author_owner_with_a_readable_diff_and_a_rejection_stops_the_promotion(monkeypatch, asked):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        ready(monkeypatch, url)
        fleet.env("prod")["config"] = {**PROFILE, "secrets": {}}
        fleet.edit_config("prod", {"LOG_LEVEL": "debug", "HOTFIX_FLAG": "on"})
        drift_op().execute(context(FakeTI(), task_id="prod.drift"))
        [request] = asked
        assert request["users"] == [{"id": "approver", "name": "approver"}], "never the release's author"
        assert '- LOG\\_LEVEL: "warning" in the baseline, "debug" on the target' in request["body"]
        assert '- HOTFIX\\_FLAG: "on" on the target, not in the baseline' in request["body"]
        [detected] = run_events("drift_detected")
        assert len(detected.details["drift"]) == 2
        with pytest.raises(AirflowFailException, match="configuration drift in prod rejected by approver"):
            drift_op().execute_complete(context(FakeTI(), task_id="prod.drift"), answer("approver", "Reject"))
        with pytest.raises(AirflowFailException, match="author is an author of this release"):
            drift_op().execute_complete(context(FakeTI(), task_id="prod.drift"), answer("author"))
        assert not run_events("drift_accepted")
        fleet.edit_config("prod", {"ANOTHER": "x"})  # the target changed while the request waited
        with pytest.raises(AirflowFailException, match="the answer was about another drift"):
            drift_op().execute_complete(context(FakeTI(), task_id="prod.drift"), answer("approver"))
        fleet.edit_config("prod", {"ANOTHER": None})
        accepted = drift_op().execute_complete(context(FakeTI(), task_id="prod.drift"), answer("approver"))
    assert accepted["accepted_by"] == "approver"
    [record] = run_events("drift_accepted")
    assert record.actor == "approver" and record.details["drift"] == detected.details["drift"]


def test_the_deploy_needs_the_drift_checks_record(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        ready(monkeypatch, url)
        with pytest.raises(AirflowFailException, match="no drift check or accepted drift recorded in the ledger"):
            deploy_op(drift_task_id="prod.drift").execute(context(FakeTI(), task_id="prod.deploy"))
        assert fleet.deployments == {}
        seed("drift_checked", environment="prod", task_id="prod.drift", drift=[], reported=None)
        with pytest.raises(TaskDeferred):
            deploy_op(drift_task_id="prod.drift").execute(context(FakeTI(), task_id="prod.deploy"))


def test_a_drift_found_later_or_a_target_changed_since_the_check_deploys_nothing(monkeypatch):
    from releasetrain.core.profile import values_digest

    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        ready(monkeypatch, url)
        fleet.env("prod")["config"] = {"version": "6", "sha256": "sha256:" + "6" * 64, "values": {"A": "1"}}
        seen = {"sha256": "sha256:" + "6" * 64, "values_digest": values_digest({"A": "1"})}
        seed("drift_checked", environment="prod", task_id="prod.drift", drift=[], reported=seen)
        seed("drift_detected", environment="prod", task_id="prod.drift", drift=["A: 1 vs 2"], reported=seen)
        with pytest.raises(AirflowFailException, match="found configuration drift in prod that nobody accepted"):
            deploy_op(drift_task_id="prod.drift").execute(context(FakeTI(), task_id="prod.deploy"))
        seed("drift_accepted", environment="prod", task_id="prod.drift", drift=["A: 1 vs 2"], reported=seen)
        fleet.edit_config("prod", {"A": "2"})  # changed again, after the owner accepted what they saw
        with pytest.raises(AirflowFailException, match="changed after prod.drift checked it"):
            deploy_op(drift_task_id="prod.drift").execute(context(FakeTI(), task_id="prod.deploy"))
        assert fleet.deployments == {}, "nothing was sent"


# --- parity -----------------------------------------------------------------------------
def test_the_parity_check_records_its_differences_and_prods_approvers_see_them(monkeypatch):
    from releasetrain.operators.approval import ReleaseApprovalOperator
    from releasetrain.operators.parity import ParityCheckOperator

    check = ParityCheckOperator(
        task_id="prod.parity",
        release="storefront",
        environment="prod",
        compared_with="staging",
        keys={"staging": ["LOG_LEVEL"], "prod": ["LOG_LEVEL", "PAYMENTS_LIVE"]},
        services=[],
    )
    report = check.execute(context(FakeTI(), task_id="prod.parity"))
    assert report["differences"] == ["settings only in prod's profile: PAYMENTS_LIVE"]
    [recorded] = run_events("parity_checked")
    assert recorded.details["differences"] == report["differences"]
    approval = ReleaseApprovalOperator(
        task_id="prod.approve",
        release="storefront",
        environment="prod",
        approvers=["approver"],
        parity_task_id="prod.parity",
    )
    lines = approval._parity(context(FakeTI(), task_id="prod.approve"))
    assert "**Parity with staging**" in lines and "- settings only in prod's profile: PAYMENTS\\_LIVE" in lines


# --- baselines under change control ------------------------------------------------------
from releasetrain.operators.baseline import BaselineApprovalOperator  # noqa: E402

CAB = ["cab-member", "author"]


def baseline_op(config=PROFILE) -> BaselineApprovalOperator:
    return BaselineApprovalOperator(
        task_id="prod.baseline", release="storefront", environment="prod", config=config, board="cab", members=CAB
    )


@pytest.fixture
def cab_asked(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setattr(
        "releasetrain.operators.baseline.HITLOperator.execute",
        lambda self, ctx: calls.append({"users": self.assigned_users, "body": self.body}),
    )
    return calls


def test_a_new_profile_waits_for_a_board_member_who_is_not_an_author_and_is_recorded_with_its_settings(cab_asked):
    baseline_op().execute(context(FakeTI(), task_id="prod.baseline"))
    [request] = cab_asked
    assert request["users"] == [{"id": "cab-member", "name": "cab-member"}], "never the release's author"
    assert "first profile under change control" in request["body"]
    assert '- LOG\\_LEVEL: new, "warning"' in request["body"]
    assert "- DB\\_PASSWORD \\(secret\\): new, from connection shop\\_db" in request["body"]
    [asked] = run_events("baseline_change_requested")
    assert asked.details["previous"] is None and asked.details["sha256"] == PROFILE["sha256"]
    with pytest.raises(AirflowFailException, match="profile 7 of prod rejected by cab-member"):
        baseline_op().execute_complete(context(FakeTI(), task_id="prod.baseline"), answer("cab-member", "Reject"))
    with pytest.raises(AirflowFailException, match="author is an author of this release"):
        baseline_op().execute_complete(
            context(FakeTI(), task_id="prod.baseline"), answer("author", "Approve the profile")
        )
    with pytest.raises(AirflowFailException, match="outsider is not an approver"):
        baseline_op().execute_complete(
            context(FakeTI(), task_id="prod.baseline"), answer("outsider", "Approve the profile")
        )
    assert not run_events("baseline_approved")
    baseline_op().execute_complete(
        context(FakeTI(), task_id="prod.baseline"), answer("cab-member", "Approve the profile")
    )
    [approved] = run_events("baseline_approved")
    assert approved.actor == "cab-member" and approved.details["sha256"] == PROFILE["sha256"]
    assert approved.details["values"] == PROFILE["values"] and approved.details["secrets"] == PROFILE_SECRETS
    refused = [e.details["reasons"][0] for e in run_events("gate_refused") if e.details["step"] == "prod.baseline"]
    assert "rejected by cab-member (cab)" in refused[0]
    assert "author is an author of this release" in refused[1], "who tried to decide what they may not: recorded"
    assert "outsider is not an approver" in refused[2]

    # the same profile again (a retry, a later run): recorded, nobody asked
    assert baseline_op().execute(context(FakeTI(), task_id="prod.baseline"))["approved_by"] == "cab-member"
    assert len(cab_asked) == 1 and len(run_events("baseline_checked")) == 1
    # ... unless the approver is an author of this run: then the board is asked again
    baseline_op().execute(context(FakeTI(), task_id="prod.baseline", triggered_by="cab-member"))
    assert len(cab_asked) == 2 and len(run_events("baseline_checked")) == 1

    # a changed profile: the board is asked again, shown what changed against the approved one
    changed = {**PROFILE, "version": "8", "values": {"LOG_LEVEL": "debug", "POOL": 4}, "secrets": {}}
    changed["sha256"] = profile_digest("8", changed["values"], {})
    baseline_op(changed).execute(context(FakeTI(), task_id="prod.baseline"))
    body = cab_asked[-1]["body"]
    assert f"the last approved one is 7 ({PROFILE['sha256']})" in body
    assert '- LOG\\_LEVEL: "debug", was "warning"' in body and "- POOL: new, 4" in body
    assert "- PAYMENT\\_API\\_KEY \\(secret\\): removed \\(was from variable shop\\_payment\\_key\\)" in body


def test_the_deploy_needs_the_boards_approval_of_the_profile_it_sends(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        ready(monkeypatch, url)
        with pytest.raises(AirflowFailException, match="no approval of the change advisory board"):
            deploy_op(baseline_task_id="prod.baseline").execute(context(FakeTI(), task_id="prod.deploy"))
        seed("baseline_approved", environment="prod", task_id="prod.baseline", sha256="sha256:" + "9" * 64)
        with pytest.raises(AirflowFailException, match=r"prod \(sha256:.*\) has no approval"):
            deploy_op(baseline_task_id="prod.baseline").execute(context(FakeTI(), task_id="prod.deploy"))
        assert fleet.deployments == {}, "an approval of another profile is no approval of this one"
        seed("baseline_approved", environment="prod", task_id="prod.baseline", sha256=PROFILE["sha256"])
        with pytest.raises(TaskDeferred):
            deploy_op(baseline_task_id="prod.baseline").execute(context(FakeTI(), task_id="prod.deploy"))
    refusals = [e for e in run_events("gate_refused") if e.details["step"] == "prod.baseline"]
    assert len(refusals) == 2
