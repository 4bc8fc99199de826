"""The canary judge: metric criteria, Kayenta-style scoring, Argo-style limits (table-driven)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from releasetrain.core.canary import (
    AnalysisPolicy,
    Measurement,
    MetricCheck,
    assess,
    judge_metric,
    score_measurement,
)

ERRORS = {"name": "error_rate", "absolute": {"max": 0.01}}
P95 = {"name": "p95_ms", "relative": {"max_ratio": 1.1}}
LATENCY = {"name": "latency_ms", "compare": {"bad": "increase", "alpha": 0.05, "tolerance": 0.1}}
BASE = [100, 102, 98, 101, 99, 100, 103, 97, 100, 101]


@pytest.mark.parametrize(
    ("check", "canary", "baseline", "phase", "reason"),
    [
        (ERRORS, [0.001, 0.002], [], "pass", None),
        (ERRORS, [0.02, 0.03], [], "fail", "error_rate 0.025 > 0.01"),
        ({"name": "rps", "absolute": {"min": 10}}, [5], [], "fail", "rps 5 < 10"),
        (P95, [105, 107], [100, 100], "pass", None),
        (P95, [130, 120], [100, 100], "fail", "1.25x the baseline 100 (max 1.1x)"),
        (P95, [130], [], "inconclusive", "no baseline data for p95_ms"),
        ({"name": "p50", "relative": {"min_ratio": 0.5}}, [0], [0], "pass", None),  # 0 vs 0 is unchanged
        ({"name": "p50", "relative": {"max_ratio": 2}}, [1], [0], "fail", "infx the baseline"),
        (LATENCY, [v * 1.5 for v in BASE], BASE, "fail", "Mann-Whitney p="),
        (LATENCY, [v + 1 for v in BASE], BASE, "pass", None),  # significant but within the 10% tolerance
        (LATENCY, [v * 0.5 for v in BASE], BASE, "pass", None),  # faster is not bad
        ({**LATENCY, "compare": {"bad": "either"}}, [v * 0.5 for v in BASE], BASE, "fail", "-50.0%"),
        (LATENCY, [150, 160, 170], BASE, "inconclusive", "too few samples"),
        (ERRORS, [], [], "inconclusive", "no data for the canary (no_data: inconclusive)"),
        ({**ERRORS, "no_data": "fail"}, [], [], "fail", "no data"),
        ({**ERRORS, "no_data": "pass"}, [], [], "pass", None),
        (ERRORS, [float("nan"), None], [], "inconclusive", "no data"),
        # a failure that began late in the interval: the mean hides it, the value at measurement time does not
        (ERRORS, [0, 0, 0, 0, 0.04], [], "pass", None),
        ({**ERRORS, "aggregate": "last"}, [0, 0, 0, 0, 0.04], [], "fail", "error_rate 0.04 > 0.01"),
        ({**ERRORS, "aggregate": "max"}, [0, 0.04, 0], [], "fail", "error_rate 0.04 > 0.01"),
        ({"name": "rps", "absolute": {"min": 10}, "aggregate": "min"}, [20, 5, 20], [], "fail", "rps 5 < 10"),
        ({**P95, "aggregate": "last"}, [100, 200], [100, 104], "fail", "2x the baseline 104"),
    ],
)
def test_metric_criteria(check, canary, baseline, phase, reason):
    result = judge_metric(MetricCheck.model_validate(check), canary, baseline)
    assert result.phase == phase, result.reasons
    if reason:
        assert any(reason in r for r in result.reasons), result.reasons


def test_mann_whitney_comes_from_scipy_and_reports_the_p_value():
    from scipy.stats import mannwhitneyu

    canary = [v * 1.5 for v in BASE]
    result = judge_metric(MetricCheck.model_validate(LATENCY), canary, BASE)
    assert result.p_value == pytest.approx(mannwhitneyu(canary, BASE, alternative="greater").pvalue)


def policy(**over) -> AnalysisPolicy:
    metrics = over.pop("metrics", [ERRORS, P95, {**LATENCY, "group": "latency"}])
    return AnalysisPolicy.model_validate({"metrics": metrics, **over})


def measure(pol: AnalysisPolicy, phases: dict[str, str]) -> Measurement:
    from releasetrain.core.canary import MetricResult

    results = [MetricResult(m.name, m.group_name, phases.get(m.name, "pass"), []) for m in pol.metrics]
    return score_measurement(pol, results)


@pytest.mark.parametrize(
    ("metrics", "phases", "verdict", "score"),
    [
        (None, {}, "pass", 100.0),
        (None, {"error_rate": "fail"}, "fail", 200 / 3),
        # an inconclusive metric is left out of the score but keeps the interval from passing
        (None, {"error_rate": "inconclusive"}, "marginal", 100.0),
        (None, {"error_rate": "inconclusive", "p95_ms": "fail"}, "fail", 50.0),
        # 20 equally weighted metrics, one failing: 95 -> still a pass (Kayenta's default)
        ([{"name": f"m{i}", "absolute": {"max": 1}} for i in range(20)], {"m0": "fail"}, "pass", 95.0),
        ([{"name": f"m{i}", "absolute": {"max": 1}} for i in range(10)], {"m0": "fail"}, "marginal", 90.0),
        # weights are per group
        ([{**ERRORS, "weight": 3}, P95], {"p95_ms": "fail"}, "marginal", 75.0),
        ([ERRORS, {**P95, "weight": 3}], {"p95_ms": "fail"}, "fail", 25.0),
        (
            [{**ERRORS, "critical": True}] + [{"name": f"m{i}", "absolute": {"max": 1}} for i in range(30)],
            {"error_rate": "fail"},
            "fail",
            30 / 31 * 100,
        ),
        # two metrics in one group: the group scores the share that passed
        ([{**ERRORS, "group": "g"}, {**P95, "group": "g"}], {"p95_ms": "fail"}, "fail", 50.0),
    ],
)
def test_scoring(metrics, phases, verdict, score):
    pol = policy(**({"metrics": metrics} if metrics else {}))
    m = measure(pol, phases)
    assert m.verdict == verdict, m.reason
    assert m.score == pytest.approx(score, abs=1e-6)


def test_an_interval_without_any_conclusive_metric_is_marginal():
    pol = policy(metrics=[ERRORS])
    m = measure(pol, {"error_rate": "inconclusive"})
    assert (m.verdict, m.score) == ("marginal", None) and "no metric was conclusive" in m.reason


def test_a_provider_error_is_an_error_measurement():
    m = score_measurement(policy(), [], error="prometheus answered 503")
    assert m.verdict == "error" and "503" in m.reason


P, MG, F, E = "pass", "marginal", "fail", "error"


def fake(verdict: str) -> Measurement:
    return Measurement(verdict, None, [], f"a {verdict} interval")


@pytest.mark.parametrize(
    ("limits", "verdicts", "outcome"),
    [
        # Argo: count reached without crossing a limit -> Successful
        ({"count": 3}, [P, P], "running"),
        ({"count": 3}, [P, P, P], "successful"),
        # failureLimit 0 (default): the first failure fails the analysis at once
        ({"count": 3}, [P, F], "failed"),
        ({"count": 3, "failure_limit": 1}, [F, P], "running"),
        ({"count": 3, "failure_limit": 1}, [F, P, P], "successful"),
        ({"count": 5, "failure_limit": 1}, [F, P, F], "failed"),
        # inconclusiveLimit 0 (default): the first marginal interval -> Inconclusive
        ({"count": 3}, [P, MG], "inconclusive"),
        ({"count": 3, "inconclusive_limit": 1}, [MG, P, P], "successful"),
        # consecutiveErrorLimit 4 (default): 5 errors in a row -> Error; errors do not count
        ({"count": 2}, [E, E, E, E], "running"),
        ({"count": 2}, [E, E, E, E, E], "error"),
        ({"count": 2}, [E, E, P, E, E, E, P], "successful"),
        ({"count": 2, "consecutive_error_limit": 0}, [E], "error"),
        # several limits crossed at once: failed wins
        ({"count": 3}, [MG, F], "failed"),
    ],
)
def test_analysis_limits_follow_argo(limits, verdicts, outcome):
    state = assess(policy(**limits), [fake(v) for v in verdicts])
    assert state.outcome == outcome, state.reason
    json.dumps(state.to_dict())  # JSON-safe for XCom


def test_results_are_json_safe_even_with_infinite_ratios():
    result = judge_metric(MetricCheck.model_validate({"name": "x", "relative": {"max_ratio": 2}}), [1], [0])
    m = score_measurement(policy(metrics=[{"name": "x", "relative": {"max_ratio": 2}}]), [result])
    assert json.loads(json.dumps(m.to_dict()))["metrics"][0]["ratio"] is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"metrics": [{"name": "x"}]}, "has no criterion"),
        ({"metrics": [ERRORS, ERRORS]}, "unique"),
        ({"metrics": [ERRORS], "pass_score": 70, "marginal_score": 80}, "above pass_score"),
        ({"metrics": []}, "at least 1"),
    ],
)
def test_bad_policies_are_refused_with_the_reason(data, message):
    with pytest.raises(ValidationError, match=message):
        AnalysisPolicy.model_validate(data)
