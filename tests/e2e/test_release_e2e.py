"""The foundation's acceptance, on real Airflow processes and the real demo fleet,
driven the way a CI system or a release manager drives it: through the REST API."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

import pytest

from releasetrain.client import AirflowAPIError
from releasetrain.core.profile import secret_fingerprint
from tests.helpers import tamper_bundle

pytestmark = pytest.mark.e2e

DAG = "release_storefront"
DEPLOYS = ("dev.deploy", "staging.deploy", "prod.deploy")


@pytest.fixture(autouse=True)
def no_run_left_behind(admin):
    """A test that fails half-way leaves its storefront run waiting; the next test's run
    would queue behind it (one active run per release) until its timeout. End it."""
    yield
    for run in admin.runs(DAG):
        if run["state"] in ("running", "queued"):
            admin.request("PATCH", f"/dags/{DAG}/dagRuns/{run['dag_run_id']}", json={"state": "failed"})


def trigger(client, version: str, dag_id: str = DAG, **conf) -> str:
    return client.trigger(dag_id, {"version": version, **conf})["dag_run_id"]


def test_plugin_is_registered_once_without_import_errors(stack, admin):
    done = subprocess.run(
        [str(Path(sys.executable).parent / "airflow"), "plugins", "--output", "json"],
        env=stack.env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    listed = json.loads(done.stdout[done.stdout.index("[") :])
    assert [p["name"] for p in listed].count("releasetrain") == 1
    plugins = admin.request("GET", "/plugins")["plugins"]
    assert [p["name"] for p in plugins].count("releasetrain") == 1
    assert admin.request("GET", "/plugins/importErrors")["total_entries"] == 0


def test_broken_spec_is_reported_and_other_releases_load(admin):
    assert {"release_storefront", "release_billing", "release_tampered"} <= set(admin.dag_ids())
    assert "release_broken" not in admin.dag_ids()
    errors = admin.import_errors()
    assert len(errors) == 1, errors
    [error] = errors
    assert error["filename"].endswith("release_spec_errors.py")
    assert "tests/fixtures/broken/broken.yaml: environments[1].deploy_target: field required" in error["stack_trace"]


@pytest.mark.parametrize(
    "conf", [{"version": "banana"}, {"version": "1.2"}, {}, {"version": "2.0.0", "requested_by": "a b"}]
)
def test_invalid_trigger_params_are_refused_with_http_400(author, conf):
    with pytest.raises(AirflowAPIError) as info:
        author.trigger(DAG, conf)
    assert info.value.status_code == 400
    assert "version" in info.value.body or "requested_by" in info.value.body


def test_release_reaches_prod_only_after_a_non_author_approves(stack, author, approver, fleet, ledger):
    run_id = trigger(author, "2.0.0", change_summary="new checkout")
    request = author.wait_for_approval(DAG, run_id, "prod.approve")
    assert [u["id"] for u in request["assigned_users"]] == ["approver", "admin"]
    packaged = author.xcom(DAG, run_id, "package")
    assert packaged["digest"] in request["body"] and "2.0.0" in request["body"]
    # issue 13: prod's approvers see its parity with staging (the profiles' settings)
    assert "**Parity with staging**" in request["body"]
    assert "settings only in prod's profile: PAYMENTS\\_LIVE, PAYMENT\\_API\\_KEY" in request["body"]
    # dev and staging were deployed and smoke-checked before the approval; prod not yet
    states = author.task_states(DAG, run_id)
    assert states["dev.smoke"] == states["staging.smoke"] == "success"
    assert fleet("staging")["version"] == "2.0.0" and fleet("prod")["version"] == "1.0.0"

    with pytest.raises(AirflowAPIError) as refused:
        author.respond(DAG, run_id, "prod.approve", "Approve")
    assert refused.value.status_code == 403
    assert approver.answer(DAG, run_id, "prod.approve", "Approve") == "success"
    author.wait_for_approval(DAG, run_id, "closure")
    assert author.answer(
        DAG, run_id, "closure", "OK", params_input={"runbook_update": "not needed: no ops change"}
    ) == ("success")

    run = author.wait_for_run(DAG, run_id)
    states = author.task_states(DAG, run_id)
    assert run["state"] == "success", states
    assert all(states[t] == "success" for t in DEPLOYS + ("prod.smoke", "prod.health", "closure", "release_complete"))
    assert {states[f"{e}.rollback"] for e in ("dev", "staging", "prod")} == {"skipped"}
    prod = fleet("prod")
    assert (prod["version"], prod["digest"], prod["previous_version"]) == ("2.0.0", packaged["digest"], "1.0.0")
    approval = author.xcom(DAG, run_id, "prod.approve")
    assert approval["responded_by_user"]["id"] == "approver"

    # issue 13: every environment got its own profile with the deploy, secrets resolved from
    # connections and variables at deploy time; the ledger, XCom and logs show only its digest
    secrets = stack.app_secrets()
    for env, keys in (("dev", {"DB_PASSWORD"}), ("prod", {"DB_PASSWORD", "PAYMENT_API_KEY"})):
        config = fleet(env)["config"]
        deployed = author.xcom(DAG, run_id, f"{env}.deploy")["config"]
        assert config["version"] == deployed["version"] == "2026.11-1" and config["sha256"] == deployed["sha256"]
        assert set(config["secrets"]) == keys
    assert fleet("prod")["config"]["values"] == {"LOG_LEVEL": "warning", "CART_TIMEOUT_MS": 800, "PAYMENTS_LIVE": True}
    assert fleet("prod")["config"]["secrets"]["DB_PASSWORD"] == secret_fingerprint(secrets["storefront_db_prod"])
    assert fleet("dev")["config"]["sha256"] != fleet("prod")["config"]["sha256"]
    recorded = json.dumps([e.details for e in ledger.events("storefront", run_id)])
    logs = "".join(p.read_text(errors="replace") for p in (stack.config.home / "logs").rglob("*") if p.is_file())
    for value in secrets.values():
        assert value not in recorded and value not in logs, "a secret reached the ledger or a log"
    deployed = [e.details for e in ledger.events("storefront", run_id) if e.kind == "deployed"]
    assert {d["environment"]: d["config"]["version"] for d in deployed} == dict.fromkeys(
        ("dev", "staging", "prod"), "2026.11-1"
    )


def test_unhealthy_prod_is_rolled_back_and_the_run_fails(author, approver, fleet):
    before = fleet("prod")
    fleet.post("/faults", {"environment": "prod", "version": "2.0.1", "error_rate": 1.0})
    run_id = trigger(author, "2.0.1", change_summary="broken in prod")
    author.wait_for_approval(DAG, run_id, "prod.approve")
    assert approver.answer(DAG, run_id, "prod.approve", "Approve") == "success"

    run = author.wait_for_run(DAG, run_id)
    states = author.task_states(DAG, run_id)
    assert run["state"] == "failed", states
    assert states["prod.deploy"] == states["prod.smoke"] == "success"
    assert states["prod.health"] == "failed" and states["prod.rollback"] == "success"
    assert states["release_complete"] == "upstream_failed"
    prod = fleet("prod")
    assert (prod["version"], prod["digest"]) == (before["version"], before["digest"]), prod
    assert prod["healthy"] is True
    assert [h["version"] for h in prod["history"][-2:]] == ["2.0.1", before["version"]]
    assert prod["history"][-1]["kind"] == "rollback"
    restored = author.xcom(DAG, run_id, "prod.rollback")
    assert restored["restored_version"] == before["version"]
    # the state before the rollback and a postmortem draft are preserved in the artifact store
    snapshot = json.loads(Path(restored["snapshot"].removeprefix("file://")).read_text())
    assert snapshot["target_status"]["version"] == "2.0.1" and snapshot["target_health"]["http_status"] == 503
    postmortem = Path(restored["postmortem"].removeprefix("file://")).read_text()
    assert "storefront 2.0.1 rolled back in prod" in postmortem and "health checks FAILED" in postmortem


def test_rejected_release_deploys_nothing_to_prod(author, approver, fleet):
    before = fleet("prod")
    run_id = trigger(author, "2.1.0")
    author.wait_for_approval(DAG, run_id, "prod.approve")
    assert approver.answer(DAG, run_id, "prod.approve", "Reject") == "failed"
    run = author.wait_for_run(DAG, run_id)
    states = author.task_states(DAG, run_id)
    assert run["state"] == "failed", states
    assert states["prod.approve"] == "failed"
    assert states["prod.verify"] == states["prod.deploy"] == "upstream_failed"
    assert states["prod.rollback"] == "skipped"
    assert fleet("prod")["version"] == before["version"]
    assert "2.1.0" not in [h["version"] for h in fleet("prod")["history"]]


def test_requested_by_is_an_author_too(author, approver, admin, fleet):
    run_id = trigger(author, "2.2.0", requested_by="approver")
    request = author.wait_for_approval(DAG, run_id, "prod.approve")
    assert [u["id"] for u in request["assigned_users"]] == ["admin"]
    with pytest.raises(AirflowAPIError) as refused:
        approver.respond(DAG, run_id, "prod.approve", "Approve")
    assert refused.value.status_code == 403
    assert admin.answer(DAG, run_id, "prod.approve", "Reject") == "failed"
    assert author.wait_for_run(DAG, run_id)["state"] == "failed"
    assert "2.2.0" not in [h["version"] for h in fleet("prod")["history"]]


def test_bundle_altered_after_packaging_is_never_deployed(stack, author, approver, fleet):
    dag = "release_tampered"
    run_id = trigger(author, "1.0.0", dag_id=dag)
    author.wait_for_approval(dag, run_id, "tamper-dev.approve")
    location = author.xcom(dag, run_id, "package")["location"]
    tamper_bundle(Path(urlparse(location).path) / "bundle.tar.gz")
    assert approver.answer(dag, run_id, "tamper-dev.approve", "Approve") == "success"
    run = author.wait_for_run(dag, run_id)
    states = author.task_states(dag, run_id)
    assert run["state"] == "failed", states
    assert states["tamper-dev.verify"] == "failed"
    assert states["tamper-dev.deploy"] == states["tamper-prod.deploy"] == "upstream_failed"
    for env in ("tamper-dev", "tamper-prod"):
        assert fleet(env)["version"] is None and fleet(env)["history"] == []
    # issue 14: a tampered bundle is always told, to every audience
    [told] = stack.receiver.bodies(release="tampered", run_id=run_id, event="releasetrain.bundle.tampered")
    assert (told["audience"], told["environment"], told["version"]) == ("change-management", "tamper-dev", "1.0.0")
    assert "was changed" in told["reason"]


def test_approval_marked_successful_by_hand_deploys_nothing(author, fleet, ledger):
    """Segregation of duties on another path: the author may change task states (role
    ``user``), but a hand-marked approval records no answer, and the deploy checks it."""
    before = fleet("prod")
    run_id = trigger(author, "2.3.0")
    author.wait_for_approval(DAG, run_id, "prod.approve")
    author.request("PATCH", f"/dags/{DAG}/dagRuns/{run_id}/taskInstances/prod.approve", json={"new_state": "success"})
    run = author.wait_for_run(DAG, run_id)
    states = author.task_states(DAG, run_id)
    assert run["state"] == "failed", states
    assert states["prod.deploy"] == "failed" and states["release_complete"] == "upstream_failed"
    assert fleet("prod")["version"] == before["version"]
    assert "2.3.0" not in [h["version"] for h in fleet("prod")["history"]]
    # the listener recorded the hand-made state change; the deploy recorded its refusal
    events = ledger.events("storefront", run_id)
    by_hand = [e.details for e in events if e.kind == "task_state"]
    assert {"task_id": "prod.approve", "state": "success", "by_hand": True} in by_hand
    [refused] = [e for e in events if e.kind == "gate_refused" and e.details["task_id"] == "prod.deploy"]
    assert any("no approval recorded in the ledger by prod.approve" in r for r in refused.details["reasons"])
    assert {"state": "failed"}.items() <= next(e.details for e in events if e.kind == "run_state").items()
    # (the listener closes the change after it recorded the run's end: wait for it)
    events = ledger.wait_for("storefront", run_id, "change_closed", timeout=60)
    change = [e for e in events if e.kind == "change_closed"]
    assert change and change[-1].details["state"] == "canceled", "the listener canceled the unimplemented change"


def test_the_target_deploys_only_bundles_signed_with_its_pinned_key(stack, author, fleet):
    """Issue 11, finding 3: the target was trusted to deploy a version and a digest. Now the
    deployment names the bundle and its signature; the fleet (a real process, given only the
    bundle signing *public* key) fetches and verifies it, and refuses anything else."""
    import requests

    from releasetrain.core.bundle import generate_private_key_pem, load_private_key, public_key_pem

    run_id = trigger(author, "2.7.0", change_summary="signed bundles")
    assert author.wait_for_task(DAG, run_id, "package", ("success",), timeout=180) == "success"
    packaged = author.xcom(DAG, run_id, "package")
    folder = Path(urlparse(packaged["location"]).path)
    signature = json.loads((folder / "bundle.sig.json").read_text())
    url = f"{stack.config.fleet_url}/environments/signed-check/deployments"
    body = {"release": "storefront", "version": "2.7.0", "digest": packaged["digest"], "run_id": "by-hand"}

    def deploy(bundle):
        return requests.post(url, json={**body, **bundle}, auth=stack.fleet_auth(), timeout=30)

    unsigned = deploy({})
    assert unsigned.status_code == 422 and "no signed bundle" in unsigned.json()["error"]
    # re-signed: the same bytes, a signature made with another key (embedded in the document)
    other = load_private_key(generate_private_key_pem())
    from releasetrain.core.bundle import signing_statement

    statement = signing_statement("storefront", "2.7.0", packaged["digest"], signature["archive_sha256"])
    import base64

    forged = {**signature, "signature": base64.b64encode(other.sign(statement)).decode()}
    forged["public_key"] = public_key_pem(other)
    resigned = deploy({"bundle": {"url": f"file://{folder / 'bundle.tar.gz'}", "signature": forged}})
    assert resigned.status_code == 422 and "signature" in resigned.json()["error"]
    elsewhere = deploy({"bundle": {"url": "file:///etc/hostname", "signature": signature}})
    assert elsewhere.status_code == 422 and "not under the bundle store" in elsewhere.json()["error"]
    assert fleet("signed-check")["history"] == [], "nothing was deployed"
    genuine = deploy({"bundle": {"url": f"file://{folder / 'bundle.tar.gz'}", "signature": signature}})
    assert genuine.status_code in (200, 202), genuine.text
    author.request("PATCH", f"/dags/{DAG}/dagRuns/{run_id}", json={"state": "failed"})
