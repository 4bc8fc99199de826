"""The DAG factory: a validated :class:`ReleaseSpec` becomes its release and rollback DAGs.

What the DAGs are made of is decided by the pure stage plan (:mod:`releasetrain.core.plan`:
task ids, kinds, arguments, trigger rules, edges); this module reads what a plan needs from
the deployment (shared calendars, groups, journey files), gives the DAG its own fields
(schedule, trigger form, documentation) and renders the plan into operators
(:func:`render`). Building a DAG does no network I/O (spec and calendar files only):
parsing stays cheap.
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
from releasetrain.core.plan import Plan, PlanContext, analysis_journeys, journey_files, plan_release, plan_rollback
from releasetrain.core.spec import (
    SEVERITIES,
    CalendarLibrary,
    ReleaseSpec,
    ReleaseSpecError,
    discover_specs,
    load_spec,
)
from releasetrain.core.versioning import SEMVER_PATTERN
from releasetrain.core.vocabulary import TRAIN_MAX_ACTIVE_RUNS, Kind, Rule
from releasetrain.core.windows import CalendarError
from releasetrain.operators.alerts import AlertWatchOperator
from releasetrain.operators.approval import ReleaseApprovalOperator
from releasetrain.operators.baseline import BaselineApprovalOperator
from releasetrain.operators.checks import HealthVerificationOperator, SmokeCheckOperator, TestSuiteOperator
from releasetrain.operators.complete import ReleaseCompleteOperator
from releasetrain.operators.dependency import DependencyGateOperator
from releasetrain.operators.deploy import EnvironmentDeployOperator
from releasetrain.operators.drift import ConfigDriftOperator
from releasetrain.operators.governance import ReleaseClosureOperator, RiskAssessmentOperator
from releasetrain.operators.hotfix import HotfixPolicyOperator
from releasetrain.operators.lock import TargetLockOperator, TargetUnlockOperator
from releasetrain.operators.manual_rollback import (
    ManualRollbackOperator,
    ManualRollbackPlanOperator,
    RollbackApprovalOperator,
    RollbackReviewOperator,
)
from releasetrain.operators.migrate import ReconcileOperator, SchemaMigrateOperator
from releasetrain.operators.package import BundlePackageOperator
from releasetrain.operators.parity import ParityCheckOperator
from releasetrain.operators.postmortem import PostmortemReviewOperator
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
from releasetrain.operators.scope import LibraryConflictOperator, ScopeFreezeOperator
from releasetrain.operators.soak import SoakOperator
from releasetrain.operators.train import TrainAdmissionOperator
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
    if spec.hotfix_policy:
        params["hotfix"] = Param(
            False,
            type="boolean",
            title="Hotfix",
            description="This run fixes an incident: the release's hotfix policy decides, before packaging, "
            "whether it may go (severity, components, nothing still in test); the decision is recorded.",
            section="Hotfix",
        )
        params["severity"] = Param(
            None,
            type=["null", "string"],
            enum=[None, *SEVERITIES],
            title="Severity",
            description="The incident's severity (sev1: the most severe).",
            section="Hotfix",
        )
        params["incident"] = Param(
            "",
            type="string",
            maxLength=64,
            pattern=r"^([A-Za-z0-9][A-Za-z0-9_.:#/-]*)?$",
            title="Incident",
            description="The incident the hotfix fixes, e.g. INC-4711.",
            section="Hotfix",
        )
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
    _check_journeys(spec, project_root)
    plan = plan_release(
        spec,
        PlanContext(
            project_root=str(project_root),
            calendar_dirs=[str(d) for d in calendars.directories],
            groups=calendars.groups(),
            signing_conn_id=signing_conn_id,
        ),
    )
    with DAG(
        dag_id=spec.dag_id,
        dag_display_name=f"Release {spec.name}",
        description=(spec.description or f"Release of {spec.name}")[:200],
        schedule=schedule,
        start_date=START_DATE,
        catchup=False,
        max_active_runs=TRAIN_MAX_ACTIVE_RUNS,  # the train's lanes order the runs (admit)
        tags=sorted({"release", f"team:{spec.owner_team}", *spec.tags}),
        doc_md=release_doc_md(spec, calendars),
        default_args=_task_defaults(spec),
        auto_register=auto_register,
    ) as dag:  # the with block registers the DAG in the DAG file (auto_register)
        render(plan, dag)
    _give_people(dag, calendars.people())
    _give_params(dag, release_params(spec))
    return dag


def _task_defaults(spec: ReleaseSpec) -> dict[str, Any]:
    """Every task of a release's DAGs: its team, no blind retries, and the release's business
    impact as its priority in Airflow's pools and executor queues (absolute: the same for
    every task of the release, so a critical release's tasks go before a low one's)."""
    return {"owner": spec.owner_team, "retries": 0, "priority_weight": spec.priority, "weight_rule": "absolute"}


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
        default_args=_task_defaults(spec),
        auto_register=auto_register,
    ) as dag:  # the with block registers the DAG in the DAG file (auto_register)
        render(plan_rollback(spec), dag)
    _give_people(dag, CalendarLibrary(Path(project_root)).people() if project_root else {})
    _give_params(dag, params)
    return dag


OPERATORS: dict[Kind, type] = {
    Kind.ADMIT: TrainAdmissionOperator,
    Kind.REQUEST: ReleaseRequestOperator,
    Kind.RISK: RiskAssessmentOperator,
    Kind.PACKAGE: BundlePackageOperator,
    Kind.VERIFY: BundleVerifyOperator,
    Kind.DEPENDENCIES: DependencyGateOperator,
    Kind.BASELINE: BaselineApprovalOperator,
    Kind.HOTFIX: HotfixPolicyOperator,
    Kind.SCOPE: ScopeFreezeOperator,
    Kind.LIBRARIES: LibraryConflictOperator,
    Kind.DRIFT: ConfigDriftOperator,
    Kind.PARITY: ParityCheckOperator,
    Kind.APPROVAL: ReleaseApprovalOperator,
    Kind.WINDOW: ReleaseWindowSensor,
    Kind.LOCK: TargetLockOperator,
    Kind.MIGRATE: SchemaMigrateOperator,
    Kind.DEPLOY: EnvironmentDeployOperator,
    Kind.ANALYSIS: TrafficAnalysisOperator,
    Kind.DECISION: AnalysisDecisionOperator,
    Kind.PROMOTE: PromoteOperator,
    Kind.SMOKE: SmokeCheckOperator,
    Kind.SUITE: TestSuiteOperator,
    Kind.HEALTH: HealthVerificationOperator,
    Kind.PASSED: EnvironmentPassedOperator,
    Kind.ABORT: RolloutAbortOperator,
    Kind.ROLLBACK: RollbackOperator,
    Kind.RECONCILE: ReconcileOperator,
    Kind.POSTMORTEM: PostmortemReviewOperator,
    Kind.ALERTS: AlertWatchOperator,
    Kind.SOAK: SoakOperator,
    Kind.UNLOCK: TargetUnlockOperator,
    Kind.REVIEW: PostImplementationReviewOperator,
    Kind.CLOSURE: ReleaseClosureOperator,
    Kind.COMPLETE: ReleaseCompleteOperator,
    Kind.ROLLBACK_PLAN: ManualRollbackPlanOperator,
    Kind.ROLLBACK_APPROVAL: RollbackApprovalOperator,
    Kind.MANUAL_ROLLBACK: ManualRollbackOperator,
    Kind.ROLLBACK_REVIEW: RollbackReviewOperator,
}


def render(plan: Plan, dag: DAG) -> dict[str, Any]:
    """Operators for a plan's steps, in their task groups, connected by its edges."""
    groups = {gid: TaskGroup(group_id=gid, tooltip=tip, dag=dag) for gid, tip in plan.groups.items()}
    tasks: dict[str, Any] = {}
    for step in plan.steps.values():
        extra = {} if step.trigger_rule == Rule.ALL_SUCCESS else {"trigger_rule": TriggerRule(step.trigger_rule)}
        tasks[step.task_id] = OPERATORS[step.kind](
            task_id=step.local_id,
            dag=dag,
            task_group=groups[step.group] if step.group else None,
            **step.args,
            **extra,
        )
    for upstream, downstream in plan.edges:
        tasks[upstream] >> tasks[downstream]
    return tasks


def _check_journeys(spec: ReleaseSpec, project_root: Path) -> None:
    """Every journey a spec names has its file (``include/journeys/<name>.yaml``)."""
    for env in spec.environments:
        for names in (env.journeys, analysis_journeys(env), *[s.journeys for s in env.test_suites]):
            missing = [
                name for name, path in journey_files(str(project_root), names).items() if not Path(path).is_file()
            ]
            if missing:
                raise ReleaseSpecError(
                    f"release {spec.name}",
                    [
                        (
                            f"environments.{env.name}",
                            f"journey not found: {', '.join(missing)} (looked in include/journeys/)",
                        )
                    ],
                )


def spec_dirs(project_root: Path) -> list[Path]:
    from releasetrain.core.settings import setting

    configured = setting("SPEC_DIRS")
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
