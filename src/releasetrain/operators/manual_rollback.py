"""The manual rollback DAG's operators: an incident commander returns an environment to a
known good version, through the UI form or REST, governed and recorded like a release.

Governance (nothing here trusts XCom or task states):

- the target version is one that *passed* in that environment (its ``environment_passed``
  record), is older than the live version, and was never rolled back there for being bad;
- the rollback is an emergency change: a change record of type ``emergency`` is opened with
  the incident's reason and closed with the outcome;
- ``rollback_approvers`` in the spec adds a second person before anything changes;
- a post-implementation review by someone other than the person who triggered it is
  required before the run can end ``success``.
"""

from __future__ import annotations

import datetime as dt
from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import BaseOperator, Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException, TaskDeferred

from releasetrain.core import gatekeeper
from releasetrain.core.approval import SegregationOfDutiesError, check_responder
from releasetrain.core.change import ChangeRecordError, ChangeRef, ChangeState, path_to
from releasetrain.core.gatekeeper import Decision
from releasetrain.core.ledger import LedgerError
from releasetrain.core.vocabulary import (
    OPTION_APPROVE,
    OPTION_REJECT,
    OPTION_REVIEWED,
    ROLLBACK_PLAN,
    Event,
    release_dag_id,
    rollback_dag_id,
)
from releasetrain.hooks.deploy_target import DeployTargetError, DeployTargetHook
from releasetrain.operators._common import assigned, dag_id_of, enforce, record, record_decision, run_ledger
from releasetrain.operators.rollback import RollbackOperator

PLAN_TASK_ID = ROLLBACK_PLAN
# what a rollback approval approves: the plan's environment, from what, to what
PLAN_KEYS = ("environment", "from_version", "from_digest", "version", "digest")


def _requester(context: Any) -> str:
    """Who triggered the rollback run: the user Airflow authenticated (never a form field)."""
    return context["dag_run"].triggering_user_name or "unknown"


def _requesters(context: Any) -> set[str]:
    """The triggering user's name and id (people directory): never their own second person."""
    from releasetrain.core.identity import Directory

    name = _requester(context)
    people = getattr(context.get("task"), "user_directory", None) or {}
    return {name, Directory(people).id_of(name) or name}


def _responder(result: dict[str, Any], context: Any) -> str | None:
    user = result.get("responded_by_user") or {}
    return user.get("name") if user.get("name") in _requesters(context) else user.get("id")


def recorded_plan(context: Any, release: str) -> dict[str, Any]:
    """The plan as ``plan`` recorded it in the ledger (its XCom is display only)."""
    event = run_ledger(context, release).last(Event.ROLLBACK_REQUESTED, task_id=ROLLBACK_PLAN)
    if event is None:
        enforce(context, Decision.refuse("rollback", "no rollback plan recorded in the ledger by plan"), release)
    return dict(event.details)  # type: ignore[union-attr]


class ManualRollbackPlanOperator(BaseOperator):
    """Decide what the rollback does: which environment, from which version, to which.

    The target version is the form's ``version``, or else the newest good one. Good means:
    a release run passed in the environment with it (the ledger), it is older than the live
    version, and it was never rolled back there. Anything else is refused, with the reason
    and the versions that would be allowed. Records ``rollback_requested`` (who, why, from,
    to) and opens the emergency change before anything changes.

    :param targets: environment -> deploy target connection id
    :param change_backend: the release's change-record backend; ``change_conn_id`` its connection
    :param units: packaging modular: deploy unit -> its components; the live version is the
        newest any unit runs, only versions that passed there are candidates, and the plan says,
        for each unit, what it runs and which of its bundles (as packaged) it returns to
    """

    ui_color = "#f28b82"

    def __init__(
        self,
        *,
        release: str,
        targets: dict[str, str],
        change_backend: str = "builtin",
        change_conn_id: str | None = None,
        units: dict[str, list[str]] | None = None,
        schemas: dict[str, dict[str, str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.schemas = {env: dict(c) for env, c in (schemas or {}).items()}
        self.targets = dict(targets)
        self.units = {u: list(c) for u, c in (units or {}).items()}
        self.change_backend = change_backend
        self.change_conn_id = change_conn_id

    def _release_events(self) -> list[Any]:
        from releasetrain.hooks.ledger import LedgerHook

        ledger = LedgerHook()
        try:
            ours = {release_dag_id(self.release), rollback_dag_id(self.release), ""}
            return [e for e in ledger.events(release=self.release) if e.dag_id in ours]
        except LedgerError as exc:
            raise AirflowFailException(f"the release ledger cannot be read: {exc}") from None
        finally:
            ledger.close()

    def execute(self, context: Any) -> dict[str, Any]:
        params = context["params"]
        environment, wanted = params["environment"], params.get("version")
        reason = " ".join(str(params.get("reason") or "").split())
        by = _requester(context)
        if environment not in self.targets:
            raise AirflowFailException(
                f"environment {environment!r} is not one of {self.release}'s: {', '.join(self.targets)}"
            )
        try:
            live, units = self._live(self.targets[environment])
        except DeployTargetError as exc:
            raise AirflowException(f"{environment}: {exc}") from None
        current = live.get("version")
        events = self._release_events()
        candidates = gatekeeper.rollback_candidates(events, environment, current, passed_only=bool(self.units))
        allowed = ", ".join(c["version"] for c in candidates) or "none"
        if wanted:
            target = next((c for c in candidates if c["version"] == wanted), None)
            if target is None:
                refusal = Decision.refuse(
                    "rollback",
                    f"{wanted} may not be rolled back to in {environment}: a rollback returns only to a version "
                    f"that passed there, is older than the live {current}, and was never rolled back there "
                    f"(allowed: {allowed})",
                )
                enforce(context, refusal, self.release, environment)
            source = "asked for in the form"
        elif candidates:
            target, source = candidates[0], "the newest good version"
        else:
            raise AirflowFailException(
                f"{environment}: no version to roll back to: no version older than {current} passed there and "
                "kept its place; recover by hand (and record it) or release a fix"
            )
        self._schemas_hold(context, environment, events, target["version"])  # type: ignore[index]
        plan = {
            "environment": environment,
            "from_version": current,
            "from_digest": live.get("digest"),
            "version": target["version"],  # type: ignore[index]
            "digest": target.get("digest"),  # type: ignore[union-attr]
            "source": source,
            "reason": reason,
            "requested_by": by,
        }
        if units:
            plan["units"] = self._unit_plans(context, environment, events, units, plan["version"])
        plan["change"] = self._open_change(context, plan).to_dict()
        plan["change_conn_id"] = self.change_conn_id
        record(context, Event.ROLLBACK_REQUESTED, self.release, environment=environment, actor=by, details=plan)
        self.log.warning(
            "MANUAL ROLLBACK of %s in %s: %s -> %s (%s), requested by %s: %s",
            self.release,
            environment,
            current,
            plan["version"],
            source,
            by,
            reason,
        )
        return plan

    def _schemas_hold(self, context: Any, environment: str, events: list[Any], version: str) -> None:
        """The version rolled back to works with each database's live schema (the range it
        declared when it was packaged; its journal, read now), and no migration is half-done
        there: an old version never runs on a schema it cannot use. Refused, named."""
        from releasetrain.core import migration as m
        from releasetrain.hooks.schema import SchemaDatabaseHook
        from releasetrain.operators.migrate import declared_ranges

        reasons = []
        for component, conn_id in self.schemas.get(environment, {}).items():
            try:
                with SchemaDatabaseHook(conn_id) as db:
                    rows = db.journal(component)
            except (m.MigrationError, ConnectionError) as exc:
                reasons.append(f"the schema of {component} cannot be read: {exc}")
                continue
            failure = m.unresolved_failure(rows)
            if failure is not None:
                reasons.append(
                    f"step {failure.version:04d}_{failure.name} of {component} failed in run {failure.run_id} and "
                    "its data was never reported reconciled: answer that run's reconcile request first"
                )
            compatible = declared_ranges(events, component).get(version)
            problem = compatible and m.compatibility_problem(
                component, m.schema_version(rows), compatible, f"{self.release} {version}", environment
            )
            if problem:
                reasons.append(problem + ": roll back to a version that works with it, or release a fix")
        if reasons:
            enforce(context, Decision.refuse("rollback", *reasons), self.release, environment)

    def _unit_plans(
        self, context: Any, environment: str, events: list[Any], units: dict[str, dict[str, Any]], version: str
    ) -> dict[str, dict[str, Any]]:
        """Each unit's from and to: the bundle of ``version`` packaging recorded for it, with the
        components it has today. A unit whose bundle of that version does not exist (packaged
        monolithic, or grouped otherwise then) or that runs an older version (a rollback moves
        nothing forward) is refused, named: nothing changes."""
        from releasetrain.core.versioning import Version

        plans, reasons = {}, []
        for unit, now in units.items():
            bundle = gatekeeper.unit_bundle(events, unit, version)
            if bundle is None or list(bundle.get("components") or []) != self.units[unit]:
                had = f" (then: {', '.join(bundle.get('components') or [])})" if bundle else ""
                reasons.append(
                    f"unit {unit} ({', '.join(self.units[unit])}) has no bundle of {version}{had}: "
                    "roll back to a version packaged modular with the same units"
                )
            elif now.get("version") and Version.parse(now["version"]) < Version.parse(version):
                reasons.append(
                    f"unit {unit} runs {now['version']}, older than {version}: a rollback moves no unit forward"
                )
            plans[unit] = {
                "from_version": now.get("version"),
                "from_digest": now.get("digest"),
                "digest": bundle.get("digest") if bundle else None,
            }
        if reasons:
            enforce(context, Decision.refuse("rollback", *reasons), self.release, environment)
        return plans

    def _live(self, target: str) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
        """What runs there: the target's status; packaging modular: each unit's, and as the
        environment's version the newest any unit runs (a unit left behind is rolled back too)."""
        if not self.units:
            return DeployTargetHook(target).get_status(), {}
        from releasetrain.core.versioning import Version

        units = {unit: DeployTargetHook(target, component=unit).get_status() for unit in self.units}
        versions = [u["version"] for u in units.values() if u.get("version")]
        newest = max(versions, key=lambda v: Version.parse(v)._key()) if versions else None
        return {"version": newest, "digest": None}, units

    def _open_change(self, context: Any, plan: dict[str, Any]) -> ChangeRef:
        """The rollback is an emergency change, opened with the incident's reason."""
        from releasetrain.hooks.change_record import change_backend

        backend = change_backend(self.change_backend, self.change_conn_id)
        start = dt.datetime.now(dt.UTC)
        try:
            ref = backend.open(
                correlation_id=f"{self.release}/{dag_id_of(context)}/{context['run_id']}",
                change_type="emergency",
                short_description=f"Rollback {self.release} in {plan['environment']} to {plan['version']}",
                description=(
                    f"Manual rollback of {self.release} in {plan['environment']} from {plan['from_version']} to "
                    f"{plan['version']}, requested by {plan['requested_by']}: {plan['reason']}"
                ),
                risk="high",
                planned_start=start.isoformat(),
                planned_end=(start + dt.timedelta(minutes=30)).isoformat(),
            )
        except (ChangeRecordError, LedgerError) as exc:
            raise AirflowFailException(f"emergency change for the rollback: cannot open: {exc}") from None
        return ref


def _move(context: Any, release: str, ref: ChangeRef, conn_id: str | None, target: ChangeState, note: str) -> None:
    from releasetrain.hooks.change_record import change_backend

    backend = change_backend(ref.backend, conn_id)
    try:
        current = backend.get(ref)
        for state in path_to(current.change_type, current.state, target):
            current = backend.move_to(current, state, note=note)
    except (ChangeRecordError, LedgerError) as exc:
        raise AirflowFailException(f"emergency change {ref.number}: cannot move to {target.value}: {exc}") from None


class RollbackApprovalOperator(HITLOperator):
    """A second person before a manual rollback changes anything (``rollback_approvers``).

    Asked of the rollback approvers minus the person who triggered the run; the responder is
    checked again, the decision is recorded, and a rejection ends the run (never asked again).
    """

    ui_color = "#fde293"

    def __init__(self, *, release: str, approvers: list[str], **kwargs: Any) -> None:
        kwargs.setdefault("retries", 2)  # Airflow 3.3's fast-answer race, as for release approvals
        kwargs.setdefault("retry_delay", timedelta(seconds=5))
        super().__init__(subject=f"Approve a rollback of {release}?", options=[OPTION_APPROVE, OPTION_REJECT], **kwargs)
        self.release = release
        self.approvers = list(approvers)

    def execute(self, context: Any) -> Any:
        run = run_ledger(context, self.release)
        enforce(context, gatekeeper.not_rejected(run, self.task_id), self.release)
        plan = recorded_plan(context, self.release)
        eligible = [u for u in self.approvers if u not in _requesters(context)]
        if not eligible:
            raise AirflowFailException(
                f"rollback approval: every rollback approver ({', '.join(self.approvers)}) triggered this run"
            )
        self.assigned_users = assigned(self, eligible)
        self.subject = f"Roll {self.release} back in {plan['environment']} to {plan['version']}?"
        self.body = (
            f"**{plan['requested_by']}** asks to roll **{plan['environment']}** back from "
            f"`{plan['from_version']}` to `{plan['version']}`.\n\nReason: {plan['reason']}"
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        plan = recorded_plan(context, self.release)
        details = {k: plan.get(k) for k in PLAN_KEYS}
        if event.get("timedout") or event.get("error_type") == "timeout":
            record_decision(context, Event.APPROVAL_TIMED_OUT, self.release, environment=plan["environment"])
            raise AirflowFailException("rollback approval: no answer before the timeout")
        result = HITLOperator.execute_complete(self, context=context, event=event)
        chosen = result["chosen_options"][0]
        responder = _responder(result, context)
        try:
            check_responder(responder, self.approvers, _requesters(context))
        except SegregationOfDutiesError as exc:
            record_decision(
                context,
                Event.APPROVAL_REFUSED,
                self.release,
                environment=plan["environment"],
                actor=responder or "",
                details={**details, "reason": str(exc)},
            )
            return self.execute(context)
        kind = Event.APPROVAL_GIVEN if chosen == OPTION_APPROVE else Event.APPROVAL_REJECTED
        record_decision(context, kind, self.release, environment=plan["environment"], actor=responder, details=details)
        if kind == Event.APPROVAL_REJECTED:
            raise AirflowFailException(f"{responder} rejected the rollback; nothing was changed")
        return result


class ManualRollbackOperator(RollbackOperator):
    """The rollback of one environment in the manual rollback DAG (skips for the others).

    Same work as a release's rollback (snapshot, rollback deploy deferred, health check,
    postmortem draft, notifications, ledger), aimed at the version the recorded plan chose,
    under the deploy target's lock (waiting for it deferred), after the rollback approval
    when the release has ``rollback_approvers``.

    Packaging modular: one task per deploy unit (``unit``), one after the other; each returns
    its unit to the plan's version (that unit's bundle of it), and only the ``last`` frees the
    target and moves the change to Review when it succeeded (a failure frees it at once).
    """

    def __init__(
        self,
        *,
        plan_task_id: str = PLAN_TASK_ID,
        approval_task_id: str | None = None,
        last: bool = True,
        **kwargs: Any,
    ):
        kwargs.setdefault("deploy_task_id", plan_task_id)
        super().__init__(**kwargs)
        self.plan_task_id = plan_task_id
        self.approval_task_id = approval_task_id
        self.last = last

    def _plan(self, context: Any) -> dict[str, Any]:
        return recorded_plan(context, self.release)

    def _planned(self, context: Any) -> dict[str, Any]:
        """The plan's from and to, for this task's unit when it has one."""
        plan = self._plan(context)
        if not self.unit:
            return plan
        unit = (plan.get("units") or {}).get(self.unit)
        if unit is None:
            reason = f"the recorded rollback plan says nothing of unit {self.unit}: nothing of it is rolled back"
            enforce(context, Decision.refuse(self.task_id, reason), self.release, self.environment)
        return {**plan, **unit}  # type: ignore[dict-item]

    def _target(self, context: Any) -> dict[str, Any] | None:
        plan = self._planned(context)
        return {"version": plan["version"], "digest": plan.get("digest"), "noop": False} if plan else None

    def _failed_version(self, context: Any, live: dict[str, Any] | None = None) -> str | None:
        planned = self._planned(context)
        if planned.get("from_version") == planned.get("version"):
            return None  # a unit that already runs the plan's version: nothing of it is taken out (nor marked bad)
        return planned.get("from_version")

    def _failed_digest(self, context: Any) -> str | None:
        return self._planned(context).get("from_digest")

    def execute(self, context: Any) -> dict[str, Any] | None:
        plan = self._plan(context)
        if plan.get("environment") != self.environment:
            raise AirflowSkipException(f"this rollback is for {plan.get('environment')}, not {self.environment}")
        done = self._already_done(context)
        if done is not None:  # Airflow lost the first try's end: its work (lock freed, change moved) is done
            return done
        self._refuse_if_already_failed(context)
        if self.approval_task_id:
            enforce(context, self._approved(context, plan), self.release, self.environment)
        self._take_lock(context)
        change = plan.get("change")
        if change:
            conn_id = plan.get("change_conn_id")
            _move(context, self.release, ChangeRef.from_dict(change), conn_id, ChangeState.IMPLEMENT, "rolling back")
        return self._freeing(context, super().execute)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        return self._freeing(context, lambda c: super(ManualRollbackOperator, self).execute_complete(c, event))

    def _freeing(self, context: Any, work: Any) -> Any:
        """Run ``work``; unless it defers, free the target whatever the outcome (the review
        that follows may take days, and a failed rollback is for a human, not a lock)."""
        try:
            result = work(context)
        except TaskDeferred:
            raise
        except BaseException:
            try:
                self._release_lock(context)
            except Exception as exc:  # the listener frees it at the run's end
                self.log.error("could not free %s: %s", self.deploy_target_conn_id, exc)
            raise
        if self.last:  # an earlier unit keeps the target for the next one
            self._release_lock(context)
        return result

    def execute_locked(self, context: Any, event: dict[str, Any]) -> dict[str, Any] | None:
        if event.get("recheck"):
            return self.execute(context)
        if not event.get("acquired"):
            raise AirflowFailException(f"{self.environment}: could not lock {self.deploy_target_conn_id}: {event}")
        return self.execute(context)

    def _approved(self, context: Any, plan: dict[str, Any]) -> Decision:
        """The rollback approval was given for *this* plan (environment, from and to), after it."""
        run = run_ledger(context, self.release)
        planned = run.last(Event.ROLLBACK_REQUESTED, task_id=PLAN_TASK_ID)
        after = run.events[run.events.index(planned) :] if planned is not None else []
        given = [
            e for e in after if e.kind == Event.APPROVAL_GIVEN and e.details.get("task_id") == self.approval_task_id
        ]
        if not given:
            return Decision.refuse(self.task_id, run.missing(self.approval_task_id, "rollback approval of this plan"))
        approved = given[-1].details
        what = {k: plan.get(k) for k in PLAN_KEYS}
        if {k: approved.get(k) for k in PLAN_KEYS} != what:
            return Decision.refuse(
                self.task_id,
                f"the rollback approval by {given[-1].actor} was for {approved.get('environment')} "
                f"{approved.get('from_version')} -> {approved.get('version')}, not the plan's "
                f"{plan.get('environment')} {plan.get('from_version')} -> {plan.get('version')}",
            )
        return Decision.allow(self.task_id)

    def _take_lock(self, context: Any) -> None:
        """Hold the deploy target like a release does: never in the middle of another run's stage."""
        from releasetrain.operators.lock import LEDGER_CONN_ID, try_acquire
        from releasetrain.triggers.lock import TargetLockTrigger

        target = self.deploy_target_conn_id
        acquired, me = try_acquire(
            context, release=self.release, environment=self.environment, target=target, step=self.task_id
        )
        if acquired:
            details = {"target": target, "holder": me}
            record(context, Event.LOCK_ACQUIRED, self.release, environment=self.environment, details=details)
            return
        self.log.warning("%s is held by another run: waiting for it (deferred)", target)
        self.defer(
            trigger=TargetLockTrigger(target=target, holder=me, ledger_conn_id=LEDGER_CONN_ID, poll_interval=2.0),
            method_name="execute_locked",
        )

    def _release_lock(self, context: Any) -> None:
        """The rollback is over: the target is free again (the review may take days)."""
        from releasetrain.hooks.ledger import LedgerHook
        from releasetrain.operators.lock import holder_of

        me = holder_of(context, self.release)
        hook = LedgerHook()
        try:
            released = hook.store.unlock(me, self.deploy_target_conn_id)
        finally:
            hook.close()
        if released:
            details = {"target": self.deploy_target_conn_id, "holder": me}
            record(context, Event.LOCK_RELEASED, self.release, environment=self.environment, details=details)

    def _after_rollback(self, context: Any, before: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        out = super()._after_rollback(context, before, result)
        plan = self._plan(context)
        if plan.get("change") and self.last:
            ref = ChangeRef.from_dict(plan["change"])
            _move(context, self.release, ref, plan.get("change_conn_id"), ChangeState.REVIEW, "rolled back")
        return out


class RollbackReviewOperator(HITLOperator):
    """The post-implementation review of a manual rollback, by someone other than the person
    who triggered it; only then does the emergency change close and the run succeed."""

    ui_color = "#fde293"

    def __init__(self, *, release: str, reviewers: list[str], **kwargs: Any) -> None:
        kwargs.pop("params", None)
        kwargs.setdefault("retries", 2)
        kwargs.setdefault("retry_delay", timedelta(seconds=5))
        super().__init__(
            subject=f"Post-implementation review of a rollback of {release}",
            options=[OPTION_REVIEWED],
            params={"findings": Param(None, type=["null", "string"], title="Findings")},
            **kwargs,
        )
        self.release = release
        self.reviewers = list(reviewers)

    def execute(self, context: Any) -> Any:
        plan = recorded_plan(context, self.release)
        run = run_ledger(context, self.release)
        done = run.of(Event.ROLLBACK, environment=plan["environment"])
        if not done:
            enforce(
                context,
                Decision.refuse(self.task_id, f"no rollback of {plan['environment']} is recorded in this run"),
                self.release,
            )
        missing = sorted(set(plan.get("units") or {}) - {e.details.get("unit") for e in done})
        if missing:  # packaging modular: a unit's rollback marked successful by hand returned nothing
            reason = f"no rollback of unit(s) {', '.join(missing)} in {plan['environment']} is recorded in this run"
            enforce(context, Decision.refuse(self.task_id, reason), self.release)
        eligible = [u for u in self.reviewers if u not in _requesters(context)]
        if not eligible:
            raise AirflowFailException(
                f"rollback review: nobody but the person who triggered it ({_requester(context)}) may review; "
                "set reviewers in the spec"
            )
        self.assigned_users = assigned(self, eligible)
        self.subject = f"Review the rollback of {self.release} in {plan['environment']} to {plan['version']}"
        self.body = (
            f"**{plan['requested_by']}** rolled **{plan['environment']}** back from `{plan['from_version']}` to "
            f"`{plan['version']}` as an emergency change.\n\nReason: {plan['reason']}\n\n"
            "Confirm what was checked afterwards (findings); the emergency change closes with your review."
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        result = super().execute_complete(context=context, event=event)
        responder = _responder(result, context)
        try:
            check_responder(responder, self.reviewers, _requesters(context))
        except SegregationOfDutiesError as exc:
            raise AirflowFailException(f"rollback review refused: {exc}") from None
        findings = " ".join(str((result.get("params_input") or {}).get("findings") or "").split())
        if len(findings) < 10:
            raise AirflowFailException("rollback review: 'findings' must say what was checked (10+ characters)")
        plan = recorded_plan(context, self.release)
        record_decision(
            context,
            Event.REVIEW,
            self.release,
            environment=plan["environment"],
            actor=responder or "",
            details={"findings": findings, "of": "manual rollback"},
        )
        change = plan.get("change")
        if change:
            from releasetrain.hooks.change_record import change_backend

            ref = ChangeRef.from_dict(change)
            backend = change_backend(ref.backend, plan.get("change_conn_id"))
            try:
                backend.close(backend.get(ref), outcome="success", notes=f"reviewed by {responder}: {findings}")
            except (ChangeRecordError, LedgerError) as exc:
                raise AirflowFailException(f"emergency change {ref.number}: cannot close: {exc}") from None
        return {**result, "findings": findings}
