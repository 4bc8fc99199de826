"""The DAG factory: a validated :class:`ReleaseSpec` becomes one Airflow DAG.

Graph of a release with environments dev, staging and prod (prod needs approval)::

    prepare >> package >> dev.verify >> dev.deploy >> dev.smoke
        >> staging.verify >> staging.deploy >> staging.smoke
        >> prod.approve >> [prod.window] >> prod.verify >> prod.deploy >> prod.smoke >> prod.health
        >> [post_implementation_review] >> release_complete
    <env>.rollback  (one_failed on <env>.deploy / smoke / health)

``<env>.window`` exists for environments with a calendar, ``post_implementation_review``
for releases with calendars (it skips unless the run is an emergency).
``release_complete`` is the leaf that decides the run's state: any failed gate leaves it
``upstream_failed``, so a release that was rolled back or rejected ends ``failed``.
Building a DAG does no network I/O (spec and calendar files only): parsing stays cheap.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pendulum
from airflow.sdk import DAG, Param, TaskGroup, TriggerRule
from airflow.sdk.definitions.param import ParamsDict
from airflow.sdk.exceptions import ParamValidationError

from releasetrain.core import vocabulary as v
from releasetrain.core.risk import HIGH_RISK_QUORUM, SECURITY_REVIEW
from releasetrain.core.spec import (
    CalendarLibrary,
    ReleaseSpec,
    ReleaseSpecError,
    approval_pool,
    check_groups,
    discover_specs,
    load_spec,
)
from releasetrain.core.versioning import SEMVER_PATTERN
from releasetrain.core.windows import CalendarError
from releasetrain.operators.approval import ReleaseApprovalOperator
from releasetrain.operators.checks import HealthVerificationOperator, SmokeCheckOperator
from releasetrain.operators.complete import ReleaseCompleteOperator
from releasetrain.operators.deploy import EnvironmentDeployOperator
from releasetrain.operators.governance import ReleaseClosureOperator, RiskAssessmentOperator
from releasetrain.operators.lock import TargetLockOperator, TargetUnlockOperator
from releasetrain.operators.manual_rollback import (
    ManualRollbackOperator,
    ManualRollbackPlanOperator,
    RollbackApprovalOperator,
    RollbackReviewOperator,
)
from releasetrain.operators.package import BundlePackageOperator
from releasetrain.operators.progressive import (
    AnalysisDecisionOperator,
    EnvironmentPassedOperator,
    PromoteOperator,
    RolloutAbortOperator,
    TrafficAnalysisOperator,
)
from releasetrain.operators.request import ReleaseRequestOperator
from releasetrain.operators.review import PostImplementationReviewOperator
from releasetrain.operators.rollback import RollbackOperator
from releasetrain.operators.verify import BundleVerifyOperator
from releasetrain.operators.window import ReleaseWindowSensor
from releasetrain.timetables.release_window import ReleaseWindowTimetable

SPEC_DIRS_ENV = "RELEASETRAIN_SPEC_DIRS"
START_DATE = pendulum.datetime(2024, 1, 1, tz="UTC")
USER_PATTERN = r"^[A-Za-z0-9_.@+-]{1,100}$"


target_pool = v.target_pool


def release_params(spec: ReleaseSpec) -> dict[str, Param]:
    """Trigger-form params; their schema is validated by Airflow (HTTP 400 over REST)."""
    if spec.is_train and spec.schedule:
        version = Param(
            None,
            type=["null", "string"],
            pattern=SEMVER_PATTERN,
            title="Version",
            description=f"Semantic version of {spec.name} to release, e.g. 2.4.1. Scheduled runs take the "
            f"candidate published in the Airflow variable releasetrain_{spec.name}_version.",
            section="Release",
        )
    elif spec.is_train:
        version = Param(
            type="string",
            pattern=SEMVER_PATTERN,
            title="Version",
            description=f"Semantic version of {spec.name} to release, e.g. 2.4.1 (MAJOR.MINOR.PATCH). "
            "Required: this release is a train and takes its version at trigger time.",
            section="Release",
        )
    else:
        version = Param(
            spec.version,
            type="string",
            enum=[spec.version],
            title="Version",
            description=f"This is a planned release: the version is fixed at {spec.version} by its spec.",
            section="Release",
        )
    params = {
        "version": version,
        "requested_by": Param(
            None,
            type=["null", "string"],
            pattern=USER_PATTERN,
            title="Requested by",
            description="User id of the person who asks for this release (the change owner). "
            "Defaults to the user who triggers the run. Neither of them can approve it.",
            section="Release",
        ),
        "change_summary": Param(
            "",
            type="string",
            maxLength=2000,
            title="Change summary",
            description="What changes for users, in one or two sentences. Shown to approvers.",
            section="Release",
        ),
    }
    if spec.has_calendar:
        params["emergency"] = Param(
            False,
            type="boolean",
            title="Emergency change",
            description="Pass closed release windows and blackouts. The exception is recorded (who, when, why, "
            "which rule) and the run needs a post-implementation review before it can succeed.",
            section="Emergency",
        )
        params["emergency_justification"] = Param(
            "",
            type="string",
            maxLength=2000,
            title="Emergency justification",
            description="Required for an emergency change: the incident or risk that cannot wait for a window.",
            section="Emergency",
        )
    return params


def _calendar_doc(spec: ReleaseSpec, calendars: CalendarLibrary | None) -> str:
    """The calendar rules of each gated environment.

    Only the rules: the DAG's documentation is part of the serialized DAG, and anything
    computed from the clock (next openings, next blackouts) would change it at every parse.
    The dates themselves are one command away (``releasetrain calendar``)."""
    if not spec.has_calendar or calendars is None:
        return ""
    parts = [
        "## Release windows\n\nThe next openings and blackouts, in UTC: "
        "`releasetrain calendar <this release's spec file>`.\n"
    ]
    for env in spec.environments:
        layers = spec.calendar_layers(env.name)
        if not layers:
            continue
        try:
            calendar = calendars.resolve(layers)
        except (CalendarError, ReleaseSpecError) as exc:
            parts.append(f"\n**{env.name}**: calendar cannot be used: {exc}\n")
            continue
        parts.append(f"\n**{env.name}** (deploys need {env.expected_duration_minutes} min in a window)\n")
        parts += [f"- {line}" for line in calendar.describe()]
    return "\n".join(parts) + "\n\n"


def release_doc_md(spec: ReleaseSpec, calendars: CalendarLibrary | None = None) -> str:
    rows = "\n".join(f"| `{c.name}` | `{c.source}` | {c.version or 'release version'} |" for c in spec.components)
    envs = []
    for i, env in enumerate(spec.environments, start=1):
        approval = (
            f"approval by {', '.join(env.approval.approvers)} (never the release's author)"
            if env.approval.required
            else "no approval"
        )
        health = f"health watched {env.health_checks.period_seconds}s" if env.health_checks else "no health watch"
        envs.append(
            f"{i}. **{env.name}**: target connection `{env.deploy_target}`, {approval}, "
            f"{len(env.smoke_checks)} smoke checks, {health}"
        )
    version = f"planned release of **{spec.version}**" if spec.version else "release train: version given at trigger"
    return (
        f"# Release `{spec.name}`\n\n{spec.description}\n\n"
        f"Owner team: **{spec.owner_team}**. Version: {version}.\n\n"
        f"## Components\n\n| Component | Source | Version |\n|---|---|---|\n{rows}\n\n"
        f"## Promotion path\n\n" + "\n".join(envs) + "\n\n"
        "Each environment receives the exact bundle digest that passed the one before it; the bundle's "
        "digest and signature are verified again before every deploy. A failed deploy, smoke or health "
        "gate rolls the environment back to the version it ran before, and the run ends `failed`.\n\n"
        + _calendar_doc(spec, calendars)
        + "## Trigger\n\nUse *Trigger* in the UI, or `POST /api/v2/dags/"
        f'{spec.dag_id}/dagRuns` with `{{"logical_date": null, "conf": {{"version": "1.2.3", '
        '"requested_by": "alice", "change_summary": "..."}}`.\n'
    )


def build_release_dag(
    spec: ReleaseSpec,
    *,
    project_root: Path | str,
    signing_conn_id: str = "releasetrain_signing",
    calendars: CalendarLibrary | None = None,
    auto_register: bool = True,
) -> DAG:
    """Turn one validated spec into its DAG (no network; shared calendars are read)."""
    project_root = Path(project_root)
    calendars = calendars or CalendarLibrary(project_root)
    spec = calendars.binding(spec)  # company-wide calendars (applies_to: all) bind every release
    schedule = None
    if spec.schedule == "windows":
        schedule = ReleaseWindowTimetable(
            calendars.resolve(spec.calendar_layers(None)).to_dict(),
            min_duration_minutes=spec.environments[0].expected_duration_minutes,
        )
    with DAG(
        dag_id=spec.dag_id,
        dag_display_name=f"Release {spec.name}",
        description=(spec.description or f"Release of {spec.name}")[:200],
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=sorted({"release", f"team:{spec.owner_team}", *spec.tags}),
        doc_md=release_doc_md(spec, calendars),
        default_args={"owner": spec.owner_team, "retries": 0},
        auto_register=auto_register,
    ) as dag:
        request = ReleaseRequestOperator(task_id=v.PREPARE, release=spec.name, planned_version=spec.version)
        package = BundlePackageOperator(
            task_id=v.PACKAGE,
            release=spec.name,
            components=[c.model_dump(mode="json") for c in spec.components],
            project_root=str(project_root),
            artifact_store=spec.artifact_store,
            signing_conn_id=signing_conn_id,
        )
        groups = calendars.groups()
        check_groups(spec, f"release {spec.name}", groups)  # also for specs built in Python
        risk = RiskAssessmentOperator(
            task_id=v.ASSESS_RISK,
            release=spec.name,
            environments=[env.name for env in spec.environments],
            production=spec.production_environments,
            components=len(spec.components),
            schema_migration=any(c.schema_migration for c in spec.components),
            rollback_plan=spec.rollback_plan,
            backout_minutes=spec.backout_minutes,
            declared_gates={
                env.name: {"quorum": env.approval.quorum, "reviews": list(env.approval.reviews)}
                for env in spec.environments
                if env.approval.required
            },
            available_reviews={env.name: _review_groups(spec, env, groups) for env in spec.environments},
            change_backend=spec.change.backend,
            change_conn_id=spec.change.conn_id,
            change_type=spec.change.type,
            planned_minutes=spec.planned_duration_minutes,
        )
        request >> risk >> package
        upstream: Any = package
        gates: list[str] = []
        windows: list[str] = []
        for env in spec.environments:
            upstream = _environment_stage(spec, env.name, upstream, gates, signing_conn_id, calendars, windows, groups)
        # With a post-implementation review (skipped for normal runs), the leaf must run
        # when the review was skipped, and still fail when anything before it failed.
        complete = ReleaseCompleteOperator(
            task_id=v.RELEASE_COMPLETE,
            release=spec.name,
            gate_task_ids=list(gates),
            environments=[env.name for env in spec.environments],
            trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS if spec.has_calendar else TriggerRule.ALL_SUCCESS,
            review_task_id=v.POST_IMPLEMENTATION_REVIEW if spec.has_calendar else None,
            closure_task_id=v.CLOSURE if spec.closure else None,
        )
        before_closure: Any = upstream
        if spec.has_calendar:
            review = PostImplementationReviewOperator(
                task_id=v.POST_IMPLEMENTATION_REVIEW,
                release=spec.name,
                reviewers=spec.review_users,
                gate_task_ids=windows,
            )
            upstream >> review >> complete
            before_closure = [upstream, review]
        if spec.closure:
            closure = ReleaseClosureOperator(
                task_id=v.CLOSURE,
                release=spec.name,
                people=spec.review_users,
                trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
            )
            before_closure >> closure >> complete
        upstream >> complete
    _give_people(dag, calendars.people())
    _give_params(dag, release_params(spec))
    return dag


def _give_params(dag: DAG, params: dict[str, Param]) -> None:
    """The DAG's trigger form, given once its tasks exist.

    Airflow deep-copies a DAG's params into every operator made inside it, once per class
    in the operator's hierarchy (7,200 copies for 100 specs: most of the parse time), while a
    task's run merges the DAG's params with the task's own anyway (``process_params``), and
    the trigger form and the run's conf validation read the DAG's. A scheduled DAG's params
    must resolve without a conf, as Airflow's own validator demands; the check is the same
    (``Param.resolve``), remembered per schema and default (every spec has the same form)."""
    converted = ParamsDict(params)
    if dag.timetable is not None and dag.timetable.can_be_scheduled:
        for name in converted:
            problem = _param_problem(converted.get_param(name))
            if problem:
                raise ValueError(
                    f"Dag {dag.dag_id!r} is not allowed to define a Schedule, as there are required params "
                    f"without default values, or the default values are not valid: {name}: {problem}"
                )
    object.__setattr__(dag, "params", converted)


_PARAM_PROBLEMS: dict[str, str] = {}


def _param_problem(param: Param) -> str:
    """Why a param's default does not resolve against its schema ("" when it does)."""
    key = json.dumps([param.value, param.schema], sort_keys=True, default=repr)
    if key not in _PARAM_PROBLEMS:
        try:
            param.resolve(suppress_exception=False)
            _PARAM_PROBLEMS[key] = ""
        except ParamValidationError as exc:
            _PARAM_PROBLEMS[key] = str(exc)
    return _PARAM_PROBLEMS[key]


def _give_people(dag: DAG, people: dict[str, str]) -> None:
    """Every task gets the people directory (user id -> name): identities are compared by id,
    and a DAG run only knows its triggering user's name."""
    directory = dict(people)  # one copy per DAG, read by its tasks (never written)
    for task in dag.tasks:
        task.user_directory = directory


def rollback_dag_id(spec: ReleaseSpec) -> str:
    return v.rollback_dag_id(spec.name)


def build_rollback_dag(spec: ReleaseSpec, *, auto_register: bool = True, project_root: Path | str | None = None) -> DAG:
    """The release's manual rollback DAG: for incidents, from the UI form or REST.

    ``plan`` picks the version (the form's, else the newest good one from the ledger),
    records who asked and why and opens an emergency change; ``approve_rollback`` (with
    ``rollback_approvers``) asks a second person; then the chosen environment's rollback
    task returns it to that version under the target's lock (the other environments' tasks
    skip), with the same snapshot, postmortem draft and notifications as a release's
    rollback; ``rollback_review`` asks for the post-implementation review.
    """
    names = [env.name for env in spec.environments]
    doc = (
        f"# Manual rollback of `{spec.name}`\n\nFor incidents: return one environment to a known good version. "
        "Only a version that passed in that environment, is older than the live one and was never rolled "
        "back there may be chosen; without a version, the newest such version is used (from the release "
        "ledger). The rollback is an emergency change with the incident's reason"
        + (f", approved first by one of {', '.join(spec.rollback_approvers)}" if spec.rollback_approvers else "")
        + ", waits for the deploy target's lock, and ends with a post-implementation review by someone other "
        "than the person who triggered it. It leaves a snapshot, a postmortem draft and notifications.\n\n"
        f'REST: `POST /api/v2/dags/{rollback_dag_id(spec)}/dagRuns` with `{{"logical_date": null, "conf": '
        f'{{"environment": "{names[-1]}", "reason": "..."}}}}`.\n'
    )
    params = {
        "environment": Param(
            names[-1], type="string", enum=names, title="Environment", description="Where to roll back."
        ),
        "version": Param(
            None,
            type=["null", "string"],
            pattern=SEMVER_PATTERN,
            title="Version",
            description="Version to return to (it must have run there). Empty: the last good version.",
        ),
        "reason": Param(
            type="string",
            minLength=10,
            maxLength=2000,
            title="Reason",
            description="The incident: why this rollback (recorded in the ledger and the postmortem).",
        ),
    }
    with DAG(
        dag_id=rollback_dag_id(spec),
        dag_display_name=f"Rollback {spec.name}",
        description=f"Manual rollback of {spec.name} (incidents)"[:200],
        schedule=None,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=1,
        tags=sorted({"rollback", f"team:{spec.owner_team}", *spec.tags}),
        doc_md=doc,
        default_args={"owner": spec.owner_team, "retries": 0},
        auto_register=auto_register,
    ) as dag:
        plan = ManualRollbackPlanOperator(
            task_id=v.ROLLBACK_PLAN,
            release=spec.name,
            targets={env.name: env.deploy_target for env in spec.environments},
            change_backend=spec.change.backend,
            change_conn_id=spec.change.conn_id,
        )
        first: Any = plan
        if spec.rollback_approvers:
            first = RollbackApprovalOperator(
                task_id=v.ROLLBACK_APPROVAL, release=spec.name, approvers=list(spec.rollback_approvers)
            )
            plan >> first
        review = RollbackReviewOperator(
            task_id=v.ROLLBACK_REVIEW,
            release=spec.name,
            reviewers=spec.review_users,
            trigger_rule=TriggerRule.NONE_FAILED_MIN_ONE_SUCCESS,
        )
        for env in spec.environments:
            (
                first
                >> ManualRollbackOperator(
                    task_id=v.manual_rollback_task(env.name),
                    approval_task_id=v.ROLLBACK_APPROVAL if spec.rollback_approvers else None,
                    release=spec.name,
                    environment=env.name,
                    deploy_target_conn_id=env.deploy_target,
                    deploy_timeout_seconds=env.deploy_timeout_seconds,
                    poll_interval=env.poll_interval_seconds,
                    pool=target_pool(env.deploy_target),
                    notifications=[n.model_dump(mode="json") for n in spec.notifications],
                    artifact_store=spec.artifact_store,
                )
                >> review
            )
    _give_people(dag, CalendarLibrary(Path(project_root)).people() if project_root else {})
    _give_params(dag, params)
    return dag


def _review_groups(spec: ReleaseSpec, env: Any, groups: dict[str, list[str]]) -> list[str]:
    """Readiness-review tasks of an environment: the spec's, plus security on production (for high risk)."""
    if not env.approval.required:
        return []
    reviews = list(env.approval.reviews)
    if env.name in spec.production_environments and SECURITY_REVIEW in groups and SECURITY_REVIEW not in reviews:
        reviews.append(SECURITY_REVIEW)
    return reviews


def _environment_stage(
    spec: ReleaseSpec,
    name: str,
    upstream: Any,
    gates: list[str],
    signing_conn_id: str,
    calendars: CalendarLibrary,
    windows: list[str],
    groups: dict[str, list[str]],
) -> Any:
    env = spec.environment(name)
    previous = spec.previous_environment(name)
    with TaskGroup(group_id=name, tooltip=f"Deploy {spec.name} to {name}"):
        verify = BundleVerifyOperator(
            task_id=v.VERIFY,
            release=spec.name,
            environment=name,
            artifact_store=spec.artifact_store,
            signing_conn_id=signing_conn_id,
        )
        first: Any = verify
        approval_task_ids: list[str] = []
        approvals: list[Any] = []
        window_task_id = None
        pool = approval_pool(env, groups)
        production = name in spec.production_environments
        if env.approval.required:
            slots = max(env.approval.quorum, HIGH_RISK_QUORUM if production else 1)
            review_groups = _review_groups(spec, env, groups)
            ids = [v.approval_slot(i) for i in range(1, slots + 1)] + [v.review_task(g) for g in review_groups]
            full_ids = [f"{name}.{task_id}" for task_id in ids]
            common = dict(
                release=spec.name,
                environment=name,
                quorum=env.approval.quorum,
                reviews=list(env.approval.reviews),
                sibling_task_ids=full_ids,
                passed_task_ids=list(gates),
                timeout_hours=env.approval.timeout_hours,
            )
            previous_slot = None
            for i in range(1, slots + 1):
                slot = ReleaseApprovalOperator(
                    task_id=v.approval_slot(i),
                    approvers=pool,
                    slot=i,
                    trigger_rule=TriggerRule.NONE_FAILED if i > 1 else TriggerRule.ALL_SUCCESS,
                    **common,
                )
                if previous_slot is not None:
                    previous_slot >> slot
                previous_slot = slot
                approvals.append(slot)
            last_slot = previous_slot
            reviews = [
                ReleaseApprovalOperator(
                    task_id=v.review_task(group), approvers=groups[group], slot=None, review_group=group, **common
                )
                for group in review_groups
            ]
            approvals += reviews
            approval_task_ids = full_ids
            first = [approvals[0], *reviews]
            gate_done: Any = [last_slot, *reviews]
        layers = spec.calendar_layers(name)
        if layers:
            window = ReleaseWindowSensor(
                task_id=v.WINDOW,
                release=spec.name,
                environment=name,
                layers=[layer.model_dump(mode="json") for layer in layers],
                calendar_dirs=[str(d) for d in calendars.directories],
                project_root=str(calendars.project_root),
                expected_duration_minutes=env.expected_duration_minutes,
            )
            windows.append(window.task_id)
            window_task_id = window.task_id
            if approval_task_ids:
                window.trigger_rule = TriggerRule.NONE_FAILED
                gate_done >> window
            else:
                first = window
            window >> verify
        elif approval_task_ids:
            verify.trigger_rule = TriggerRule.NONE_FAILED
            gate_done >> verify
        strategy = env.strategy
        deploy = EnvironmentDeployOperator(
            task_id=v.DEPLOY,
            slot="idle" if strategy.progressive else None,
            release=spec.name,
            environment=name,
            deploy_target_conn_id=env.deploy_target,
            verify_task_id=verify.task_id,
            previous_environment=previous.name if previous else None,
            promotion_gate_task_id=gates[-1] if previous else None,
            approval_task_ids=approval_task_ids,
            approvers=pool if approval_task_ids else None,
            review_members={g: groups[g] for g in _review_groups(spec, env, groups)},
            quorum=env.approval.quorum,
            reviews=list(env.approval.reviews),
            owners=groups[env.owner] if env.owner else None,
            production=production,
            window_task_id=window_task_id,
            deploy_timeout_seconds=env.deploy_timeout_seconds,
            poll_interval=env.poll_interval_seconds,
            pool=target_pool(env.deploy_target),
            locked=True,
        )
        lock = TargetLockOperator(task_id=v.LOCK, release=spec.name, environment=name, target=env.deploy_target)
        smoke = SmokeCheckOperator(
            task_id=v.SMOKE,
            release=spec.name,
            environment=name,
            deploy_task_id=deploy.task_id,
            http_conn_id=env.deploy_target,
            checks=[c.model_dump(mode="json") for c in env.smoke_checks],
            journeys=_journey_files(spec, env, env.journeys, calendars.project_root),
        )
        watched: list[Any] = [deploy, smoke]
        owners = groups[env.owner] if env.owner else []
        deciders = pool or owners or spec.review_users
        # by default on production rollouts that take time (steps, analyses): a rolling deploy is over in seconds
        long_rollout = strategy.progressive or strategy.watch is not None
        abort_enabled = strategy.abort if strategy.abort is not None else (production and long_rollout)
        abort_task_id = v.env_task(name, v.ABORT) if abort_enabled else None
        analyses: list[str] = []  # full ids of the stage's analyses, in order
        journeys = _journeys(spec, env, calendars.project_root)
        common = dict(
            release=spec.name,
            environment=name,
            deploy_target_conn_id=env.deploy_target,
            deploy_task_id=deploy.task_id,
            journey=journeys,
            abort_task_id=abort_task_id,
            locked=True,
        )

        def analysed(task_id: str, analysis: Any, stage: str, weight: int | None, route: str) -> tuple[Any, Any]:
            check = TrafficAnalysisOperator(
                task_id=task_id,
                analysis=analysis.model_dump(mode="json"),
                stage=stage,
                weight=weight,
                route=route,
                prior_task_ids=list(analyses),
                trigger_rule=TriggerRule.NONE_FAILED,
                **common,
            )
            analyses.append(v.env_task(name, task_id))
            decide = AnalysisDecisionOperator(
                task_id=v.decide_task(task_id),
                release=spec.name,
                environment=name,
                analysis_task_id=check.task_id,
                deciders=deciders,
                timeout_hours=strategy.decision_timeout_hours,
            )
            check >> decide
            watched.extend([check, decide])
            return check, decide

        verify >> lock >> deploy
        tail: Any = deploy
        if strategy.progressive:
            if strategy.kind == "canary":
                for weight in strategy.weights:
                    check, decide = analysed(
                        v.canary_task(weight), strategy.analysis, f"canary {weight}%", weight, "app"
                    )
                    tail >> check
                    tail = decide
            else:
                check, decide = analysed(v.ANALYSIS, strategy.analysis, "pre-promotion", None, "preview")
                tail >> check
                tail = decide
            promote = PromoteOperator(
                task_id=v.PROMOTE,
                release=spec.name,
                environment=name,
                deploy_target_conn_id=env.deploy_target,
                abort_task_id=abort_task_id,
                analysis_task_ids=list(analyses),
                locked=True,
                trigger_rule=TriggerRule.NONE_FAILED,
            )
            watched.append(promote)
            tail >> promote
            tail = promote
        tail >> smoke
        last: Any = smoke
        if env.health_checks:
            health = HealthVerificationOperator(
                task_id=v.HEALTH,
                release=spec.name,
                environment=name,
                deploy_task_id=deploy.task_id,
                http_conn_id=env.deploy_target,
                health=env.health_checks.model_dump(mode="json"),
            )
            smoke >> health
            last = health
            watched.append(health)
        watch = strategy.watch or (strategy.analysis if strategy.kind == "blue_green" else None)
        if watch is not None:
            stage = "post-promotion" if strategy.progressive else "post-deploy"
            check, decide = analysed(v.WATCH, watch, stage, None, "app")
            last >> check
            last = decide
        proofs = [verify.task_id, deploy.task_id, *analyses[: len(analyses) - (watch is not None)]]
        proofs += [promote.task_id] if strategy.progressive else []
        proofs += [smoke.task_id] + ([v.env_task(name, v.HEALTH)] if env.health_checks else [])
        proofs += analyses[len(analyses) - 1 :] if watch is not None else []
        passed = EnvironmentPassedOperator(
            task_id=v.PASSED,
            release=spec.name,
            environment=name,
            proof_task_ids=proofs,
            trigger_rule=TriggerRule.NONE_FAILED,
        )
        last >> passed
        last = passed
        if abort_task_id:
            abort = RolloutAbortOperator(
                task_id=v.ABORT,
                release=spec.name,
                environment=name,
                people=sorted(set(pool) | set(owners) | set(spec.review_users)),
                phase_task_ids=[last.task_id],
            )
            verify >> abort
            watched.append(abort)
        rollback = RollbackOperator(
            task_id=v.ROLLBACK,
            release=spec.name,
            environment=name,
            deploy_target_conn_id=env.deploy_target,
            deploy_task_id=deploy.task_id,
            deploy_timeout_seconds=env.deploy_timeout_seconds,
            poll_interval=env.poll_interval_seconds,
            pool=target_pool(env.deploy_target),
            trigger_rule=TriggerRule.ONE_FAILED,
            notifications=[n.model_dump(mode="json") for n in spec.notifications],
            artifact_store=spec.artifact_store,
            locked=True,
        )
        watched >> rollback
        unlock = TargetUnlockOperator(
            task_id=v.UNLOCK,
            release=spec.name,
            environment=name,
            target=env.deploy_target,
            trigger_rule=TriggerRule.ALL_DONE,
        )
        # after every step of the stage: marking a few of them done by hand frees nothing early
        ends = {t.task_id: t for t in [lock, *watched, last, rollback, *([abort] if abort_task_id else [])]}
        list(ends.values()) >> unlock
    upstream >> first
    gates.append(last.task_id)
    return last


def _journeys(spec: ReleaseSpec, env: Any, project_root: Path) -> dict[str, Any] | None:
    """Journey metrics of an environment's analyses: their files, checked to exist."""
    strategy = env.strategy
    names = {
        m.journey
        for analysis in (strategy.analysis, strategy.watch)
        if analysis is not None
        for m in analysis.metrics
        if m.journey
    }
    if not names:
        return None
    return {"conn_id": env.deploy_target, "files": _journey_files(spec, env, names, project_root)}


def _journey_files(spec: ReleaseSpec, env: Any, names: Iterable[str], project_root: Path) -> dict[str, str]:
    """``include/journeys/<name>.yaml`` per journey name; a missing file is a spec error."""
    files = {name: project_root / "include" / "journeys" / f"{name}.yaml" for name in sorted(set(names))}
    missing = [name for name, path in files.items() if not path.is_file()]
    if missing:
        raise ReleaseSpecError(
            f"release {spec.name}",
            [(f"environments.{env.name}", f"journey not found: {', '.join(missing)} (looked in include/journeys/)")],
        )
    return {name: str(path) for name, path in files.items()}


def spec_dirs(project_root: Path) -> list[Path]:
    configured = os.environ.get(SPEC_DIRS_ENV)
    if configured:
        return [Path(p) for p in configured.split(os.pathsep) if p]
    return [project_root / "include" / "releases"]


def load_release_specs(
    directories: Iterable[Path], *, project_root: Path, only: str | None = None
) -> tuple[list[ReleaseSpec], list[str]]:
    """Every valid spec in the folders, and one message per broken or duplicate spec; with
    ``only``, just the files of that release (a spec's file is named after its release)."""
    specs: list[ReleaseSpec] = []
    errors: list[str] = []
    for path in discover_specs(directories):
        if only is not None and path.stem != only:
            continue
        try:
            spec = load_spec(path, display_root=project_root)
        except ReleaseSpecError as exc:
            errors.append(str(exc))
            continue
        if any(s.name == spec.name for s in specs):
            errors.append(f"{path}: release {spec.name!r} is defined more than once")
            continue
        specs.append(spec)
    return specs, errors


def _build_all(
    specs: list[ReleaseSpec], project_root: Path, *, register: bool = True
) -> tuple[dict[str, DAG], list[str]]:
    dags: dict[str, DAG] = {}
    errors: list[str] = []
    calendars = CalendarLibrary(project_root)  # one library per parse: shared files are read once
    for spec in specs:
        try:
            dags[spec.dag_id] = build_release_dag(
                spec, project_root=project_root, auto_register=register, calendars=calendars
            )
            dags[rollback_dag_id(spec)] = build_rollback_dag(spec, auto_register=register, project_root=project_root)
        except Exception as exc:  # one release's problem never takes the others down
            errors.append(f"release {spec.name!r} cannot be built: {type(exc).__name__}: {exc}")
    return dags, errors


def load_release_dags(directories: Iterable[Path], *, project_root: Path) -> dict[str, DAG]:
    """One DAG per valid spec. Broken specs are skipped here and reported by
    :func:`raise_spec_errors` from a DAG file of their own: Airflow marks every DAG of a
    file with an import error stale, so reporting them here would take all releases down.

    A task's process parses the DAG file only to find its own DAG; Airflow says which in the
    parsing context, and then only that release's spec is read and built (a task starts in
    the same time with 1 spec or 1,000; the DAG processor still builds them all)."""
    only = _parsing_release()
    specs, _ = load_release_specs(directories, project_root=project_root, only=only)
    return _build_all(specs, project_root)[0]


def _parsing_release() -> str | None:
    """The release whose DAG a task's process is parsing for, None when parsing them all."""
    from airflow.sdk import get_parsing_context

    dag_id = get_parsing_context().dag_id
    return v.release_of_dag(dag_id) if dag_id else None


def raise_spec_errors(directories: Iterable[Path], *, project_root: Path) -> None:
    """Raise one :class:`ReleaseSpecError` naming every broken spec (file, field path, reason)."""
    specs, errors = load_release_specs(directories, project_root=project_root)
    errors += _build_all(specs, project_root, register=False)[1]
    if errors:
        raise ReleaseSpecError.combined("\n".join(errors))
