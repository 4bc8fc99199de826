"""The stage plan (issue 13): a spec becomes task ids, kinds, arguments, trigger rules and
edges, without Airflow. The factory's golden-graph test shows the renderer builds the same
DAGs from it as before; these tests pin what the plan itself promises."""

from __future__ import annotations

import subprocess
import sys
from graphlib import TopologicalSorter
from itertools import pairwise

import pytest

from releasetrain.core import vocabulary as v
from releasetrain.core.plan import Plan, PlanContext, Step, plan_release, plan_rollback
from releasetrain.core.spec import ReleaseSpecError, parse_spec
from releasetrain.core.vocabulary import Kind, Rule

GROUPS = {"release-managers": ["bob", "carol"], "security": ["sec"], "ops": ["olga"]}
CTX = PlanContext(project_root="/srv/rt", calendar_dirs=["/srv/rt/include/calendars"], groups=GROUPS)


def spec(**overrides):
    data = {
        "name": "shop",
        "owner_team": "commerce",
        "components": [{"name": "web", "source": "include/web"}],
        "environments": [
            {"name": "dev", "deploy_target": "fleet_dev"},
            {"name": "prod", "deploy_target": "fleet_prod", "approval": {"required": True, "approvers": ["bob"]}},
        ],
    }
    data.update(overrides)
    return parse_spec(data, "test")


def ordered(plan: Plan) -> list[str]:
    """A topological order of the plan (raises on a cycle)."""
    graph = {task_id: set(plan.upstream(task_id)) for task_id in plan.steps}
    return list(TopologicalSorter(graph).static_order())


def test_a_two_environment_release_is_a_chain_of_stages_with_rollbacks_and_unlocks():
    plan = plan_release(spec(), CTX)
    order = ordered(plan)
    chain = [
        "prepare",
        "assess_risk",
        "package",
        "dev.verify",
        "dev.lock",
        "dev.deploy",
        "dev.smoke",
        "dev.passed",
        "prod.approve",
        "prod.approve_2",  # production: the high-risk quorum slot
        "prod.verify",
        "prod.lock",
        "prod.deploy",
        "prod.smoke",
        "prod.passed",
        "release_complete",
    ]
    for a, b in pairwise(chain):
        assert order.index(a) < order.index(b), (a, b)
    assert plan.groups == {"dev": "Deploy shop to dev", "prod": "Deploy shop to prod"}
    assert all(step.group in (None, *plan.groups) for step in plan.steps.values())
    assert all(a in plan.steps and b in plan.steps for a, b in plan.edges)
    # a stage's rollback waits for one failure among its watched steps; unlock for all of them
    assert plan.steps["dev.rollback"].trigger_rule == Rule.ONE_FAILED
    assert plan.upstream("dev.rollback") == ["dev.deploy", "dev.smoke"]
    assert plan.steps["dev.unlock"].trigger_rule == Rule.ALL_DONE
    assert plan.upstream("dev.unlock") == ["dev.deploy", "dev.lock", "dev.passed", "dev.rollback", "dev.smoke"]
    # the prod deploy is bound to what the stage before it proved, and to its approvals
    deploy = plan.steps["prod.deploy"].args
    assert deploy["promotion_gate_task_id"] == "dev.passed"
    # production has a security group: its high-risk review is planned beside the quorum slots
    assert deploy["approval_task_ids"] == ["prod.approve", "prod.approve_2", "prod.review_security"]
    assert deploy["verify_task_id"] == "prod.verify" and deploy["pool"] == v.target_pool("fleet_prod")
    assert plan.steps["release_complete"].args["gate_task_ids"] == ["dev.passed", "prod.passed"]
    assert plan.steps["prod.approve"].args["passed_task_ids"] == ["dev.passed"]


def test_every_step_has_a_kind_the_renderer_knows_and_plain_arguments():
    import json

    plan = plan_release(spec(), CTX)
    assert {step.kind for step in plan.steps.values()} <= set(Kind)
    for step in plan.steps.values():
        json.dumps(step.args)  # data, never objects
        assert step.local_id == step.task_id.split(".", 1)[-1]


def test_approvals_then_the_window_then_verify():
    calendar = {"timezone": "UTC", "windows": [{"days": ["mon"], "start": "09:00", "end": "17:00"}]}
    with_window = spec(
        reviewers=["carol"],
        environments=[
            {"name": "dev", "deploy_target": "fleet_dev"},
            {
                "name": "prod",
                "deploy_target": "fleet_prod",
                "approval": {"required": True, "approvers": ["bob"], "reviews": ["ops"]},
                "calendar": calendar,
            },
        ],
    )
    plan = plan_release(with_window, CTX)
    # the quorum slots one after the other; reviews beside them; the window after all of them
    assert plan.upstream("prod.approve_2") == ["prod.approve"]
    assert plan.downstream("dev.passed") == ["dev.unlock", "prod.approve", "prod.review_ops", "prod.review_security"]
    assert plan.upstream("prod.window") == ["prod.approve_2", "prod.review_ops", "prod.review_security"]
    assert plan.steps["prod.window"].trigger_rule == Rule.NONE_FAILED
    assert plan.upstream("prod.verify") == ["prod.window"]
    assert plan.steps["prod.verify"].trigger_rule == Rule.ALL_SUCCESS
    assert plan.steps["prod.window"].args["calendar_dirs"] == CTX.calendar_dirs
    assert plan.steps["prod.deploy"].args["window_task_id"] == "prod.window"
    assert plan.steps[v.POST_IMPLEMENTATION_REVIEW].args["gate_task_ids"] == ["prod.window"]
    assert plan.steps[v.RELEASE_COMPLETE].trigger_rule == Rule.NONE_FAILED_MIN_ONE_SUCCESS
    # without a window, verify follows the approvals directly and tolerates skipped slots
    plain = plan_release(spec(), CTX)
    assert "prod.window" not in plain.steps
    assert plain.upstream("prod.verify") == ["prod.approve_2", "prod.review_security"]
    assert plain.steps["prod.verify"].trigger_rule == Rule.NONE_FAILED


def test_a_canary_plans_analyses_decisions_promotion_and_proofs_in_order():
    analysis = {
        "provider": {"kind": "prometheus", "conn_id": "prom"},
        "interval_seconds": 5,
        "count": 1,
        "metrics": [{"name": "errors", "query": "up", "absolute": {"max": 0.1}}],
    }
    canary = spec(
        environments=[
            {
                "name": "prod",
                "deploy_target": "fleet_prod",
                "approval": {"required": True, "approvers": ["bob"]},
                "strategy": {"kind": "canary", "steps": [10, 50, 100], "analysis": analysis, "watch": analysis},
            }
        ]
    )
    plan = plan_release(canary, CTX)
    order = ordered(plan)
    chain = ["prod.deploy", "prod.canary_10", "prod.decide_10", "prod.canary_50", "prod.decide_50"]
    chain += ["prod.canary_100", "prod.decide_100", "prod.promote", "prod.smoke", "prod.watch", "prod.decide_watch"]
    chain += ["prod.passed"]
    for a, b in pairwise(chain):
        assert order.index(a) < order.index(b), (a, b)
    assert plan.steps["prod.canary_50"].args["prior_task_ids"] == ["prod.canary_10"]
    assert plan.steps["prod.promote"].args["analysis_task_ids"] == [
        "prod.canary_10",
        "prod.canary_50",
        "prod.canary_100",
    ]
    assert plan.steps["prod.passed"].args["proof_task_ids"] == [
        "prod.verify",
        "prod.deploy",
        "prod.canary_10",
        "prod.canary_50",
        "prod.canary_100",
        "prod.promote",
        "prod.smoke",
        "prod.watch",
    ]
    # a production rollout that takes time gets the abort request, open from verify to passed
    assert plan.upstream("prod.abort") == ["prod.verify"]
    assert plan.steps["prod.abort"].args["phase_task_ids"] == ["prod.passed"]
    assert plan.steps["prod.canary_10"].args["abort_task_id"] == "prod.abort"
    assert "prod.abort" in plan.upstream("prod.rollback") and "prod.watch" in plan.upstream("prod.rollback")
    assert plan.steps["prod.deploy"].args["slot"] == "idle"


def test_a_group_the_spec_names_must_exist():
    bad = spec(
        environments=[
            {"name": "prod", "deploy_target": "fleet_prod", "approval": {"required": True, "groups": ["nobody"]}}
        ]
    )
    with pytest.raises(ReleaseSpecError, match="no approver group 'nobody'"):
        plan_release(bad, CTX)


def test_a_task_planned_twice_is_refused():
    plan = Plan()
    plan.add(Step("a", Kind.LOCK, {}))
    with pytest.raises(ValueError, match="'a' is planned twice"):
        plan.add(Step("a", Kind.UNLOCK, {}))


def test_the_rollback_dag_plan():
    plan = plan_rollback(spec(rollback_approvers=["carol"]))
    assert plan.downstream(v.ROLLBACK_PLAN) == [v.ROLLBACK_APPROVAL]
    assert plan.downstream(v.ROLLBACK_APPROVAL) == ["rollback_dev", "rollback_prod"]
    assert plan.upstream(v.ROLLBACK_REVIEW) == ["rollback_dev", "rollback_prod"]
    assert plan.steps["rollback_prod"].args["approval_task_id"] == v.ROLLBACK_APPROVAL
    assert plan_rollback(spec()).downstream(v.ROLLBACK_PLAN) == ["rollback_dev", "rollback_prod"]


def test_planning_needs_no_airflow():
    code = (
        "import sys\n"
        "from releasetrain.core.spec import load_spec\n"
        "from releasetrain.core.plan import PlanContext, plan_release\n"
        "from pathlib import Path\n"
        "spec = load_spec(Path('include/releases/storefront.yaml'), display_root=Path('.'))\n"
        "plan = plan_release(spec, PlanContext('.', [], {}))\n"
        "assert len(plan.steps) > 20, len(plan.steps)\n"
        "leaked = sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.'))\n"
        "sys.exit(f'airflow imported: {leaked}' if leaked else 0)\n"
    )
    from tests.conftest import PROJECT_ROOT

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT)
    assert done.returncode == 0, done.stderr[-2000:]


def test_the_lock_queues_by_the_releases_business_impact():
    assert plan_release(spec(), CTX).steps["prod.lock"].args["priority"] == v.IMPACT_PRIORITY["medium"]
    critical = plan_release(spec(business_impact="critical"), CTX)
    assert {critical.steps[f"{env}.lock"].args["priority"] for env in ("dev", "prod")} == {1000}
    with pytest.raises(ReleaseSpecError, match="business_impact"):
        spec(business_impact="urgent")


def test_a_shared_service_is_waited_for_between_verify_and_the_lock():
    needs = {"release": "cart", "min_version": "2.1.0", "environments": {"prod": "cart-prod"}, "wait_minutes": 30}
    plan = plan_release(spec(depends_on=["billing", needs]), CTX)
    assert "dev.dependencies" not in plan.steps, "only the environments the dependency names"
    assert plan.upstream("dev.lock") == ["dev.verify"]
    step = plan.steps["prod.dependencies"]
    assert step.kind == Kind.DEPENDENCIES
    required = [{"release": "cart", "environment": "cart-prod", "min_version": "2.1.0", "wait_minutes": 30}]
    assert step.args["requirements"] == required
    assert plan.upstream("prod.dependencies") == ["prod.verify"] and plan.upstream("prod.lock") == ["prod.dependencies"]
    assert plan.steps["prod.deploy"].args["requires"] == required, "the deploy asks again"
    # without an environment map: every environment, under its own name
    everywhere = plan_release(spec(depends_on=[{"release": "cart", "min_version": "1.0.0"}]), CTX)
    assert everywhere.steps["dev.dependencies"].args["requirements"][0]["environment"] == "dev"


@pytest.mark.parametrize(
    ("depends_on", "error"),
    [
        ([{"release": "cart", "min_version": "2.1"}], "is not a semantic version"),
        (
            [{"release": "cart", "min_version": "2.1.0", "environments": {"qa": "cart-qa"}}],
            r"\['qa'\] are not environments",
        ),
        ([{"release": "shop", "min_version": "2.1.0"}], "cannot depend on itself"),
    ],
)
def test_a_bad_dependency_is_refused(depends_on, error):
    with pytest.raises(ReleaseSpecError, match=error):
        spec(depends_on=depends_on)


def test_unmet_requirements_name_the_service_the_environment_and_the_versions():
    from releasetrain.core.incident import unmet_requirements

    live = {("cart", "cart-prod"): "2.0.9", ("search", "prod"): "10.0.0"}.get
    needs = [
        {"release": "cart", "environment": "cart-prod", "min_version": "2.1.0"},
        {"release": "search", "environment": "prod", "min_version": "9.0.0"},
        {"release": "auth", "environment": "prod", "min_version": "1.0.0"},
    ]
    assert unmet_requirements(needs, lambda r, e: live((r, e))) == [
        "cart runs 2.0.9 in cart-prod (needs 2.1.0 or newer)",
        "auth runs nothing in prod yet (needs 1.0.0 or newer)",
    ]


def test_a_profile_adds_a_drift_check_before_the_lock_that_the_deploy_relies_on():
    envs = [
        {"name": "dev", "deploy_target": "fleet_dev", "config": {"version": "1", "values": {"A": 1}}},
        {"name": "prod", "deploy_target": "fleet_prod", "approval": {"required": True, "approvers": ["bob"]}},
    ]
    plan = plan_release(spec(environments=envs, reviewers=["carol"]), CTX)
    drift = plan.steps["dev.drift"]
    assert drift.kind == Kind.DRIFT and drift.group == "dev"
    assert drift.args["owners"] == ["carol"], "no owners or approvers in dev: the release's reviewers"
    assert drift.args["config"]["values"] == {"A": 1} and drift.args["config"]["sha256"].startswith("sha256:")
    assert plan.upstream("dev.drift") == ["dev.verify"] and plan.upstream("dev.lock") == ["dev.drift"]
    deploy = plan.steps["dev.deploy"].args
    assert deploy["drift_task_id"] == "dev.drift" and deploy["config"] == drift.args["config"]
    assert "prod.drift" not in plan.steps, "no profile, no drift check"
    assert "config" not in plan.steps["prod.deploy"].args
    assert plan.upstream("prod.lock") == ["prod.verify"]


def test_production_approvals_follow_a_parity_check_against_the_environment_before():
    envs = [
        {"name": "staging", "deploy_target": "fleet_staging", "config": {"version": "1", "values": {"A": 1}}},
        {
            "name": "prod",
            "deploy_target": "fleet_prod",
            "approval": {"required": True, "approvers": ["bob"]},
            "config": {"version": "1", "values": {"A": 1, "B": 2}, "secrets": {"PW": {"connection": "db"}}},
        },
    ]
    deps = [{"release": "svc", "min_version": "2.0.0", "environments": {"prod": "svc-prod"}}]
    plan = plan_release(spec(environments=envs, depends_on=deps), CTX)
    check = plan.steps["prod.parity"]
    assert check.kind == Kind.PARITY and check.args["compared_with"] == "staging"
    assert check.args["keys"] == {"staging": ["A"], "prod": ["A", "B", "PW"]}
    assert check.args["services"] == [{"release": "svc", "environments": {"prod": "svc-prod"}}]
    assert plan.upstream("prod.parity") == ["staging.passed"] and plan.upstream("prod.approve") == ["prod.parity"]
    assert {plan.steps[t].args["parity_task_id"] for t in plan.steps if plan.steps[t].kind == Kind.APPROVAL} == {
        "prod.parity"
    }
    assert "staging.parity" not in plan.steps, "only production, against the environment before it"


def test_a_change_advisory_board_puts_each_profile_under_change_control_before_the_drift_check():
    envs = [
        {"name": "dev", "deploy_target": "fleet_dev", "config": {"version": "1", "values": {"A": 1}}},
        {"name": "prod", "deploy_target": "fleet_prod", "approval": {"required": True, "approvers": ["bob"]}},
    ]
    plan = plan_release(spec(environments=envs, change={"advisory_board": "ops"}), CTX)
    baseline = plan.steps["dev.baseline"]
    assert baseline.kind == Kind.BASELINE and baseline.group == "dev"
    assert baseline.args["board"] == "ops" and baseline.args["members"] == GROUPS["ops"]
    assert baseline.args["config"] == plan.steps["dev.drift"].args["config"]
    assert plan.upstream("dev.baseline") == ["dev.verify"] and plan.upstream("dev.drift") == ["dev.baseline"]
    assert plan.steps["dev.deploy"].args["baseline_task_id"] == "dev.baseline"
    assert "prod.baseline" not in plan.steps, "no profile, nothing to approve"
    assert "baseline_task_id" not in plan.steps["prod.deploy"].args
    without = plan_release(spec(environments=envs), CTX)
    assert "dev.baseline" not in without.steps, "no board, no change control of profiles"
    assert "baseline_task_id" not in without.steps["dev.deploy"].args


def test_an_advisory_board_must_be_a_defined_group():
    from releasetrain.core.spec import check_groups

    with pytest.raises(ReleaseSpecError, match=r"change.advisory_board: no group 'cab' is defined"):
        check_groups(spec(change={"advisory_board": "cab"}), "shop.yaml", GROUPS)


def test_test_suites_run_beside_the_next_environments_and_hold_up_production_only():
    suite = {"name": "api", "checks": [{"name": "cart", "endpoint": "app/cart"}]}
    envs = [
        {"name": "dev", "deploy_target": "fleet_dev", "test_suites": [suite, {**suite, "name": "ui"}]},
        {"name": "staging", "deploy_target": "fleet_staging", "test_suites": [{**suite, "name": "load"}]},
        {
            "name": "prod",
            "deploy_target": "fleet_prod",
            "approval": {"required": True, "approvers": ["bob"]},
            "smoke_checks": [{"name": "up", "endpoint": "health"}],
            "test_suites": [{**suite, "name": "post"}],
        },
    ]
    plan = plan_release(spec(environments=envs), CTX)
    earlier = ["dev.tests_api", "dev.tests_ui", "staging.tests_load"]
    api = plan.steps["dev.tests_api"]
    assert api.kind == Kind.SUITE and api.args["suite"] == "api" and api.args["deploy_task_id"] == "dev.deploy"
    assert plan.upstream("dev.tests_api") == ["dev.passed"] and plan.upstream("dev.tests_ui") == ["dev.passed"]
    assert plan.upstream("staging.verify") == ["dev.passed"], "the next non-production environment does not wait"
    assert "dev.tests_api" in plan.upstream("dev.unlock"), "the target stays locked while it is tested"
    assert "dev.tests_api" not in plan.upstream("dev.rollback"), "a failed suite does not roll dev back"
    assert set(earlier) <= set(plan.upstream("prod.verify")), "production waits for every earlier suite"
    assert plan.steps["prod.deploy"].args["suite_task_ids"] == earlier
    assert "suite_task_ids" not in plan.steps["staging.deploy"].args
    # production's own suite is part of its stage
    assert plan.upstream("prod.tests_post") == ["prod.smoke"] and plan.upstream("prod.passed") == ["prod.tests_post"]
    assert "prod.tests_post" in plan.steps["prod.passed"].args["proof_task_ids"]
    assert "prod.tests_post" in plan.upstream("prod.rollback")
    assert plan.steps[v.RELEASE_COMPLETE].args["suite_task_ids"] == earlier
    assert set(earlier) <= set(plan.upstream(v.RELEASE_COMPLETE))


@pytest.mark.parametrize(
    ("suites", "error"),
    [
        ([{"name": "api"}], "test suite 'api' has no checks and no journeys"),
        ([{"name": "a", "journeys": ["j"]}, {"name": "a", "journeys": ["j"]}], "name 'a' is used more than once"),
    ],
)
def test_a_test_suite_needs_checks_and_a_name_of_its_own(suites, error):
    envs = [{"name": "dev", "deploy_target": "fleet_dev", "test_suites": suites}]
    with pytest.raises(ReleaseSpecError, match=error):
        spec(environments=envs)


def test_a_scope_freeze_is_checked_after_packaging_before_any_environment_and_by_every_deploy():
    plan = plan_release(spec(scope_freeze={"environment": "dev"}), CTX)
    scope = plan.steps[v.SCOPE]
    assert scope.kind == Kind.SCOPE and scope.args["freeze"] == {"environment": "dev"}
    assert scope.args["approvers"] == ["bob"] and scope.args["production"] == ["prod"]
    assert plan.upstream(v.SCOPE) == [v.PACKAGE] and plan.upstream("dev.verify") == [v.SCOPE]
    assert all(plan.steps[f"{e}.deploy"].args["scope_task_id"] == v.SCOPE for e in ("dev", "prod"))
    assert v.SCOPE not in plan_release(spec(), CTX).steps


def test_several_components_get_a_library_check_beside_the_first_environment_that_its_lock_waits_for():
    two = [{"name": "web", "source": "include/web"}, {"name": "api", "source": "include/api"}]
    plan = plan_release(spec(components=two), CTX)
    libraries = plan.steps[v.LIBRARIES]
    assert libraries.kind == Kind.LIBRARIES and libraries.args["approvers"] == ["bob"]
    assert plan.upstream(v.LIBRARIES) == [v.PACKAGE] and plan.upstream("dev.verify") == [v.PACKAGE]
    assert v.LIBRARIES in plan.upstream("dev.lock")
    assert all(plan.steps[f"{e}.deploy"].args["libraries_task_id"] == v.LIBRARIES for e in ("dev", "prod"))
    assert v.LIBRARIES not in plan_release(spec(), CTX).steps, "one component: nothing to conflict with"


def test_a_scope_freeze_needs_someone_who_may_grant_an_exception_and_a_board_needs_members():
    from releasetrain.core.spec import check_groups

    envs = [{"name": "dev", "deploy_target": "fleet_dev"}, {"name": "prod", "deploy_target": "fleet_prod"}]
    with pytest.raises(ReleaseSpecError, match="scope_freeze: nobody could grant a scope exception"):
        plan_release(spec(environments=envs, scope_freeze={"environment": "dev"}), CTX)
    with pytest.raises(ReleaseSpecError, match="group 'empty' has no members to approve profiles"):
        check_groups(spec(change={"advisory_board": "empty"}), "shop.yaml", {**GROUPS, "empty": []})


def test_a_hotfix_policy_decides_between_the_risk_assessment_and_packaging():
    plan = plan_release(spec(hotfix_policy={"components": ["web"]}), CTX)
    step = plan.steps[v.HOTFIX]
    assert step.kind == Kind.HOTFIX and step.args["policy"]["components"] == ["web"]
    assert step.args["components"] == [{"name": "web", "version": None}] and step.args["production"] == ["prod"]
    assert plan.upstream(v.HOTFIX) == [v.ASSESS_RISK] and plan.upstream(v.PACKAGE) == [v.HOTFIX]
    assert plan.steps[v.PACKAGE].args["hotfix_task_id"] == v.HOTFIX
    assert v.HOTFIX not in plan_release(spec(), CTX).steps


# --- packaging modular (issue 13) --------------------------------------------------------------
MODULAR = [
    {"name": "web", "source": "include/web"},
    {"name": "api", "source": "include/api", "coupled_with": ["worker"]},
    {"name": "worker", "source": "include/worker"},
    {"name": "cron", "source": "include/cron", "coupled_with": ["api"]},
]


@pytest.mark.parametrize(
    "components, packaging, units",
    [
        (MODULAR, "modular", [("web", ["web"]), ("api", ["api", "worker", "cron"])]),  # either way round, transitively
        (MODULAR[:1], "modular", [("web", ["web"])]),
        (
            [{"name": n, "source": f"include/{n}"} for n in ("a", "b", "c")],
            "modular",
            [("a", ["a"]), ("b", ["b"]), ("c", ["c"])],
        ),
        (MODULAR, "monolithic", [("shop", ["web", "api", "worker", "cron"])]),
    ],
)
def test_deploy_units_are_components_with_the_ones_they_are_coupled_with(components, packaging, units):
    assert spec(components=components, packaging=packaging).units() == units


def test_a_modular_release_deploys_and_rolls_back_each_unit_in_each_environment():
    plan = plan_release(spec(components=MODULAR, packaging="modular"), CTX)
    order = ordered(plan)
    for env in ("dev", "prod"):
        deploys = [f"{env}.deploy_web", f"{env}.deploy_api"]
        assert f"{env}.deploy" not in plan.steps and f"{env}.rollback" not in plan.steps
        assert order.index(f"{env}.lock") < order.index(deploys[0]) < order.index(deploys[1])
        assert order.index(deploys[1]) < order.index(f"{env}.smoke"), "the checks run once every unit is deployed"
        assert plan.upstream(deploys[1]) == sorted([deploys[0], f"{env}.lock"]), "one unit after the other, locked"
        assert plan.steps[deploys[0]].args["earlier_unit_task_ids"] == []
        assert plan.steps[deploys[1]].args["earlier_unit_task_ids"] == [deploys[0]], "proven from the ledger too"
        for unit, components in (("web", ["web"]), ("api", ["api", "worker", "cron"])):
            deploy = plan.steps[f"{env}.deploy_{unit}"]
            assert (deploy.kind, deploy.args["unit"], deploy.args["components"]) == (Kind.DEPLOY, unit, components)
            assert deploy.args["locked"] and deploy.args["admit_task_id"] == v.ADMIT, "every gate, for every unit"
            rollback = plan.steps[f"{env}.rollback_{unit}"]
            assert (rollback.kind, rollback.trigger_rule) == (Kind.ROLLBACK, Rule.ONE_FAILED)
            assert rollback.args["deploy_task_id"] == f"{env}.deploy_{unit}" and rollback.args["unit"] == unit
            assert set(deploys + [f"{env}.smoke"]) <= set(plan.upstream(rollback.task_id)), "any failure rolls back"
            assert rollback.task_id in plan.upstream(f"{env}.unlock")
        assert set(deploys) <= set(plan.steps[f"{env}.passed"].args["proof_task_ids"]), "every unit's deploy proven"
        assert plan.steps[f"{env}.verify"].args["units"] == ["web", "api"]
    assert plan.steps["package"].args["units"] == {"web": ["web"], "api": ["api", "worker", "cron"]}


def test_a_monolithic_release_plans_no_units():
    plan = plan_release(spec(components=MODULAR), CTX)
    assert "units" not in plan.steps["package"].args and "units" not in plan.steps["prod.verify"].args
    assert "unit" not in plan.steps["prod.deploy"].args and "unit" not in plan.steps["prod.rollback"].args


@pytest.mark.parametrize(
    "overrides, expected",
    [
        (
            {"components": [{"name": "web", "source": "x", "coupled_with": ["db"]}]},
            "components[0].coupled_with: ['db'] are not components of this release",
        ),
        (
            {"components": [{"name": "web", "source": "x", "coupled_with": ["web"]}]},
            "web cannot be coupled with itself",
        ),
        (
            {
                "packaging": "modular",
                "environments": [
                    {
                        "name": "dev",
                        "deploy_target": "fleet_dev",
                        "strategy": {
                            "kind": "blue_green",
                            "analysis": {
                                "provider": {"kind": "prometheus", "conn_id": "prom"},
                                "metrics": [{"name": "errors", "query": "up", "absolute": {"max": 0.05}}],
                            },
                        },
                    },
                ],
            },
            "environment dev: packaging 'modular' deploys each unit with its own rolling deploy; a blue_green",
        ),
        (
            {
                "packaging": "modular",
                "environments": [
                    {"name": "dev", "deploy_target": "fleet_dev", "config": {"version": "1", "values": {"A": "b"}}},
                ],
            },
            "environment dev: packaging 'modular' does not send config profiles yet",
        ),
        (
            {
                "packaging": "modular",
                "environments": [
                    {
                        "name": "dev",
                        "deploy_target": "fleet_dev",
                        "strategy": {
                            "watch": {
                                "provider": {"kind": "prometheus", "conn_id": "prom"},
                                "metrics": [{"name": "errors", "query": "up", "absolute": {"max": 0.05}}],
                            }
                        },
                    },
                ],
            },
            "environment dev: packaging 'modular' has no watch analysis yet",
        ),
        ({"packaging": "bundled"}, "packaging"),
    ],
)
def test_modular_specs_that_cannot_work_are_refused_naming_the_field(overrides, expected):
    with pytest.raises(ReleaseSpecError, match=expected.replace("[", r"\[").replace("]", r"\]").replace("(", r"\(")):
        spec(**overrides)


def test_a_modular_releases_manual_rollback_returns_each_unit_in_turn():
    plan = plan_rollback(spec(components=MODULAR, packaging="modular", rollback_approvers=["carol"]))
    assert plan.steps[v.ROLLBACK_PLAN].args["units"] == {"web": ["web"], "api": ["api", "worker", "cron"]}
    for env in ("dev", "prod"):
        web, api = plan.steps[f"rollback_{env}__web"], plan.steps[f"rollback_{env}__api"]
        assert (web.kind, web.args["unit"], web.args["last"]) == (Kind.MANUAL_ROLLBACK, "web", False)
        assert (api.args["unit"], api.args["last"]) == ("api", True), "the last unit frees the target"
        assert plan.upstream(web.task_id) == [v.ROLLBACK_APPROVAL] and plan.upstream(api.task_id) == [web.task_id]
        assert api.task_id in plan.upstream(v.ROLLBACK_REVIEW) and web.task_id not in plan.upstream(v.ROLLBACK_REVIEW)
    assert "rollback_prod" not in plan.steps
