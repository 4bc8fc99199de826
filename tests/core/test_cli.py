from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import PROJECT_ROOT


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "releasetrain", *args], capture_output=True, text=True, cwd=PROJECT_ROOT
    )


def test_validate_ok_and_broken():
    ok = run("validate", "include/releases/storefront.yaml")
    assert ok.returncode == 0 and "release_storefront" in ok.stdout and "dev -> staging -> prod" in ok.stdout
    bad = run("validate", "include/releases/storefront.yaml", "tests/fixtures/broken/broken.yaml")
    assert bad.returncode == 1
    assert "tests/fixtures/broken/broken.yaml: environments[1].deploy_target: field required" in bad.stderr


def test_schema_is_printed():
    done = run("schema")
    assert done.returncode == 0 and json.loads(done.stdout)["title"] == "ReleaseSpec"


def test_calendar_shows_who_gets_a_shared_target_first():
    """Issue 13 (prioritisation): releases that deploy to one target queue by business impact."""
    specs = [f"tests/fixtures/releases/locked-{x}.yaml" for x in "abc"]
    done = run("calendar", *specs)
    assert done.returncode == 0, done.stderr
    assert (
        "ORDER      fleet_shared: locked-c/shared (critical) > locked-a/shared (medium) > locked-b/shared (medium)"
        in (done.stdout)
    )
    view = json.loads(run("calendar", "--json", *specs).stdout)
    [queue] = view["queues"]
    assert [e["release"] for e in queue["order"]] == ["locked-c", "locked-a", "locked-b"]
    assert json.loads(run("calendar", "--json", specs[0]).stdout)["queues"] == [], "one release: no queue"
