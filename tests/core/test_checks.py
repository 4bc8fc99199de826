from __future__ import annotations

import json

import pytest

from releasetrain.core.checks import CheckResult, Observation, evaluate, judge_health, render_check
from releasetrain.core.spec import HttpCheck

VALUES = {"version": "1.2.3", "digest": "sha256:abc", "environment": "prod", "release": "shop"}


def check(**kw):
    return render_check(HttpCheck(name="c", **kw), VALUES)


def obs(status=200, body=None, latency=10.0, error=None):
    return Observation(
        status=status,
        body=json.dumps(body) if isinstance(body, dict) else (body or ""),
        latency_ms=latency,
        error=error,
    )


@pytest.mark.parametrize(
    "spec, observation, failures",
    [
        pytest.param({}, obs(200), [], id="default-200"),
        pytest.param({}, obs(503), ["status 503, expected 200"], id="bad-status"),
        pytest.param({"expect_status": [200, 204]}, obs(204), [], id="status-list"),
        pytest.param({"expect_json": {"version": "${version}"}}, obs(body={"version": "1.2.3"}), [], id="json-ok"),
        pytest.param(
            {"expect_json": {"version": "${version}"}},
            obs(body={"version": "1.2.2"}),
            ["JSON field 'version' is '1.2.2', expected '1.2.3'"],
            id="json-mismatch",
        ),
        pytest.param({"expect_json": {"a.b.0": 1}}, obs(body={"a": {"b": [1]}}), [], id="json-nested"),
        pytest.param(
            {"expect_json": {"a.b": 1}}, obs(body={"a": {}}), ["JSON field 'a.b' is missing"], id="json-missing"
        ),
        pytest.param({"expect_json": {"ok": True}}, obs(body="<html>"), ["response body is not JSON"], id="not-json"),
        pytest.param({"body_contains": "env=${environment}"}, obs(body="hello env=prod"), [], id="body-ok"),
        pytest.param(
            {"body_contains": "ready"}, obs(body="starting"), ["body does not contain 'ready'"], id="body-bad"
        ),
        pytest.param({"max_latency_ms": 100}, obs(latency=250), ["latency 250 ms above 100 ms"], id="slow"),
        pytest.param(
            {}, obs(status=None, error="connection refused"), ["request failed: connection refused"], id="unreachable"
        ),
    ],
)
def test_evaluate(spec, observation, failures):
    result = evaluate(check(**spec), "http://x/app", observation)
    assert result.failures == failures
    assert result.passed is (not failures)


def test_render_fills_endpoint_placeholders():
    assert check(endpoint="app/${environment}/v/${version}").endpoint == "app/prod/v/1.2.3"


def _round(*passed):
    return [CheckResult(name=f"c{i}", passed=p, url="u", status=200, latency_ms=1) for i, p in enumerate(passed)]


def test_health_is_undecided_until_the_period_ends():
    assert judge_health([_round(True)], 0, finished=False) is None
    verdict = judge_health([_round(True), _round(True)], 0, finished=True)
    assert verdict.healthy and verdict.rounds == 2


def test_health_fails_early_beyond_allowed_failures():
    verdict = judge_health([_round(True, False)], 0, finished=False)
    assert not verdict.healthy and "c1" in verdict.reason and verdict.last_failures[0]["name"] == "c1"


def test_health_tolerates_allowed_failures():
    rounds = [_round(False), _round(True), _round(True)]
    assert judge_health(rounds, 1, finished=False) is None
    assert judge_health(rounds, 1, finished=True).healthy
    assert not judge_health([*rounds, _round(False)], 1, finished=False).healthy
