"""The release train's lanes against a real (SQLite) ledger: a normal run waits for the one
before it; a hotfix run goes beside it, holds it, and supersedes it once in production."""

from __future__ import annotations

import asyncio

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from releasetrain.core.vocabulary import HOTFIX_LOCK_PRIORITY, LANE_HOTFIX, LANE_NORMAL, train_slot
from releasetrain.hooks.ledger import LedgerHook
from releasetrain.operators.lock import TargetLockOperator
from releasetrain.operators.train import TrainAdmissionOperator
from releasetrain.triggers.lock import TargetLockTrigger
from releasetrain.triggers.train import HotfixHoldTrigger
from tests.adapters.test_locks_and_rollbacks import AliveTI
from tests.helpers import DAG_ID, PARAMS, RELEASE, RUN_ID, context, run_events, seed

NORMAL_SLOT = train_slot(DAG_ID, LANE_NORMAL)
HOTFIX = {**PARAMS, "version": "1.0.1", "hotfix": True, "severity": "sev1", "incident": "INC-7"}
OTHER = "manual__other"


def other(kind: str, run_id: str = OTHER, environment: str = "", **details) -> None:
    """An event of another run of the release (as its own task would have recorded it)."""
    hook = LedgerHook()
    try:
        hook.append(kind, release=RELEASE, run_id=run_id, dag_id=DAG_ID, environment=environment, details=details)
    finally:
        hook.close()


def take(target: str, who: str, priority: int = 0) -> str:
    hook = LedgerHook()
    try:
        return hook.store.try_lock(target, who, priority)
    finally:
        hook.close()


def queue(target: str) -> list:
    hook = LedgerHook()
    try:
        return hook.store.lock_queue(target)
    finally:
        hook.close()


def admit(overtaking=("hotfix", "emergency")) -> TrainAdmissionOperator:
    return TrainAdmissionOperator(task_id="admit", release=RELEASE, overtaking=list(overtaking))


def lock() -> TargetLockOperator:
    return TargetLockOperator(
        task_id="prod.lock",
        release=RELEASE,
        environment="prod",
        target="t_prod",
        admit_task_id="admit",
        production=["prod"],
    )


def test_a_normal_run_waits_deferred_while_the_one_before_it_is_underway():
    assert take(NORMAL_SLOT, f"{DAG_ID}/{OTHER}") == f"{DAG_ID}/{OTHER}"
    with pytest.raises(TaskDeferred) as deferred:
        admit().execute(context(AliveTI({f"{DAG_ID}/{OTHER}": 1}), task_id="admit"))
    assert isinstance(deferred.value.trigger, TargetLockTrigger)
    assert deferred.value.trigger.target == NORMAL_SLOT
    assert not run_events("run_admitted")
    # the run ahead ended: the next recheck admits this one
    result = admit().execute_complete(context(AliveTI(), task_id="admit"), {"acquired": False, "recheck": True})
    assert result["lane"] == LANE_NORMAL and result["slot"] == NORMAL_SLOT
    [admitted] = run_events("run_admitted")
    assert admitted.details["lane"] == LANE_NORMAL


def test_a_hotfix_goes_beside_the_normal_run_in_a_gate_and_holds_it():
    assert take(NORMAL_SLOT, f"{DAG_ID}/{OTHER}@1:x")
    result = admit().execute(context(AliveTI({f"{DAG_ID}/{OTHER}": 1}), params=HOTFIX, task_id="admit"))
    assert result["lane"] == LANE_HOTFIX and result["holds"] == OTHER and result["why"] == "hotfix for INC-7 (sev1)"
    [held] = run_events("run_held")
    assert held.details == {"held": OTHER, "by": RUN_ID, "why": "hotfix for INC-7 (sev1)", "task_id": "admit"}


def test_a_hotfix_param_the_release_does_not_offer_takes_no_lane_of_its_own():
    """Attack: a conf key the trigger form does not declare (no hotfix policy; a calendar offers
    the emergency param only) overtakes nothing."""
    take(NORMAL_SLOT, f"{DAG_ID}/{OTHER}")
    with pytest.raises(TaskDeferred):
        admit(overtaking=["emergency"]).execute(
            context(AliveTI({f"{DAG_ID}/{OTHER}": 1}), params=HOTFIX, task_id="admit")
        )


def test_a_run_the_train_never_admitted_takes_no_target():
    """Attack: ``admit`` set to success by hand to skip the queue."""
    with pytest.raises(AirflowFailException, match="no admission to the release train recorded in the ledger by admit"):
        lock().execute(context(AliveTI(), task_id="prod.lock"))
    assert run_events("gate_refused")[0].details["step"] == "prod.lock"


def test_a_held_run_waits_deferred_and_records_the_hold_once():
    seed("run_admitted", lane=LANE_NORMAL, task_id="admit")
    seed("packaged", task_id="package")
    other("run_admitted", lane=LANE_HOTFIX, why="hotfix for INC-7 (sev1)")
    for _ in range(2):
        with pytest.raises(TaskDeferred) as deferred:
            lock().execute(context(AliveTI({f"{DAG_ID}/{OTHER}": 1}), task_id="prod.lock"))
        trigger = deferred.value.trigger
        assert isinstance(trigger, HotfixHoldTrigger) and trigger.run_id == OTHER
    [held] = run_events("run_held")
    assert held.details["by"] == OTHER and held.details["held"] == RUN_ID
    assert not queue("t_prod"), "a held run keeps no place in the target's queue"
    # the hotfix run is gone from Airflow without a recorded end: the hold lifts
    assert lock().execute(context(AliveTI(), task_id="prod.lock"))["holder"].startswith(f"{DAG_ID}/{RUN_ID}")


def test_a_run_cut_before_a_hotfix_reached_production_is_superseded():
    seed("run_admitted", lane=LANE_NORMAL, task_id="admit")
    seed("packaged", task_id="package")
    other("run_admitted", lane=LANE_HOTFIX, why="hotfix for INC-7 (sev1)")
    other("packaged")
    other("environment_passed", environment="prod")
    with pytest.raises(AirflowFailException, match="superseded by hotfix run manual__other .* trigger a new run"):
        lock().execute(context(AliveTI({f"{DAG_ID}/{OTHER}": 1}), task_id="prod.lock"))
    [superseded] = run_events("run_superseded")
    assert superseded.details["by"] == OTHER and superseded.details["environment"] == "prod"
    assert not run_events("lock_acquired")


def test_a_hotfix_run_goes_first_in_a_targets_queue():
    seed("run_admitted", lane=LANE_HOTFIX, task_id="admit")
    take("t_prod", "release_other/manual__1")
    take("t_prod", "release_other/manual__2", priority=1000)  # a critical release's run waits too
    with pytest.raises(TaskDeferred) as deferred:
        lock().execute(context(AliveTI({"release_other/manual__1": 1}), task_id="prod.lock"))
    assert deferred.value.trigger.priority == HOTFIX_LOCK_PRIORITY
    assert queue("t_prod")[0][0].startswith(f"{DAG_ID}/{RUN_ID}"), queue("t_prod")


def test_the_hold_trigger_fires_when_the_hotfix_reaches_production_and_hands_back_otherwise():
    def first(trigger: HotfixHoldTrigger) -> dict:
        async def run():
            async for event in trigger.run():
                return event.payload

        return asyncio.run(run())

    def trigger() -> HotfixHoldTrigger:
        return HotfixHoldTrigger(
            release=RELEASE,
            dag_id=DAG_ID,
            run_id=OTHER,
            production=["prod"],
            ledger_conn_id="releasetrain_ledger",
            poll_interval=0.05,
            recheck_after=0.3,
        )

    other("environment_passed", environment="staging")
    assert first(trigger()) == {"hold_over": False, "recheck": True}
    other("environment_passed", environment="prod")
    assert first(trigger()) == {"hold_over": True, "recheck": False}
    assert trigger().serialize()[0] == "releasetrain.triggers.train.HotfixHoldTrigger"
