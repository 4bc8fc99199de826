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
    judge_sessions,
    score_measurement,
    session_queries,
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


# --- session outcomes: the share of sessions reaching checkout, new vs old ------------------
CHECKOUT = {"name": "checkout", "sessions": {"reached": "r", "started": "s", "min_sessions": 100}}


@pytest.mark.parametrize(
    ("rule", "new", "old", "phase", "reason"),
    [
        ({}, (500, 1000), (510, 1000), "pass", None),
        ({}, (300, 1000), (500, 1000), "fail", "down more than 10%, significant at 0.05"),
        ({}, (40, 100), (50, 100), "inconclusive", "not significant"),  # 20% down on 100 sessions: unsure
        ({}, (700, 1000), (500, 1000), "pass", None),  # more checkouts are not bad
        ({"bad": "increase"}, (60, 1000), (50, 1000), "inconclusive", "up more than 10%, but not significant"),
        ({"bad": "increase"}, (150, 1000), (50, 1000), "fail", "up more than 10%, significant"),
        ({}, (5, 50), (500, 1000), "inconclusive", "fewer than 100 sessions"),
        ({}, None, (500, 1000), "inconclusive", "no sessions of the new version"),
        ({}, (0, 0), (500, 1000), "inconclusive", "no sessions of the new version"),
        ({}, (500, 1000), None, "inconclusive", "no sessions of the old version"),
        ({}, (1200, 1000), (500, 1000), "inconclusive", "not a share"),
        ({"max_change": 0.5}, (300, 1000), (500, 1000), "pass", None),
    ],
)
def test_session_outcome_judgement(rule, new, old, phase, reason):
    check = MetricCheck.model_validate({**CHECKOUT, "sessions": {**CHECKOUT["sessions"], **rule}})
    result = judge_sessions(check, new, old)
    assert result.phase == phase, result.reasons
    if reason:
        assert reason in " ".join(result.reasons)
    else:
        assert result.reasons == []


def test_session_outcome_values_and_queries():
    check = MetricCheck.model_validate(
        {"name": "checkout", "sessions": {"reached": 'x{v="${version}",w="${window}"}', "started": "y"}}
    )
    result = judge_sessions(check, (300, 1000), (500, 1000))
    assert (result.canary, result.baseline, result.samples) == (0.3, 0.5, (1000, 1000))
    assert result.ratio == pytest.approx(0.6) and result.p_value < 1e-10
    values = {"version": "2", "baseline_version": "1", "window": "30s"}
    assert session_queries(check, values, baseline=False) == ('x{v="2",w="30s"}', "y")
    assert session_queries(check, values, baseline=True) == ('x{v="1",w="30s"}', "y")


def test_a_session_metric_is_a_metric_of_its_own():
    with pytest.raises(ValidationError, match="sessions is a metric of its own; remove query, absolute"):
        MetricCheck.model_validate({**CHECKOUT, "query": "q", "absolute": {"max": 1}})
    with pytest.raises(ValidationError, match="max_change"):
        MetricCheck.model_validate({"name": "c", "sessions": {"reached": "r", "started": "s", "max_change": 1.5}})


def test_a_rolling_watch_compares_sessions_with_the_time_before_the_deploy():
    from releasetrain.core.spec import Strategy

    rule = {"reached": "r", "started": "s"}
    watch = {"provider": {"conn_id": "prom"}, "metrics": [{"name": "checkout", "sessions": rule}]}
    with pytest.raises(
        ValidationError, match="the old version serves no sessions; set sessions.baseline: before_deploy"
    ):
        Strategy.model_validate({"kind": "rolling", "watch": watch})
    before = {**watch, "metrics": [{"name": "checkout", "sessions": {**rule, "baseline": "before_deploy"}}]}
    assert (
        Strategy.model_validate({"kind": "rolling", "watch": before}).watch.metrics[0].sessions.baseline
        == "before_deploy"
    )
    # a canary's old version still serves: the concurrent baseline is right there
    assert Strategy.model_validate({"kind": "canary", "analysis": watch}).analysis.metrics[0].sessions
