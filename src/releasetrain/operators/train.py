"""A run's place in the release train (see :mod:`releasetrain.core.train`): the ``admit``
step before anything else, and the hold a normal run meets at its deploy targets' locks."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from releasetrain.core.gatekeeper import Decision, not_ended
from releasetrain.core.ledger import LedgerError
from releasetrain.core.train import FREE, HELD, TRAIN_EVENTS, Hold, admission_details, hold_on, lane_of
from releasetrain.core.vocabulary import LANE_NORMAL, TRAIN_MAX_WAITING, Event, train_slot
from releasetrain.operators._common import dag_id_of, enforce, record, release_request, run_ledger
from releasetrain.operators.lock import LEDGER_CONN_ID, parse_holder, take_lock

ACTIVE = ["queued", "running"]
START_WAITS = 15  # x 2 s for the listener's run_started record before admitting without it


def lane_of_run(context: Any, release: str, overtaking: list[str]) -> tuple[str, dict[str, Any]]:
    """The run's lane and what ``run_admitted`` records. A scheduled train is normal; a hotfix
    or emergency request takes the hotfix lane only where the release offers it (``overtaking``:
    its trigger form has the param; a conf key the form does not declare changes nothing)."""
    incarnation = run_ledger(context, release).incarnation
    run_type = str(getattr(context["dag_run"], "run_type", "") or "")
    if run_type.lower().endswith("scheduled") and not context["params"].get("version"):
        return LANE_NORMAL, admission_details(LANE_NORMAL, incarnation=incarnation)
    request = release_request(context, release)
    lane = lane_of(hotfix=request.hotfix, emergency=request.emergency, offered=overtaking)
    details = admission_details(
        lane,
        incident=request.incident,
        severity=request.severity,
        justification=request.emergency_justification,
        incarnation=incarnation,
    )
    return lane, details


def _events(release: str) -> list[Any]:
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    try:
        found = (e for kind in TRAIN_EVENTS for e in hook.events(release=release, kind=kind))
        return sorted(found, key=lambda e: e.seq)
    except LedgerError as exc:
        raise AirflowFailException(f"the release ledger cannot be read: {exc}") from None
    finally:
        hook.close()


def hold_of(context: Any, release: str, production: list[str]) -> Hold:
    """The hold on this run (normal lane) from the ledger; a hotfix run Airflow no longer has
    running holds nothing even when its end was never recorded."""
    dag_id, run_id = dag_id_of(context), context["run_id"]
    events = _events(release)
    gone: list[str] = []
    hold = hold_on(events, dag_id, run_id, production)
    while hold.state == HELD:  # every holder Airflow no longer runs is passed over, not just the first
        try:
            active = context["ti"].get_dr_count(dag_id=dag_id, run_ids=[hold.by], states=ACTIVE)
        except Exception:  # cannot tell: the hold stands
            active = 1
        if active:
            break
        gone.append(hold.by)
        hold = hold_on(events, dag_id, run_id, production, gone=gone)
    return hold


def meet_hold(context: Any, task: BaseOperator, release: str, environment: str, production: list[str]) -> Hold:
    """Before a normal run takes a deploy target: refused when superseded (recorded), the hold
    returned when a hotfix is underway (recorded once per hotfix run), free otherwise."""
    hold = hold_of(context, release, production)
    if hold.state == FREE:
        return hold
    run = run_ledger(context, release)
    if hold.state == HELD:
        if not any(e.details.get("by") == hold.by for e in run.of(Event.RUN_HELD)):
            details = {"held": context["run_id"], **hold.details()}
            record(context, Event.RUN_HELD, release, environment=environment, details=details)
        task.log.info("%s: %s", environment, hold.reasons[0])
        return hold
    record(context, Event.RUN_SUPERSEDED, release, environment=environment, details=hold.details())
    enforce(context, Decision.refuse(task.task_id, *hold.reasons), release, environment)
    return hold  # not reached: enforce raised


class TrainAdmissionOperator(BaseOperator):
    """The run's place in its release's train, before anything else happens in it.

    A normal run waits (deferred, no worker slot) until the release's previous normal run
    ended; a hotfix or emergency run waits only for another hotfix, never behind a normal
    run, and records ``run_held`` for the normal run underway (which takes no deploy target
    until the hotfix ended or reached production). Each admission is ``run_admitted`` with
    its lane. The lanes are locks beside the deploy targets' (the same queue, released when
    the run ends: the listener).

    :param overtaking: the trigger params that put a run in the hotfix lane (``hotfix`` with
        a hotfix policy, ``emergency`` with a calendar: what the trigger form offers)
    """

    ui_color = "#fef7e0"

    def __init__(
        self,
        *,
        release: str,
        overtaking: list[str],
        poll_interval: float = 5.0,
        priority: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.overtaking = list(overtaking)
        self.poll_interval = poll_interval
        self.priority = priority

    def execute(self, context: Any) -> dict[str, Any]:
        return self._admit(context)

    def after_start(self, context: Any, event: Any = None, waited: int = 0) -> dict[str, Any]:
        return self._admit(context, waited)

    def _admit(self, context: Any, waited: int = 0) -> dict[str, Any]:
        from releasetrain.triggers.lock import TargetLockTrigger

        run = run_ledger(context, self.release)
        # a run that ended (and was cleared) takes no place again: trigger a new run
        enforce(context, not_ended(run, self.task_id), self.release)
        if not run.incarnation and waited < START_WAITS:
            # the listener records the run's start (its incarnation) a moment after Airflow
            # starts it; an admission recorded before would count for no incarnation
            from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

            self.log.info("waiting for the run's start to be recorded in the ledger")
            self.defer(
                trigger=TimeDeltaTrigger(timedelta(seconds=2)),
                method_name="after_start",
                kwargs={"waited": waited + 1},
            )
        lane, _ = lane_of_run(context, self.release, self.overtaking)
        slot = train_slot(dag_id_of(context), lane)
        if lane == LANE_NORMAL:  # Airflow's cap on runs is never reached by waiting trains
            enforce(context, self._room(context, slot), self.release)
        acquired, me = take_lock(context, release=self.release, environment="", target=slot, priority=self.priority)
        if acquired:
            return self._admitted(context)
        self.log.info("the release's previous %s run is still underway; waiting (deferred) for %s", lane, slot)
        self.defer(
            trigger=TargetLockTrigger(
                target=slot,
                holder=me,
                ledger_conn_id=LEDGER_CONN_ID,
                poll_interval=self.poll_interval,
                priority=self.priority,  # the same place in the queue as each try of execute
            ),
            method_name="execute_complete",
        )
        return {}

    def _room(self, context: Any, slot: str) -> Decision:
        """Refused when :data:`TRAIN_MAX_WAITING` other normal runs already wait."""
        from releasetrain.hooks.ledger import LedgerHook
        from releasetrain.operators.lock import run_key

        hook = LedgerHook()
        try:
            waiting = [h for h, _ in hook.store.lock_queue(slot) if not h.startswith(run_key(context) + "@")]
        finally:
            hook.close()
        waiting = [h for h in waiting if h != run_key(context)]
        if len(waiting) < TRAIN_MAX_WAITING:
            return Decision.allow(self.task_id)
        return Decision.refuse(
            self.task_id,
            f"the release train is full: {len(waiting)} normal runs of this release already wait for the one "
            "underway; trigger this one once they went (hotfix and emergency runs still go)",
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        if event.get("recheck"):  # waited a while: is the run ahead still alive? (then wait again)
            return self.execute(context)
        if not event.get("acquired"):
            raise AirflowFailException(f"no place in the release train: {event.get('error')}")
        return self._admitted(context)

    def _admitted(self, context: Any) -> dict[str, Any]:

        lane, details = lane_of_run(context, self.release, self.overtaking)
        dag_id = dag_id_of(context)
        details["slot"] = train_slot(dag_id, lane)
        record(context, Event.RUN_ADMITTED, self.release, details=details)
        self.log.info("admitted in the %s lane", lane)
        if details.get("kind") == "emergency":  # holds at once (a hotfix: once its policy allowed it)
            hold_the_train(context, self.release, details["why"], self.log)
        return details


def hold_the_train(context: Any, release: str, why: str, log: Any) -> str | None:
    """Record ``run_held`` (by this hotfix or emergency run) for the release's normal run
    underway, which takes no deploy target from now on until this run is over."""
    from releasetrain.hooks.ledger import LedgerHook

    dag_id = dag_id_of(context)
    hook = LedgerHook()
    try:
        holder = hook.store.lock_holder(train_slot(dag_id, LANE_NORMAL))
    except LedgerError as exc:
        raise AirflowFailException(f"the release train cannot be read: {exc}") from None
    finally:
        hook.close()
    held_dag, held_run, _ = parse_holder(holder or "")
    if not held_run or held_dag != dag_id or held_run == context["run_id"]:
        return None
    record(context, Event.RUN_HELD, release, details={"held": held_run, "by": context["run_id"], "why": why})
    log.info("run %s of the release is held while this one goes (%s)", held_run, why)
    return held_run
