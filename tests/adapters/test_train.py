"""The release train's lanes against a real (SQLite) ledger: a normal run waits for the one
before it; a hotfix run goes beside it, holds it, and supersedes it once in production."""

from __future__ import annotations

import asyncio

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from releasetrain.core.vocabulary import HOTFIX_LOCK_PRIORITY, LANE_HOTFIX, LANE_NORMAL, TRAIN_MAX_WAITING, train_slot
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


def other(event: str, run_id: str = OTHER, environment: str = "", **details) -> None:
    """An event of another run of the release (as its own task would have recorded it)."""
    hook = LedgerHook()
    try:
        hook.append(event, release=RELEASE, run_id=run_id, dag_id=DAG_ID, environment=environment, details=details)
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


def started() -> None:
    """What the listener records when this run starts running (its incarnation)."""
    seed("run_started", actor="airflow", clear_number=0, dag_run_key="1:a")


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
    started()
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


def test_a_hotfix_goes_beside_the_normal_run_in_a_gate_and_holds_it_once_allowed():
    started()
    from releasetrain.operators.train import hold_the_train

    assert take(NORMAL_SLOT, f"{DAG_ID}/{OTHER}@1:x")
    result = admit().execute(context(AliveTI({f"{DAG_ID}/{OTHER}": 1}), params=HOTFIX, task_id="admit"))
    assert result["lane"] == LANE_HOTFIX and result["kind"] == "hotfix" and result["why"] == "hotfix for INC-7 (sev1)"
    assert not run_events("run_held"), "a hotfix its policy has not allowed yet holds nothing"
    # what the hotfix policy step does once it allowed the hotfix
    ctx = context(AliveTI(), params=HOTFIX, task_id="hotfix_policy")
    assert hold_the_train(ctx, RELEASE, result["why"], admit().log) == OTHER
    [held] = run_events("run_held")
    assert held.details == {"held": OTHER, "by": RUN_ID, "why": result["why"], "task_id": "hotfix_policy"}


def test_an_emergency_run_holds_the_train_when_admitted():
    started()
    take(NORMAL_SLOT, f"{DAG_ID}/{OTHER}")
    urgent = {**PARAMS, "emergency": True, "emergency_justification": "card payments fail for every customer"}
    result = admit().execute(context(AliveTI({f"{DAG_ID}/{OTHER}": 1}), params=urgent, task_id="admit"))
    assert result["kind"] == "emergency"
    [held] = run_events("run_held")
    assert held.details["held"] == OTHER and held.details["why"].startswith("emergency: card payments")


def test_a_full_train_refuses_another_normal_run():
    started()
    take(NORMAL_SLOT, f"{DAG_ID}/{OTHER}")
    for n in range(TRAIN_MAX_WAITING):
        assert take(NORMAL_SLOT, f"{DAG_ID}/manual__{n}") == f"{DAG_ID}/{OTHER}"
    with pytest.raises(AirflowFailException, match="the release train is full: 16 normal runs"):
        admit().execute(context(AliveTI({f"{DAG_ID}/{OTHER}": 1}), task_id="admit"))
    # a hotfix still goes
    assert admit().execute(context(AliveTI(), params=HOTFIX, task_id="admit"))["lane"] == LANE_HOTFIX


def test_a_hotfix_param_the_release_does_not_offer_takes_no_lane_of_its_own():
    """Attack: a conf key the trigger form does not declare (no hotfix policy; a calendar offers
    the emergency param only) overtakes nothing."""
    started()
    take(NORMAL_SLOT, f"{DAG_ID}/{OTHER}")
    with pytest.raises(TaskDeferred) as deferred:
        admit(overtaking=["emergency"]).execute(
            context(AliveTI({f"{DAG_ID}/{OTHER}": 1}), params=HOTFIX, task_id="admit")
        )
    assert deferred.value.trigger.target == NORMAL_SLOT, "it waits in the normal lane"


def test_a_run_the_train_never_admitted_takes_no_target():
    """Attack: ``admit`` set to success by hand to skip the queue."""
    with pytest.raises(AirflowFailException, match="no admission to the release train recorded in the ledger by admit"):
        lock().execute(context(AliveTI(), task_id="prod.lock"))
    assert run_events("gate_refused")[0].details["step"] == "prod.lock"


def admitted_normal(version: str = "1.1.0") -> None:
    """This run: admitted in the normal lane (holding its place), packaged with web ``version``."""
    seed("run_admitted", lane=LANE_NORMAL, task_id="admit")
    take(NORMAL_SLOT, f"{DAG_ID}/{RUN_ID}")
    seed("packaged", task_id="package", components=[{"name": "web", "version": version}])


def allowed_hotfix() -> None:
    """Another run: a hotfix its policy allowed (web 1.0.1), packaged."""
    other("run_admitted", lane=LANE_HOTFIX, kind="hotfix", why="hotfix for INC-7 (sev1)")
    other("hotfix_decided", allowed=True, changed={"web": "1.0.1"})
    other("packaged", components=[{"name": "web", "version": "1.0.1"}])


def test_a_run_that_lost_its_place_in_the_train_takes_no_target():
    """Attack: a run admitted once, whose place another run took meanwhile (stale takeover,
    cleared admit), must not deploy beside that run."""
    seed("run_admitted", lane=LANE_NORMAL, task_id="admit")
    take(NORMAL_SLOT, f"{DAG_ID}/{OTHER}")
    with pytest.raises(AirflowFailException, match="does not hold its place in the release train"):
        lock().execute(context(AliveTI({f"{DAG_ID}/{OTHER}": 1}), task_id="prod.lock"))


def test_a_held_run_waits_deferred_and_records_the_hold_once():
    admitted_normal()
    allowed_hotfix()
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
    admitted_normal()
    allowed_hotfix()
    other("environment_passed", environment="prod")
    with pytest.raises(AirflowFailException, match="superseded by hotfix run manual__other .* trigger a new run"):
        lock().execute(context(AliveTI({f"{DAG_ID}/{OTHER}": 1}), task_id="prod.lock"))
    [superseded] = run_events("run_superseded")
    assert superseded.details["by"] == OTHER and superseded.details["environment"] == "prod"
    assert not run_events("lock_acquired")


def test_a_normal_run_that_took_a_target_while_a_hotfix_came_gives_it_back():
    """The hold is asked again once the lock trigger took the target: a hotfix allowed while
    this run waited for another release's deploy is not overtaken."""
    admitted_normal()
    take("t_prod", f"{DAG_ID}/{RUN_ID}")  # what the trigger did
    allowed_hotfix()
    with pytest.raises(TaskDeferred) as deferred:
        lock().execute_complete(context(AliveTI({f"{DAG_ID}/{OTHER}": 1}), task_id="prod.lock"), {"acquired": True})
    assert isinstance(deferred.value.trigger, HotfixHoldTrigger)
    hook = LedgerHook()
    try:
        assert hook.store.lock_holder("t_prod") is None, "the target was given back"
    finally:
        hook.close()
    assert not run_events("lock_acquired")


def test_a_hotfix_run_goes_first_in_a_targets_queue():
    seed("run_admitted", lane=LANE_HOTFIX, task_id="admit")
    take(train_slot(DAG_ID, LANE_HOTFIX), f"{DAG_ID}/{RUN_ID}")
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

    def trigger(production=("prod",), **kw) -> HotfixHoldTrigger:
        return HotfixHoldTrigger(
            release=RELEASE,
            dag_id=DAG_ID,
            run_id=OTHER,
            production=list(production),
            ledger_conn_id="releasetrain_ledger",
            poll_interval=0.05,
            recheck_after=0.3,
            **kw,
        )

    other("environment_passed", environment="staging")
    assert first(trigger()) == {"hold_over": False, "recheck": True}
    other("environment_passed", environment="prod")
    assert first(trigger()) == {"hold_over": True, "recheck": False}
    # records under the hotfix's id from before its admission are another run's
    assert first(trigger(since=10_000)) == {"hold_over": False, "recheck": True}
    # a run that carries the fix waits for every production environment
    assert first(trigger(production=["prod", "prod-eu"], any_production=False))["hold_over"] is False
    assert trigger().serialize()[0] == "releasetrain.triggers.train.HotfixHoldTrigger"


def test_a_finished_run_cleared_from_its_lock_is_told_it_released_the_target():
    """The gates e2e (a finished run cleared): the refusal names the release of the target,
    not the train place the listener freed when the run ended."""
    admitted_normal()
    seed("lock_released", environment="prod", task_id="prod.unlock", target="t_prod", holder=f"{DAG_ID}/{RUN_ID}")
    hook = LedgerHook()
    try:
        hook.store.unlock_run(f"{DAG_ID}/{RUN_ID}")
    finally:
        hook.close()
    with pytest.raises(AirflowFailException, match="already held and released deploy target t_prod for prod"):
        lock().execute(context(AliveTI(), task_id="prod.lock"))


def test_a_lock_cleared_mid_stage_keeps_its_target_instead_of_waiting_for_a_hotfix():
    """Review: the normal run holds prod's target (deployed, checking); its lock is cleared by
    a user while a hotfix is allowed. Waiting would deadlock (the hotfix waits for this very
    target): the stage in progress keeps it, the hotfix takes it next."""
    admitted_normal()
    take("t_prod", f"{DAG_ID}/{RUN_ID}")
    allowed_hotfix()
    assert lock().execute(context(AliveTI({f"{DAG_ID}/{OTHER}": 1}), task_id="prod.lock"))["target"] == "t_prod"


def test_a_finished_hotfix_run_cleared_does_not_decide_again():
    from releasetrain.operators.hotfix import HotfixPolicyOperator

    seed("run_state", actor="airflow", state="success", message="")
    decide = HotfixPolicyOperator(
        task_id="hotfix_policy",
        release=RELEASE,
        policy={"severities": ["sev1"], "components": None, "exclude_in_test": True},
        components=[{"name": "web", "version": None}],
        production=["prod"],
        admit_task_id="admit",
    )
    with pytest.raises(AirflowFailException, match="already ended success"):
        decide.execute(context(AliveTI(), params=HOTFIX, task_id="hotfix_policy"))
    assert not run_events("hotfix_decided")


def _deploy(monkeypatch, url: str):
    from releasetrain.operators.deploy import EnvironmentDeployOperator
    from tests.helpers import http_connection

    monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
    return EnvironmentDeployOperator(
        task_id="prod.deploy",
        release=RELEASE,
        environment="prod",
        deploy_target_conn_id="t_prod",
        verify_task_id="prod.verify",
        poll_interval=0.1,
        admit_task_id="admit",
        production_environments=["prod"],
    )


@pytest.mark.parametrize("lock_recorded", [False, True], ids=["lock-set-by-hand", "lock-taken-before-the-hold"])
def test_a_held_run_whose_lock_was_marked_successful_by_hand_deploys_nothing(monkeypatch, lock_recorded):
    """Review: the lock trigger took the target, and a user marked the lock successful before
    its execute_complete asked about the hold. The deploy asks itself."""
    from tests.helpers import running_fleet

    admitted_normal()
    take("t_prod", f"{DAG_ID}/{RUN_ID}")
    if lock_recorded:  # honest: the stage took its target before the hotfix was allowed
        seed("lock_acquired", environment="prod", task_id="prod.lock", target="t_prod", holder=f"{DAG_ID}/{RUN_ID}")
    allowed_hotfix()
    seed("verified", environment="prod", task_id="prod.verify", version="2.0.0", digest="sha256:" + "ab" * 32)
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        deploy = _deploy(monkeypatch, url)
        ctx = context(AliveTI({f"{DAG_ID}/{OTHER}": 1}), task_id="prod.deploy")
        if lock_recorded:
            with pytest.raises(TaskDeferred):
                deploy.execute(ctx)
            return
        with pytest.raises(AirflowFailException, match="held while hotfix run manual__other"):
            deploy.execute(ctx)
        assert fleet.env("prod")["version"] == "1.0.0"


def test_a_superseded_run_deploys_nothing_even_holding_its_target(monkeypatch):
    from tests.helpers import running_fleet

    admitted_normal()
    take("t_prod", f"{DAG_ID}/{RUN_ID}")
    seed("lock_acquired", environment="prod", task_id="prod.lock", target="t_prod", holder=f"{DAG_ID}/{RUN_ID}")
    allowed_hotfix()
    other("environment_passed", environment="prod")
    seed("verified", environment="prod", task_id="prod.verify", version="2.0.0", digest="sha256:" + "ab" * 32)
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        with pytest.raises(AirflowFailException, match="superseded by hotfix run manual__other"):
            _deploy(monkeypatch, url).execute(context(AliveTI({f"{DAG_ID}/{OTHER}": 1}), task_id="prod.deploy"))


def test_admission_waits_for_the_runs_start_to_be_recorded():
    """An admission recorded before the listener's run_started would belong to no incarnation
    (and the run's lock would find no admission): admit waits for it, deferred, then gives up
    waiting after 30 s."""
    with pytest.raises(TaskDeferred) as deferred:
        admit().execute(context(AliveTI(), task_id="admit"))
    assert deferred.value.method_name == "after_start" and deferred.value.kwargs == {"waited": 1}
    assert not run_events("run_admitted")
    started()
    result = admit().after_start(context(AliveTI(), task_id="admit"), event=None, waited=1)
    [admitted] = run_events("run_admitted")
    assert result["lane"] == LANE_NORMAL and admitted.details["incarnation"] == "1:a"
