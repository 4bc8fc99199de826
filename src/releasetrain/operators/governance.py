"""Risk assessment, change records and closure of a release run."""

from __future__ import annotations

import datetime as dt
from typing import Any

from airflow.providers.standard.operators.hitl import HITLEntryOperator
from airflow.sdk import BaseOperator, Param
from airflow.sdk.exceptions import AirflowFailException

from releasetrain.core.change import ChangeRecordError, ChangeRef, ChangeState, closing, lifecycle, path_to
from releasetrain.core.ledger import LedgerError
from releasetrain.core.request import ReleaseRequest
from releasetrain.core.risk import EnvironmentGates, RiskFacts, RiskRefusal, assess
from releasetrain.core.trends import Trend, TrendRule, adds, extra_approvals, trend_of, triggered
from releasetrain.core.vocabulary import ASSESS_RISK, SCHEDULER, Event
from releasetrain.operators._common import assigned, dag_id_of, record, record_decision, release_request, run_ledger


def _backend(ref: ChangeRef, conn_id: str | None) -> Any:
    from releasetrain.hooks.change_record import change_backend

    return change_backend(ref.backend, conn_id)


def _mirror(context: Any, release: str, ref: ChangeRef, kind: str, note: str, **extra: Any) -> None:
    """External change records are mirrored into the ledger (the built-in one *is* the ledger)."""
    if ref.backend == "builtin":
        return
    record(
        context,
        kind,
        release,
        details={
            "backend": ref.backend,
            "id": ref.id,
            "number": ref.number,
            "change_type": ref.change_type,
            "state": ref.state.value,
            "note": note,
            **extra,
        },
    )


def change_of(context: Any, release: str) -> tuple[ChangeRef, str | None] | None:
    """This run's change record, as the risk assessment recorded it in the ledger (not its XCom)."""
    for event in reversed(run_ledger(context, release).of(Event.RISK_ASSESSED, task_id=ASSESS_RISK)):
        change = event.details.get("change")
        if change:
            return ChangeRef.from_dict(change), event.details.get("change_conn_id")
    return None


def _walk(context: Any, release: str, backend: Any, ref: ChangeRef, target: ChangeState, note: str) -> ChangeRef:
    """Move a change record one state at a time to ``target``, each step in the ledger."""
    for state in path_to(ref.change_type, ref.state, target):
        ref = backend.move_to(ref, state, note=note)
        _mirror(context, release, ref, Event.CHANGE_TRANSITION, note)
    return ref


def move_change(context: Any, release: str, target: ChangeState, note: str) -> ChangeRef | None:
    """Move this run's change record to ``target`` (through the states before it)."""
    found = change_of(context, release)
    if found is None:
        return None
    ref, conn_id = found
    backend = _backend(ref, conn_id)
    try:
        return _walk(context, release, backend, backend.get(ref), target, note)
    except (ChangeRecordError, LedgerError) as exc:
        raise AirflowFailException(f"change record {ref.number}: cannot move to {target.value}: {exc}") from None


def close_change(
    context: Any, release: str, outcome: str, notes: str, *, hold_in_review: bool = False
) -> ChangeRef | None:
    """Close this run's change record with the outcome (cancel it when nothing was implemented).
    ``hold_in_review``: a change that would be closed stays in Review instead (a postmortem
    review closes it later)."""
    found = change_of(context, release)
    if found is None:
        return None
    ref, conn_id = found
    backend = _backend(ref, conn_id)
    try:
        current = backend.get(ref)
        step = closing(current.change_type, current.state, outcome, current.number)
        if step == "done":
            return current
        if step == "close":
            current = _walk(context, release, backend, current, ChangeState.REVIEW, notes)
            if hold_in_review:
                return current
        closed = backend.close(current, outcome=outcome, notes=notes)
    except (ChangeRecordError, LedgerError) as exc:
        raise AirflowFailException(f"change record {ref.number}: cannot close ({outcome}): {exc}") from None
    _mirror(context, release, closed, Event.CHANGE_CLOSED, notes, outcome=outcome)
    return closed


class RiskAssessmentOperator(BaseOperator):
    """Score the release's risk, select its gates, open its change record.

    High risk without a rollback plan and backout estimate is refused here, before
    anything is packaged or deployed; the change record is then canceled. The result
    (XCom) carries the score, the factors, the gates per environment and the change ref.
    """

    ui_color = "#fce8e6"

    def __init__(
        self,
        *,
        release: str,
        environments: list[str],
        production: list[str],
        components: int,
        schema_migration: bool,
        rollback_plan: str | None,
        backout_minutes: int | None,
        declared_gates: dict[str, dict[str, Any]],
        available_reviews: dict[str, list[str]],
        change_backend: str = "builtin",
        change_conn_id: str | None = None,
        change_type: str = "normal",
        planned_minutes: int = 60,
        trends: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.trends = list(trends or [])
        self.release = release
        self.environments = list(environments)
        self.production = list(production)
        self.components = components
        self.schema_migration = schema_migration
        self.rollback_plan = rollback_plan
        self.backout_minutes = backout_minutes
        self.declared_gates = dict(declared_gates)
        self.available_reviews = {k: list(v) for k, v in available_reviews.items()}
        self.change_backend = change_backend
        self.change_conn_id = change_conn_id
        self.change_type = change_type
        self.planned_minutes = planned_minutes

    def _history(self, context: Any) -> tuple[str | None, Trend]:
        """The version live in production before this run, and the release's trend (ledger):
        rollbacks and failed changes over the last 30 and 90 days."""
        from releasetrain.hooks.ledger import LedgerHook

        hook = LedgerHook()
        try:
            events = list(hook.events(release=self.release))
        finally:
            hook.close()
        previous = None
        for event in events:
            if (
                event.run_id != context["run_id"]
                and event.kind == Event.DEPLOYED
                and event.environment in self.production
            ):
                previous = event.details.get("version") or previous
        # the trend counts every run: a reused run id never hides another run's rollbacks
        return previous, trend_of(events, dt.datetime.now(dt.UTC))

    def execute(self, context: Any) -> dict[str, Any]:
        request = release_request(context, self.release)
        previous, trend = self._history(context)
        rollbacks = trend.rollbacks_30
        rules = triggered([TrendRule.model_validate(r) for r in self.trends], trend)
        extra = extra_approvals(rules)
        reason = "; ".join(r["when"] for r in rules if r["extra_approvals"])
        facts = RiskFacts(
            environments=self.environments,
            production=self.production,
            components=self.components,
            version=request.version,
            previous_version=previous,
            schema_migration=self.schema_migration,
            rollback_plan=bool(self.rollback_plan),
            backout_estimate=bool(self.backout_minutes),
            recent_rollbacks=rollbacks,
        )
        declared = {env: EnvironmentGates(**g) for env, g in self.declared_gates.items()}
        # reviews that exist as tasks on every production environment
        production_reviews = [set(self.available_reviews.get(env, [])) for env in self.production]
        reviews_everywhere = set.intersection(*production_reviews) if production_reviews else set()
        try:
            assessment = assess(
                facts,
                declared,
                change_type=self.change_type,
                emergency=request.emergency,
                available_reviews=reviews_everywhere,
                extra_approvals=extra,
                extra_reason=f"trend: {reason}" if reason else "",
            )
        except RiskRefusal as exc:
            record(context, Event.RISK_ASSESSED, self.release, details={"refused": str(exc), "facts": facts.__dict__})
            kind = "emergency" if request.emergency else "normal"
            ref = self._open_change(context, request, kind, "high")
            self._cancel(context, ref, f"refused by the risk assessment: {exc}")
            raise AirflowFailException(f"{self.release} {request.version}: {exc}") from None
        ref = self._open_change(context, request, assessment.change_type, assessment.level)
        record(
            context,
            Event.RISK_ASSESSED,
            self.release,
            details={
                "score": assessment.score,
                "level": assessment.level,
                "factors": assessment.factors,
                "gates": assessment.to_dict()["gates"],
                "change_type": assessment.change_type,
                "change_conn_id": self.change_conn_id,
                "change": ref.to_dict(),
                "notes": assessment.notes,
                "trend": trend.to_dict(),
                "trend_rules": rules,
            },
        )
        for rule in rules:
            self.log.info("Trend policy: %s (counted %s): %s", rule["when"], rule["counted"], adds(rule))
        self.log.info(
            "Risk of %s %s: %s (score %s): %s",
            self.release,
            request.version,
            assessment.level,
            assessment.score,
            "; ".join(f"+{f['points']} {f['reason']}" for f in assessment.factors) or "no risk factors",
        )
        for note in assessment.notes:
            self.log.info(note)
        first = ChangeState.SCHEDULED if ref.change_type == "standard" else ChangeState.AUTHORIZE
        ref = move_change_ref(context, self.release, ref, self.change_conn_id, first, "risk assessed")
        result = assessment.to_dict()
        result.update({"change": ref.to_dict(), "change_conn_id": self.change_conn_id, "previous_version": previous})
        return result

    def _open_change(self, context: Any, request: ReleaseRequest, change_type: str, risk: str) -> ChangeRef:
        from releasetrain.hooks.change_record import change_backend

        backend = change_backend(self.change_backend, self.change_conn_id)
        start = dt.datetime.now(dt.UTC)
        try:
            ref = backend.open(
                correlation_id=f"{self.release}/{dag_id_of(context)}/{context['run_id']}",
                change_type=change_type,
                short_description=f"Release {self.release} {request.version}",
                description=(
                    f"releasetrain run {context['run_id']}: {self.release} {request.version} to "
                    f"{', '.join(self.environments)}; requested by {request.requested_by}; "
                    f"{request.change_summary or ''}"
                ),
                risk=risk,
                planned_start=start.isoformat(),
                planned_end=(start + dt.timedelta(minutes=self.planned_minutes)).isoformat(),
            )
        except (ChangeRecordError, LedgerError) as exc:
            raise AirflowFailException(f"change record for {self.release}: cannot open: {exc}") from None
        _mirror(context, self.release, ref, Event.CHANGE_OPENED, "opened")
        return move_change_ref(context, self.release, ref, self.change_conn_id, ChangeState.ASSESS, "assessing risk")

    def _cancel(self, context: Any, ref: ChangeRef, note: str) -> None:
        try:
            canceled = _backend(ref, self.change_conn_id).cancel(ref, note=note)
        except (ChangeRecordError, LedgerError) as exc:
            self.log.error("change record %s could not be canceled: %s", ref.number, exc)
            return
        _mirror(context, self.release, canceled, Event.CHANGE_CLOSED, note)


def move_change_ref(
    context: Any, release: str, ref: ChangeRef, conn_id: str | None, target: ChangeState, note: str
) -> ChangeRef:
    if target not in lifecycle(ref.change_type):
        return ref  # e.g. assess does not exist for standard and emergency changes
    try:
        return _walk(context, release, _backend(ref, conn_id), ref, target, note)
    except (ChangeRecordError, LedgerError) as exc:
        raise AirflowFailException(f"change record {ref.number}: cannot move to {target.value}: {exc}") from None


class ReleaseClosureOperator(HITLEntryOperator):
    """The last step of a release: the runbook / operational documentation update is recorded.

    A HITL entry form (Required Actions page or REST) asks the release's people for the
    link to the updated runbook, or a confirmation that none was needed and why. The
    answer is recorded in the ledger and only then is the change record closed.
    """

    def __init__(self, *, release: str, people: list[str], **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's trigger params are not part of the closure form
        kwargs.setdefault("retries", 2)  # see ReleaseApprovalOperator: Airflow 3.3's fast-answer race
        kwargs.setdefault("retry_delay", dt.timedelta(seconds=5))
        super().__init__(
            subject=f"Close release {release}: record the runbook update",
            body=None,
            params={
                "runbook_update": Param(
                    None,
                    type=["null", "string"],
                    title="Runbook / operational documentation update",
                    description="Link to the updated runbook, or 'not needed: <why>'.",
                ),
            },
            **kwargs,
        )
        self.release = release
        self.people = list(people)

    def execute(self, context: Any) -> Any:
        request = release_request(context, self.release)
        users = list(dict.fromkeys([*sorted(request.authors), *self.people]))
        users = [u for u in users if u != SCHEDULER]
        self.assigned_users = assigned(self, users)
        self.subject = f"Close {self.release} {request.version}: record the runbook update"
        self.body = (
            f"{self.release} {request.version} is live and verified. Before its change record closes, record "
            "the runbook / operational documentation update: a link, or `not needed: <why>`."
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        result = super().execute_complete(context, event)
        update = " ".join(str((result.get("params_input") or {}).get("runbook_update") or "").split())
        responder = (result.get("responded_by_user") or {}).get("id")
        if len(update) < 8:
            raise AirflowFailException("closure: the runbook update must be a link or 'not needed: <why>'")
        request = release_request(context, self.release)
        record_decision(
            context,
            Event.CLOSURE,
            self.release,
            actor=responder or "",
            details={"runbook_update": update, "version": request.version, "outcome": "success"},
        )
        closed = close_change(context, self.release, "success", f"released {request.version}; runbook: {update}")
        self.log.info("Closure recorded by %s: %s; change %s closed", responder, update, closed and closed.number)
        return {"runbook_update": update, "by": responder, "change": closed.to_dict() if closed else None}
