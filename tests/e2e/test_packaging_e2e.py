"""Issue 13 (packaging): one component version means the same bytes in every release.

Two releases of different teams ship component ``web`` at version 0.9.99, built from
different files. The first to package it wins; the other is refused at packaging, before
anything is signed, stored or deployed, with both digests named and the refusal recorded.
"""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.e2e


def test_a_component_version_rebuilt_with_other_bytes_is_refused_at_packaging(author, fleet, ledger, stack):
    first = author.trigger("release_rebuild-a", {"version": "4.0.0", "change_summary": "web 0.9.99"})["dag_run_id"]
    assert author.wait_for_run("release_rebuild-a", first, timeout=300)["state"] == "success"
    assert fleet("rebuild")["version"] == "4.0.0"
    [packaged] = [e for e in ledger.events("rebuild-a", first) if e.kind == "packaged"]
    [web] = packaged.details["components"]
    assert (web["name"], web["version"]) == ("web", "0.9.99")

    second = author.trigger("release_rebuild-b", {"version": "4.0.0", "change_summary": "web 0.9.99 again"})
    run_id = second["dag_run_id"]
    run = author.wait_for_run("release_rebuild-b", run_id, timeout=300)
    states = author.task_states("release_rebuild-b", run_id)
    assert run["state"] == "failed" and states["package"] == "failed", states
    assert states["rebuild.deploy"] == "upstream_failed"
    [refusal] = [e for e in ledger.events("rebuild-b", run_id) if e.kind == "gate_refused"]
    [reason] = refusal.details["reasons"]
    assert "component web 0.9.99 is already packaged with digest " + web["digest"] in reason
    assert "first by release rebuild-a 4.0.0" in reason
    assert not [e for e in ledger.events("rebuild-b", run_id) if e.kind == "packaged"]
    assert fleet("rebuild")["version"] == "4.0.0", "the environment still runs the first release"
    assert not (stack.config.home / "artifacts" / "rebuild-b").exists(), "nothing of the refused release stored"


@pytest.mark.extended  # a long scenario: make test-extended
def test_a_deploy_waits_deferred_until_the_shared_service_it_needs_runs_there(author, fleet, ledger):
    """Issue 13 (environments): ``depends_on`` is a gate. consumer needs svc 2.0.0 or newer in
    svc-env: its deploy waits, deferred, until svc's release puts it there, then goes on."""
    run_id = author.trigger("release_consumer", {"version": "1.5.0", "change_summary": "needs svc 2"})["dag_run_id"]
    assert author.wait_for_task("release_consumer", run_id, "consumer.dependencies", ("deferred",), timeout=300)
    states = author.task_states("release_consumer", run_id)
    assert states["consumer.lock"] is None and states["consumer.deploy"] is None, "the target is not even locked"
    assert fleet("consumer").get("version") is None, "nothing deployed while svc is missing"
    svc = author.trigger("release_svc", {"version": "2.0.0", "change_summary": "svc 2"})["dag_run_id"]
    assert author.wait_for_run("release_svc", svc, timeout=300)["state"] == "success"
    assert author.wait_for_run("release_consumer", run_id, timeout=300)["state"] == "success"
    assert fleet("consumer")["version"] == "1.5.0"
    [met] = [e for e in ledger.events("consumer", run_id) if e.kind == "dependencies_met"]
    assert met.environment == "consumer" and met.details["requirements"][0]["min_version"] == "2.0.0"
    deployed = [e for e in ledger.events("consumer", run_id) if e.kind == "deployed"]
    svc_deployed = [e for e in ledger.events("svc", svc) if e.kind == "deployed"]
    assert svc_deployed[0].seq < met.seq < deployed[0].seq


def test_a_bundle_carrying_an_environments_configuration_is_refused_at_packaging(author, ledger, stack):
    """Issue 13 (config profiles): bundles carry no environment's settings; the component's
    folder holds settings/prod.env, so packaging refuses it, naming the file and the rule."""
    run_id = author.trigger("release_leaky", {"version": "1.0.0", "change_summary": "leaky"})["dag_run_id"]
    run = author.wait_for_run("release_leaky", run_id, timeout=300)
    states = author.task_states("release_leaky", run_id)
    assert run["state"] == "failed" and states["package"] == "failed", states
    assert states["leaky.deploy"] == "upstream_failed"
    [refusal] = [e for e in ledger.events("leaky", run_id) if e.kind == "gate_refused"]
    [reason] = refusal.details["reasons"]
    assert "component web: settings/prod.env is configuration for one environment (matches '*.env')" in reason
    assert not (stack.config.home / "artifacts" / "leaky").exists(), "nothing signed or stored"


@pytest.mark.extended  # a long scenario: make test-extended
def test_conflicting_library_versions_across_components_deploy_only_with_a_waiver(
    author, approver, fleet, ledger, stack
):
    import io
    import json
    import tarfile

    from releasetrain.client import AirflowAPIError

    dag, step, deploy = "release_conflicted", "libraries", "conflict-env.deploy"

    def kinds(run_id: str, kind: str) -> list:
        return [e for e in ledger.events("conflicted", run_id, dag) if e.kind == kind]

    conflict = "pypi requests: 2.32.3 in conflict-api, 2.31.0 in conflict-web"
    by_hand = author.trigger(dag, {"version": "1.0.0", "change_summary": "two requests"})["dag_run_id"]
    request = author.wait_for_approval(dag, by_hand, step, timeout=300)
    assert [u["id"] for u in request["assigned_users"]] == ["approver"]
    assert "pypi requests: 2\\.32\\.3 in conflict\\-api, 2\\.31\\.0 in conflict\\-web" in request["body"]
    with pytest.raises(AirflowAPIError) as refused:
        author.respond(dag, by_hand, step, "Waive the conflicts", params_input={"reason": "it works on my machine"})
    assert refused.value.status_code == 403, "the release's author cannot waive"
    author.set_task_state(dag, by_hand, step, "success")
    assert author.wait_for_run(dag, by_hand, timeout=300)["state"] == "failed"
    assert author.task_states(dag, by_hand)[deploy] == "failed"
    [reason] = [" ".join(e.details["reasons"]) for e in kinds(by_hand, "gate_refused")]
    assert f"components pin conflicting library versions ({conflict}) and nobody waived them" in reason
    assert "set to success by hand, which proves nothing" in reason
    assert fleet("conflict-env")["version"] is None

    waived = author.trigger(dag, {"version": "1.0.1", "change_summary": "waived"})["dag_run_id"]
    author.wait_for_approval(dag, waived, step, timeout=300)
    why = "requests 2.31 and 2.32 share the API we use; aligned in 1.1 (JIRA-42)"
    assert approver.answer(dag, waived, step, "Waive the conflicts", params_input={"reason": why}) == "success"
    assert author.wait_for_run(dag, waived, timeout=300)["state"] == "success"
    [waiver] = kinds(waived, "conflicts_waived")
    assert waiver.actor == "approver" and waiver.details["reason"] == why and waiver.details["conflicts"] == [conflict]
    # the SBOM: in the packaged record (and so the evidence) and in the signed bundle
    [packaged] = kinds(waived, "packaged")
    sbom = packaged.details["sbom"]
    assert sorted((lib["component"], lib["name"]) for lib in sbom["libraries"]) == [
        ("conflict-api", "certifi"),
        ("conflict-api", "requests"),
        ("conflict-api", "urllib3"),
        ("conflict-web", "certifi"),
        ("conflict-web", "requests"),
    ]
    archive = (stack.config.home / "artifacts" / "conflicted" / "1.0.1" / "bundle.tar.gz").read_bytes()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        document = json.loads(tar.extractfile("sbom.cdx.json").read())
    assert document["bomFormat"] == "CycloneDX" and document["specVersion"] == "1.6"
    assert "pkg:pypi/requests@2.31.0" in {c.get("purl") for c in document["components"]}
    assert fleet("conflict-env")["version"] == "1.0.1"


def test_a_units_deploy_marked_successful_by_hand_ships_nothing_of_it(author, fleet, ledger):
    """Attack (packaging modular): the author marks production's deploy of one unit successful
    before it runs. That unit's bytes never reach production, the next unit's deploy asks the
    ledger for it and ships nothing either (production is never left with half a release),
    and production never passes: a unit's deploy is proven only by its own ledger record."""
    dag, hand = "release_modular", "mod-prod.deploy_mod-web"
    run_id = author.trigger(dag, {"version": "0.9.0", "change_summary": "modular 0.9.0"})["dag_run_id"]
    author.request("PATCH", f"/dags/{dag}/dagRuns/{run_id}/taskInstances/{hand}", json={"new_state": "success"})
    run = author.wait_for_run(dag, run_id, timeout=300)
    states = author.task_states(dag, run_id)
    assert run["state"] == "failed" and states[hand] == "success", states
    assert states["mod-prod.deploy_mod-api"] == "failed" and states["mod-prod.smoke"] == "upstream_failed", states
    assert states["mod-prod.passed"] != "success" and states["mod-prod.rollback_mod-web"] == "skipped", states
    for unit in ("mod-web", "mod-api"):
        live = fleet("mod-prod").get("components", {}).get(unit) or {"history": []}
        assert "0.9.0" not in [h["version"] for h in live["history"]], f"nothing of {unit} reached production"
    events = ledger.events("modular", run_id)
    [refused] = [e for e in events if e.kind == "gate_refused" and e.details["task_id"] == "mod-prod.deploy_mod-api"]
    assert any("mod-prod.deploy_mod-web" in r for r in refused.details["reasons"]), refused.details
    assert not [e for e in events if e.kind == "deployed" and e.details.get("task_id") == hand]
    assert not [e for e in events if e.kind == "environment_passed" and e.environment == "mod-prod"]
    assert {"task_id": hand, "state": "success", "by_hand": True} in [
        e.details for e in events if e.kind == "task_state"
    ], "the listener recorded the hand-made state"


@pytest.mark.extended  # a long scenario: make test-extended
def test_modular_units_deploy_and_roll_back_each_on_their_own(author, admin, approver, fleet, ledger, stack):
    """Issue 13 (modular bundles): ``modular`` ships mod-web alone and mod-api with the worker
    it is coupled with, each as its own signed bundle (the target verifies it against its
    pinned key) with its own deploy and its own rollback on the target's ``components/<unit>/``
    endpoints. A unit failing its smoke check in production rolls every unit the run changed
    back to the version it ran before, each through its own rollback task."""
    import json

    dag = "release_modular"
    first = author.trigger(dag, {"version": "1.0.0", "change_summary": "modular 1.0.0"})["dag_run_id"]
    assert author.wait_for_run(dag, first, timeout=300)["state"] == "success", author.task_states(dag, first)
    [packaged] = [e for e in ledger.events("modular", first) if e.kind == "packaged"]
    units = {u["unit"]: u for u in packaged.details["units"]}
    assert {u: units[u]["components"] for u in units} == {"mod-web": ["mod-web"], "mod-api": ["mod-api", "mod-worker"]}
    unit_dir = stack.config.home / "artifacts" / "modular" / "1.0.0" / "units" / "mod-api"
    manifest = json.loads((unit_dir / "manifest.json").read_text())
    assert [c["name"] for c in manifest["components"]] == ["mod-api", "mod-worker"], "coupled: one bundle"
    prod = fleet("mod-prod")
    assert prod["version"] is None, "nothing runs as the whole environment: each unit runs on its own"
    for unit in units:
        live = prod["components"][unit]
        assert (live["version"], live["digest"]) == ("1.0.0", units[unit]["digest"]), unit
    deployed = [e for e in ledger.events("modular", first) if e.kind == "deployed" and e.environment == "mod-prod"]
    # (a deploy retried after Airflow 3.3's fast-trigger race records its unit again: the same unit, same digest)
    assert sorted({(e.details["task_id"], e.details["unit"]) for e in deployed}) == [
        ("mod-prod.deploy_mod-api", "mod-api"),
        ("mod-prod.deploy_mod-web", "mod-web"),
    ]
    assert {e.details["release_digest"] for e in deployed} == {packaged.details["digest"]}

    # 1.1.0: mod-api fails in production; both units go back to 1.0.0, each on its own
    fleet.post("/faults", {"environment": "mod-prod/mod-api", "version": "1.1.0", "error_rate": 1.0})
    second = author.trigger(dag, {"version": "1.1.0", "change_summary": "modular 1.1.0"})["dag_run_id"]
    run = author.wait_for_run(dag, second, timeout=300)
    states = author.task_states(dag, second)
    assert run["state"] == "failed" and states["mod-prod.smoke"] == "failed", states
    assert states["mod-prod.rollback_mod-web"] == states["mod-prod.rollback_mod-api"] == "success", states
    assert states["mod-dev.rollback_mod-web"] == "skipped", "dev passed: nothing rolled back there"
    prod = fleet("mod-prod")
    assert {u: prod["components"][u]["version"] for u in units} == {"mod-web": "1.0.0", "mod-api": "1.0.0"}
    assert {u: prod["components"][u]["digest"] for u in units} == {u: units[u]["digest"] for u in units}
    assert {u: fleet("mod-dev")["components"][u]["version"] for u in units} == dict.fromkeys(units, "1.1.0")
    rollbacks = [e for e in ledger.events("modular", second) if e.kind == "rollback"]
    assert sorted((e.environment, e.details["unit"], e.details["restored_version"]) for e in rollbacks) == [
        ("mod-prod", "mod-api", "1.0.0"),
        ("mod-prod", "mod-web", "1.0.0"),
    ]
    incidents = stack.config.home / "artifacts" / "modular" / "incidents"
    assert len(list(incidents.glob("*/mod-prod/*/postmortem.md"))) == 2, "one postmortem per unit rolled back"

    # 1.2.0 passes; the manual rollback DAG returns each unit to 1.0.0 (the newest good
    # version), each to its own bundle of it, one unit after the other, then the review
    third = author.trigger(dag, {"version": "1.2.0", "change_summary": "modular 1.2.0"})["dag_run_id"]
    assert author.wait_for_run(dag, third, timeout=300)["state"] == "success", author.task_states(dag, third)
    rollback = admin.trigger("rollback_modular", {"environment": "mod-prod", "reason": "incident 77: ledger drift"})
    run_id = rollback["dag_run_id"]
    admin.wait_for_approval("rollback_modular", run_id, "rollback_review", timeout=300)
    prod = fleet("mod-prod")
    assert {u: (prod["components"][u]["version"], prod["components"][u]["digest"]) for u in units} == {
        u: ("1.0.0", units[u]["digest"]) for u in units
    }
    states = admin.task_states("rollback_modular", run_id)
    assert states["rollback_mod-prod__mod-web"] == states["rollback_mod-prod__mod-api"] == "success", states
    assert states["rollback_mod-dev__mod-web"] == "skipped", states
    findings = {"findings": "ledger drift gone after the rollback"}
    assert (
        approver.answer("rollback_modular", run_id, "rollback_review", "Reviewed", params_input=findings) == "success"
    )
    assert admin.wait_for_run("rollback_modular", run_id, timeout=300)["state"] == "success"
    [requested] = [e for e in ledger.events("modular", run_id) if e.kind == "rollback_requested"]
    assert (requested.details["from_version"], requested.details["version"]) == ("1.2.0", "1.0.0")
    assert {u: requested.details["units"][u]["digest"] for u in units} == {u: units[u]["digest"] for u in units}
    locks = [e.kind for e in ledger.events("modular", run_id) if e.kind in ("lock_acquired", "lock_released")]
    assert locks[-1] == "lock_released" and locks.count("lock_released") == 1, "one hold for both units"
