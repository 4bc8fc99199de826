"""Packaging modular: each deploy unit its own signed bundle, verify, deploy and rollback.

Real bundles in a temporary artifact store, a real demo fleet (the deploy target's
``components/<unit>/`` endpoints), the ledger of the adapter tests.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from releasetrain.core.bundle import generate_private_key_pem
from releasetrain.operators.deploy import EnvironmentDeployOperator
from releasetrain.operators.package import BundlePackageOperator
from releasetrain.operators.rollback import RollbackOperator
from releasetrain.operators.verify import BundleVerifyOperator
from tests.helpers import FakeTI, context, http_connection, run_events, running_fleet, seed, tamper_bundle

UNITS = {"web": ["web"], "api": ["api", "worker"]}


@pytest.fixture
def signing(monkeypatch):
    from releasetrain.devstack import signing_connection

    monkeypatch.setenv("AIRFLOW_CONN_RELEASETRAIN_SIGNING", signing_connection(generate_private_key_pem()))


@pytest.fixture
def project(tmp_path: Path) -> Path:
    for name in ("web", "api", "worker"):
        (tmp_path / "src" / name).mkdir(parents=True)
        (tmp_path / "src" / name / "index.html").write_text(f"{name} 2.0.0")
    return tmp_path


def package(project: Path, units: dict | None = None) -> dict:
    op = BundlePackageOperator(
        task_id="package",
        release="storefront",
        components=[{"name": n, "source": f"src/{n}"} for n in ("web", "api", "worker")],
        project_root=str(project),
        artifact_store=f"file://{project / 'artifacts'}",
        units=UNITS if units is None else units,
    )
    return op.execute(context(FakeTI(), task_id="package"))


def verify(project: Path, units: list[str] | None = None) -> dict:
    op = BundleVerifyOperator(
        task_id="prod.verify",
        release="storefront",
        environment="prod",
        artifact_store=f"file://{project / 'artifacts'}",
        units=list(UNITS) if units is None else units,
    )
    return op.execute(context(FakeTI(), task_id="prod.verify"))


def test_each_unit_is_its_own_signed_bundle_and_coupled_components_share_one(signing, project):
    packaged = package(project)
    version = project / "artifacts" / "storefront" / "2.0.0"
    assert sorted(p.name for p in (version / "units").iterdir()) == ["api", "web"]
    for unit, components in UNITS.items():
        folder = version / "units" / unit
        assert sorted(p.name for p in folder.iterdir()) == ["bundle.sig.json", "bundle.tar.gz", "manifest.json"]
        manifest = json.loads((folder / "manifest.json").read_text())
        assert [c["name"] for c in manifest["components"]] == sorted(components)
        assert json.loads((folder / "bundle.sig.json").read_text())["digest"] == manifest["digest"]
    units = {u["unit"]: u for u in packaged["units"]}
    assert units["api"]["components"] == ["api", "worker"]
    assert len({units["web"]["digest"], units["api"]["digest"], packaged["digest"]}) == 3
    [recorded] = run_events("packaged")
    assert recorded.details["units"] == packaged["units"], "the units are on record, not only in XCom"
    again = package(project)
    assert again["units"] == packaged["units"], "packaging the same inputs again gives the same unit bundles"


def test_verify_records_each_units_digest_against_the_release_bundle(signing, project):
    packaged = package(project)
    result = verify(project)
    assert result["digest"] == packaged["digest"]
    assert result["units"] == {u["unit"]: u["digest"] for u in packaged["units"]}
    [verified] = run_events("verified")
    assert verified.details["units"] == result["units"]


def test_a_unit_bundle_changed_after_packaging_deploys_nothing(signing, project):
    package(project)
    tamper_bundle(project / "artifacts" / "storefront" / "2.0.0" / "units" / "api" / "bundle.tar.gz")
    with pytest.raises(
        AirflowFailException, match="failed verification, nothing will be deployed: file api/index.html"
    ):
        verify(project)
    assert not run_events("verified")


def test_a_unit_bundle_replaced_by_another_signed_one_is_refused(signing, project):
    """Someone with the signing key re-signs another unit's bundle in the api unit's place:
    its digest is not the one packaging recorded for api."""
    package(project)
    units = project / "artifacts" / "storefront" / "2.0.0" / "units"
    for name in ("bundle.tar.gz", "bundle.sig.json", "manifest.json"):
        (units / "api" / name).write_bytes((units / "web" / name).read_bytes())
    with pytest.raises(AirflowFailException, match="differs from the packaged digest"):
        verify(project)


def test_a_unit_the_packaging_did_not_record_is_refused(signing, project):
    package(project, units={"web": ["web"], "api": ["api", "worker"]})
    with pytest.raises(AirflowFailException, match=r"recorded no bundle for unit\(s\) batch"):
        verify(project, units=["web", "api", "batch"])


# --- deploy and rollback of one unit --------------------------------------------------------
RELEASE_DIGEST = "sha256:" + "a" * 64
WEB_DIGEST = "sha256:" + "b" * 64


def unit_deploy(**kw) -> EnvironmentDeployOperator:
    return EnvironmentDeployOperator(
        **{
            "task_id": "prod.deploy_web",
            "release": "storefront",
            "environment": "prod",
            "deploy_target_conn_id": "t_prod",
            "verify_task_id": "prod.verify",
            "previous_environment": "staging",
            "promotion_gate_task_id": "staging.passed",
            "poll_interval": 0.1,
            "unit": "web",
            "components": ["web"],
            **kw,
        }
    )


def unit_ready(units: dict | None = None) -> None:
    seed(
        "verified",
        environment="prod",
        task_id="prod.verify",
        version="2.0.0",
        digest=RELEASE_DIGEST,
        units={"web": WEB_DIGEST} if units is None else units,
    )
    seed("environment_passed", environment="staging", task_id="staging.passed", version="2.0.0", digest=RELEASE_DIGEST)


def test_a_unit_deploys_its_own_bundle_on_its_own_endpoints(monkeypatch):
    unit_ready()
    with running_fleet() as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        fleet.env("prod/web").update(version="1.0.0", digest="sha256:" + "1" * 64)
        with pytest.raises(TaskDeferred):
            unit_deploy().execute(context(FakeTI(), task_id="prod.deploy_web"))
        [dep] = fleet.deployments.values()
        assert (dep["environment"], dep["version"], dep["digest"]) == ("prod/web", "2.0.0", WEB_DIGEST)
        assert fleet.env("prod")["version"] is None, "the environment's own state is untouched"
        [started] = run_events("deploy_started")
        assert started.details["task_id"] == "prod.deploy_web"
        assert (started.details["unit"], started.details["digest"]) == ("web", WEB_DIGEST)
        assert started.details["release_digest"] == RELEASE_DIGEST, "the gates were decided on the release bundle"
        assert started.details["before"]["version"] == "1.0.0", "what the unit ran before, for its rollback"


def test_a_unit_the_verify_step_did_not_check_is_not_deployed(monkeypatch):
    unit_ready(units={"api": "sha256:" + "c" * 64})
    with running_fleet() as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        with pytest.raises(AirflowFailException, match="prod.verify verified no bundle for unit web"):
            unit_deploy().execute(context(FakeTI(), task_id="prod.deploy_web"))
        assert not fleet.deployments
    assert not run_events("deploy_started")


def test_a_unit_rolls_back_on_its_own_endpoints_to_what_it_ran_before(monkeypatch):
    with running_fleet() as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        old = "sha256:" + "1" * 64
        web = fleet.env("prod/web")
        web["history"] += [{"version": "1.0.0", "digest": old}, {"version": "2.0.0", "digest": WEB_DIGEST}]
        web.update(version="2.0.0", digest=WEB_DIGEST)
        fleet.env("prod").update(version="9.9.9", digest="sha256:" + "9" * 64)  # not this unit's: left alone
        seed(
            "deploy_started",
            environment="prod",
            task_id="prod.deploy_web",
            version="2.0.0",
            digest=WEB_DIGEST,
            unit="web",
            before={"version": "1.0.0", "digest": old, "noop": False},
        )
        op = RollbackOperator(
            task_id="prod.rollback_web",
            release="storefront",
            environment="prod",
            deploy_target_conn_id="t_prod",
            deploy_task_id="prod.deploy_web",
            poll_interval=0.1,
            unit="web",
        )
        with pytest.raises(TaskDeferred):
            op.execute(context(FakeTI(), task_id="prod.rollback_web"))
        [dep] = fleet.deployments.values()
        assert (dep["environment"], dep["kind"], dep["version"], dep["digest"]) == (
            "prod/web",
            "rollback",
            "1.0.0",
            old,
        )
        [intent] = run_events("rollback_started")
        assert intent.details["unit"] == "web"


def test_a_unit_deploys_only_after_the_units_before_it_recorded_theirs(monkeypatch):
    """Attack: ``deploy_web`` marked successful by hand; ``deploy_api`` comes next. It asks the
    ledger, finds no deployment by deploy_web, and ships nothing: never half a release."""
    unit_ready(units={"web": WEB_DIGEST, "api": "sha256:" + "c" * 64})
    with running_fleet() as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        api = unit_deploy(
            task_id="prod.deploy_api", unit="api", components=["api"], earlier_unit_task_ids=["prod.deploy_web"]
        )
        with pytest.raises(AirflowFailException, match="no 'deployed' record.*prod.deploy_web|prod.deploy_web"):
            api.execute(context(FakeTI(), task_id="prod.deploy_api"))
        assert not fleet.deployments
        seed(
            "deployed",
            environment="prod",
            task_id="prod.deploy_web",
            version="2.0.0",
            digest=WEB_DIGEST,
            release_digest=RELEASE_DIGEST,
            unit="web",
        )
        with pytest.raises(TaskDeferred):  # web's deployment on record: api goes
            api.execute(context(FakeTI(), task_id="prod.deploy_api"))
        [dep] = fleet.deployments.values()
        assert dep["environment"] == "prod/api"


def test_units_the_packaging_recorded_beyond_the_dags_are_refused(signing, project):
    package(project, units={"web": ["web"], "api": ["api"], "worker": ["worker"]})
    with pytest.raises(AirflowFailException, match=r"recorded unit\(s\) worker, which this release does not deploy"):
        verify(project, units=["web", "api"])


def _web_rollback() -> RollbackOperator:
    return RollbackOperator(
        task_id="prod.rollback_web",
        release="storefront",
        environment="prod",
        deploy_target_conn_id="t_prod",
        deploy_task_id="prod.deploy_web",
        poll_interval=0.1,
        unit="web",
    )


def _web_started(old: str) -> None:
    seed(
        "deploy_started",
        environment="prod",
        task_id="prod.deploy_web",
        version="2.0.0",
        digest=WEB_DIGEST,
        unit="web",
        before={"version": "1.0.0", "digest": old, "noop": False},
    )


def test_a_unit_rolled_back_to_other_bytes_of_its_version_needs_a_human(monkeypatch):
    old = "sha256:" + "1" * 64
    with running_fleet() as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        _web_started(old)
        fleet.env("prod/web").update(version="1.0.0", digest="sha256:" + "9" * 64)  # 1.0.0, but not its bytes
        with pytest.raises(Exception, match="restored 1.0.0 as sha256:9+, not sha256:1+: the unit needs a human"):
            _web_rollback().execute_complete(
                context(FakeTI(), task_id="prod.rollback_web"),
                {"state": "succeeded", "message": "", "deployment_id": "d"},
            )
    assert not run_events("rollback")


def test_the_change_closes_rolled_back_once_every_deployed_unit_is_back(monkeypatch):
    from releasetrain.operators import rollback as rollback_module

    closed = []
    monkeypatch.setattr(
        "releasetrain.operators.governance.close_change", lambda ctx, release, outcome, note: closed.append(outcome)
    )
    old = "sha256:" + "1" * 64
    seed(
        "deploy_started",
        environment="prod",
        task_id="prod.deploy_api",
        version="2.0.0",
        digest="sha256:" + "c" * 64,
        unit="api",
        before={"version": "1.0.0", "digest": "sha256:" + "2" * 64, "noop": False},
    )
    _web_started(old)
    op = _web_rollback()
    ctx = context(FakeTI(), task_id="prod.rollback_web")
    rollback_module.record_rollback(ctx, "storefront", "prod", {"unit": "web", "restored_version": "1.0.0"}, "2.0.0")
    op._close_when_every_unit_is_back(ctx, {"version": "1.0.0"})
    assert closed == [], "api's rollback is not on record yet: the change stays open"
    rollback_module.record_rollback(ctx, "storefront", "prod", {"unit": "api", "restored_version": "1.0.0"}, "2.0.0")
    op._close_when_every_unit_is_back(ctx, {"version": "1.0.0"})
    assert closed == ["rolled_back"]
