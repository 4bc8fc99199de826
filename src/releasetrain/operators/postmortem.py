"""The blameless postmortem review a rollback owes, asked beside it (never before it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from releasetrain.core.vocabulary import OPTION_POSTMORTEM_REVIEWED, Event
from releasetrain.operators._common import assigned, record, record_decision, release_request, run_ledger
from releasetrain.operators._common import responder as responder_of

FIELDS = {
    "findings": "What happened, as the systems and the process saw it (what failed, how it was noticed, what "
    "the rollback did). Blameless: describe conditions and decisions, not people.",
    "contributing_causes": "What let it happen or made it worse (gaps in tests, checks, runbooks, monitoring, "
    "process), one per line.",
    "actions": "What changes so it does not happen again, each with an owning team, one per line.",
}


def _text(value: Any, limit: int = 4000) -> str | None:
    """An answer as plain lines (blank lines and surrounding spaces dropped), cut to ``limit``."""
    lines = [" ".join(line.split()) for line in str(value or "").splitlines()]
    return "\n".join(line for line in lines if line)[:limit] or None


class PostmortemReviewOperator(HITLOperator):
    """After the environment's rollbacks (``all_done``), outside the target's lock: skips when
    nothing was rolled back. Otherwise it asks the release's owners for a blameless review:
    findings, contributing causes, actions. The rollbacks left the change record in Review;
    the answer (``postmortem_reviewed``, with who gave it) closes it as rolled back. Its
    deadline passing unanswered is recorded (``postmortem_overdue``), the change closes without
    it, and the step fails. Both are in the run's evidence.

    :param rollback_task_ids: the environment's rollbacks in this run
    :param owners: who is asked (no segregation: the people who know what happened answer)
    :param deadline_minutes: how long it waits (parked awaiting input: no worker, no trigger)
    """

    template_fields = ()
    ui_color = "#fde7c8"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        rollback_task_ids: list[str],
        owners: list[str],
        deadline_minutes: int,
        artifact_store: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("params", None)  # the DAG's trigger params are not part of this form
        kwargs.setdefault("retries", 2)  # Airflow 3.3's fast-answer race (see ReleaseApprovalOperator)
        kwargs.setdefault("retry_delay", timedelta(seconds=5))
        super().__init__(
            subject=f"Postmortem review: {release} rolled back in {environment}",
            options=[OPTION_POSTMORTEM_REVIEWED],
            params={
                name: Param(None, type=["null", "string"], title=name.replace("_", " ").capitalize(), description=text)
                for name, text in FIELDS.items()
            },
            response_timeout=timedelta(minutes=deadline_minutes),
            **kwargs,
        )
        self.release = release
        self.environment = environment
        self.rollback_task_ids = list(rollback_task_ids)
        self.owners = list(owners)
        self.deadline_minutes = deadline_minutes
        self.artifact_store = artifact_store

    def _rollbacks(self, context: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """This run's rollbacks of the environment: the ones that started and the ones that ended."""
        run = run_ledger(context, self.release)

        def mine(kind: str) -> list[dict[str, Any]]:
            return [
                dict(e.details)
                for e in run.of(kind, environment=self.environment)
                if e.details.get("task_id") in self.rollback_task_ids
            ]

        return mine(Event.ROLLBACK_STARTED), mine(Event.ROLLBACK)

    def _outcome(self, context: Any) -> str:
        """How the change closes: rolled back when every rollback that started ended with the
        environment back; otherwise failed (a rollback that failed needs its own attention)."""
        started, done = self._rollbacks(context)
        began, ended = ({d.get("task_id") for d in found} for found in (started, done))  # a retry records twice
        return "rolled_back" if ended and began <= ended else "failed"

    def execute(self, context: Any) -> Any:
        started, done = self._rollbacks(context)
        if not started and not done:
            raise AirflowSkipException(f"nothing was rolled back in {self.environment}: no postmortem is owed")
        if not self.owners:
            raise AirflowFailException(f"postmortem of {self.environment}: nobody to ask")
        run = run_ledger(context, self.release)
        ended = run.of(Event.POSTMORTEM_REVIEWED, environment=self.environment) + run.of(
            Event.POSTMORTEM_OVERDUE, environment=self.environment
        )
        if ended:  # a retry or a clear after the answer (or the deadline) asks nothing again
            self.log.info("%s: the postmortem review is on record (%s)", self.environment, ended[-1].kind)
            return {"on_record": ended[-1].kind}
        asked = run.of(Event.POSTMORTEM_REQUESTED, environment=self.environment)
        first = datetime.fromisoformat(asked[0].at.replace("Z", "+00:00")) if asked else datetime.now(UTC)
        self.response_timeout = max(
            timedelta(seconds=1), first + timedelta(minutes=self.deadline_minutes) - datetime.now(UTC)
        )  # the deadline runs from the first request: clearing the step never extends it
        self._free_the_lane(context, run)
        self.assigned_users = assigned(self, self.owners)
        request = release_request(context, self.release)
        from releasetrain.operators.approval import _md

        lines = [
            f"**{self.release} {_md(request.version)}** was rolled back in **{self.environment}** "
            f"(run {_md(context['run_id'])}).",
            "",
        ]
        for rollback in done:
            lines.append(
                f"- restored {_md(str(rollback.get('restored_version')))}"
                + (f" (unit {_md(rollback['unit'])})" if rollback.get("unit") else "")
            )
        unfinished = {d.get("task_id") for d in started} - {d.get("task_id") for d in done}
        if unfinished:
            lines.append(f"- {len(unfinished)} rollback(s) started and did not finish")
        lines += [
            "",
            "The rollback's snapshot and postmortem draft (timeline, task logs, what the version changed) are in "
            f"the artifact store under incidents/{_md(context['run_id'])}/{self.environment}/.",
            "",
            "Answer in a blameless form: what the systems and the process did, what let it happen, what changes. "
            f"The change record stays in Review until you answer, or {self.deadline_minutes} minutes pass.",
        ]
        self.body = "\n".join(lines)
        if not asked:
            record(
                context,
                Event.POSTMORTEM_REQUESTED,
                self.release,
                environment=self.environment,
                details={"owners": self.owners, "deadline_minutes": self.deadline_minutes, "rollbacks": len(done)},
            )
        return super().execute(context)

    def _free_the_lane(self, context: Any, run: Any) -> None:
        """The run's work is over once it waits only for its postmortem: its place in the
        release train is given up, so the release's next run does not wait days for a review."""
        from releasetrain.hooks.ledger import LedgerHook
        from releasetrain.operators.lock import holder_of

        admitted = run.last(Event.RUN_ADMITTED)
        slot = admitted.details.get("slot") if admitted is not None else None
        if not slot:
            return
        me = holder_of(context, self.release)
        hook = LedgerHook()
        try:
            released = hook.store.unlock(me, slot)
        finally:
            hook.close()
        if released:
            record(
                context,
                Event.LOCK_RELEASED,
                self.release,
                details={"target": slot, "holder": me, "why": "only the postmortem review remains"},
            )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        from releasetrain.operators.governance import close_change

        run = run_ledger(context, self.release)
        if run.of(Event.POSTMORTEM_REVIEWED, environment=self.environment):  # a second try of the same answer
            return {"on_record": Event.POSTMORTEM_REVIEWED.value}
        if event.get("error_type") == "timeout":
            record(
                context,
                Event.POSTMORTEM_OVERDUE,
                self.release,
                environment=self.environment,
                details={"deadline_minutes": self.deadline_minutes, "owners": self.owners},
            )
            close_change(
                context,
                self.release,
                self._outcome(context),
                f"{self.environment} rolled back; postmortem review overdue (no answer in {self.deadline_minutes} "
                "minutes)",
            )
            raise AirflowFailException(
                f"postmortem review of {self.environment}: nobody answered within {self.deadline_minutes} minutes "
                "(recorded; the change record closed without it)"
            )
        request = release_request(context, self.release)
        result = super().execute_complete(context=context, event=event)
        responder = responder_of(result, request)
        if responder not in self.owners:
            raise AirflowFailException(f"postmortem review of {self.environment}: {responder} is not asked for it")
        answers = {name: _text(result["params_input"].get(name)) for name in FIELDS}
        record_decision(
            context,
            Event.POSTMORTEM_REVIEWED,
            self.release,
            environment=self.environment,
            actor=responder or "",
            details=answers,
        )
        summary = answers["findings"] or "no findings given"
        close_change(
            context,
            self.release,
            self._outcome(context),
            f"{self.environment} rolled back; postmortem reviewed by {responder}: {summary[:300]}",
        )
        return {"reviewed_by": responder, **answers}
