"""A deploy target's lock, held by one run from its deploy to the last check and traffic
step of that environment, so no other deploy can land in between (and no rollback of this
run silently undoes one)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from releasetrain.core.gatekeeper import Decision, may_lock
from releasetrain.core.ledger import LedgerError
from releasetrain.core.vocabulary import HOTFIX_LOCK_PRIORITY, LANE_NORMAL, Event
from releasetrain.operators._common import dag_id_of, enforce, record, run_ledger

LEDGER_CONN_ID = "releasetrain_ledger"
# how long a waiter keeps its place in a target's queue without trying again (a recheck's
# hand-back to a worker included); a run that ended gives it up at once (the listener)
WAITER_SECONDS = 180.0


def run_key(context: Any) -> str:
    """``<dag_id>/<run_id>``: a run, across its incarnations."""
    return f"{dag_id_of(context)}/{context['run_id']}"


def holder_of(context: Any, release: str) -> str:
    """The lock holder's name for this run: ``<dag_id>/<run_id>@<incarnation>``.

    Run ids repeat across DAGs, and a deleted run triggered again under its old id is a new
    run: the incarnation (when the run first started, from the listener's ledger record)
    keeps it from inheriting the deleted run's lock.
    """
    incarnation = run_ledger(context, release).incarnation
    return f"{run_key(context)}@{incarnation}" if incarnation else run_key(context)


def parse_holder(holder: str) -> tuple[str, str, str]:
    """``(dag_id, run_id, incarnation)`` of a holder name (DAG ids never contain ``/``)."""
    dag_id, _, rest = holder.partition("/")
    run_id, _, incarnation = rest.rpartition("@") if "@" in rest else (rest, "", "")
    return dag_id, run_id, incarnation


def lock_decision(context: Any, target: str, step: str, release: str) -> Decision:
    """Allowed only while this run holds ``target``'s lock (read from the lock table, not XCom)."""
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    try:
        holder = hook.store.lock_holder(target)
    except LedgerError as exc:
        return Decision.refuse(step, f"the lock of {target} cannot be read: {exc}")
    finally:
        hook.close()
    me = holder_of(context, release)
    if holder == me:
        return Decision.allow(step)
    who = f"held by {holder}" if holder else "not held by anyone"
    return Decision.refuse(step, f"this run does not hold the lock of deploy target {target} ({who})")


def _stale(context: Any, holder: str, me: str) -> str:
    """Why ``holder`` no longer holds anything ("" when it may still): its run ended without
    releasing, was deleted, or was deleted and triggered again under the same id."""
    from releasetrain.core.gatekeeper import RunLedger
    from releasetrain.core.vocabulary import release_of_dag
    from releasetrain.hooks.ledger import LedgerHook

    dag_id, run_id, incarnation = parse_holder(holder)
    if not dag_id or not run_id:
        return ""
    if f"{dag_id}/{run_id}" == run_key(context) and holder != me:
        return f"{holder} is an earlier run under this run's id (deleted)"
    try:
        active = context["ti"].get_dr_count(dag_id=dag_id, run_ids=[run_id], states=["queued", "running"])
    except Exception:  # cannot tell: the holder keeps the lock
        return ""
    if not active:
        return f"the run {dag_id}/{run_id} ended or was deleted without releasing it"
    if incarnation and release_of_dag(dag_id):
        hook = LedgerHook()
        try:
            now = RunLedger(hook.events(release=release_of_dag(dag_id), run_id=run_id, dag_id=dag_id)).incarnation
        except LedgerError:
            return ""
        finally:
            hook.close()
        if now and now != incarnation:
            return f"{holder} was deleted; {dag_id}/{run_id} is a new run"
    return ""


def try_acquire(
    context: Any, *, release: str, environment: str, target: str, step: str, priority: int = 0
) -> tuple[bool, str]:
    """Take ``target`` for this run if it may (:func:`may_lock`; refused otherwise) and no
    waiter of a higher priority (or an earlier one of the same) goes first, taking it over
    from a stale holder; returns (acquired, this run's holder name)."""
    run = run_ledger(context, release)
    enforce(context, may_lock(run, environment, target, step), release, environment)
    return take_lock(context, release=release, environment=environment, target=target, priority=priority)


def take_lock(context: Any, *, release: str, environment: str, target: str, priority: int = 0) -> tuple[bool, str]:
    """Take ``target`` (a deploy target, or a lane of the release train) for this run unless a
    waiter of a higher priority (or an earlier one of the same) goes first, taking it over from
    a stale holder; returns (acquired, this run's holder name)."""
    from releasetrain.hooks.ledger import LedgerHook

    me = holder_of(context, release)
    hook = LedgerHook()
    try:
        holder = hook.store.try_lock(target, me, priority, WAITER_SECONDS)
        stale = _stale(context, holder, me) if holder and holder != me else ""
        if stale:  # the stale holder's lock goes; the queue (impact, then arrival) says who is next
            hook.store.unlock(holder, target)
            taken = hook.store.try_lock(target, me, priority, WAITER_SECONDS)
            if taken == me:
                record(
                    context,
                    Event.LOCK_ACQUIRED,
                    release,
                    environment=environment,
                    details={"target": target, "holder": me, "taken_over_from": holder, "why": stale},
                )
            holder = taken
    except LedgerError as exc:
        raise AirflowFailException(f"{environment}: cannot lock deploy target {target}: {exc}") from None
    finally:
        hook.close()
    return holder == me, me


class TargetLockOperator(BaseOperator):
    """Take the deploy target's lock for this run; wait deferred while another run holds it.

    :param environment: the environment whose stage the lock covers
    :param target: the deploy target (its connection id): environments sharing one
        target share its lock
    :param poll_interval: seconds between tries while waiting
    :param priority: the release's place in the target's queue (its business impact):
        when the target is freed, the waiter of the highest priority takes it, the earliest
        of them on a tie
    """

    ui_color = "#e6e6fa"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        target: str,
        poll_interval: float = 5.0,
        priority: int = 0,
        admit_task_id: str | None = None,
        production: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.environment = environment
        self.target = target
        self.poll_interval = poll_interval
        self.priority = priority
        self.admit_task_id = admit_task_id
        self.production = list(production or [])

    def execute(self, context: Any) -> dict[str, Any]:
        from releasetrain.triggers.lock import TargetLockTrigger

        priority = self.priority
        if self.admit_task_id:  # a release run: its lane in the train says whether it may go now
            lane = self._lane(context)
            # a stage in progress keeps its target (the lock cleared mid-stage must not wait
            # for a hotfix that waits for this very target)
            if lane == LANE_NORMAL and not self._holding(context) and self._held(context):
                return {}
            if lane != LANE_NORMAL:  # a hotfix takes a freed target before any normal run
                priority += HOTFIX_LOCK_PRIORITY
        acquired, me = try_acquire(
            context,
            release=self.release,
            environment=self.environment,
            target=self.target,
            step=self.task_id,
            priority=priority,
        )
        if acquired:
            return self._acquired(context)
        self.log.info("%s: deploy target %s is held by another run; waiting (deferred)", self.environment, self.target)
        self.defer(
            trigger=TargetLockTrigger(
                target=self.target,
                holder=me,
                ledger_conn_id=LEDGER_CONN_ID,
                poll_interval=self.poll_interval,
                priority=priority,
            ),
            method_name="execute_complete",
        )
        return {}

    def _lane(self, context: Any) -> str:
        """The lane the train admitted this run in (refused when it never was)."""
        from releasetrain.core.gatekeeper import admitted
        from releasetrain.core.vocabulary import train_slot
        from releasetrain.hooks.ledger import LedgerHook

        run = run_ledger(context, self.release)
        # a finished run cleared is told so first (it released this target, or it ended)
        enforce(context, may_lock(run, self.environment, self.target, self.task_id), self.release, self.environment)
        enforce(context, admitted(run, self.admit_task_id or "", self.task_id), self.release, self.environment)
        lane = str(run.last(Event.RUN_ADMITTED).details.get("lane") or LANE_NORMAL)
        slot = train_slot(dag_id_of(context), lane)
        hook = LedgerHook()  # admitted once is not enough: the run must still hold its place
        try:
            holder = hook.store.lock_holder(slot)
        except LedgerError as exc:
            raise AirflowFailException(f"the release train cannot be read: {exc}") from None
        finally:
            hook.close()
        dag_id, run_id, incarnation = parse_holder(holder or "")
        mine = run_ledger(context, self.release).incarnation
        if (dag_id, run_id) != (dag_id_of(context), context["run_id"]) or (incarnation and incarnation != mine):
            refusal = Decision.refuse(
                self.task_id,
                f"this run does not hold its place in the release train ({slot} is "
                + (f"held by {holder})" if holder else "not held by anyone)")
                + ": another run of the release goes now; trigger a new run",
            )
            enforce(context, refusal, self.release, self.environment)
        return lane

    def _holding(self, context: Any) -> bool:
        from releasetrain.hooks.ledger import LedgerHook

        hook = LedgerHook()
        try:
            return hook.store.lock_holder(self.target) == holder_of(context, self.release)
        except LedgerError:
            return False
        finally:
            hook.close()

    def _held(self, context: Any) -> bool:
        """Wait (deferred) while a hotfix of the release is underway; refused once superseded."""
        from releasetrain.core.train import HELD
        from releasetrain.operators.train import meet_hold
        from releasetrain.triggers.train import HotfixHoldTrigger

        hold = meet_hold(context, self, self.release, self.environment, self.production)
        if hold.state != HELD:
            return False
        self.defer(
            trigger=HotfixHoldTrigger(
                release=self.release,
                dag_id=dag_id_of(context),
                run_id=hold.by,
                production=self.production,
                ledger_conn_id=LEDGER_CONN_ID,
                poll_interval=self.poll_interval,
                since=hold.since,
                any_production=not hold.carries,
            ),
            method_name="execute_complete",
        )
        return True

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("recheck") or "hold_over" in event:  # look again: holder alive? hotfix over?
            return self.execute(context)
        if not event.get("acquired"):
            raise AirflowFailException(f"{self.environment}: could not lock {self.target}: {event.get('error')}")
        if self.admit_task_id and self._lane(context) == LANE_NORMAL:
            from releasetrain.core.train import FREE
            from releasetrain.operators.train import hold_of

            if hold_of(context, self.release, self.production).state != FREE:  # a hotfix came meanwhile
                self._give_back(context)
                return self.execute(context)  # held again (deferred), or refused as superseded
        return self._acquired(context)

    def _give_back(self, context: Any) -> None:
        from releasetrain.hooks.ledger import LedgerHook

        hook = LedgerHook()
        try:
            hook.store.unlock(holder_of(context, self.release), self.target)
        finally:
            hook.close()

    def _acquired(self, context: Any) -> dict[str, Any]:
        details = {"target": self.target, "holder": holder_of(context, self.release)}
        record(context, Event.LOCK_ACQUIRED, self.release, environment=self.environment, details=details)
        self.log.info("%s: this run holds deploy target %s", self.environment, self.target)
        return details


class TargetUnlockOperator(BaseOperator):
    """Release the deploy target's lock once the environment's stage is over, whatever its
    outcome (``trigger_rule=all_done``, after the last check, the abort and the rollback).
    The listener also releases a run's locks when the run ends (e.g. marked failed by hand)."""

    ui_color = "#e6e6fa"

    def __init__(self, *, release: str, environment: str, target: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.environment = environment
        self.target = target

    def execute(self, context: Any) -> dict[str, Any]:
        from releasetrain.hooks.ledger import LedgerHook

        me = holder_of(context, self.release)
        hook = LedgerHook()
        try:
            released = hook.store.unlock(me, self.target)
        finally:
            hook.close()
        if released:
            details = {"target": self.target, "holder": me}
            record(context, Event.LOCK_RELEASED, self.release, environment=self.environment, details=details)
            self.log.info("%s: deploy target %s released", self.environment, self.target)
        return {"target": self.target, "released": bool(released)}
