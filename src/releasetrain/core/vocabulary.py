"""The words releasetrain's floors share: task ids, DAG-id prefixes, the pool prefix,
HITL options and ledger event kinds. Named once here; no literal elsewhere.

Task ids inside an environment's stage are relative to its task group (``deploy``);
:func:`env_task` gives the full id (``prod.deploy``).
"""

from __future__ import annotations

from enum import StrEnum

# --- DAG ids and pools ----------------------------------------------------------------------
RELEASE_DAG_PREFIX = "release_"
ROLLBACK_DAG_PREFIX = "rollback_"
POOL_PREFIX = "releasetrain_target_"


def release_dag_id(release: str) -> str:
    return f"{RELEASE_DAG_PREFIX}{release}"


def rollback_dag_id(release: str) -> str:
    return f"{ROLLBACK_DAG_PREFIX}{release}"


def release_of_dag(dag_id: str) -> str | None:
    """The release a release or manual-rollback DAG belongs to (None for other DAGs)."""
    for prefix in (RELEASE_DAG_PREFIX, ROLLBACK_DAG_PREFIX):
        if dag_id and dag_id.startswith(prefix):
            return dag_id[len(prefix) :]
    return None


# a release's business impact -> its priority in deploy-target queues and Airflow's pools
IMPACT_PRIORITY = {"low": 1, "medium": 10, "high": 100, "critical": 1000}


# the release train's lanes: one normal run of a release at a time (its ``admit`` step waits,
# deferred, for the one before it), hotfix and emergency runs in a lane of their own that never
# waits behind a normal run; Airflow's own limit only caps how many runs exist at once
LANE_NORMAL = "normal"
LANE_HOTFIX = "hotfix"
TRAIN_MAX_ACTIVE_RUNS = 32
TRAIN_MAX_WAITING = 16  # normal runs waiting in admit beyond this are refused (hotfixes keep room)
HOTFIX_LOCK_PRIORITY = 1_000_000  # added to a hotfix run's place in deploy-target queues


def train_slot(dag_id: str, lane: str) -> str:
    """The lock a run of a lane holds from its admission to its end (``train:release_x``, or
    ``train:release_x:hotfix``); connection ids, the deploy targets' names, have no colon."""
    return f"train:{dag_id}" if lane == LANE_NORMAL else f"train:{dag_id}:{lane}"


def target_pool(deploy_target: str) -> str:
    """The pool that serialises work on one deploy target (one slot, deferred tasks count)."""
    return f"{POOL_PREFIX}{deploy_target}"


# the DAG run states a run ends in (the listener records them as ``run_state``)
RUN_TERMINAL_STATES = frozenset({"success", "failed"})


# --- task ids -------------------------------------------------------------------------------
ADMIT = "admit"  # the run's place in the release train (its lane), before anything else
PREPARE = "prepare"
ASSESS_RISK = "assess_risk"
PACKAGE = "package"
SCOPE = "scope"  # the scope freeze check, after package
LIBRARIES = "libraries"  # library version conflicts across components, after package
HOTFIX = "hotfix_policy"  # the hotfix decision, before package
POST_IMPLEMENTATION_REVIEW = "post_implementation_review"
CLOSURE = "closure"
RELEASE_COMPLETE = "release_complete"
ROLLBACK_PLAN = "plan"
ROLLBACK_APPROVAL = "approve_rollback"
ROLLBACK_REVIEW = "rollback_review"
RETENTION_DAG_ID = "releasetrain_retention"  # the artifact store's maintenance DAG
RETENTION_PLAN = "plan"
RETENTION_DELETE = "delete"
REFRESH_DAG_PREFIX = "refresh_test_data_"  # one test data refresh DAG per environment
REFRESH_CHECK = "mask_check"
REFRESH_COPY = "copy"

# inside an environment's task group
APPROVE = "approve"
WINDOW = "window"
VERIFY = "verify"
DEPENDENCIES = "dependencies"
BASELINE = "baseline"
DRIFT = "drift"
TESTS = "tests"  # a test suite: tests_<suite>
PARITY = "parity"
LOCK = "lock"
MIGRATE = "migrate"  # schema migrations, in the lock, before the deploy
DEPLOY = "deploy"
SMOKE = "smoke"
HEALTH = "health"
PROMOTE = "promote"
ANALYSIS = "analysis"
WATCH = "watch"
PASSED = "passed"
ABORT = "abort"
ROLLBACK = "rollback"
RECONCILE = "reconcile"  # after a half-failed migration or a rollback the schema outran
POSTMORTEM = "postmortem"  # the blameless review after a rollback, beside it
ALERTS = "alerts"  # the watch for alerts after a deploy (spec alerts.watch_minutes)
SOAK = "soak"  # a soak period a trend rule asks for (spec trends[].soak)
UNLOCK = "unlock"


def env_task(environment: str, task_id: str) -> str:
    return f"{environment}.{task_id}"


def approval_slot(index: int) -> str:
    """Quorum slot ``index`` (1-based): ``approve``, ``approve_2``, ..."""
    return APPROVE if index == 1 else f"{APPROVE}_{index}"


def review_task(group: str) -> str:
    return f"review_{group}"


def suite_task(suite: str) -> str:
    """A test suite's task in its environment's group: ``tests_<suite>``."""
    return f"{TESTS}_{suite}"


def unit_task(task_id: str, unit: str) -> str:
    """A deploy unit's own step in its environment's group (packaging: modular):
    ``deploy_<unit>``, ``rollback_<unit>``."""
    return f"{task_id}_{unit}"


def canary_task(weight: int) -> str:
    return f"canary_{weight}"


def decide_task(analysis_task_id: str) -> str:
    """The decision on an inconclusive analysis: ``decide_10`` for ``canary_10``."""
    return f"decide_{analysis_task_id.rsplit('.', 1)[-1].removeprefix('canary_')}"


def manual_rollback_task(environment: str, unit: str | None = None) -> str:
    """``rollback_<env>``; a deploy unit's (packaging modular): ``rollback_<env>__<unit>``."""
    return f"rollback_{environment}__{unit}" if unit else f"rollback_{environment}"


# --- step kinds: what a planned task does (the renderer maps each to its operator) -------------
class Kind(StrEnum):
    ADMIT = "admit"
    REQUEST = "request"
    RISK = "risk"
    PACKAGE = "package"
    VERIFY = "verify"
    DEPENDENCIES = "dependencies"
    BASELINE = "baseline"
    DRIFT = "drift"
    SUITE = "suite"
    SCOPE = "scope"
    LIBRARIES = "libraries"
    HOTFIX = "hotfix"
    PARITY = "parity"
    APPROVAL = "approval"
    WINDOW = "window"
    LOCK = "lock"
    MIGRATE = "migrate"
    DEPLOY = "deploy"
    ANALYSIS = "analysis"
    DECISION = "decision"
    PROMOTE = "promote"
    SMOKE = "smoke"
    HEALTH = "health"
    PASSED = "passed"
    ABORT = "abort"
    ROLLBACK = "rollback"
    RECONCILE = "reconcile"
    POSTMORTEM = "postmortem"
    ALERTS = "alerts"
    SOAK = "soak"
    UNLOCK = "unlock"
    REVIEW = "review"
    CLOSURE = "closure"
    COMPLETE = "complete"
    ROLLBACK_PLAN = "rollback_plan"
    ROLLBACK_APPROVAL = "rollback_approval"
    MANUAL_ROLLBACK = "manual_rollback"
    ROLLBACK_REVIEW = "rollback_review"


class Rule(StrEnum):
    """Airflow's trigger rules the plans use (the same values as ``airflow.sdk.TriggerRule``)."""

    ALL_SUCCESS = "all_success"
    NONE_FAILED = "none_failed"
    NONE_FAILED_MIN_ONE_SUCCESS = "none_failed_min_one_success"
    ONE_FAILED = "one_failed"
    ALL_DONE = "all_done"


# --- what is told, and when (notifications[].moments)--------------------------------------------
MOMENT_STARTED = "started"  # a rollback starts (with the backout estimate)
MOMENT_SUCCEEDED = "succeeded"  # the environment runs the previous version again, healthy
MOMENT_FAILED = "failed"  # a rollback failed or needs a human: told to every audience
MOMENT_TAMPERED = "tampered"  # a bundle failed verification: told to every audience
ALWAYS_TOLD = (MOMENT_FAILED, MOMENT_TAMPERED)


# --- HITL options ---------------------------------------------------------------------------
OPTION_APPROVE = "Approve"  # the standard provider's ApprovalOperator.APPROVE
OPTION_REJECT = "Reject"
OPTION_PROMOTE = "Promote"
OPTION_ROLL_BACK = "Roll back"
OPTION_ABORT = "Abort and roll back"
OPTION_REVIEWED = "Reviewed"
OPTION_ACCEPT_DRIFT = "Accept the drift"
OPTION_APPROVE_BASELINE = "Approve the profile"
OPTION_GRANT_EXCEPTION = "Grant the exception"
OPTION_WAIVE = "Waive the conflicts"
OPTION_RECONCILED = "Data reconciled"
OPTION_NOT_RECONCILED = "Not reconciled"
OPTION_POSTMORTEM_REVIEWED = "Postmortem reviewed"

SCHEDULER = "scheduler"  # the author of a scheduled run nobody published a version for


# --- ledger event kinds ---------------------------------------------------------------------
class Event(StrEnum):
    """What a release manager finds in the ledger. Free-form kinds are refused so that an
    auditor's query for e.g. ``approval_refused`` finds every refusal."""

    TRIGGERED = "triggered"
    PACKAGED = "packaged"
    VERIFIED = "verified"
    DEPLOY_STARTED = "deploy_started"
    DEPLOYED = "deployed"
    DEPLOY_FAILED = "deploy_failed"
    CHECKS_PASSED = "checks_passed"
    CHECKS_FAILED = "checks_failed"
    APPROVAL_REQUESTED = "approval_requested"
    APPROVAL_GIVEN = "approval_given"
    APPROVAL_REFUSED = "approval_refused"
    APPROVAL_REJECTED = "approval_rejected"
    APPROVAL_TIMED_OUT = "approval_timed_out"
    RISK_ASSESSED = "risk_assessed"
    EXCEPTION = "exception"
    WINDOW_PASSED = "window_passed"
    ROLLBACK_STARTED = "rollback_started"
    ROLLBACK = "rollback"
    ROLLBACK_FAILED = "rollback_failed"  # a rollback that failed or needs a human (told to every audience)
    NOTIFIED = "notified"  # a rollback or tampered-bundle message: to whom it went, what failed
    CHANGE_OPENED = "change_opened"
    CHANGE_TRANSITION = "change_transition"
    CHANGE_CLOSED = "change_closed"
    CLOSURE = "closure"
    RUN_STARTED = "run_started"
    RUN_STATE = "run_state"
    TASK_STATE = "task_state"
    REVIEW = "review"
    TRAFFIC_SHIFTED = "traffic_shifted"
    ANALYSIS = "analysis"
    ANALYSIS_MEASURED = "analysis_measured"
    ANALYSIS_DECISION = "analysis_decision"
    PROMOTED = "promoted"
    ENVIRONMENT_PASSED = "environment_passed"
    ABORTED = "aborted"
    ROLLBACK_REQUESTED = "rollback_requested"
    GATE_REFUSED = "gate_refused"
    LOCK_ACQUIRED = "lock_acquired"
    LOCK_RELEASED = "lock_released"
    LISTENER_GAP = "listener_gap"
    RETENTION_PLANNED = "retention_planned"
    BUNDLE_DELETED = "bundle_deleted"
    DEPENDENCIES_MET = "dependencies_met"
    DRIFT_CHECKED = "drift_checked"
    DRIFT_DETECTED = "drift_detected"
    DRIFT_ACCEPTED = "drift_accepted"
    PARITY_CHECKED = "parity_checked"
    BASELINE_CHECKED = "baseline_checked"
    BASELINE_CHANGE_REQUESTED = "baseline_change_requested"
    BASELINE_APPROVED = "baseline_approved"
    TESTS_PASSED = "tests_passed"
    TESTS_FAILED = "tests_failed"
    SCOPE_CHECKED = "scope_checked"
    SCOPE_FROZEN = "scope_frozen"
    SCOPE_CHANGE_REQUESTED = "scope_change_requested"
    SCOPE_EXCEPTION = "scope_exception"
    LIBRARIES_CHECKED = "libraries_checked"
    LIBRARY_CONFLICTS = "library_conflicts"
    CONFLICTS_WAIVED = "conflicts_waived"
    MASKING_CHECKED = "masking_checked"
    TEST_DATA_REFRESHED = "test_data_refreshed"
    HOTFIX_DECIDED = "hotfix_decided"
    RUN_ADMITTED = "run_admitted"
    RUN_HELD = "run_held"
    RUN_SUPERSEDED = "run_superseded"
    MIGRATION_APPLIED = "migration_applied"  # one step, applied with its journal row
    MIGRATION_FAILED = "migration_failed"  # one step failed (its transaction rolled back)
    MIGRATED = "migrated"  # an environment's migrate step ended: every database at its new schema
    RECONCILE_APPLIED = "reconcile_applied"  # one reconcile step ran
    RECONCILE_FAILED = "reconcile_failed"
    RECONCILE_REQUESTED = "reconcile_requested"  # the reconcile request was put to people, with the journal
    RECONCILED = "reconciled"  # a person answered the reconcile request (reconciled or not)
    POSTMORTEM_REQUESTED = "postmortem_requested"
    POSTMORTEM_REVIEWED = "postmortem_reviewed"  # findings, contributing causes, actions; who answered
    POSTMORTEM_OVERDUE = "postmortem_overdue"  # its deadline passed unanswered
    ANNOTATED = "annotated"  # a deploy marker published on the deployment's dashboards (or why not)
    ALERT_RECEIVED = "alert_received"  # an alert (Alertmanager's webhook) attached to the deploy it followed
    ALERTS_QUIET = "alerts_quiet"  # the watch after a deploy ended without a firing alert
    SOAKED = "soaked"  # an environment's soak step ended: the soak a trend rule asked for, or none needed


EVENT_KINDS = frozenset(kind.value for kind in Event)
