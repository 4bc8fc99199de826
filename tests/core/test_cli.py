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
