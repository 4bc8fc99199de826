"""The canary judge: is the new version as good as the one it replaces?

Three levels, after the references the field uses:

1. **Metric** (one measurement interval): a metric's canary samples are checked against
   absolute bounds (``error_rate <= 0.01``), against the baseline version
   (``p95 <= baseline x 1.1``) and, with enough samples, by a Mann-Whitney U test of
   canary vs baseline samples (``scipy.stats.mannwhitneyu``) in the direction that is bad
   for the metric. No data is handled per metric (``fail``, ``inconclusive`` or ``pass``).
   A **session outcome** metric (``sessions``) compares the share of sessions that reach an
   outcome (checkout, sign-up) between the new and the old version: session counts, not
   samples, judged by a one-sided two-proportion z-test in the bad direction with a
   tolerated relative change (the baseline is the old version's sessions in the same
   window, or, after a plain deploy that replaced it, in the window before the deploy).
2. **Measurement** (Kayenta's scoring): metrics are grouped; a group's score is the share
   of its metrics that passed; the interval's score is the weighted mean of the group
   scores, 0-100. ``score >= pass`` (default 95) passes, ``>= marginal`` (default 75) is
   marginal (inconclusive), lower fails. Inconclusive metrics are left out of the score
   (Kayenta's NoData), but an interval with one never passes: it is marginal at best,
   so a human decides. A failing ``critical`` metric fails the interval whatever the
   score. A provider error makes the measurement an error.
3. **Analysis** (Argo Rollouts' AnalysisRun semantics): measurements are taken every
   interval up to ``count``; the analysis fails as soon as more than ``failure_limit``
   measurements failed, is inconclusive as soon as more than ``inconclusive_limit`` were
   inconclusive, errs when more than ``consecutive_error_limit`` errors came in a row,
   and succeeds when ``count`` measurements were taken without crossing a limit.
   Where several limits are crossed at once, *failed* wins over *error* over
   *inconclusive* (Argo lets the last check win; a release manager wants a failing
   canary rolled back, not parked for a human).

Everything returned is JSON-safe (``to_dict``) for the task log and XCom.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Phase = Literal["pass", "fail", "inconclusive", "error"]
Verdict = Literal["pass", "marginal", "fail", "error"]
Outcome = Literal["running", "successful", "failed", "inconclusive", "error"]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Bounds(_Model):
    min: float | None = Field(default=None, description="The canary value must be at least this.")
    max: float | None = Field(default=None, description="The canary value must be at most this.")


class Relative(_Model):
    max_ratio: float | None = Field(default=None, gt=0, description="canary <= baseline x max_ratio")
    min_ratio: float | None = Field(default=None, gt=0, description="canary >= baseline x min_ratio")


class Compare(_Model):
    """Mann-Whitney U test of canary vs baseline samples."""

    bad: Literal["increase", "decrease", "either"] = Field(
        default="increase", description="Which direction of change is bad for this metric."
    )
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="Significance level.")
    tolerance: float = Field(
        default=0.1, ge=0, description="A significant shift of the medians smaller than this fraction is tolerated."
    )
    min_samples: int = Field(default=5, ge=3, description="Fewer samples on either side: inconclusive.")


class SessionOutcome(_Model):
    """The share of sessions that reach an outcome, new version against old.

    ``reached`` and ``started`` are provider queries counting sessions in the window that
    ends at the measurement (``${window}`` is the window, e.g. ``30s``, for PromQL's
    ``increase(...[${window}])``); each is read once per version at the window's end.
    """

    reached: str = Field(min_length=1, description="Query: sessions that reached the outcome in the window.")
    started: str = Field(min_length=1, description="Query: sessions started in the window.")
    bad: Literal["decrease", "increase"] = Field(
        default="decrease",
        description="decrease: fewer sessions reaching it is bad (checkout); increase: more is bad (errors).",
    )
    max_change: float = Field(
        default=0.1, gt=0, lt=1, description="Tolerated relative change of the share in the bad direction."
    )
    alpha: float = Field(default=0.05, gt=0, lt=0.5, description="Significance level of the two-proportion test.")
    min_sessions: int = Field(default=100, ge=1, description="Fewer sessions on either side: inconclusive.")
    window_seconds: int | None = Field(
        default=None, ge=1, le=86400, description="The counting window (default: the analysis interval)."
    )
    baseline: Literal["concurrent", "before_deploy"] = Field(
        default="concurrent",
        description="concurrent: the old version's sessions in the same window (canary, blue-green); "
        "before_deploy: in the window before this release's deploy started (a watch after a plain deploy).",
    )


class MetricCheck(_Model):
    name: str = Field(min_length=1)
    query: str = Field(default="", description="Provider query for the canary; ${version} etc. substituted.")
    baseline_query: str | None = Field(
        default=None, description="Query for the baseline (default: the query with the baseline version)."
    )
    group: str | None = Field(default=None, description="Metric group for scoring (default: the metric name).")
    weight: float = Field(default=1.0, gt=0, description="Weight of the metric's group (first one given wins).")
    critical: bool = Field(default=False, description="A failure fails the interval whatever the score.")
    absolute: Bounds | None = None
    relative: Relative | None = None
    compare: Compare | None = None
    no_data: Literal["fail", "inconclusive", "pass"] = "inconclusive"
    aggregate: Literal["mean", "last", "max", "min"] = Field(
        default="mean",
        description="The canary value the absolute and relative criteria judge, from the interval's samples: "
        "mean (Kayenta), last (the value at measurement time, like Argo's instant query: a new failure is "
        "seen soonest), max or min.",
    )
    journey: str | None = Field(
        default=None,
        pattern=r"^[A-Za-z0-9_.-]+$",
        description="Instead of a query: run this synthetic journey (include/journeys/<name>.yaml) against the "
        "environment; the value is the share of runs that failed.",
    )
    runs: int = Field(default=3, ge=1, le=100, description="journey: runs per measurement.")
    sessions: SessionOutcome | None = Field(
        default=None, description="Instead of a query: a session outcome compared between the new and the old version."
    )

    @model_validator(mode="after")
    def _some_criterion(self) -> MetricCheck:
        if self.sessions is not None:
            others = [
                k for k in ("query", "baseline_query", "journey", "absolute", "relative", "compare") if getattr(self, k)
            ]
            if others:
                raise ValueError(f"metric {self.name!r}: sessions is a metric of its own; remove {', '.join(others)}")
            return self
        if self.absolute is None and self.relative is None and self.compare is None:
            raise ValueError(f"metric {self.name!r} has no criterion: set absolute, relative or compare")
        if self.journey and self.query:
            raise ValueError(f"metric {self.name!r} has a query and a journey: give one of them")
        if self.journey and (self.relative or self.compare):
            raise ValueError(f"metric {self.name!r}: a journey has no baseline; use absolute bounds")
        return self

    @property
    def group_name(self) -> str:
        return self.group or self.name


class AnalysisPolicy(_Model):
    interval_seconds: int = Field(default=30, ge=1, le=3600)
    count: int = Field(default=3, ge=1, le=1000)
    failure_limit: int = Field(default=0, ge=0)
    inconclusive_limit: int = Field(default=0, ge=0)
    consecutive_error_limit: int = Field(default=4, ge=0)
    pass_score: float = Field(default=95.0, ge=0, le=100)
    marginal_score: float = Field(default=75.0, ge=0, le=100)
    metrics: list[MetricCheck] = Field(min_length=1)

    @model_validator(mode="after")
    def _thresholds(self) -> AnalysisPolicy:
        if self.marginal_score > self.pass_score:
            raise ValueError(f"marginal_score {self.marginal_score} is above pass_score {self.pass_score}")
        names = [m.name for m in self.metrics]
        if len(set(names)) != len(names):
            raise ValueError("metric names must be unique")
        return self


@dataclass(frozen=True)
class MetricResult:
    name: str
    group: str
    phase: Phase
    reasons: list[str]
    canary: float | None = None
    baseline: float | None = None
    ratio: float | None = None
    p_value: float | None = None
    samples: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class Measurement:
    verdict: Verdict
    score: float | None
    metrics: list[MetricResult]
    reason: str
    groups: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return _json_safe(asdict(self))


@dataclass(frozen=True)
class AnalysisState:
    outcome: Outcome
    reason: str
    measurements: list[Measurement]

    @property
    def finished(self) -> bool:
        return self.outcome != "running"

    def to_dict(self) -> dict[str, Any]:
        counts = {v: sum(1 for m in self.measurements if m.verdict == v) for v in ("pass", "marginal", "fail", "error")}
        return _json_safe(
            {
                "outcome": self.outcome,
                "reason": self.reason,
                "counts": counts,
                "measurements": [m.to_dict() for m in self.measurements],
            }
        )


def render_query(check: MetricCheck, values: dict[str, str], *, baseline: bool) -> str:
    """The metric's query with ``${version}``, ``${baseline_version}``, ``${environment}``... filled in.

    For the baseline, ``baseline_query`` when given, else the query run for the baseline
    version (``${version}`` becomes the baseline version).
    """
    text = (check.baseline_query or check.query) if baseline else check.query
    filled = dict(values)
    if baseline and not check.baseline_query:
        filled["version"] = values.get("baseline_version", "")
    for key, value in filled.items():
        text = text.replace("${" + key + "}", str(value))
    return text


def measurement_from_dict(data: dict[str, Any]) -> Measurement:
    results = [MetricResult(**{**r, "samples": tuple(r.get("samples") or (0, 0))}) for r in data.get("metrics", [])]
    return Measurement(data["verdict"], data.get("score"), results, data.get("reason", ""), data.get("groups", {}))


def _json_safe(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    return value


def _aggregate(how: str, samples: Sequence[float]) -> float | None:
    if not samples:
        return None
    return {"mean": statistics.fmean, "last": lambda s: s[-1], "max": max, "min": min}[how](samples)


def judge_metric(check: MetricCheck, canary: Sequence[float], baseline: Sequence[float] = ()) -> MetricResult:
    """One metric in one interval: pass, fail or inconclusive, with the reasons and the values."""
    canary = [float(v) for v in canary if v is not None and math.isfinite(float(v))]
    baseline = [float(v) for v in baseline if v is not None and math.isfinite(float(v))]
    samples = (len(canary), len(baseline))
    if not canary:
        phase: Phase = check.no_data
        return MetricResult(check.name, check.group_name, phase, [f"no data for the canary (no_data: {phase})"])
    value, base = _aggregate(check.aggregate, canary), _aggregate(check.aggregate, baseline)
    failures: list[str] = []
    unsure: list[str] = []
    ratio = None
    if check.absolute:
        if check.absolute.max is not None and value > check.absolute.max:
            failures.append(f"{check.name} {value:.4g} > {check.absolute.max:g}")
        if check.absolute.min is not None and value < check.absolute.min:
            failures.append(f"{check.name} {value:.4g} < {check.absolute.min:g}")
    if check.relative:
        if base is None:
            unsure.append(f"no baseline data for {check.name} (relative check)")
        else:
            ratio = (value / base) if base else (1.0 if value == 0 else math.inf)
            said = f"{check.name} {value:.4g} is {ratio:.3g}x the baseline {base:.4g}"
            if check.relative.max_ratio is not None and ratio > check.relative.max_ratio:
                failures.append(f"{said} (max {check.relative.max_ratio:g}x)")
            if check.relative.min_ratio is not None and ratio < check.relative.min_ratio:
                failures.append(f"{said} (min {check.relative.min_ratio:g}x)")
    p_value = None
    if check.compare:
        p_value, verdict = _compare(check.compare, canary, baseline)
        if verdict:
            (failures if verdict.startswith("fail:") else unsure).append(verdict.split(":", 1)[1])
    phase = "fail" if failures else "inconclusive" if unsure else "pass"
    return MetricResult(check.name, check.group_name, phase, failures + unsure, value, base, ratio, p_value, samples)


def session_queries(check: MetricCheck, values: dict[str, str], *, baseline: bool) -> tuple[str, str]:
    """The ``reached`` and ``started`` queries for the new version (or the old one)."""
    assert check.sessions is not None
    filled = dict(values)
    if baseline:
        filled["version"] = values.get("baseline_version", "")
    rendered = []
    for text in (check.sessions.reached, check.sessions.started):
        for key, value in filled.items():
            text = text.replace("${" + key + "}", str(value))
        rendered.append(text)
    return rendered[0], rendered[1]


def judge_sessions(
    check: MetricCheck, new: tuple[float, float] | None, old: tuple[float, float] | None
) -> MetricResult:
    """A session outcome in one interval: ``new`` and ``old`` are (reached, started) counts.

    Fails when the new version's share moved more than ``max_change`` (relative) in the
    bad direction *and* a one-sided two-proportion z-test says the move is significant at
    ``alpha``; a bad move that is not significant is inconclusive (a human decides, or the
    next interval with more sessions does); too few sessions on either side: inconclusive.
    """
    rule = check.sessions
    assert rule is not None
    if new is None or not new[1]:
        phase: Phase = check.no_data
        return MetricResult(check.name, check.group_name, phase, [f"no sessions of the new version (no_data: {phase})"])
    if old is None or not old[1]:
        return MetricResult(
            check.name, check.group_name, "inconclusive", [f"no sessions of the old version ({check.name})"]
        )
    (r1, n1), (r0, n0) = new, old
    counts = (int(n1), int(n0))
    for side, (r, n) in (("new", new), ("old", old)):
        if r < 0 or n < 0 or r > n:
            reason = f"{check.name}: the {side} version has {r:g} sessions reaching it of {n:g} started: not a share"
            return MetricResult(check.name, check.group_name, "inconclusive", [reason], samples=counts)
    p1, p0 = r1 / n1, r0 / n0
    ratio = (p1 / p0) if p0 else (1.0 if p1 == 0 else math.inf)
    pooled = (r1 + r0) / (n1 + n0)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n1 + 1 / n0))
    z = (p1 - p0) / se if se else 0.0
    # one-sided: the probability of a move this far in the bad direction by chance
    p_value = 0.5 * math.erfc(z / math.sqrt(2)) if rule.bad == "increase" else 0.5 * math.erfc(-z / math.sqrt(2))
    said = (
        f"{check.name} {p1:.2%} of {int(n1)} sessions vs {p0:.2%} of {int(n0)} before ({ratio:.3g}x, p={p_value:.3g})"
    )
    if min(n1, n0) < rule.min_sessions:
        reason = f"{said}: fewer than {rule.min_sessions} sessions on a side"
        return MetricResult(check.name, check.group_name, "inconclusive", [reason], p1, p0, ratio, p_value, counts)
    worse = ratio < 1 - rule.max_change if rule.bad == "decrease" else ratio > 1 + rule.max_change
    if not worse:
        return MetricResult(check.name, check.group_name, "pass", [], p1, p0, ratio, p_value, counts)
    limit = f"{'down' if rule.bad == 'decrease' else 'up'} more than {rule.max_change:.0%}"
    if p_value < rule.alpha:
        reason = f"{said}: {limit}, significant at {rule.alpha:g}"
        return MetricResult(check.name, check.group_name, "fail", [reason], p1, p0, ratio, p_value, counts)
    reason = f"{said}: {limit}, but not significant at {rule.alpha:g}"
    return MetricResult(check.name, check.group_name, "inconclusive", [reason], p1, p0, ratio, p_value, counts)


def _compare(compare: Compare, canary: list[float], baseline: list[float]) -> tuple[float | None, str]:
    from scipy.stats import mannwhitneyu

    if len(canary) < compare.min_samples or len(baseline) < compare.min_samples:
        return None, (
            f"unsure:too few samples for a Mann-Whitney test ({len(canary)} canary, {len(baseline)} baseline; "
            f"{compare.min_samples} needed each)"
        )
    alternative = {"increase": "greater", "decrease": "less", "either": "two-sided"}[compare.bad]
    p_value = float(mannwhitneyu(canary, baseline, alternative=alternative).pvalue)
    med_c, med_b = statistics.median(canary), statistics.median(baseline)
    shift = (
        (med_c - med_b) / abs(med_b) if med_b else (0.0 if med_c == med_b else math.copysign(math.inf, med_c - med_b))
    )
    bad_shift = {"increase": shift, "decrease": -shift, "either": abs(shift)}[compare.bad]
    if p_value < compare.alpha and bad_shift > compare.tolerance:
        return p_value, (
            f"fail:canary median {med_c:.4g} vs baseline {med_b:.4g} ({shift:+.1%}), "
            f"Mann-Whitney p={p_value:.3g} < {compare.alpha:g}"
        )
    return p_value, ""


def score_measurement(policy: AnalysisPolicy, results: Iterable[MetricResult], error: str | None = None) -> Measurement:
    """Kayenta-style score of one interval's metric results."""
    results = list(results)
    if error:
        return Measurement("error", None, results, f"measurement error: {error}")
    weights: dict[str, float] = {}
    for check in policy.metrics:
        weights.setdefault(check.group_name, check.weight)
    # Inconclusive metrics (no data, no baseline, too few samples) are left out of the score,
    # like Kayenta's NoData; they can still keep the interval from passing (see below).
    groups: dict[str, list[MetricResult]] = {}
    for result in results:
        if result.phase != "inconclusive":
            groups.setdefault(result.group, []).append(result)
    group_scores = {
        name: 100.0 * sum(1 for r in members if r.phase == "pass") / len(members) for name, members in groups.items()
    }
    total_weight = sum(weights.get(name, 1.0) for name in group_scores)
    score = sum(weights.get(name, 1.0) * s for name, s in group_scores.items()) / total_weight if total_weight else None
    critical = {c.name for c in policy.metrics if c.critical}
    failed_critical = [r.name for r in results if r.name in critical and r.phase == "fail"]
    unsure = [r.name for r in results if r.phase == "inconclusive"]
    problems = "; ".join(reason for r in results for reason in r.reasons)
    if failed_critical:
        return Measurement(
            "fail", score, results, f"critical metric failed: {', '.join(failed_critical)}: {problems}", group_scores
        )
    if score is None:
        return Measurement("marginal", None, results, f"no metric was conclusive: {problems}", group_scores)
    if score >= policy.pass_score:
        verdict: Verdict = "pass"
    elif score >= policy.marginal_score:
        verdict = "marginal"
    else:
        verdict = "fail"
    reason = f"score {score:.1f} ({verdict}; pass >= {policy.pass_score:g}, marginal >= {policy.marginal_score:g})"
    if verdict == "pass" and unsure:
        # a canary never passes on metrics that could not be judged: a human decides
        verdict = "marginal"
        reason = f"score {score:.1f} on the conclusive metrics, but {', '.join(unsure)} inconclusive"
    return Measurement(verdict, score, results, reason + (f": {problems}" if problems else ""), group_scores)


def assess(policy: AnalysisPolicy, measurements: Sequence[Measurement]) -> AnalysisState:
    """Where the analysis stands after these measurements (Argo's limits; see the module doc)."""
    measurements = list(measurements)
    failed = sum(1 for m in measurements if m.verdict == "fail")
    inconclusive = sum(1 for m in measurements if m.verdict == "marginal")
    consecutive_errors = 0
    for m in reversed(measurements):
        if m.verdict != "error":
            break
        consecutive_errors += 1
    if failed > policy.failure_limit:
        last = next(m for m in reversed(measurements) if m.verdict == "fail")
        return AnalysisState(
            "failed", f"failed ({failed}) > failure_limit ({policy.failure_limit}): {last.reason}", measurements
        )
    if consecutive_errors > policy.consecutive_error_limit:
        return AnalysisState(
            "error",
            f"consecutive errors ({consecutive_errors}) > consecutive_error_limit ({policy.consecutive_error_limit}): "
            f"{measurements[-1].reason}",
            measurements,
        )
    if inconclusive > policy.inconclusive_limit:
        last = next(m for m in reversed(measurements) if m.verdict == "marginal")
        return AnalysisState(
            "inconclusive",
            f"inconclusive ({inconclusive}) > inconclusive_limit ({policy.inconclusive_limit}): {last.reason}",
            measurements,
        )
    taken = sum(1 for m in measurements if m.verdict != "error")
    if taken >= policy.count:
        return AnalysisState("successful", f"{taken} of {policy.count} measurements within the limits", measurements)
    return AnalysisState("running", f"{taken} of {policy.count} measurements taken", measurements)
