"""The stage plan: a release spec as the tasks of its DAGs, in plain data (no Airflow).

:func:`plan_release` says which tasks a release DAG has (full task ids, kinds, arguments,
trigger rules, task groups) and how they connect; :func:`plan_rollback` does the same for
the release's manual rollback DAG. The factory renders a plan into operators with one small
function, as astronomer-cosmos plans a dbt project before it builds a DAG. Each step of an
environment's stage (gates, window, deploy or rollout, checks, rollback, ...) is planned by
a short function of its own: a new procedure is a new function and a new :class:`Kind`.

Graph of a release with environments dev, staging and prod (prod needs approval)::

    prepare >> assess_risk >> package >> dev.verify >> dev.lock >> dev.deploy >> dev.smoke
        >> dev.passed >> staging.verify >> ... >> prod.approve >> [prod.window] >> prod.verify
        >> ... >> prod.passed >> [post_implementation_review] >> [closure] >> release_complete
    <env>.rollback (one_failed on the stage's watched steps), <env>.unlock (all_done)

Task ids in a plan are full ids (``prod.deploy``); :attr:`Step.local_id` is the id inside
the task group.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import PurePath
from typing import Any

from releasetrain.core import vocabulary as v
from releasetrain.core.risk import HIGH_RISK_QUORUM, SECURITY_REVIEW
from releasetrain.core.spec import ReleaseSpec, ReleaseSpecError, approval_pool, check_groups
from releasetrain.core.vocabulary import Kind, Rule

JOURNEYS_DIR = ("include", "journeys")


@dataclass(frozen=True)
class Step:
    """One task: its full id, what it does, the arguments its operator is built with."""

    task_id: str
    kind: Kind
    args: dict[str, Any]
    trigger_rule: Rule = Rule.ALL_SUCCESS
    group: str | None = None

    @property
    def local_id(self) -> str:
        return self.task_id.removeprefix(f"{self.group}.") if self.group else self.task_id


@dataclass
class Plan:
    """Steps in the order they were planned, edges (upstream, downstream), task groups."""

    steps: dict[str, Step] = field(default_factory=dict)
    edges: list[tuple[str, str]] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)  # group id -> tooltip

    def add(self, step: Step) -> str:
        if step.task_id in self.steps:
            raise ValueError(f"task {step.task_id!r} is planned twice")
        self.steps[step.task_id] = step
        return step.task_id

    def connect(self, upstream: str | Iterable[str], downstream: str | Iterable[str]) -> None:
        for a in [upstream] if isinstance(upstream, str) else upstream:
            for b in [downstream] if isinstance(downstream, str) else downstream:
                if (a, b) not in self.edges:
                    self.edges.append((a, b))

    def extend_args(self, task_id: str, **args: Any) -> None:
        self.steps[task_id] = replace(self.steps[task_id], args={**self.steps[task_id].args, **args})

    def set_rule(self, task_id: str, rule: Rule) -> None:
        self.steps[task_id] = replace(self.steps[task_id], trigger_rule=rule)

    def upstream(self, task_id: str) -> list[str]:
        return sorted(a for a, b in self.edges if b == task_id)

    def downstream(self, task_id: str) -> list[str]:
        return sorted(b for a, b in self.edges if a == task_id)


@dataclass(frozen=True)
class PlanContext:
    """What a plan needs beyond the spec: the deployment's folders, groups and signing key."""

    project_root: str
    calendar_dirs: list[str]
    groups: dict[str, list[str]]
    signing_conn_id: str = "releasetrain_signing"


def journey_files(project_root: str, names: Iterable[str]) -> dict[str, str]:
    """``include/journeys/<name>.yaml`` per journey name (the factory checks they exist)."""
    return {name: str(PurePath(project_root, *JOURNEYS_DIR, f"{name}.yaml")) for name in sorted(set(names))}


def analysis_journeys(env: Any) -> set[str]:
    """Journey names the analyses of an environment's rollout measure."""
    strategy = env.strategy
    return {
        m.journey
        for analysis in (strategy.analysis, strategy.watch)
        if analysis is not None
        for m in analysis.metrics
        if m.journey
    }


def review_groups(spec: ReleaseSpec, env: Any, groups: dict[str, list[str]]) -> list[str]:
    """Readiness-review tasks of an environment: the spec's, plus security on production (for high risk)."""
    if not env.approval.required:
        return []
    reviews = list(env.approval.reviews)
    if env.name in spec.production_environments and SECURITY_REVIEW in groups and SECURITY_REVIEW not in reviews:
        reviews.append(SECURITY_REVIEW)
    return reviews


# --- the release DAG ------------------------------------------------------------------------
def plan_release(spec: ReleaseSpec, ctx: PlanContext) -> Plan:
    """The release DAG of a validated spec (company-wide calendars already bound)."""
    check_groups(spec, f"release {spec.name}", ctx.groups)  # also for specs built in Python
    plan = Plan()
    admit = plan.add(_admit(spec))
    request = plan.add(Step(v.PREPARE, Kind.REQUEST, {"release": spec.name, "planned_version": spec.version}))
    plan.connect(admit, request)
    risk = plan.add(_risk(spec, ctx))
    package = plan.add(_package(spec, ctx))
    plan.connect(request, risk)
    if spec.hotfix_policy:  # decided before packaging: a refused hotfix packages nothing
        hotfix = plan.add(_hotfix(spec))
        plan.connect(risk, hotfix)
        plan.connect(hotfix, package)
    else:
        plan.connect(risk, package)
    upstream, gates, windows, suites = package, [], [], []
    if spec.scope_freeze:
        upstream = plan.add(_scope(spec, ctx))
        plan.connect(package, upstream)
    libraries = _libraries(spec, ctx)
    for env in spec.environments:
        upstream = _stage(plan, spec, env, ctx, upstream, gates, windows, suites)
    if libraries:  # beside the first environment's gates: its lock waits for it
        plan.add(libraries)
        plan.connect(package, libraries.task_id)
        plan.connect(libraries.task_id, v.env_task(spec.environments[0].name, v.LOCK))
    _finish(plan, spec, upstream, gates, windows, suites)
    return plan


def _admit(spec: ReleaseSpec) -> Step:
    """The run's place in the release train: hotfix and emergency runs have a lane of their
    own where the trigger form offers the param (a hotfix policy; a calendar: emergency)."""
    overtaking = [*(["hotfix"] if spec.hotfix_policy else []), *(["emergency"] if spec.has_calendar else [])]
    return Step(v.ADMIT, Kind.ADMIT, {"release": spec.name, "overtaking": overtaking, "priority": spec.priority})


def _risk(spec: ReleaseSpec, ctx: PlanContext) -> Step:
    return Step(
        v.ASSESS_RISK,
        Kind.RISK,
        {
            "release": spec.name,
            "environments": [env.name for env in spec.environments],
            "production": spec.production_environments,
            "components": len(spec.components),
            "schema_migration": any(c.schema_migration or c.migrations for c in spec.components),
            "rollback_plan": spec.rollback_plan,
            "backout_minutes": spec.backout_minutes,
            "declared_gates": {
                env.name: {"quorum": env.approval.quorum, "reviews": list(env.approval.reviews)}
                for env in spec.environments
                if env.approval.required
            },
            "available_reviews": {env.name: review_groups(spec, env, ctx.groups) for env in spec.environments},
            "change_backend": spec.change.backend,
            "change_conn_id": spec.change.conn_id,
            "change_type": spec.change.type,
            "planned_minutes": spec.planned_duration_minutes,
            **({"trends": [rule.model_dump(mode="json") for rule in spec.trends]} if spec.trends else {}),
        },
    )


def _package(spec: ReleaseSpec, ctx: PlanContext) -> Step:
    return Step(
        v.PACKAGE,
        Kind.PACKAGE,
        {
            "release": spec.name,
            "components": [c.model_dump(mode="json") for c in spec.components],
            "project_root": ctx.project_root,
            "artifact_store": spec.artifact_store,
            "signing_conn_id": ctx.signing_conn_id,
            "production": spec.production_environments,
            "environments": [env.name for env in spec.environments],
            "config_patterns": spec.config_patterns,
            **({"hotfix_task_id": v.HOTFIX} if spec.hotfix_policy else {}),
            **({"units": dict(spec.units())} if spec.packaging == "modular" else {}),
        },
    )


def _hotfix(spec: ReleaseSpec) -> Step:
    return Step(
        v.HOTFIX,
        Kind.HOTFIX,
        {
            "release": spec.name,
            "policy": spec.hotfix_policy.model_dump(mode="json"),
            "components": [{"name": c.name, "version": c.version} for c in spec.components],
            "production": list(spec.production_environments),
            "admit_task_id": v.ADMIT,
        },
    )


def _exception_approvers(spec: ReleaseSpec, ctx: PlanContext) -> list[str]:
    """Who grants a release-wide exception: production's approvers, else the release's reviewers."""
    approvers: list[str] = []
    for env in spec.environments:
        if env.name in spec.production_environments:
            approvers += [u for u in approval_pool(env, ctx.groups) if u not in approvers]
    return approvers or list(spec.review_users)


def _libraries(spec: ReleaseSpec, ctx: PlanContext) -> Step | None:
    """With several components: the libraries their lock files pin, compared across them
    (conflicting versions wait for a waiver)."""
    if len(spec.components) < 2:
        return None
    return Step(v.LIBRARIES, Kind.LIBRARIES, {"release": spec.name, "approvers": _exception_approvers(spec, ctx)})


def _scope(spec: ReleaseSpec, ctx: PlanContext) -> Step:
    """The scope freeze check, once the contents are packaged and before any environment;
    exceptions go to production's approvers (else the release's reviewers)."""
    freeze = spec.scope_freeze
    if not _exception_approvers(spec, ctx):
        raise ReleaseSpecError(
            f"release {spec.name}",
            [("scope_freeze", "nobody could grant a scope exception: give production approvers or set reviewers")],
        )
    return Step(
        v.SCOPE,
        Kind.SCOPE,
        {
            "release": spec.name,
            "freeze": freeze.model_dump(mode="json", exclude_none=True),
            "production": list(spec.production_environments),
            "approvers": _exception_approvers(spec, ctx),
        },
    )


def _finish(
    plan: Plan, spec: ReleaseSpec, upstream: str, gates: list[str], windows: list[str], suites: list[str]
) -> None:
    """The leaf that decides the run's state, after the review and closure when there are any
    (and the test suites of non-production environments).

    With a post-implementation review (skipped for normal runs), the leaf must run when the
    review was skipped, and still fail when anything before it failed."""
    complete = plan.add(
        Step(
            v.RELEASE_COMPLETE,
            Kind.COMPLETE,
            {
                "release": spec.name,
                "gate_task_ids": list(gates),
                **({"suite_task_ids": list(suites)} if suites else {}),
                "environments": [env.name for env in spec.environments],
                "review_task_id": v.POST_IMPLEMENTATION_REVIEW if spec.has_calendar else None,
                "closure_task_id": v.CLOSURE if spec.closure else None,
            },
            Rule.NONE_FAILED_MIN_ONE_SUCCESS if spec.has_calendar else Rule.ALL_SUCCESS,
        )
    )
    before_closure = [upstream]
    if spec.has_calendar:
        review = plan.add(
            Step(
                v.POST_IMPLEMENTATION_REVIEW,
                Kind.REVIEW,
                {"release": spec.name, "reviewers": spec.review_users, "gate_task_ids": list(windows)},
            )
        )
        plan.connect(upstream, review)
        plan.connect(review, complete)
        before_closure = [upstream, review]
    if spec.closure:
        closure = plan.add(
            Step(
                v.CLOSURE,
                Kind.CLOSURE,
                {"release": spec.name, "people": spec.review_users},
                Rule.NONE_FAILED_MIN_ONE_SUCCESS,
            )
        )
        plan.connect(before_closure, closure)
        plan.connect(closure, complete)
    plan.connect(upstream, complete)
    plan.connect(suites, complete)


# --- an environment's stage -----------------------------------------------------------------
@dataclass
class _Stage:
    """What the steps of one environment's stage share while it is planned."""

    plan: Plan
    spec: ReleaseSpec
    env: Any
    ctx: PlanContext
    pool: list[str]
    owners: list[str]
    production: bool
    watched: list[str] = field(default_factory=list)  # failures here roll the environment back
    analyses: list[str] = field(default_factory=list)  # the stage's analyses, in order

    @property
    def name(self) -> str:
        return self.env.name

    def id(self, task_id: str) -> str:
        return v.env_task(self.name, task_id)

    def add(self, task_id: str, kind: Kind, args: dict[str, Any], rule: Rule = Rule.ALL_SUCCESS) -> str:
        return self.plan.add(Step(self.id(task_id), kind, args, rule, group=self.name))

    @property
    def abort_task_id(self) -> str | None:
        """By default on production rollouts that take time (steps, analyses): a rolling
        deploy is over in seconds."""
        strategy = self.env.strategy
        long_rollout = strategy.progressive or strategy.watch is not None
        enabled = strategy.abort if strategy.abort is not None else (self.production and long_rollout)
        return self.id(v.ABORT) if enabled else None


def _stage(
    plan: Plan,
    spec: ReleaseSpec,
    env: Any,
    ctx: PlanContext,
    upstream: str,
    gates: list[str],
    windows: list[str],
    suites: list[str],
) -> str:
    """Plan one environment's stage after ``upstream``; returns its last step (its gate).
    ``suites``: the test suites of the non-production environments before it (it adds its own)."""
    plan.groups[env.name] = f"Deploy {spec.name} to {env.name}"
    stage = _Stage(
        plan,
        spec,
        env,
        ctx,
        pool=approval_pool(env, ctx.groups),
        owners=ctx.groups[env.owner] if env.owner else [],
        production=env.name in spec.production_environments,
    )
    verify = _verify(stage)
    first, approval_ids, window = _gates(stage, gates, verify)
    if window:
        windows.append(window)
    before_lock = _dependencies(stage, verify)
    baseline = _baseline(stage, before_lock)
    drift = _drift(stage, baseline or before_lock)
    deploys = _deploy(stage, verify, gates, approval_ids, window, drift, baseline, suites)
    deploy = deploys[-1]  # the last unit's: the stage's checks run once every unit is deployed
    if stage.production:  # every earlier test suite has passed before production is deployed
        plan.connect(suites, verify)
    lock = stage.add(
        v.LOCK,
        Kind.LOCK,
        {
            "release": spec.name,
            "environment": env.name,
            "target": env.deploy_target,
            "priority": spec.priority,
            "admit_task_id": v.ADMIT,
            "production": list(spec.production_environments),
        },
    )
    smoke = _smoke(stage, deploy)
    migrate = _migrate(stage, verify, deploys)
    stage.watched += [*([migrate] if migrate else []), *deploys, smoke]
    plan.connect(drift or baseline or before_lock, lock)
    plan.connect(lock, deploys)  # every unit after the lock: a unit marked done by hand starts none early
    if migrate:
        plan.connect(lock, migrate)
        plan.connect(migrate, deploys[0])
    for earlier, later in zip(deploys, deploys[1:], strict=False):  # one unit after the other, in the spec's order
        plan.connect(earlier, later)
    tail = _rollout(stage, deploy)
    plan.connect(tail, smoke)
    last = _health(stage, smoke, deploy)
    watch, last = _watch(stage, deploy, last)
    alerts = _alerts(stage, deploy, last)
    if alerts:
        stage.watched.append(alerts)
        last = alerts
    soak = _soak(stage, deploy, last)
    last = soak or last
    own = _suites(stage, deploy)
    if stage.production:  # part of the stage: proofs of its gate, a failure rolls it back
        plan.connect(last, own)
        stage.watched += own
    passed = _passed(stage, verify, deploys, smoke, watch, own if stage.production else [])
    for proof in filter(None, (alerts, soak)):
        stage.plan.extend_args(passed, proof_task_ids=[*stage.plan.steps[passed].args["proof_task_ids"], proof])
    plan.connect(own if stage.production and own else last, passed)
    if not stage.production:  # beside the next environments, on the target it tests (still locked)
        plan.connect(passed, own)
        suites += own
    abort = _abort(stage, verify, passed)
    rollbacks = _rollback(stage, deploys)
    reconcile = _reconcile(stage, verify, migrate, rollbacks) if migrate else None
    _postmortem(stage, rollbacks)
    ends = [lock, *stage.watched, passed, *rollbacks, *own, *([abort] if abort else [])]
    _unlock(stage, [*ends, *([reconcile] if reconcile else [])])
    plan.connect(upstream, first)
    gates.append(passed)
    return passed


def _verify(stage: _Stage) -> str:
    return stage.add(
        v.VERIFY,
        Kind.VERIFY,
        {
            "release": stage.spec.name,
            "environment": stage.name,
            "artifact_store": stage.spec.artifact_store,
            "signing_conn_id": stage.ctx.signing_conn_id,
            **({"units": [u for u, _ in stage.spec.units()]} if stage.spec.packaging == "modular" else {}),
            **(
                {"notifications": [n.model_dump(mode="json") for n in stage.spec.notifications]}
                if stage.spec.notifications
                else {}
            ),
        },
    )


def _gates(stage: _Stage, gates: list[str], verify: str) -> tuple[list[str], list[str], str | None]:
    """Approvals, then the release window, then verify: what must hold before the deploy.

    Returns the stage's first steps, the full ids of its approval tasks and its window."""
    check = _parity(stage) if stage.env.approval.required else None
    first, done, approval_ids = _approvals(stage, gates, check)
    if check:
        stage.plan.connect(check, first)
        first = [check]
    window = _window(stage, gated=bool(done))
    if window:
        stage.plan.connect(done, window)  # the approvals may take long: the window is checked after
        stage.plan.connect(window, verify)
        first = first or [window]
    elif done:
        stage.plan.connect(done, verify)
        stage.plan.set_rule(verify, Rule.NONE_FAILED)
    return first or [verify], approval_ids, window


def _parity(stage: _Stage) -> str | None:
    """Production against the environment before it (profile settings, shared services'
    versions), recorded for production's approvers to see; only where there is one before,
    and something to compare."""
    spec, env = stage.spec, stage.env
    previous = spec.previous_environment(env.name)
    if not stage.production or previous is None:
        return None

    def keys(e: Any) -> list[str]:
        return sorted([*e.config.values, *e.config.secrets]) if e.config else []

    services = []
    for d in spec.depends_on:
        if isinstance(d, str):
            continue
        where = {
            e: d.environments.get(e, e) for e in (previous.name, env.name) if not d.environments or e in d.environments
        }
        if where:
            services.append({"release": d.release, "environments": where})
    if not (previous.config or env.config or services):
        return None  # nothing they should share
    return stage.add(
        v.PARITY,
        Kind.PARITY,
        {
            "release": spec.name,
            "environment": env.name,
            "compared_with": previous.name,
            "keys": {previous.name: keys(previous), env.name: keys(env)},
            "services": services,
        },
    )


def _approvals(stage: _Stage, gates: list[str], parity: str | None) -> tuple[list[str], list[str], list[str]]:
    """Quorum slots (one after the other) and readiness reviews (beside them).

    Returns the first steps, the last ones (the last slot and the reviews) and all full ids."""
    env, spec = stage.env, stage.spec
    if not env.approval.required:
        return [], [], []
    # production: room for a high-risk quorum, and for the approvals a trend rule may add to it
    extra = max((rule.extra_approvals for rule in spec.trends), default=0) if stage.production else 0
    slots = max(env.approval.quorum, HIGH_RISK_QUORUM if stage.production else 1) + extra
    reviews = review_groups(spec, env, stage.ctx.groups)
    ids = [v.approval_slot(i) for i in range(1, slots + 1)] + [v.review_task(g) for g in reviews]
    full_ids = [stage.id(task_id) for task_id in ids]
    common = {
        "release": spec.name,
        "environment": env.name,
        "quorum": env.approval.quorum,
        "reviews": list(env.approval.reviews),
        "sibling_task_ids": full_ids,
        "passed_task_ids": list(gates),
        "timeout_hours": env.approval.timeout_hours,
        **({"parity_task_id": parity} if parity else {}),
    }
    previous = None
    for i in range(1, slots + 1):
        slot = stage.add(
            v.approval_slot(i),
            Kind.APPROVAL,
            {"approvers": stage.pool, "slot": i, **common},
            Rule.NONE_FAILED if i > 1 else Rule.ALL_SUCCESS,
        )
        if previous is not None:
            stage.plan.connect(previous, slot)
        previous = slot
    review_ids = [
        stage.add(
            v.review_task(group),
            Kind.APPROVAL,
            {"approvers": stage.ctx.groups[group], "slot": None, "review_group": group, **common},
        )
        for group in reviews
    ]
    return [full_ids[0], *review_ids], [previous, *review_ids], full_ids


def _window(stage: _Stage, *, gated: bool) -> str | None:
    """The release window of the environment's calendar (none without a calendar)."""
    layers = stage.spec.calendar_layers(stage.name)
    if not layers:
        return None
    return stage.add(
        v.WINDOW,
        Kind.WINDOW,
        {
            "release": stage.spec.name,
            "environment": stage.name,
            "layers": [layer.model_dump(mode="json") for layer in layers],
            "calendar_dirs": list(stage.ctx.calendar_dirs),
            "project_root": stage.ctx.project_root,
            "expected_duration_minutes": stage.env.expected_duration_minutes,
        },
        Rule.NONE_FAILED if gated else Rule.ALL_SUCCESS,
    )


def _dependencies(stage: _Stage, verify: str) -> str:
    """The shared services the deploy needs, waited for before the target is locked; returns
    the step the lock follows."""
    requirements = stage.spec.requirements(stage.name)
    if not requirements:
        return verify
    step = stage.add(
        v.DEPENDENCIES,
        Kind.DEPENDENCIES,
        {"release": stage.spec.name, "environment": stage.name, "requirements": requirements},
    )
    stage.plan.connect(verify, step)
    return step


def _baseline(stage: _Stage, after: str) -> str | None:
    """With a configuration profile and a change advisory board: the profile, new or changed
    since the board last approved it for this environment, waits for one of its members'
    approval; the deploy checks the ledger for it."""
    env, board = stage.env, stage.spec.change.advisory_board
    if env.config is None or not board:
        return None
    step = stage.add(
        v.BASELINE,
        Kind.BASELINE,
        {
            "release": stage.spec.name,
            "environment": env.name,
            "config": env.config.plan(),
            "board": board,
            "members": list(stage.ctx.groups.get(board, [])),
        },
    )
    stage.plan.connect(after, step)
    return step


def _drift(stage: _Stage, after: str) -> str | None:
    """With a configuration profile: the target's reported configuration against the
    baseline, before the target is locked (a human may have to accept a drift); the deploy
    checks its record."""
    env = stage.env
    if env.config is None:
        return None
    owners = stage.owners or stage.pool or stage.spec.review_users
    step = stage.add(
        v.DRIFT,
        Kind.DRIFT,
        {
            "release": stage.spec.name,
            "environment": env.name,
            "deploy_target_conn_id": env.deploy_target,
            "config": env.config.plan(),
            "owners": owners,
        },
    )
    stage.plan.connect(after, step)
    return step


def _deploy(
    stage: _Stage,
    verify: str,
    gates: list[str],
    approval_ids: list[str],
    window: str | None,
    drift: str | None,
    baseline: str | None,
    suites: list[str],
) -> list[str]:
    """The environment's deploy; packaging modular: one per deploy unit (``deploy_<unit>``),
    each with every gate of the stage, its own bundle and its own record."""
    env, spec, groups = stage.env, stage.spec, stage.ctx.groups
    previous = spec.previous_environment(env.name)
    args = {
        "slot": "idle" if env.strategy.progressive else None,
        "release": spec.name,
        "environment": env.name,
        "deploy_target_conn_id": env.deploy_target,
        "verify_task_id": verify,
        "previous_environment": previous.name if previous else None,
        "promotion_gate_task_id": gates[-1] if previous else None,
        "approval_task_ids": approval_ids,
        "approvers": stage.pool if approval_ids else None,
        "review_members": {g: groups[g] for g in review_groups(spec, env, groups)},
        "quorum": env.approval.quorum,
        "reviews": list(env.approval.reviews),
        "owners": groups[env.owner] if env.owner else None,
        "production": stage.production,
        "window_task_id": window,
        "requires": spec.requirements(env.name),
        "deploy_timeout_seconds": env.deploy_timeout_seconds,
        "poll_interval": env.poll_interval_seconds,
        "pool": v.target_pool(env.deploy_target),
        "locked": True,
        "admit_task_id": v.ADMIT,  # the release train: held or superseded runs deploy nothing
        "production_environments": list(spec.production_environments),
        **({"config": env.config.plan(), "drift_task_id": drift} if env.config else {}),
        **({"baseline_task_id": baseline} if baseline else {}),
        **({"suite_task_ids": list(suites)} if stage.production and suites else {}),
        **(
            {
                "scope_task_id": v.SCOPE,
                "scope_freeze": spec.scope_freeze.model_dump(mode="json", exclude_none=True),
            }
            if spec.scope_freeze
            else {}
        ),
        **({"libraries_task_id": v.LIBRARIES} if len(spec.components) > 1 else {}),
    }
    if spec.packaging != "modular":
        return [stage.add(v.DEPLOY, Kind.DEPLOY, args)]
    deploys: list[str] = []
    for unit, components in spec.units():  # each proves, from the ledger, that the units before it were deployed
        unit_args = {**args, "unit": unit, "components": components, "earlier_unit_task_ids": list(deploys)}
        deploys.append(stage.add(v.unit_task(v.DEPLOY, unit), Kind.DEPLOY, unit_args))
    return deploys


def _migrations(stage: _Stage) -> dict[str, dict[str, Any]]:
    """The stage's databases: component -> its migrations (folder, connection, wait)."""
    return {
        c.name: {
            "path": c.migrations.path,
            "conn_id": c.migrations.databases[stage.name],
            "wait_minutes": c.migrations.wait_minutes,
        }
        for c in stage.spec.components
        if c.migrations is not None
    }


def _migrate(stage: _Stage, verify: str, deploys: list[str]) -> str | None:
    """Schema migrations in the lock, before the first deploy: each deploy asks the ledger for
    this step's record and the database for its live schema."""
    migrations = _migrations(stage)
    if not migrations:
        return None
    migrate = stage.add(
        v.MIGRATE,
        Kind.MIGRATE,
        {
            "release": stage.spec.name,
            "environment": stage.name,
            "migrations": migrations,
            "verify_task_id": verify,
            "environments": [env.name for env in stage.spec.environments],
            "artifact_store": stage.spec.artifact_store,
            "signing_conn_id": stage.ctx.signing_conn_id,
            "deploy_target_conn_id": stage.env.deploy_target,
        },
    )
    for deploy in deploys:
        stage.plan.extend_args(deploy, migrate_task_id=migrate, schemas=migrations)
    return migrate


def _reconcile(stage: _Stage, verify: str, migrate: str, rollbacks: list[str]) -> str:
    """After the migrate step and the rollbacks, whatever they did: a half-failed migration, or
    a rollback to a version the schema has outrun, runs the reconcile steps and asks a person;
    otherwise it skips. The target stays locked until it is answered."""
    spec, env, groups = stage.spec, stage.env, stage.ctx.groups
    owners = groups[env.owner] if env.owner else stage.pool or groups.get(spec.owner_team, [])
    if not owners:
        raise ReleaseSpecError(
            f"release {spec.name}",
            [
                (
                    f"environments.{env.name}",
                    "it migrates a database, but nobody could confirm a reconciliation after a failed migration: "
                    f"give it an owner or approvers, or make owner_team {spec.owner_team!r} a group",
                )
            ],
        )
    reconcile = stage.add(
        v.RECONCILE,
        Kind.RECONCILE,
        {
            "release": spec.name,
            "environment": stage.name,
            "migrations": _migrations(stage),
            "migrate_task_id": migrate,
            "verify_task_id": verify,
            "rollback_task_ids": list(rollbacks),
            "owners": list(owners),
            "artifact_store": spec.artifact_store,
            "signing_conn_id": stage.ctx.signing_conn_id,
            **({"units": dict(spec.units())} if spec.packaging == "modular" else {}),
        },
        Rule.ALL_DONE,
    )
    stage.plan.connect([migrate, *rollbacks], reconcile)
    return reconcile


def _smoke(stage: _Stage, deploy: str) -> str:
    env = stage.env
    return stage.add(
        v.SMOKE,
        Kind.SMOKE,
        {
            "release": stage.spec.name,
            "environment": env.name,
            "deploy_task_id": deploy,
            "http_conn_id": env.deploy_target,
            "checks": [c.model_dump(mode="json") for c in env.smoke_checks],
            "journeys": journey_files(stage.ctx.project_root, env.journeys),
        },
    )


def _analysed(stage: _Stage, deploy: str, task_id: str, analysis: Any, phase: str, weight: int | None, route: str):
    """An analysis and the decision asked when it is inconclusive; both watched."""
    env, spec = stage.env, stage.spec
    names = analysis_journeys(env)
    check = stage.add(
        task_id,
        Kind.ANALYSIS,
        {
            "analysis": analysis.model_dump(mode="json"),
            "stage": phase,
            "weight": weight,
            "route": route,
            "prior_task_ids": list(stage.analyses),
            "release": spec.name,
            "environment": env.name,
            "deploy_target_conn_id": env.deploy_target,
            "deploy_task_id": deploy,
            "journey": {"conn_id": env.deploy_target, "files": journey_files(stage.ctx.project_root, names)}
            if names
            else None,
            "abort_task_id": stage.abort_task_id,
            "locked": True,
        },
        Rule.NONE_FAILED,
    )
    stage.analyses.append(check)
    decide = stage.add(
        v.decide_task(task_id),
        Kind.DECISION,
        {
            "release": spec.name,
            "environment": env.name,
            "analysis_task_id": check,
            "deciders": stage.pool or stage.owners or spec.review_users,
            "timeout_hours": env.strategy.decision_timeout_hours,
        },
    )
    stage.plan.connect(check, decide)
    stage.watched += [check, decide]
    return check, decide


def _rollout(stage: _Stage, deploy: str) -> str:
    """A progressive rollout's analysed steps and promotion after the deploy; returns its tail."""
    strategy = stage.env.strategy
    if not strategy.progressive:
        return deploy
    tail = deploy
    if strategy.kind == "canary":
        steps = [(v.canary_task(w), f"canary {w}%", w, "app") for w in strategy.weights]
    else:
        steps = [(v.ANALYSIS, "pre-promotion", None, "preview")]
    for task_id, phase, weight, route in steps:
        check, decide = _analysed(stage, deploy, task_id, strategy.analysis, phase, weight, route)
        stage.plan.connect(tail, check)
        tail = decide
    promote = stage.add(
        v.PROMOTE,
        Kind.PROMOTE,
        {
            "release": stage.spec.name,
            "environment": stage.name,
            "deploy_target_conn_id": stage.env.deploy_target,
            "abort_task_id": stage.abort_task_id,
            "analysis_task_ids": list(stage.analyses),
            "locked": True,
        },
        Rule.NONE_FAILED,
    )
    stage.watched.append(promote)
    stage.plan.connect(tail, promote)
    return promote


def _health(stage: _Stage, smoke: str, deploy: str) -> str:
    env = stage.env
    if not env.health_checks:
        return smoke
    health = stage.add(
        v.HEALTH,
        Kind.HEALTH,
        {
            "release": stage.spec.name,
            "environment": env.name,
            "deploy_task_id": deploy,
            "http_conn_id": env.deploy_target,
            "health": env.health_checks.model_dump(mode="json"),
        },
    )
    stage.plan.connect(smoke, health)
    stage.watched.append(health)
    return health


def _watch(stage: _Stage, deploy: str, last: str) -> tuple[str | None, str]:
    """The analysis watching the new version after promotion (or after a plain deploy)."""
    strategy = stage.env.strategy
    watch = strategy.watch or (strategy.analysis if strategy.kind == "blue_green" else None)
    if watch is None:
        return None, last
    phase = "post-promotion" if strategy.progressive else "post-deploy"
    check, decide = _analysed(stage, deploy, v.WATCH, watch, phase, None, "app")
    stage.plan.connect(last, check)
    return check, decide


def _alerts(stage: _Stage, deploy: str, last: str) -> str | None:
    """The watch for alerts after the deploy and its checks (spec ``alerts``): a firing alert
    attached to the run fails it, and the stage rolls back; the gate asks for a quiet watch."""
    if stage.spec.alerts is None:
        return None
    alerts = stage.add(
        v.ALERTS,
        Kind.ALERTS,
        {
            "release": stage.spec.name,
            "environment": stage.name,
            "watch_minutes": stage.spec.alerts.watch_minutes,
            "deploy_task_id": deploy,
        },
    )
    stage.plan.connect(last, alerts)
    return alerts


def _soak(stage: _Stage, deploy: str, last: str) -> str | None:
    """A soak period, when a trend rule may ask for one here (spec ``trends[].soak``): the step
    waits only when the risk assessment recorded the rule as triggered; the gate asks for its
    record. Not watched: a soak is time, not a verdict (the checks before it gave theirs)."""
    if not any(rule.soak and rule.soak.environment == stage.name for rule in stage.spec.trends):
        return None
    soak = stage.add(
        v.SOAK, Kind.SOAK, {"release": stage.spec.name, "environment": stage.name, "deploy_task_id": deploy}
    )
    stage.plan.connect(last, soak)
    return soak


def _suites(stage: _Stage, deploy: str) -> list[str]:
    """The environment's test suites, each its own step (they run in parallel)."""
    env = stage.env
    return [
        stage.add(
            v.suite_task(suite.name),
            Kind.SUITE,
            {
                "release": stage.spec.name,
                "environment": env.name,
                "suite": suite.name,
                "deploy_task_id": deploy,
                "http_conn_id": env.deploy_target,
                "checks": [c.model_dump(mode="json") for c in suite.checks],
                "journeys": journey_files(stage.ctx.project_root, suite.journeys),
            },
        )
        for suite in env.test_suites
    ]


def _passed(stage: _Stage, verify: str, deploys: list[str], smoke: str, watch: str | None, suites: list[str]) -> str:
    """The environment's gate; it proves, from the ledger, every step the stage needed."""
    rollout = [a for a in stage.analyses if a != watch]
    proofs = [verify, *deploys, *rollout]
    proofs += [stage.id(v.PROMOTE)] if stage.env.strategy.progressive else []
    proofs += [smoke] + ([stage.id(v.HEALTH)] if stage.env.health_checks else [])
    proofs += [watch] if watch else []
    proofs += suites
    return stage.add(
        v.PASSED,
        Kind.PASSED,
        {"release": stage.spec.name, "environment": stage.name, "proof_task_ids": proofs},
        Rule.NONE_FAILED,
    )


def _abort(stage: _Stage, verify: str, passed: str) -> str | None:
    """The operators' abort request, open from verify until the stage passed."""
    if not stage.abort_task_id:
        return None
    abort = stage.add(
        v.ABORT,
        Kind.ABORT,
        {
            "release": stage.spec.name,
            "environment": stage.name,
            "people": sorted(set(stage.pool) | set(stage.owners) | set(stage.spec.review_users)),
            "phase_task_ids": [passed],
        },
    )
    stage.plan.connect(verify, abort)
    stage.watched.append(abort)
    return abort


def _rollback_args(spec: ReleaseSpec, env: Any) -> dict[str, Any]:
    """What every rollback of an environment is built with (a release's and the manual one)."""
    return {
        "release": spec.name,
        "environment": env.name,
        "deploy_target_conn_id": env.deploy_target,
        "deploy_timeout_seconds": env.deploy_timeout_seconds,
        "poll_interval": env.poll_interval_seconds,
        "pool": v.target_pool(env.deploy_target),
        "notifications": [n.model_dump(mode="json") for n in spec.notifications],
        "artifact_store": spec.artifact_store,
        "backout_minutes": spec.backout_minutes,
    }


def _rollback(stage: _Stage, deploys: list[str]) -> list[str]:
    """The environment's rollback; packaging modular: one per deploy unit (``rollback_<unit>``),
    each returning its unit to what ran before (a unit this run did not change is skipped)."""
    spec = stage.spec
    args = {**_rollback_args(spec, stage.env), "locked": True}
    if spec.packaging != "modular":
        rollbacks = [stage.add(v.ROLLBACK, Kind.ROLLBACK, {**args, "deploy_task_id": deploys[0]}, Rule.ONE_FAILED)]
    else:
        rollbacks = [
            stage.add(
                v.unit_task(v.ROLLBACK, unit),
                Kind.ROLLBACK,
                {**args, "deploy_task_id": deploy, "unit": unit},
                Rule.ONE_FAILED,
            )
            for (unit, _), deploy in zip(spec.units(), deploys, strict=True)
        ]
    stage.plan.connect(stage.watched, rollbacks)
    return rollbacks


def _postmortem(stage: _Stage, rollbacks: list[str]) -> str | None:
    """After the environment's rollbacks, whatever they did, and outside the lock: nothing
    waits for it but the run's end (it skips when nothing was rolled back). The rollbacks leave
    the change record in Review for it."""
    spec, env, groups = stage.spec, stage.env, stage.ctx.groups
    if spec.postmortem is None:
        return None
    owners = list(spec.postmortem.owners) or groups.get(spec.owner_team) or stage.owners or stage.pool
    if not owners:
        raise ReleaseSpecError(
            f"release {spec.name}",
            [
                (
                    "postmortem.owners",
                    f"nobody to ask for {env.name}'s postmortem: name owners or define group {spec.owner_team!r}",
                )
            ],
        )
    review = stage.add(
        v.POSTMORTEM,
        Kind.POSTMORTEM,
        {
            "release": spec.name,
            "environment": stage.name,
            "rollback_task_ids": list(rollbacks),
            "owners": list(owners),
            "deadline_minutes": spec.postmortem.deadline_minutes,
            "artifact_store": spec.artifact_store,
        },
        Rule.ALL_DONE,
    )
    stage.plan.connect(rollbacks, review)
    for rollback in rollbacks:
        stage.plan.extend_args(rollback, postmortem_task_id=review)
    return review


def _unlock(stage: _Stage, ends: list[str]) -> str:
    """After every step of the stage: marking a few of them done by hand frees nothing early."""
    unlock = stage.add(
        v.UNLOCK,
        Kind.UNLOCK,
        {"release": stage.spec.name, "environment": stage.name, "target": stage.env.deploy_target},
        Rule.ALL_DONE,
    )
    stage.plan.connect(list(dict.fromkeys(ends)), unlock)
    return unlock


# --- the manual rollback DAG ----------------------------------------------------------------
def plan_rollback(spec: ReleaseSpec) -> Plan:
    """``plan`` >> [``approve_rollback``] >> ``rollback_<env>`` (each) >> ``rollback_review``;
    packaging modular: ``rollback_<env>__<unit>`` for each unit, one after the other."""
    plan = Plan()
    first = plan.add(
        Step(
            v.ROLLBACK_PLAN,
            Kind.ROLLBACK_PLAN,
            {
                "release": spec.name,
                "targets": {env.name: env.deploy_target for env in spec.environments},
                **({"units": dict(spec.units())} if spec.packaging == "modular" else {}),
                "change_backend": spec.change.backend,
                "change_conn_id": spec.change.conn_id,
                **(
                    {
                        "schemas": {
                            env.name: {
                                c.name: c.migrations.databases[env.name] for c in spec.components if c.migrations
                            }
                            for env in spec.environments
                        }
                    }
                    if any(c.migrations for c in spec.components)
                    else {}
                ),
            },
        )
    )
    if spec.rollback_approvers:
        approval = plan.add(
            Step(
                v.ROLLBACK_APPROVAL,
                Kind.ROLLBACK_APPROVAL,
                {"release": spec.name, "approvers": list(spec.rollback_approvers)},
            )
        )
        plan.connect(first, approval)
        first = approval
    review = plan.add(
        Step(
            v.ROLLBACK_REVIEW,
            Kind.ROLLBACK_REVIEW,
            {"release": spec.name, "reviewers": spec.review_users},
            Rule.NONE_FAILED_MIN_ONE_SUCCESS,
        )
    )
    modular = spec.packaging == "modular"
    for env in spec.environments:
        approval = v.ROLLBACK_APPROVAL if spec.rollback_approvers else None
        args = {"approval_task_id": approval, **_rollback_args(spec, env)}
        if not modular:
            rollbacks = [plan.add(Step(v.manual_rollback_task(env.name), Kind.MANUAL_ROLLBACK, args))]
        else:  # each unit back in turn, under one hold of the target: the last one frees it
            units = [u for u, _ in spec.units()]
            rollbacks = [
                plan.add(
                    Step(
                        v.manual_rollback_task(env.name, unit),
                        Kind.MANUAL_ROLLBACK,
                        {**args, "unit": unit, "last": unit == units[-1]},
                    )
                )
                for unit in units
            ]
            for earlier, later in zip(rollbacks, rollbacks[1:], strict=False):
                plan.connect(earlier, later)
        plan.connect(first, rollbacks[0])
        plan.connect(rollbacks[-1], review)
    return plan
