"""Trends drive procedure: recent rollbacks and failed changes, the rules they trigger, and
what the plan, the risk assessment and the gatekeeper make of them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from releasetrain.core import gatekeeper
from releasetrain.core.gatekeeper import RunLedger
from releasetrain.core.ledger import LedgerEvent
from releasetrain.core.plan import PlanContext, plan_release
from releasetrain.core.risk import EnvironmentGates, RiskFacts, assess
from releasetrain.core.spec import ReleaseSpecError, parse_spec
from releasetrain.core.trends import Trend, TrendRule, adds, extra_approvals, soak_minutes, trend_of, triggered
from releasetrain.core.vocabulary import Event, Kind

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def event(kind, at, run_id="r1", environment="prod", dag_id="release_shop", **details):
    return LedgerEvent(
        seq=1, at=at, release="shop", run_id=run_id, environment=environment, kind=kind, actor="", details=details,
        dag_id=dag_id,
    )  # fmt: skip


def test_the_trend_counts_rollbacks_per_run_and_environment_and_unsuccessful_changes():
    events = [
        event(Event.ROLLBACK_STARTED, "2026-11-20T09:59:00Z", "r1"),
        event(Event.ROLLBACK, "2026-11-20T10:00:00Z", "r1", unit="web"),
        event(Event.ROLLBACK, "2026-11-20T10:00:01Z", "r1", unit="api"),  # the same rollback, another unit
        event(Event.ROLLBACK, "2026-11-21T10:00:00Z", "r1", environment="staging"),
        event(Event.ROLLBACK_STARTED, "2026-11-22T10:00:00Z", "r6"),  # a rollback that failed counts too
        event(Event.ROLLBACK, "2026-10-01T10:00:00Z", "r2"),  # 59 days ago: in 90, not in 30
        event(Event.ROLLBACK, "2026-07-01T10:00:00Z", "r3"),  # older than 90 days
        event(Event.ROLLBACK, "2026-11-20T10:00:00Z", "r1", dag_id="rollback_shop"),  # a rollback DAG's run, same id
        event(Event.CHANGE_CLOSED, "2026-11-20T11:00:00Z", "r1", state="closed", close_code="unsuccessful"),
        event(Event.CHANGE_CLOSED, "2026-11-22T11:00:00Z", "r4", state="closed", close_code="successful"),
        event(Event.CHANGE_CLOSED, "2026-10-02T11:00:00Z", "r2", state="closed", backend="jira", outcome="rolled_back"),
        event(Event.CHANGE_CLOSED, "2026-11-23T11:00:00Z", "r5", state="canceled", close_code="canceled"),
        # nothing was implemented: canceled, whatever the outcome said
        event(Event.CHANGE_CLOSED, "2026-11-24T11:00:00Z", "r7", state="canceled", backend="jira", outcome="failed"),
    ]
    assert trend_of(events, NOW) == Trend(4, 5, 1, 2)


RULES = [
    TrendRule.model_validate({"when": {"rollbacks": 2}, "soak": {"environment": "staging", "minutes": 30}}),
    TrendRule.model_validate({"when": {"failed_changes": 2, "days": 90}, "extra_approvals": 1}),
    TrendRule.model_validate({"when": {"rollbacks": 3, "days": 90}, "extra_approvals": 2,
                              "soak": {"environment": "staging", "minutes": 60}}),
]  # fmt: skip


def test_rules_the_trend_reaches_add_a_soak_and_approvals_the_strictest_wins():
    assert triggered(RULES, Trend(1, 1, 1, 1)) == []
    fired = triggered(RULES, Trend(2, 3, 1, 2))
    assert [r["rule"] for r in fired] == [0, 1, 2]
    assert fired[0]["when"] == "2 or more rollbacks in 30 days" and fired[0]["counted"] == 2
    assert fired[1]["when"] == "2 or more failed changes in 90 days"
    assert extra_approvals(fired) == 2 and soak_minutes(fired, "staging") == 60 and soak_minutes(fired, "dev") == 0
    assert adds(fired[2]) == "a 60-minute soak in staging and 2 extra production approval(s)"


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        ({"when": {"rollbacks": 2}}, "does nothing: give soak or extra_approvals"),
        ({"when": {"rollbacks": 2, "failed_changes": 1}, "extra_approvals": 1}, "either rollbacks or failed_changes"),
        ({"when": {"days": 30}, "extra_approvals": 1}, "either rollbacks or failed_changes"),
        ({"when": {"rollbacks": 2, "days": 60}, "extra_approvals": 1}, "days"),
        (
            {"when": {"rollbacks": 2}, "soak": {"environment": "nowhere", "minutes": 5}},
            "'nowhere' is not an environment",
        ),
        ({"when": {"rollbacks": 2}, "soak": {"environment": "prod", "minutes": 5}}, "'prod' is the last one"),
    ],
)
def test_a_rule_that_cannot_work_is_refused_naming_it(rule, error):
    with pytest.raises(ReleaseSpecError, match=error):
        spec([rule])


def spec(trends, prod_approval=True):
    return parse_spec(
        {
            "name": "shop",
            "owner_team": "commerce",
            "components": [{"name": "web", "source": "include/web"}],
            "environments": [
                {"name": "staging", "deploy_target": "fleet_staging"},
                {
                    "name": "prod",
                    "deploy_target": "fleet_prod",
                    "approval": {"required": True, "approvers": ["a", "b", "c", "d", "e"]}
                    if prod_approval
                    else {"required": False, "reason": "a lab, nobody uses it"},
                },
            ],
            "trends": trends,
        },
        "test",
    )


def test_extra_approvals_need_a_production_approval():
    with pytest.raises(ReleaseSpecError, match="no production environment asks for approval"):
        spec([{"when": {"rollbacks": 1}, "extra_approvals": 1}], prod_approval=False)


def test_the_plan_soaks_before_the_gate_and_leaves_room_for_the_extra_approvals():
    rules = [
        {"when": {"rollbacks": 2}, "soak": {"environment": "staging", "minutes": 30}},
        {"when": {"rollbacks": 3}, "extra_approvals": 2},
    ]
    plan = plan_release(spec(rules), PlanContext(project_root="/srv", calendar_dirs=[], groups={}))
    soak = plan.steps["staging.soak"]
    assert soak.kind == Kind.SOAK and soak.args["deploy_task_id"] == "staging.deploy"
    assert plan.upstream("staging.soak") == ["staging.smoke"]
    assert "staging.soak" in plan.steps["staging.passed"].args["proof_task_ids"]
    assert "staging.soak" in plan.upstream("staging.passed")
    assert "prod.soak" not in plan.steps
    # production: a high-risk quorum of 2, plus the 2 a rule may add
    assert [t for t in plan.steps if t.startswith("prod.approve")] == [
        "prod.approve", "prod.approve_2", "prod.approve_3", "prod.approve_4",
    ]  # fmt: skip
    assert plan.steps["assess_risk"].args["trends"][1]["extra_approvals"] == 2
    without = plan_release(spec([]), PlanContext(project_root="/srv", calendar_dirs=[], groups={}))
    assert "staging.soak" not in without.steps and "trends" not in without.steps["assess_risk"].args
    assert "prod.approve_3" not in without.steps


def test_the_risk_assessment_adds_the_approvals_to_every_production_quorum():
    facts = RiskFacts(environments=["staging", "prod"], production=["prod"], components=1, version="1.0.1",
                      previous_version="1.0.0", rollback_plan=True, backout_estimate=True)  # fmt: skip
    declared = {"prod": EnvironmentGates(quorum=1, reviews=[])}
    plain = assess(facts, declared)
    more = assess(facts, declared, extra_approvals=2, extra_reason="trend: 2 or more rollbacks in 30 days")
    assert plain.gates["prod"].quorum == 1 and more.gates["prod"].quorum == 3
    assert "prod: 2 extra approval(s) (trend: 2 or more rollbacks in 30 days): quorum 3" in more.notes
    assert more.score == plain.score, "the procedure grows, not the score"


def gate_event(kind, at="2026-11-29T10:00:00Z", task_id="", environment="staging", **details):
    if task_id:
        details["task_id"] = task_id
    return LedgerEvent(seq=1, at=at, release="shop", run_id="r", environment=environment, kind=kind, actor="",
                       details=details)  # fmt: skip


RULE = {"rule": 0, "when": "2 or more rollbacks in 30 days", "counted": 2,
        "soak": {"environment": "staging", "minutes": 30}, "extra_approvals": 0}  # fmt: skip


def soak_proof(*events):
    return gatekeeper.step_proof(RunLedger(list(events)), "staging.soak", "staging")


def test_the_gate_asks_for_the_soak_the_risk_record_asked_for():
    risk = gate_event(Event.RISK_ASSESSED, task_id="assess_risk", level="low", trend_rules=[RULE])
    deployed = gate_event(Event.DEPLOYED, "2026-11-29T10:00:00Z", "staging.deploy")
    done = gate_event(Event.SOAKED, "2026-11-29T10:30:01Z", "staging.soak", minutes=30)
    assert soak_proof(risk, deployed, done).allowed
    missing = soak_proof(risk, deployed)
    assert not missing.allowed and "staging.soak" in missing.message()
    early = gate_event(Event.SOAKED, "2026-11-29T10:05:00Z", "staging.soak", minutes=30)
    assert "must soak 30 minutes after its last deploy or promotion" in soak_proof(risk, deployed, early).message()
    # the deploy ran again after the soak: its record proves nothing for the new deploy
    again = gate_event(Event.DEPLOYED, "2026-11-29T10:20:00Z", "staging.deploy")
    assert not soak_proof(risk, deployed, done, again).allowed
    # a canary soaks from its promotion (the analyses before it are not the soak)
    promoted = gate_event(Event.PROMOTED, "2026-11-29T10:10:00Z", "staging.promote")
    assert "before 2026-11-29T10:40:00" in soak_proof(risk, deployed, promoted, done).message()
    # no rule triggered: the step's record that no soak was needed is the proof
    calm = gate_event(Event.RISK_ASSESSED, task_id="assess_risk", level="low", trend_rules=[])
    none = gate_event(Event.SOAKED, "2026-11-29T10:00:01Z", "staging.soak", minutes=0)
    assert soak_proof(calm, deployed, none).allowed


def test_the_approvers_must_be_enough_for_the_quorum_a_rule_may_ask():
    from releasetrain.core.spec import check_groups

    few = parse_spec(
        {
            "name": "shop",
            "owner_team": "commerce",
            "components": [{"name": "web", "source": "include/web"}],
            "environments": [
                {"name": "staging", "deploy_target": "fleet_staging"},
                {
                    "name": "prod",
                    "deploy_target": "fleet_prod",
                    "approval": {"required": True, "approvers": ["a", "b"]},
                },
            ],
            "trends": [{"when": {"rollbacks": 1}, "extra_approvals": 2}],
        },
        "test",
    )
    with pytest.raises(
        ReleaseSpecError, match=r"adds 2 approval\(s\) to prod's quorum \(up to 2 at high risk\): 4 possible"
    ):
        check_groups(few, "test", {})
    check_groups(spec([{"when": {"rollbacks": 1}, "extra_approvals": 2}]), "test", {})  # five approvers
