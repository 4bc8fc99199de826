"""Risk score and the gates it selects (table-driven)."""

from __future__ import annotations

import dataclasses

import pytest

from releasetrain.core.risk import (
    EnvironmentGates,
    RiskAssessment,
    RiskFacts,
    RiskRefusal,
    assess,
    level_of,
    score,
    version_class,
)

ENVS = ["dev", "staging", "prod"]
DECLARED = {"prod": EnvironmentGates(quorum=1, reviews=[])}


def facts(**over) -> RiskFacts:
    base = dict(
        environments=ENVS,
        production=["prod"],
        components=1,
        version="1.4.3",
        previous_version="1.4.2",
        schema_migration=False,
        rollback_plan=True,
        backout_estimate=True,
        recent_rollbacks=0,
    )
    return RiskFacts(**{**base, **over})


@pytest.mark.parametrize(
    ("over", "expected_score", "expected_level"),
    [
        ({}, 4, "moderate"),  # 2 extra environments + production
        ({"environments": ["dev"], "production": []}, 0, "low"),
        ({"environments": ["dev"], "production": [], "components": 3}, 1, "low"),
        ({"environments": ["dev"], "production": [], "components": 6}, 2, "low"),
        ({"environments": ["a", "b", "c", "d", "e", "f"], "production": []}, 3, "low"),  # capped at +3
        ({"version": "1.5.0"}, 5, "moderate"),
        ({"version": "2.0.0"}, 7, "moderate"),
        ({"previous_version": None}, 7, "moderate"),  # first release counts as major
        ({"schema_migration": True}, 7, "moderate"),
        ({"rollback_plan": False}, 6, "moderate"),
        ({"backout_estimate": False}, 5, "moderate"),
        ({"recent_rollbacks": 1}, 6, "moderate"),
        ({"recent_rollbacks": 5}, 8, "high"),  # capped at +4
        ({"version": "2.0.0", "schema_migration": True}, 10, "high"),
        ({"version": "2.0.0", "rollback_plan": False, "backout_estimate": False, "components": 6}, 12, "high"),
    ],
)
def test_score_table(over, expected_score, expected_level):
    total, factors, _ = score(facts(**over))
    assert total == expected_score, factors
    assert sum(f["points"] for f in factors) == total
    assert level_of(total) == expected_level


@pytest.mark.parametrize(
    ("previous", "version", "expected"),
    [(None, "1.0.0", "initial"), ("1.0.0", "2.0.0", "major"), ("1.0.0", "1.1.0", "minor"), ("1.0.0", "1.0.1", "patch")],
)
def test_version_class(previous, version, expected):
    assert version_class(previous, version) == expected


@pytest.mark.parametrize(
    ("over", "change_type", "emergency", "gates", "kind"),
    [
        ({"environments": ["dev", "prod"]}, "standard", False, {"quorum": 1, "reviews": []}, "standard"),  # low
        ({}, "standard", False, {"quorum": 1, "reviews": []}, "normal"),  # moderate: not standard
        ({}, "normal", True, {"quorum": 1, "reviews": []}, "emergency"),
        (
            {"version": "2.0.0", "schema_migration": True},
            "normal",
            False,
            {"quorum": 2, "reviews": ["security"]},
            "normal",
        ),
    ],
)
def test_gates_selected_by_risk(over, change_type, emergency, gates, kind):
    result = assess(
        facts(**over), DECLARED, change_type=change_type, emergency=emergency, available_reviews={"security"}
    )
    assert result.gates["prod"] == EnvironmentGates(**gates)
    assert result.change_type == kind
    assert RiskAssessment.from_dict(result.to_dict()) == result


def test_high_risk_keeps_a_larger_declared_quorum_and_existing_reviews():
    declared = {"prod": EnvironmentGates(quorum=3, reviews=["operations", "security"])}
    result = assess(facts(version="2.0.0", schema_migration=True), declared, available_reviews={"security"})
    assert result.gates["prod"] == EnvironmentGates(quorum=3, reviews=["operations", "security"])


@pytest.mark.parametrize(
    ("over", "message"),
    [
        ({"rollback_plan": False}, "without a rollback plan"),
        ({"backout_estimate": False}, "without a backout estimate"),
        ({"rollback_plan": False, "backout_estimate": False}, "and without a backout estimate"),
    ],
)
def test_high_risk_without_rollback_plan_is_refused(over, message):
    with pytest.raises(RiskRefusal, match=message):
        assess(facts(version="2.0.0", schema_migration=True, recent_rollbacks=1, **over), DECLARED)


def test_high_risk_needs_approvals_and_a_security_group():
    high = facts(version="2.0.0", schema_migration=True)
    with pytest.raises(RiskRefusal, match="needs approvals on prod"):
        assess(high, {})
    with pytest.raises(RiskRefusal, match="'security' approver group"):
        assess(high, DECLARED, available_reviews=set())


def test_whether_a_plan_is_required_is_decided_before_its_own_points():
    # moderate on its other facts (6): a missing plan adds its points (9, high gates) ...
    without = assess(
        facts(version="2.0.0", rollback_plan=False, backout_estimate=False), DECLARED, available_reviews={"security"}
    )
    assert without.level == "high" and without.gates["prod"] == EnvironmentGates(quorum=2, reviews=["security"])
    # ... and high on its other facts, a plan is required: a placeholder is the only way past,
    # and it cannot lower the level (the score is the same as the other facts alone)
    high = facts(version="2.0.0", schema_migration=True)
    with pytest.raises(RiskRefusal, match="without a rollback plan"):
        assess(dataclasses.replace(high, rollback_plan=False), DECLARED, available_reviews={"security"})
    assert assess(high, DECLARED, available_reviews={"security"}).level == "high"
