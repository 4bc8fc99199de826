"""The manual rollback DAG's operators: an incident commander returns an environment to a
known good version, through the UI form or REST, and it is recorded like a release."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from releasetrain.hooks.deploy_target import DeployTargetError, DeployTargetHook
from releasetrain.operators._common import pull, record
from releasetrain.operators.rollback import RollbackOperator

PLAN_TASK_ID = "plan"


class ManualRollbackPlanOperator(BaseOperator):
    """Decide what the rollback does: which environment, from which version, to which.

    The target version is the form's ``version``, or else the last good one: the newest
    version that a release run deployed to the environment and kept (the ledger), else
    what the target reports as its previous version. The version must have run there
    before (the target refuses others). Records ``rollback_requested`` (who, why, from,
    to) before anything changes.

    :param targets: environment -> deploy target connection id
    """

    ui_color = "#f28b82"

    def __init__(self, *, release: str, targets: dict[str, str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.targets = dict(targets)

    def execute(self, context: Any) -> dict[str, Any]:
        from releasetrain.core.incident import last_good_version
        from releasetrain.hooks.ledger import LedgerHook

        params = context["params"]
        environment, wanted = params["environment"], params.get("version")
        reason = " ".join(str(params.get("reason") or "").split())
        by = context["dag_run"].triggering_user_name or "unknown"
        if environment not in self.targets:
            raise AirflowFailException(
                f"environment {environment!r} is not one of {self.release}'s: {', '.join(self.targets)}"
            )
        try:
            live = DeployTargetHook(self.targets[environment]).get_status()
        except DeployTargetError as exc:
            raise AirflowException(f"{environment}: {exc}") from None
        current = live.get("version")
        ledger = LedgerHook()
        try:
            events = list(ledger.events(release=self.release))
        finally:
            ledger.close()
        good = last_good_version(events, environment, current)
        if wanted:
            digest = next(
                (
                    e.details.get("digest")
                    for e in reversed(events)
                    if e.kind == "deployed" and e.environment == environment and e.details.get("version") == wanted
                ),
                None,
            )
            target, source = {"version": wanted, "digest": digest}, "asked for in the form"
        elif good:
            target, source = good, f"last good version (run {good['run_id']})"
        elif live.get("previous_version"):
            target = {"version": live["previous_version"], "digest": live.get("previous_digest")}
            source = "the target's previous version (no good version in the ledger)"
        else:
            raise AirflowFailException(
                f"{environment}: no version to roll back to: the ledger has no good version other than {current} "
                "and the target reports no previous version; give one in the form"
            )
        if target["version"] == current and target.get("digest") in (None, live.get("digest")):
            raise AirflowFailException(f"{environment} already runs {current}: nothing to roll back")
        plan = {
            "environment": environment,
            "from_version": current,
            "from_digest": live.get("digest"),
            "version": target["version"],
            "digest": target.get("digest"),
            "source": source,
            "reason": reason,
            "requested_by": by,
        }
        record(context, "rollback_requested", self.release, environment=environment, actor=by, details=plan)
        self.log.warning(
            "MANUAL ROLLBACK of %s in %s: %s -> %s (%s), requested by %s: %s",
            self.release,
            environment,
            current,
            target["version"],
            source,
            by,
            reason,
        )
        return plan


class ManualRollbackOperator(RollbackOperator):
    """The rollback of one environment in the manual rollback DAG (skips for the others).

    Same work as a release's rollback (snapshot, rollback deploy deferred, health check,
    postmortem draft, notifications, ledger), aimed at the version the plan chose.
    """

    def __init__(self, *, plan_task_id: str = PLAN_TASK_ID, **kwargs: Any) -> None:
        kwargs.setdefault("deploy_task_id", plan_task_id)
        super().__init__(**kwargs)
        self.plan_task_id = plan_task_id

    def _plan(self, context: Any) -> dict[str, Any]:
        return pull(context, self.plan_task_id) or {}

    def _target(self, context: Any) -> dict[str, Any] | None:
        plan = self._plan(context)
        return {"version": plan["version"], "digest": plan.get("digest"), "noop": False} if plan else None

    def _failed_version(self, context: Any, live: dict[str, Any] | None = None) -> str | None:
        return self._plan(context).get("from_version")

    def _failed_digest(self, context: Any) -> str | None:
        return self._plan(context).get("from_digest")

    def execute(self, context: Any) -> dict[str, Any] | None:
        plan = self._plan(context)
        if plan.get("environment") != self.environment:
            raise AirflowSkipException(f"this rollback is for {plan.get('environment')}, not {self.environment}")
        return super().execute(context)
