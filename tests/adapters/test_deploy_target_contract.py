"""The deploy-target contract as an OpenAPI document: valid OpenAPI, served by the demo
fleet, and the fleet's answers (a deploy, its progress, a refusal, a rollback, health, a
progressive rollout's traffic moves) match its schemas; the hook calls only what it names."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import requests
import yaml
from jsonschema import Draft202012Validator

from tests.conftest import PROJECT_ROOT
from tests.helpers import running_fleet

CONTRACT = PROJECT_ROOT / "include" / "demo_fleet" / "deploy-target.openapi.yaml"
AUTH = ("deployer", "s3cret-pass")


@pytest.fixture(scope="module")
def contract() -> dict:
    from releasetrain.core.contract import load_contract

    return load_contract(CONTRACT.read_bytes(), str(CONTRACT))  # openapi-spec-validator: a valid document


class Checked:
    """Calls the fleet and checks every answer against the contract."""

    def __init__(self, contract: dict, base: str):
        self.contract, self.base, self.seen = contract, base, set()

    def __call__(self, method: str, path: str, template: str | None = None, body: dict | None = None) -> dict:
        response = requests.request(method, f"{self.base}/{path}", json=body, auth=AUTH, timeout=10)
        operation = self.contract["paths"][f"/{template or path}"][method.lower()]
        answer = operation["responses"].get(str(response.status_code))
        assert answer is not None, f"{method} {path}: {response.status_code} is not in the contract"
        schema = answer["content"]["application/json"]["schema"]
        validator = Draft202012Validator({**schema, "components": self.contract["components"]})
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(response.json())]
        assert errors == [], f"{method} {path} {response.status_code}: {errors}"
        self.seen.add((method.lower(), f"/{template or path}", response.status_code))
        return response.json()


def test_the_contract_is_valid_openapi_and_the_fleet_serves_it(contract):
    assert contract["openapi"].startswith("3.")
    with running_fleet() as (_, url):
        served = requests.get(f"{url}/openapi.yaml", auth=AUTH, timeout=10)
    assert served.status_code == 200 and served.headers["Content-Type"].startswith("application/yaml")
    assert yaml.safe_load(served.text) == yaml.safe_load(CONTRACT.read_text())


def test_the_fleets_answers_match_the_contract(contract):
    with running_fleet(seed={"prod": "1.0.0"}, deploy_seconds=0.2) as (fleet, url):
        call = Checked(contract, f"{url}/environments/prod")
        before = call("GET", "status")
        body = {"release": "shop", "version": "2.0.0", "digest": "sha256:" + "2" * 64, "run_id": "r1"}
        started = call("POST", "deployments", body=body)
        call("POST", "deployments", body=body)  # a second one while the first runs: 409
        call("GET", f"deployments/{started['deployment_id']}", "deployments/{deployment_id}")
        deadline = time.monotonic() + 10
        while call("GET", "status")["version"] != "2.0.0":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        call("POST", "deployments", body=body)  # already live: 200 noop
        call("GET", "health")
        rollback = call("POST", "rollback", body={"version": "1.0.0", "digest": before["digest"], "reason": "test"})
        call("GET", f"deployments/{rollback['deployment_id']}", "deployments/{deployment_id}")
        call("POST", "rollback", body={"version": "0.0.1", "reason": "never ran"})  # 409
        call("GET", "deployments/nope", "deployments/{deployment_id}")  # 404
        fleet.faults[("prod", "1.0.0")] = {"error_rate": 1.0, "fail_deploy": False}
        time.sleep(0.5)
        call("GET", "health")  # 503
    statuses = {status for method, path, status in call.seen if (method, path) == ("post", "/deployments")}
    assert statuses == {200, 202, 409}
    assert {s for m, p, s in call.seen if p == "/health"} == {200, 503}


def test_the_deploy_target_hook_calls_only_what_the_contract_names(contract):
    """Every endpoint the hook uses is a path of the contract."""
    source = (PROJECT_ROOT / "src" / "releasetrain" / "hooks" / "deploy_target.py").read_text()
    used = set(re.findall(r'self\._on\("([a-z]+)"\)', source)) | set(
        re.findall(r'_expect\(\s*"[A-Z]+",\s*"([a-z]+)"', source)
    )
    assert used, "the hook names its endpoints"
    assert {f"/{endpoint}" for endpoint in used} <= set(contract["paths"]), used


def test_the_docs_point_at_the_contract():
    text = (PROJECT_ROOT / "docs" / "deploy-target.md").read_text()
    assert "include/demo_fleet/deploy-target.openapi.yaml" in text
    assert Path(CONTRACT).is_file()


def test_a_progressive_rollouts_calls_match_the_contract(contract):
    with running_fleet(seed={"prod": "1.0.0"}, deploy_seconds=0.1) as (_, url):
        call = Checked(contract, f"{url}/environments/prod")
        call("POST", "traffic", body={"weight": 10})  # no idle colour yet: 409
        body = {"release": "shop", "version": "2.0.0", "digest": "sha256:" + "2" * 64, "run_id": "r1", "slot": "idle"}
        call("POST", "deployments", body=body)
        deadline = time.monotonic() + 10
        while (call("GET", "status").get("idle") or {}).get("version") != "2.0.0":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert call("POST", "traffic", body={"weight": 25})["idle"]["weight"] == 25
        assert call("POST", "promote")["version"] == "2.0.0"
        call("POST", "abort")
    assert {p for m, p, s in call.seen if s == 200} >= {"/traffic", "/promote", "/abort"}
