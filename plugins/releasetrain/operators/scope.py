"""Scope freeze: after the freeze, other contents need a scope exception, granted with a reason
by someone other than the release's author."""

from __future__ import annotations

import datetime
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowFailException

from releasetrain.core.approval import SegregationOfDutiesError, check_responder
from releasetrain.core.gatekeeper import Decision
from releasetrain.core.scope import SCOPE_EVENTS, Freeze, ScopeDecision, contents, decide_scope
from releasetrain.core.vocabulary import OPTION_GRANT_EXCEPTION, OPTION_REJECT, PACKAGE, Event
from releasetrain.operators._common import enforce, record, record_decision, release_request, run_ledger
from releasetrain.operators._common import responder as responder_of
from releasetrain.operators.approval import _md, assign_non_authors

MIN_REASON = 10


class ScopeFreezeOperator(HITLOperator):
    """Check the run's packaged contents (components and versions) against the release's
    frozen scope (see :mod:`releasetrain.core.scope`).

    Not frozen, or within the frozen scope: recorded (``scope_checked``); the first run after
    a freeze date with nothing packaged before it freezes its own contents
    (``scope_frozen``). Other contents: recorded (``scope_change_requested``, one line per
    component) and a scope exception is asked of ``approvers`` minus the release's authors;
    granted with a reason (``scope_exception``, which becomes the frozen scope) or rejected
    (``gate_refused``). Every deploy asks the ledger for the step's record.

    :param freeze: the spec's ``scope_freeze`` (``{date}`` or ``{environment}``)
    :param production: the release's production environments (passing one ends a cycle)
    :param approvers: who may grant an exception
    """

    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        release: str,
        freeze: dict[str, Any],
        production: list[str],
        approvers: list[str],
        **kwargs: Any,
    ) -> None:
        kwargs.pop("params", None)  # the DAG's trigger params are not part of this form
        kwargs.setdefault("retries", 2)  # see ReleaseApprovalOperator: Airflow 3.3's fast-answer race
        kwargs.setdefault("retry_delay", timedelta(seconds=5))
        super().__init__(
            subject=f"Scope exception for {release}",
            options=[OPTION_GRANT_EXCEPTION, OPTION_REJECT],
            params={
                "reason": Param(
                    None,
                    type=["null", "string"],
                    title="Reason",
                    description="Why this change may go in after the freeze (recorded with your name).",
                    maxLength=2000,
                )
            },
            **kwargs,
        )
        self.release = release
        self.freeze = dict(freeze)
        self.production = list(production)
        self.approvers = list(approvers)

    def _decide(self, context: Any) -> ScopeDecision:
        from releasetrain.hooks.ledger import LedgerHook

        packaged = run_ledger(context, self.release).last(Event.PACKAGED, task_id=PACKAGE)
        if packaged is None:
            refusal = Decision.refuse(self.task_id, "no packaged contents recorded in the ledger by package")
            enforce(context, refusal, self.release)
        hook = LedgerHook()
        try:
            events = sorted(
                (e for kind in SCOPE_EVENTS for e in hook.events(release=self.release, kind=kind)),
                key=lambda e: e.seq,
            )
        finally:
            hook.close()
        date = self.freeze.get("date")
        freeze = Freeze(
            date=datetime.date.fromisoformat(date) if date else None,
            environment=self.freeze.get("environment"),
            production=tuple(self.production),
        )
        today = datetime.datetime.now(datetime.UTC).date()
        current = contents(packaged.details.get("components") or [])  # type: ignore[union-attr]
        return decide_scope(events, freeze, today, context["run_id"], current)

    def execute(self, context: Any) -> Any:
        decision = self._decide(context)
        if decision.outcome != "change":
            kind = Event.SCOPE_FROZEN if decision.outcome == "freeze" else Event.SCOPE_CHECKED
            record(context, kind, self.release, details=decision.details())
            self.log.info("scope %s: %s", decision.outcome, decision.frozen.source if decision.frozen else "not frozen")
            return decision.details()
        record(context, Event.SCOPE_CHANGE_REQUESTED, self.release, details=decision.details())
        request = release_request(context, self.release)
        assign_non_authors(self, request, self.approvers, "scope exception")
        self.subject = f"Scope exception for {self.release} {request.version}"
        self.body = "\n".join(
            [
                f"The scope of **{self.release}** is frozen ({_md(decision.frozen.source)}); "  # type: ignore[union-attr]
                f"**{request.version}** changes it:",
                "",
                *[f"- {_md(line)}" for line in decision.changes],
                "",
                "Grant the exception with a reason (it becomes the frozen scope), or reject to stop this run.",
            ]
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        request = release_request(context, self.release)
        result = super().execute_complete(context=context, event=event)
        responder = responder_of(result, request)
        if result["chosen_options"] != [OPTION_GRANT_EXCEPTION]:
            enforce(
                context,
                Decision.refuse(self.task_id, f"scope exception rejected by {responder or 'nobody'}"),
                self.release,
            )
        try:
            check_responder(responder, self.approvers, set(request.authors))
        except SegregationOfDutiesError as exc:
            raise AirflowFailException(f"scope exception: {exc}") from None
        reason = " ".join(str((result.get("params_input") or {}).get("reason") or "").split())
        if len(reason) < MIN_REASON:
            enforce(
                context,
                Decision.refuse(self.task_id, f"a scope exception needs a reason (at least {MIN_REASON} characters)"),
                self.release,
            )
        decision = self._decide(context)  # what is granted: the contents and changes as they are now
        asked = run_ledger(context, self.release).of(Event.SCOPE_CHANGE_REQUESTED, task_id=self.task_id)
        if not asked or asked[-1].details.get("changes") != decision.changes:
            enforce(
                context,
                Decision.refuse(
                    self.task_id,
                    "the frozen scope changed while the request waited; the answer was about other changes: "
                    f"clear {self.task_id} to ask again",
                ),
                self.release,
            )
        details = {**decision.details(), "reason": reason}
        record_decision(context, Event.SCOPE_EXCEPTION, self.release, actor=responder or "", details=details)
        return details
