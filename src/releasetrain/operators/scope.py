"""Release-wide exceptions after packaging: the scope freeze (other contents after the freeze)
and library conflicts (components pinning one library at different versions). Either waits
for an exception granted, with a reason, by someone other than the release's author."""

from __future__ import annotations

import datetime
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param

from releasetrain.core.approval import SegregationOfDutiesError, check_responder
from releasetrain.core.gatekeeper import Decision
from releasetrain.core.scope import SCOPE_EVENTS, Freeze, ScopeDecision, contents, decide_scope
from releasetrain.core.vocabulary import OPTION_GRANT_EXCEPTION, OPTION_REJECT, OPTION_WAIVE, PACKAGE, SCOPE, Event
from releasetrain.operators._common import enforce, record, record_decision, release_request, run_ledger
from releasetrain.operators._common import responder as responder_of
from releasetrain.operators.approval import _md, assign_non_authors

MIN_REASON = 10


class _ExceptionOperator(HITLOperator):
    """A check of the packaged run that either passes (recorded as ``passed_event``) or finds
    ``changes`` (recorded as ``requested_event``) that need an exception: ``approvers`` minus
    the release's authors grant it (``granted_option``) with a reason (``granted_event``) or
    reject it (``gate_refused``). Every deploy asks the ledger for the step's latest record.
    An answer about other changes than the check finds when the answer comes is refused."""

    what = "exception"
    granted_option = OPTION_GRANT_EXCEPTION
    passed_event = requested_event = granted_event = Event.GATE_REFUSED  # set by subclasses

    def __init__(self, *, release: str, approvers: list[str], **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's trigger params are not part of this form
        kwargs.setdefault("retries", 2)  # see ReleaseApprovalOperator: Airflow 3.3's fast-answer race
        kwargs.setdefault("retry_delay", timedelta(seconds=5))
        super().__init__(
            subject=f"{self.what.capitalize()} for {release}",
            options=[self.granted_option, OPTION_REJECT],
            params={
                "reason": Param(
                    None,
                    type=["null", "string"],
                    title="Reason",
                    description="Why this may go ahead (recorded with your name).",
                    maxLength=2000,
                )
            },
            **kwargs,
        )
        self.release = release
        self.approvers = list(approvers)

    # --- what subclasses provide ---------------------------------------------------------------
    def _check(self, context: Any) -> tuple[str, dict[str, Any], list[str]]:
        """(passed event kind or "" when an exception is needed, details, changes)."""
        raise NotImplementedError

    def _body(self, context: Any, details: dict[str, Any], version: str) -> list[str]:
        raise NotImplementedError

    # --- the request -----------------------------------------------------------------------------
    def _packaged(self, context: Any) -> Any:
        packaged = run_ledger(context, self.release).last(Event.PACKAGED, task_id=PACKAGE)
        if packaged is None:
            refusal = Decision.refuse(self.task_id, "no packaged contents recorded in the ledger by package")
            enforce(context, refusal, self.release)
        return packaged

    def execute(self, context: Any) -> Any:
        passed, details, changes = self._check(context)
        if passed:
            record(context, passed, self.release, details=details)
            self.log.info("%s: %s", self.task_id, details.get("outcome") or "nothing to except")
            return details
        record(context, self.requested_event, self.release, details=details)
        request = release_request(context, self.release)
        assign_non_authors(self, request, self.approvers, self.what)
        self.subject = f"{self.what.capitalize()} for {self.release} {request.version}"
        self.body = "\n".join(
            [
                *self._body(context, details, request.version),
                "",
                *[f"- {_md(line)}" for line in changes],
                "",
                f"{self.granted_option} with a reason (recorded with your name), or reject to stop this run.",
            ]
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        request = release_request(context, self.release)
        result = super().execute_complete(context=context, event=event)
        responder = responder_of(result, request)
        if result["chosen_options"] != [self.granted_option]:
            refusal = Decision.refuse(self.task_id, f"{self.what} rejected by {responder or 'nobody'}")
            enforce(context, refusal, self.release)
        try:
            check_responder(responder, self.approvers, set(request.authors))
        except SegregationOfDutiesError as exc:  # recorded: who tried to decide what they may not
            enforce(context, Decision.refuse(self.task_id, f"{self.what}: {exc}"), self.release)
        reason = " ".join(str((result.get("params_input") or {}).get("reason") or "").split())
        if len(reason) < MIN_REASON:
            refusal = Decision.refuse(self.task_id, f"a {self.what} needs a reason (at least {MIN_REASON} characters)")
            enforce(context, refusal, self.release)
        _, details, changes = self._check(context)  # what is granted: as it is now
        asked = run_ledger(context, self.release).of(self.requested_event, task_id=self.task_id)
        if not asked or asked[-1].details.get("changes") != changes:
            refusal = Decision.refuse(
                self.task_id,
                f"what the {self.what} is about changed while the request waited; the answer was about other "
                f"changes: clear {self.task_id} to ask again",
            )
            enforce(context, refusal, self.release)
        details = {**details, "reason": reason}
        record_decision(context, self.granted_event, self.release, actor=responder or "", details=details)
        return details


def judge_scope(context: Any, release: str, freeze: dict[str, Any], production: list[str]) -> ScopeDecision:
    """The run's packaged contents against the scope frozen now (see :mod:`releasetrain.core.scope`),
    from the release's ledger; the scope step asks it, and every deploy asks it again."""
    from releasetrain.hooks.ledger import LedgerHook

    packaged = run_ledger(context, release).last(Event.PACKAGED, task_id=PACKAGE)
    if packaged is None:
        enforce(context, Decision.refuse(SCOPE, "no packaged contents recorded in the ledger by package"), release)
    hook = LedgerHook()
    try:
        events = sorted(
            (e for kind in SCOPE_EVENTS for e in hook.events(release=release, kind=kind)), key=lambda e: e.seq
        )
    finally:
        hook.close()
    date = freeze.get("date")
    rule = Freeze(
        date=datetime.date.fromisoformat(date) if date else None,
        environment=freeze.get("environment"),
        production=tuple(production),
    )
    today = datetime.datetime.now(datetime.UTC).date()
    current = contents(packaged.details.get("components") or [])  # type: ignore[union-attr]
    authors = release_request(context, release).authors
    return decide_scope(events, rule, today, context["run_id"], current, authors)


class ScopeFreezeOperator(_ExceptionOperator):
    """Check the run's packaged contents (components and versions) against the release's
    frozen scope (see :mod:`releasetrain.core.scope`).

    Not frozen, or within the frozen scope: ``scope_checked``. Other contents (or a frozen
    scope an author of this run granted): ``scope_change_requested`` (one line per
    component), then a scope exception (``scope_exception``, which becomes the frozen scope)
    or a rejection. Every deploy judges the scope again (it may have frozen since).

    :param freeze: the spec's ``scope_freeze`` (``{date}`` or ``{environment}``)
    :param production: the release's production environments (passing one ends a cycle)
    :param approvers: who may grant an exception
    """

    ui_color = "#e8f0fe"
    what = "scope exception"
    requested_event, granted_event = Event.SCOPE_CHANGE_REQUESTED, Event.SCOPE_EXCEPTION

    def __init__(self, *, freeze: dict[str, Any], production: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.freeze = dict(freeze)
        self.production = list(production)

    def _check(self, context: Any) -> tuple[str, dict[str, Any], list[str]]:
        decision = judge_scope(context, self.release, self.freeze, self.production)
        return ("" if decision.outcome == "change" else Event.SCOPE_CHECKED), decision.details(), decision.changes

    def _body(self, context: Any, details: dict[str, Any], version: str) -> list[str]:
        return [
            f"The scope of **{self.release}** is frozen ({_md(details['source'])}); **{version}** changes it. "
            "A granted exception becomes the frozen scope."
        ]


class LibraryConflictOperator(_ExceptionOperator):
    """Check the libraries the components' lock files pin (the SBOM packaging recorded): one
    library at different versions in two components is a conflict that waits for a waiver.

    No conflict: ``libraries_checked``. Conflicts: ``library_conflicts`` (one line per
    library), then a waiver (``conflicts_waived``) or a rejection.
    """

    ui_color = "#e8f0fe"
    what = "library conflict waiver"
    granted_option = OPTION_WAIVE
    requested_event, granted_event = Event.LIBRARY_CONFLICTS, Event.CONFLICTS_WAIVED

    def _check(self, context: Any) -> tuple[str, dict[str, Any], list[str]]:
        sbom = self._packaged(context).details.get("sbom") or {}
        conflicts = list(sbom.get("conflicts") or [])
        details = {
            "outcome": "conflicts" if conflicts else "consistent",
            "conflicts": conflicts,
            "changes": conflicts,
            "libraries": len(sbom.get("libraries") or []),
            "sbom_sha256": sbom.get("sha256"),
        }
        return ("" if conflicts else Event.LIBRARIES_CHECKED), details, conflicts

    def _body(self, context: Any, details: dict[str, Any], version: str) -> list[str]:
        return [
            f"The components of **{self.release} {version}** pin one library at different versions "
            f"(SBOM {details['sbom_sha256']}, {details['libraries']} libraries):"
        ]
