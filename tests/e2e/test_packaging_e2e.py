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
