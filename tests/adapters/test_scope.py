"""The scope freeze step: other contents after the freeze wait for an exception granted, with
a reason, by someone other than the author; every deploy asks the ledger for its record."""

from __future__ import annotations

import datetime

import pytest
from airflow.sdk.exceptions import AirflowFailException

from releasetrain.operators.scope import ScopeFreezeOperator
from tests.helpers import DAG_ID, RELEASE, FakeTI, context, run_events, seed


def earlier(kind: str, run_id: str = "manual__earlier", environment: str = "", **details) -> None:
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    try:
        hook.append(kind, release=RELEASE, run_id=run_id, dag_id=DAG_ID, environment=environment, details=details)
    finally:
        hook.close()


def scope_op(freeze=None) -> ScopeFreezeOperator:
    return ScopeFreezeOperator(
        task_id="scope",
        release=RELEASE,
        freeze=freeze or {"environment": "staging"},
        production=["prod"],
        approvers=["approver", "author"],
    )


def answer(user, option="Grant the exception", reason="the cart fix must ship with this release"):
    return {
        "chosen_options": [option],
        "params_input": {"reason": reason},
        "responded_at": datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC),
        "responded_by_user": {"id": user, "name": user},
        "timedout": False,
    }


@pytest.fixture
def asked(monkeypatch) -> list:
    calls: list = []
    monkeypatch.setattr(
        "releasetrain.operators.scope.HITLOperator.execute",
        lambda self, ctx: calls.append({"users": self.assigned_users, "body": self.body}),
    )
    return calls


def test_contents_changed_after_the_freeze_wait_for_a_granted_exception_with_a_reason(asked):
    earlier("packaged", components=[{"name": "web", "version": "1.0.0", "digest": "sha256:1"}])
    earlier("environment_passed", environment="staging")
    seed("packaged", task_id="package", components=[{"name": "web", "version": "2.0.0", "digest": "sha256:2"}])
    scope_op().execute(context(FakeTI(), task_id="scope"))
    [request] = asked
    assert request["users"] == [{"id": "approver", "name": "approver"}], "never the release's author"
    assert (
        "run manual\\_\\_earlier passed staging" in request["body"]
        and "- web: 2\\.0\\.0, frozen at 1\\.0\\.0" in request["body"]
    )
    [requested] = run_events("scope_change_requested")
    assert requested.details["changes"] == ["web: 2.0.0, frozen at 1.0.0"]
    with pytest.raises(AirflowFailException, match="author is an author of this release"):
        scope_op().execute_complete(context(FakeTI(), task_id="scope"), answer("author"))
    with pytest.raises(AirflowFailException, match="a scope exception needs a reason"):
        scope_op().execute_complete(context(FakeTI(), task_id="scope"), answer("approver", reason="ok"))
    with pytest.raises(AirflowFailException, match="scope exception rejected by approver"):
        scope_op().execute_complete(context(FakeTI(), task_id="scope"), answer("approver", "Reject"))
    assert not run_events("scope_exception")
    earlier("scope_exception", run_id="manual__other", components={"web": "1.5.0"})  # granted meanwhile
    with pytest.raises(AirflowFailException, match="the answer was about other changes"):
        scope_op().execute_complete(context(FakeTI(), task_id="scope"), answer("approver"))
    earlier("scope_exception", run_id="manual__other", components={"web": "1.0.0"})
    granted = scope_op().execute_complete(context(FakeTI(), task_id="scope"), answer("approver"))
    assert granted["reason"] == "the cart fix must ship with this release"
    [record] = run_events("scope_exception")
    assert record.actor == "approver" and record.details["components"] == {"web": "2.0.0"}
    # a retry (or a later run with the same contents) finds the granted scope
    assert scope_op().execute(context(FakeTI(), task_id="scope"))["outcome"] == "match"
    assert len(asked) == 1


def test_after_a_freeze_date_with_nothing_packaged_or_released_before_no_run_sets_the_scope(asked):
    seed("packaged", task_id="package", components=[{"name": "web", "version": "2.0.0", "digest": "sha256:2"}])
    scope_op({"date": "2026-01-01"}).execute(context(FakeTI(), task_id="scope"))
    [request] = asked
    assert "- web 2\\.0\\.0: added after the freeze" in request["body"]
    assert not run_events("scope_frozen")


def test_every_deploy_judges_the_scope_again_it_may_have_frozen_since(monkeypatch):
    from releasetrain.operators.deploy import EnvironmentDeployOperator
    from tests.helpers import http_connection, running_fleet

    digest = "sha256:" + "d" * 64
    seed("packaged", task_id="package", components=[{"name": "web", "version": "2.0.0", "digest": digest}])
    seed("scope_checked", task_id="scope", outcome="open")  # checked while the scope was open
    seed("verified", environment="prod", task_id="prod.verify", version="2.0.0", digest=digest, verified=True)
    earlier("packaged", components=[{"name": "web", "version": "1.9.0", "digest": "sha256:1"}])
    earlier("environment_passed", environment="staging")  # another run froze the scope meanwhile
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        deploy = EnvironmentDeployOperator(
            task_id="prod.deploy",
            release=RELEASE,
            environment="prod",
            deploy_target_conn_id="t_prod",
            verify_task_id="prod.verify",
            scope_task_id="scope",
            scope_freeze={"environment": "staging"},
            production_environments=["prod"],
        )
        with pytest.raises(
            AirflowFailException, match=r"the scope is frozen now \(run manual__earlier passed staging\)"
        ):
            deploy.execute(context(FakeTI(), task_id="prod.deploy"))
        assert fleet.deployments == {}


def test_without_packaged_contents_the_scope_step_refuses():
    with pytest.raises(AirflowFailException, match="no packaged contents recorded in the ledger by package"):
        scope_op().execute(context(FakeTI(), task_id="scope"))


# --- library conflicts -----------------------------------------------------------------------
from releasetrain.operators.scope import LibraryConflictOperator  # noqa: E402


def libraries_op() -> LibraryConflictOperator:
    return LibraryConflictOperator(task_id="libraries", release=RELEASE, approvers=["approver", "author"])


def test_packaging_carries_the_sbom_and_its_conflicts_and_a_bad_lock_file_is_refused(monkeypatch, tmp_path):
    from releasetrain.core.bundle import generate_private_key_pem, read_archive
    from releasetrain.devstack import signing_connection
    from releasetrain.operators.package import BundlePackageOperator

    monkeypatch.setenv("AIRFLOW_CONN_RELEASETRAIN_SIGNING", signing_connection(generate_private_key_pem()))
    for name, pins in (("web", "requests==2.31.0\n"), ("api", "requests==2.32.3\nurllib3==2.2.3\n")):
        (tmp_path / name).mkdir()
        (tmp_path / name / "main.py").write_text("print(1)")
        (tmp_path / name / "requirements.txt").write_text(pins)

    def package():
        return BundlePackageOperator(
            task_id="package",
            release=RELEASE,
            project_root=str(tmp_path),
            components=[
                {"name": "web", "source": "web", "version": None},
                {"name": "api", "source": "api", "version": None},
            ],
            artifact_store=f"file://{tmp_path / 'artifacts'}",
        ).execute(context(FakeTI(), task_id="package"))

    (tmp_path / "api" / "requirements.txt").write_text("requests>=2\n")
    with pytest.raises(AirflowFailException, match="component api: requirements.txt:1: the requirement is not pinned"):
        package()
    assert not (tmp_path / "artifacts").exists(), "nothing signed or stored"
    (tmp_path / "api" / "requirements.txt").write_text("requests==2.32.3\nurllib3==2.2.3\n")
    result = package()
    assert result["sbom"]["conflicts"] == ["pypi requests: 2.32.3 in api, 2.31.0 in web"]
    assert len(result["sbom"]["libraries"]) == 3
    archive = (tmp_path / "artifacts" / RELEASE / "2.0.0" / "bundle.tar.gz").read_bytes()
    manifest, files = read_archive(archive)
    assert manifest["attachments"][0]["sha256"] == result["sbom"]["sha256"] and b"CycloneDX" in files["sbom.cdx.json"]


def test_library_conflicts_wait_for_a_waiver_by_someone_else(monkeypatch):
    calls: list = []
    monkeypatch.setattr(
        "releasetrain.operators.scope.HITLOperator.execute",
        lambda self, ctx: calls.append({"users": self.assigned_users, "body": self.body}),
    )
    seed("packaged", task_id="package", components=[], sbom={"sha256": "ab", "libraries": [], "conflicts": []})
    assert libraries_op().execute(context(FakeTI(), task_id="libraries"))["outcome"] == "consistent"
    assert calls == [] and len(run_events("libraries_checked")) == 1
    conflict = "pypi requests: 2.32.3 in api, 2.31.0 in web"
    seed("packaged", task_id="package", components=[], sbom={"sha256": "ab", "libraries": [], "conflicts": [conflict]})
    libraries_op().execute(context(FakeTI(), task_id="libraries"))
    assert calls[0]["users"] == [{"id": "approver", "name": "approver"}]
    with pytest.raises(AirflowFailException, match="author is an author of this release"):
        libraries_op().execute_complete(context(FakeTI(), task_id="libraries"), answer("author", "Waive the conflicts"))
    libraries_op().execute_complete(context(FakeTI(), task_id="libraries"), answer("approver", "Waive the conflicts"))
    [waiver] = run_events("conflicts_waived")
    assert waiver.actor == "approver" and waiver.details["conflicts"] == [conflict]


# --- hotfix policy ---------------------------------------------------------------------------
HOTFIX = {"version": "2.0.0", "hotfix": True, "severity": "sev3", "incident": "INC-9"}


def test_a_refused_hotfix_packages_nothing_even_with_its_decision_set_to_success_by_hand(tmp_path):
    from releasetrain.operators.hotfix import HotfixPolicyOperator
    from releasetrain.operators.package import BundlePackageOperator

    decide = HotfixPolicyOperator(
        task_id="hotfix_policy",
        release=RELEASE,
        policy={"severities": ["sev1"], "components": None, "exclude_in_test": True},
        components=[{"name": "web", "version": None}],
        production=["prod"],
    )
    with pytest.raises(AirflowFailException, match="hotfix for INC-9: severity sev3 is not one a hotfix may be for"):
        decide.execute(context(FakeTI(), task_id="hotfix_policy", params=HOTFIX))
    [decided] = run_events("hotfix_decided")
    assert decided.details["allowed"] is False and decided.details["changed"] == {"web": "2.0.0"}
    seed("task_state", task_id="hotfix_policy", state="success", by_hand=True)
    package = BundlePackageOperator(
        task_id="package",
        release=RELEASE,
        project_root=str(tmp_path),
        components=[{"name": "web", "source": "web", "version": None}],
        artifact_store=f"file://{tmp_path / 'artifacts'}",
        hotfix_task_id="hotfix_policy",
    )
    with pytest.raises(AirflowFailException, match=r"the hotfix policy refused this run \(severity sev3.*by hand"):
        package.execute(context(FakeTI(), task_id="package", params=HOTFIX))
    assert not (tmp_path / "artifacts").exists()
    # a normal run passes the policy step through
    assert decide.execute(context(FakeTI(), task_id="hotfix_policy"))["hotfix"] is False


def test_packaging_refuses_a_hotfix_decision_about_other_contents(tmp_path):
    from releasetrain.operators.package import BundlePackageOperator

    seed("hotfix_decided", task_id="hotfix_policy", allowed=True, reasons=[], planned={"web": "1.9.0"})
    package = BundlePackageOperator(
        task_id="package",
        release=RELEASE,
        project_root=str(tmp_path),
        components=[{"name": "web", "source": "web", "version": None}],
        artifact_store=f"file://{tmp_path / 'artifacts'}",
        hotfix_task_id="hotfix_policy",
    )
    with pytest.raises(AirflowFailException, match=r"the hotfix decision was about \{'web': '1.9.0'\}, not"):
        package.execute(context(FakeTI(), task_id="package", params={**HOTFIX, "severity": "sev1"}))


def test_an_allowed_hotfix_holds_the_normal_run_underway_and_a_refused_one_holds_nothing():
    from releasetrain.core.vocabulary import LANE_NORMAL, train_slot
    from releasetrain.hooks.ledger import LedgerHook
    from releasetrain.operators.hotfix import HotfixPolicyOperator

    hook = LedgerHook()
    try:
        hook.store.try_lock(train_slot(DAG_ID, LANE_NORMAL), f"{DAG_ID}/manual__train")
    finally:
        hook.close()

    def decide(severities: list[str]) -> HotfixPolicyOperator:
        return HotfixPolicyOperator(
            task_id="hotfix_policy",
            release=RELEASE,
            policy={"severities": severities, "components": None, "exclude_in_test": True},
            components=[{"name": "web", "version": None}],
            production=["prod"],
            admit_task_id="admit",
        )

    with pytest.raises(AirflowFailException):
        decide(["sev1"]).execute(context(FakeTI(), task_id="hotfix_policy", params=HOTFIX))
    assert not run_events("run_held"), "a refused hotfix holds nothing"
    decide(["sev3"]).execute(context(FakeTI(), task_id="hotfix_policy", params=HOTFIX))
    [held] = run_events("run_held")
    assert held.details["held"] == "manual__train" and held.details["why"] == "hotfix for INC-9 (sev3)"
