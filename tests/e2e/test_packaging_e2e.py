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
