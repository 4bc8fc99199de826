"""Risk assessment: a documented score from a release's facts, and the gates it selects.

Score (points add up):

=============================  ==========================================================
fact                           points
=============================  ==========================================================
environments touched           +1 for each environment after the first (at most +3)
reaches production             +2
components                     +1 for 3 to 5 components, +2 for more than 5
version class                  major (or first release) +3, minor +1, patch 0
schema migration               +3
no rollback plan               +2
no backout-time estimate       +1
rollbacks in the last 30 days  +2 each (at most +4)
=============================  ==========================================================

Levels: **low** 0-3, **moderate** 4-7, **high** 8 and more.

Gates by level (on production environments that ask for approval; others keep the spec's):

- low: the spec's quorum and reviews; a ``standard`` change stays standard.
- moderate: the spec's quorum and reviews; a ``standard`` change becomes ``normal``.
- high: a quorum of at least 2 plus a ``security`` readiness review.

A rollback plan and a backout estimate are mandatory when the release is high risk *on its
other facts*: whether they are required is decided before their own points are counted,
so writing a placeholder plan can never lower the level that requires one. Without them
such a release is refused before any deploy. (Missing, they still add their points.)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from releasetrain.core.versioning import VersionClass, classify_change

Level = Literal["low", "moderate", "high"]
SECURITY_REVIEW = "security"
PLAN_FACTORS = ("rollback_plan", "backout_estimate")  # never decide whether they are required
HIGH_RISK_QUORUM = 2


class RiskRefusal(ValueError):
    """A release whose risk forbids it from going ahead as specified."""


@dataclass(frozen=True)
class RiskFacts:
    environments: list[str]
    production: list[str]
    components: int
    version: str
    previous_version: str | None = None
    schema_migration: bool = False
    rollback_plan: bool = False
    backout_estimate: bool = False
    recent_rollbacks: int = 0


@dataclass(frozen=True)
class EnvironmentGates:
    quorum: int
    reviews: list[str]


@dataclass(frozen=True)
class RiskAssessment:
    score: int
    level: Level
    factors: list[dict[str, Any]]
    version_class: str
    change_type: str
    gates: dict[str, EnvironmentGates] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RiskAssessment:
        gates = {env: EnvironmentGates(**g) for env, g in (data.get("gates") or {}).items()}
        return cls(**{**data, "gates": gates})


def version_class(previous: str | None, version: str) -> str:
    """major / minor / patch against the version live before, ``initial`` when there was none."""
    if not previous:
        return "initial"
    kind = classify_change(previous, version)
    # a pre-release step or a redeploy of the same version carries a patch's risk
    return str(kind) if kind in (VersionClass.MAJOR, VersionClass.MINOR) else "patch"


def level_of(score: int) -> Level:
    if score >= 8:
        return "high"
    if score >= 4:
        return "moderate"
    return "low"


def score(facts: RiskFacts) -> tuple[int, list[dict[str, Any]], str]:
    factors: list[dict[str, Any]] = []

    def add(name: str, points: int, reason: str) -> None:
        if points:
            factors.append({"factor": name, "points": points, "reason": reason})

    add("environments", min(3, max(0, len(facts.environments) - 1)), f"touches {', '.join(facts.environments)}")
    add("production", 2 if facts.production else 0, f"reaches production ({', '.join(facts.production)})")
    if facts.components > 5:
        add("components", 2, f"{facts.components} components")
    elif facts.components >= 3:
        add("components", 1, f"{facts.components} components")
    vclass = version_class(facts.previous_version, facts.version)
    previous = facts.previous_version or "nothing"
    add("version", {"major": 3, "initial": 3, "minor": 1}.get(vclass, 0), f"{vclass}: {previous} -> {facts.version}")
    add("schema_migration", 3 if facts.schema_migration else 0, "a component migrates a database schema")
    add("rollback_plan", 0 if facts.rollback_plan else 2, "no rollback plan")
    add("backout_estimate", 0 if facts.backout_estimate else 1, "no backout-time estimate")
    add(
        "recent_rollbacks",
        min(4, 2 * facts.recent_rollbacks),
        f"{facts.recent_rollbacks} rollback(s) of this release in the last 30 days",
    )
    return sum(f["points"] for f in factors), factors, vclass


def assess(
    facts: RiskFacts,
    declared: dict[str, EnvironmentGates],
    *,
    change_type: str = "normal",
    emergency: bool = False,
    available_reviews: set[str] | None = None,
    extra_approvals: int = 0,
    extra_reason: str = "",
) -> RiskAssessment:
    """Score the release and select its gates.

    :param declared: the spec's gates of every environment that asks for approval
    :param available_reviews: review groups that exist as tasks in the release DAG per
        production environment (a high-risk security review needs one)
    :param extra_approvals: approvals added to every production quorum (a trend rule;
        ``extra_reason`` says which)
    :raises RiskRefusal: high risk without a rollback plan or backout estimate, or
        with no way to ask for the reviews it needs
    """
    total, factors, vclass = score(facts)
    level = level_of(total)
    notes: list[str] = []
    gates = dict(declared)
    own = sum(f["points"] for f in factors if f["factor"] in PLAN_FACTORS)
    if level_of(total - own) == "high":  # decided before the plan's and estimate's own points
        missing = [
            what
            for what, present in (
                ("a rollback plan", facts.rollback_plan),
                ("a backout estimate", facts.backout_estimate),
            )
            if not present
        ]
        if missing:
            raise RiskRefusal(
                f"high risk (score {total}) without {' and without '.join(missing)}: set rollback_plan and "
                f"backout_minutes in the spec; nothing was deployed"
            )
    if level == "high":
        for env in facts.production:
            if env not in declared:
                raise RiskRefusal(
                    f"high risk (score {total}) needs approvals on {env}, which asks for none; "
                    f"add an approval to {env}; nothing was deployed"
                )
            if available_reviews is not None and SECURITY_REVIEW not in available_reviews:
                raise RiskRefusal(
                    f"high risk (score {total}) needs a {SECURITY_REVIEW!r} review on {env} but no "
                    f"{SECURITY_REVIEW!r} approver group is defined; nothing was deployed"
                )
            current = declared[env]
            reviews = list(current.reviews) + ([SECURITY_REVIEW] if SECURITY_REVIEW not in current.reviews else [])
            gates[env] = EnvironmentGates(quorum=max(HIGH_RISK_QUORUM, current.quorum), reviews=reviews)
            notes.append(f"{env}: high risk requires {gates[env].quorum} approvers and reviews {reviews}")
    if extra_approvals:
        for env in facts.production:
            if env in gates:
                current = gates[env]
                gates[env] = EnvironmentGates(quorum=current.quorum + extra_approvals, reviews=list(current.reviews))
                notes.append(f"{env}: {extra_approvals} extra approval(s) ({extra_reason}): quorum {gates[env].quorum}")
    if emergency:
        kind = "emergency"
    elif change_type == "standard" and level != "low":
        kind = "normal"
        notes.append(f"standard change requested, but risk is {level}: handled as a normal change")
    else:
        kind = change_type
    return RiskAssessment(total, level, factors, vclass, kind, gates, notes)
