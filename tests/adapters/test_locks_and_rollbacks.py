"""A run's hold on its deploy target, and rollbacks that only undo what they were meant to.

Each test is an attack from the attacker review of issue 10, replayed against the operators
with a real demo fleet and a real (SQLite) ledger: clearing a finished run's lock, a run
deleted and triggered again under the same id, a stale plan or approval in a manual
rollback, a lock held by a run that no longer exists.
"""

from __future__ import annotations

import asyncio
import re

import pytest
from airflow.sdk.exceptions import AirflowFailException, TaskDeferred

from releasetrain.core.evidence import UNPROVEN_SUCCESS, summarise
from releasetrain.core.ledger import LedgerEvent
from releasetrain.hooks.ledger import LedgerHook
from releasetrain.operators.lock import TargetLockOperator, TargetUnlockOperator, parse_holder
from releasetrain.operators.manual_rollback import ManualRollbackOperator
from releasetrain.operators.rollback import RollbackOperator
from releasetrain.triggers.lock import TargetLockTrigger
from tests.helpers import DAG_ID, RELEASE, RUN_ID, FakeTI, context, http_connection, run_events, running_fleet, seed

DIGEST = "sha256:" + "ab" * 32
ME = f"{DAG_ID}/{RUN_ID}"


class AliveTI(FakeTI):
    """A task instance that answers Airflow's "how many runs match" (``get_dr_count``)."""

    def __init__(self, alive: dict[str, int] | None = None, **kw):
        super().__init__(**kw)
        self.alive = dict(alive or {})
        self.asked: list[tuple[str, list[str]]] = []

    def get_dr_count(self, dag_id, run_ids=None, states=None, logical_dates=None):
        self.asked.append((dag_id, list(run_ids or [])))
        return self.alive.get(f"{dag_id}/{run_ids[0]}", 0)


def store():
    return LedgerHook()


def holder(target: str = "t_prod") -> str | None:
    hook = store()
    try:
        return hook.store.lock_holder(target)
    finally:
        hook.close()


def hold(who: str, target: str = "t_prod") -> None:
    hook = store()
    try:
        assert hook.store.try_lock(target, who) == who
    finally:
        hook.close()


def lock_op(**kw) -> TargetLockOperator:
    return TargetLockOperator(task_id="prod.lock", release=RELEASE, environment="prod", target="t_prod", **kw)


def started(clear_number: int, key: str) -> None:
    """What the listener records when the run starts running."""
    seed("run_started", actor="airflow", clear_number=clear_number, dag_run_key=key)


# --- the lock ---------------------------------------------------------------------------------
def test_holder_names_parse():
    assert parse_holder("release_x/manual__1@7:2026") == ("release_x", "manual__1", "7:2026")
    assert parse_holder("release_x/manual__1") == ("release_x", "manual__1", "")


def test_a_run_that_released_its_lock_never_takes_it_again():
    """Attack: clear an old finished run's prod.lock and everything after it, so its deploy
    (and its one_failed rollback) act again on today's prod."""
    started(0, "1:a")
    seed("lock_acquired", environment="prod", task_id="prod.lock", target="t_prod", holder=f"{ME}@1:a")
    seed("lock_released", environment="prod", task_id="prod.unlock", target="t_prod", holder=f"{ME}@1:a")
    with pytest.raises(AirflowFailException, match="already held and released deploy target t_prod for prod"):
        lock_op().execute(context(AliveTI(), task_id="prod.lock"))
    assert holder() is None
    [refused] = run_events("gate_refused")
    assert refused.details["step"] == "prod.lock"


def test_a_run_that_ended_never_takes_a_lock_again():
    started(0, "1:a")
    seed("run_state", actor="airflow", state="failed", message="")
    with pytest.raises(AirflowFailException, match="already ended failed .* trigger a new run"):
        lock_op().execute(context(AliveTI(), task_id="prod.lock"))
    assert holder() is None


def test_two_environments_on_one_target_each_take_the_lock_once():
    """staging released the shared target; prod may still take it (the rule is per environment)."""
    started(0, "1:a")
    seed("lock_released", environment="staging", task_id="staging.unlock", target="t_prod", holder=f"{ME}@1:a")
    assert lock_op().execute(context(AliveTI(), task_id="prod.lock"))["holder"] == f"{ME}@1:a"
    assert holder() == f"{ME}@1:a"


def test_a_deleted_run_triggered_again_under_its_id_inherits_neither_records_nor_lock():
    """Attack: the deleted run held prod's lock and had approvals; the new run under the same
    run id must not hold the lock by name, nor see the approvals."""
    from releasetrain.operators._common import run_ledger

    started(0, "1:old")
    seed("approval_given", environment="prod", actor="approver", task_id="prod.approve", digest=DIGEST)
    hold(f"{ME}@1:old")
    started(0, "2:new")  # the run was deleted and triggered again: clear number 0 once more
    ctx = context(AliveTI({ME: 1}), task_id="prod.lock")
    assert not run_ledger(ctx, RELEASE).of("approval_given"), "the deleted run's approval was inherited"
    result = lock_op().execute(ctx)
    assert result["holder"] == f"{ME}@2:new" and holder() == f"{ME}@2:new"
    [taken] = [e for e in run_events("lock_acquired") if e.details.get("taken_over_from")]
    assert taken.details["taken_over_from"] == f"{ME}@1:old" and "deleted" in taken.details["why"]


def test_a_cleared_run_keeps_its_records():
    from releasetrain.operators._common import run_ledger

    started(0, "1:a")
    seed("approval_given", environment="prod", actor="approver", task_id="prod.approve", digest=DIGEST)
    started(2, "1:a")  # cleared and running again
    ledger = run_ledger(context(AliveTI(), task_id="prod.lock"), RELEASE)
    assert [e.actor for e in ledger.of("approval_given")] == ["approver"]
    assert ledger.incarnation == "1:a"


@pytest.mark.parametrize(
    "alive, takes_over",
    [({}, True), ({"release_other/manual__9": 1}, False)],
    ids=["holder-run-gone", "holder-run-alive"],
)
def test_a_lock_held_by_a_run_that_no_longer_runs_is_taken_over(alive, takes_over):
    hold("release_other/manual__9@4:x")
    ti = AliveTI(alive)
    if takes_over:
        assert lock_op().execute(context(ti, task_id="prod.lock"))["holder"] == ME
        assert holder() == ME
        [taken] = run_events("lock_acquired")[:1]
        assert "ended or was deleted" in taken.details["why"]
    else:
        with pytest.raises(TaskDeferred) as deferred:
            lock_op().execute(context(ti, task_id="prod.lock"))
        assert isinstance(deferred.value.trigger, TargetLockTrigger)
        assert holder() == "release_other/manual__9@4:x"
    assert ti.asked == [("release_other", ["manual__9"])]


def test_the_lock_trigger_hands_back_for_a_recheck(fresh_ledger):
    hold("release_other/manual__9")
    trigger = TargetLockTrigger(
        target="t_prod", holder=ME, ledger_conn_id="releasetrain_ledger", poll_interval=0.05, recheck_after=0.2
    )

    async def first():
        async for event in trigger.run():
            return event.payload

    payload = asyncio.run(first())
    assert payload["recheck"] and not payload["acquired"] and "release_other/manual__9" in payload["error"]
    assert trigger.serialize()[1]["recheck_after"] == 0.2


def test_a_rechecked_wait_takes_the_lock_once_the_holder_is_gone():
    hold("release_other/manual__9")
    op = lock_op()
    result = op.execute_complete(context(AliveTI(), task_id="prod.lock"), {"acquired": False, "recheck": True})
    assert result["holder"] == ME


def test_unlock_releases_only_this_incarnations_hold():
    started(0, "2:new")
    hold(f"{ME}@1:old")
    op = TargetUnlockOperator(task_id="prod.unlock", release=RELEASE, environment="prod", target="t_prod")
    assert op.execute(context(AliveTI(), task_id="prod.unlock"))["released"] is False
    assert holder() == f"{ME}@1:old"
    hook = store()
    try:  # the listener, at a run's end, frees only what that incarnation (or the bare run) holds
        assert hook.store.unlock_run(ME, incarnation="2:new") == []
        assert holder() == f"{ME}@1:old"
        assert hook.store.unlock_run(ME, incarnation="1:old") == ["t_prod"]
        hold(ME)
        assert hook.store.unlock_run(ME, incarnation="2:new") == ["t_prod"]
        hold(f"{ME}@3:other")
        assert hook.store.unlock_run(ME) == ["t_prod"], "no incarnation given: any of the run's"
    finally:
        hook.close()
    assert holder() is None


# --- a release's rollback ---------------------------------------------------------------------
def rollback_op() -> RollbackOperator:
    return RollbackOperator(
        task_id="prod.rollback",
        release=RELEASE,
        environment="prod",
        deploy_target_conn_id="t_prod",
        deploy_task_id="prod.deploy",
        poll_interval=0.1,
        locked=True,
    )


def test_a_rollback_never_undoes_a_version_this_run_did_not_deploy(monkeypatch):
    """Attack (finding 1): prod now runs someone else's 3.0.0; this run's rollback would
    return prod to this run's pre-deploy 1.0.0, undoing 3.0.0 without a word."""
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        old = fleet.env("prod")["digest"]
        seed(
            "deploy_started",
            environment="prod",
            task_id="prod.deploy",
            version="2.0.0",
            digest=DIGEST,
            before={"version": "1.0.0", "digest": old, "noop": False},
        )
        fleet.env("prod").update(version="3.0.0", digest="sha256:" + "cd" * 32)
        hold(ME)
        with pytest.raises(AirflowFailException, match="runs 3.0.0 .*undo a change this run did not make"):
            rollback_op().execute(context(FakeTI(), task_id="prod.rollback"))
        assert fleet.deployments == {} and fleet.env("prod")["version"] == "3.0.0"
        [refused] = run_events("gate_refused")
        assert refused.details["step"] == "prod.rollback"


# --- a manual rollback ------------------------------------------------------------------------
ROLLBACK_DAG = "rollback_storefront"


def manual_seed(kind: str, *, where: str = "", actor: str = "", task_id: str = "", details: dict) -> None:
    """An event of the manual rollback run (its DAG is the release's rollback DAG)."""
    details = {**details, "task_id": task_id}
    hook = store()
    try:
        hook.append(
            kind,
            release=RELEASE,
            run_id=RUN_ID,
            dag_id=ROLLBACK_DAG,
            environment=where,
            actor=actor,
            details=details,
        )
    finally:
        hook.close()


def manual_ctx(ti=None) -> dict:
    ctx = context(ti or AliveTI(), task_id="rollback_prod", triggered_by="oncall", params={})
    ctx["dag_run"].dag_id = ROLLBACK_DAG
    return ctx


def manual_op(**kw) -> ManualRollbackOperator:
    return ManualRollbackOperator(
        task_id="rollback_prod",
        release=RELEASE,
        environment="prod",
        deploy_target_conn_id="t_prod",
        poll_interval=0.1,
        **kw,
    )


def planned(fleet, **overrides) -> dict:
    plan = {
        "environment": "prod",
        "from_version": "2.0.0",
        "from_digest": fleet.env("prod")["digest"],
        "version": "1.0.0",
        "digest": "sha256:" + "11" * 32,
        "source": "the newest good version",
        "reason": "checkout errors since 2.0.0",
        "requested_by": "oncall",
        **overrides,
    }
    manual_seed("rollback_requested", where="prod", actor="oncall", task_id="plan", details=plan)
    return plan


def test_a_manual_rollback_acts_only_on_the_state_its_plan_saw(monkeypatch):
    """Attack (finding 2): the plan saw 2.0.0; while it waited for the lock, a release put
    3.0.0 live. Rolling back now would undo 3.0.0, which nobody planned or approved."""
    with running_fleet(seed={"prod": "2.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        planned(fleet)
        fleet.env("prod").update(version="3.0.0", digest="sha256:" + "cd" * 32)
        with pytest.raises(AirflowFailException, match="runs 3.0.0 .*neither 2.0.0"):
            manual_op().execute(manual_ctx())
        assert fleet.deployments == {} and fleet.env("prod")["version"] == "3.0.0"


def test_a_rollback_approval_holds_only_for_the_plan_it_approved(monkeypatch):
    """Attack (finding 2): an approval of one plan (2.0.0 -> 1.0.0) is reused after the plan
    task is cleared and plans something else."""
    with running_fleet(seed={"prod": "2.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        first = planned(fleet)
        approved = {k: first[k] for k in ("environment", "from_version", "from_digest", "version", "digest")}
        manual_seed("approval_given", where="prod", actor="approver", task_id="approve_rollback", details=approved)
        planned(fleet, version="0.9.0", digest="sha256:" + "09" * 32)
        with pytest.raises(AirflowFailException, match="rollback approval of this plan|was for prod 2.0.0 -> 1.0.0"):
            manual_op(approval_task_id="approve_rollback").execute(manual_ctx())
        assert fleet.deployments == {} and holder() is None


def test_a_manual_rollback_frees_the_target_once_rolled_back(monkeypatch):
    """Finding 6: the rollback DAG held prod until its review was answered (days)."""
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        one = dict(fleet.env("prod"))
        fleet.env("prod").update(version="2.0.0", digest="sha256:" + "cd" * 32)
        planned(fleet, digest=one["digest"])
        op = manual_op()
        with pytest.raises(TaskDeferred):
            op.execute(manual_ctx())
        assert holder() == f"{ROLLBACK_DAG}/{RUN_ID}"
        [dep] = fleet.deployments.values()
        assert (dep["kind"], dep["version"]) == ("rollback", "1.0.0")
        fleet.env("prod").update(version="1.0.0", digest=one["digest"])  # the rollback deployment finished
        op.execute_complete(manual_ctx(), {"state": "succeeded", "message": "", "deployment_id": "d"})
        assert holder() is None


# --- evidence -------------------------------------------------------------------------------
def _event(seq: int, kind: str, **details) -> LedgerEvent:
    return LedgerEvent(seq, f"2026-11-28T10:00:{seq:02d}Z", RELEASE, RUN_ID, "", kind, "airflow", details)


def test_evidence_does_not_call_a_run_marked_successful_by_hand_a_success():
    by_hand = [_event(1, "triggered"), _event(2, "run_state", state="success")]
    assert summarise(by_hand)["outcome"] == UNPROVEN_SUCCESS
    completed = [
        _event(1, "triggered"),
        _event(2, "closure", outcome="success"),
        _event(3, "run_state", state="success"),
    ]
    assert summarise(completed)["outcome"] == "success"


def test_a_manual_rollback_that_finds_nothing_to_do_frees_the_target_too(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        one = dict(fleet.env("prod"))
        planned(fleet, from_version="1.0.0", from_digest=one["digest"], digest=one["digest"])
        manual_op().execute(manual_ctx())  # prod already runs 1.0.0: verified, recorded, done
        assert fleet.deployments == {} and holder() is None
        assert run_events_of(ROLLBACK_DAG, "lock_released")


def run_events_of(dag_id: str, kind: str) -> list:
    hook = store()
    try:
        return list(hook.events(release=RELEASE, run_id=RUN_ID, dag_id=dag_id, kind=kind))
    finally:
        hook.close()


def test_a_completed_rollback_is_never_failed_by_a_ledger_hiccup(monkeypatch):
    """Issue 11 finding 7: the rollback wrote its result last with no retry; a ledger hiccup
    then marked a completed rollback failed. Now its intent is written before it acts, and
    the outcome is retried and, failing that, logged without failing the task."""
    import releasetrain.operators.rollback as rollback_module
    from releasetrain.operators import _common

    monkeypatch.setattr(rollback_module, "RECORD_ATTEMPTS", 2)
    monkeypatch.setattr("time.sleep", lambda s: None)
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        old = dict(fleet.env("prod"))
        seed(
            "deploy_started",
            environment="prod",
            task_id="prod.deploy",
            version="2.0.0",
            digest=DIGEST,
            before={"version": "1.0.0", "digest": old["digest"], "noop": False},
        )
        fleet.env("prod").update(version="2.0.0", digest=DIGEST)
        hold(ME)
        op = rollback_op()
        with pytest.raises(TaskDeferred):
            op.execute(context(FakeTI(), task_id="prod.rollback"))
        [intent] = run_events("rollback_started")
        assert (intent.details["failed_version"], intent.details["restore_to"]) == ("2.0.0", "1.0.0")
        fleet.env("prod").update(version="1.0.0", digest=old["digest"])  # the rollback deployment finished
        original = _common.record

        def hiccup(context, kind, *args, **kwargs):
            if kind == "rollback":
                raise OSError("database is locked")
            return original(context, kind, *args, **kwargs)

        monkeypatch.setattr(rollback_module, "record", hiccup)
        ti = FakeTI()
        result = op.execute_complete(context(ti, task_id="prod.rollback"), {"state": "succeeded", "message": ""})
        assert result["restored_version"] == "1.0.0"
        assert ti.xcoms[("__self__", "unrecorded_rollback")]["error"] == "database is locked"
        assert not run_events("rollback")


def test_taking_a_stale_lock_over_does_not_jump_the_queue():
    """Attacker review (issue 13): the holder's run is gone; the first waiter to notice frees
    the target, but the queue (business impact, then arrival) still says who takes it."""
    hold("release_other/manual__9")  # its run no longer exists (AliveTI knows no runs)
    hook = store()
    try:
        assert hook.store.try_lock("t_prod", "release_critical/manual__1", 1000) == "release_other/manual__9"
    finally:
        hook.close()
    with pytest.raises(TaskDeferred):
        lock_op(priority=10).execute(context(AliveTI(), task_id="prod.lock"))
    assert holder() is None, "the stale lock is gone, and the medium waiter did not take it"
    hook = store()
    try:
        assert hook.store.try_lock("t_prod", "release_critical/manual__1", 1000) == "release_critical/manual__1"
    finally:
        hook.close()


# --- packaging modular: the manual rollback returns each unit, under one hold ------------------
def test_a_modular_manual_rollback_returns_each_unit_to_its_own_bundle_and_frees_the_target_last(monkeypatch):
    old_web, old_api = "sha256:" + "a1" * 32, "sha256:" + "a2" * 32
    with running_fleet() as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        for unit, old in (("web", old_web), ("api", old_api)):
            new = "sha256:" + ("b1" if unit == "web" else "b2") * 32
            state = fleet.env(f"prod/{unit}")
            state["history"] += [{"version": "1.0.0", "digest": old}, {"version": "2.0.0", "digest": new}]
            state.update(version="2.0.0", digest=new)
        units = {
            u: {"from_version": "2.0.0", "from_digest": fleet.env(f"prod/{u}")["digest"], "digest": d}
            for u, d in (("web", old_web), ("api", old_api))
        }
        planned(fleet, from_digest=None, digest="sha256:" + "11" * 32, units=units)
        web = manual_op(unit="web", last=False)
        with pytest.raises(TaskDeferred):
            web.execute(manual_ctx())
        [dep] = fleet.deployments.values()
        assert (dep["environment"], dep["kind"], dep["version"], dep["digest"]) == (
            "prod/web",
            "rollback",
            "1.0.0",
            old_web,
        )
        fleet.advance()
        fleet.env("prod/web").update(version="1.0.0", digest=old_web)
        web.execute_complete(manual_ctx(), {"state": "succeeded", "message": "", "deployment_id": dep["deployment_id"]})
        assert holder() == f"{ROLLBACK_DAG}/{RUN_ID}", "the next unit still needs the target"
        assert fleet.env("prod/api")["version"] == "2.0.0", "one unit at a time"
        api = manual_op(unit="api", last=True)
        with pytest.raises(TaskDeferred):
            api.execute(manual_ctx())
        [dep] = [d for d in fleet.deployments.values() if d["environment"] == "prod/api"]
        assert (dep["version"], dep["digest"]) == ("1.0.0", old_api)
        fleet.env("prod/api").update(version="1.0.0", digest=old_api)
        api.execute_complete(manual_ctx(), {"state": "succeeded", "message": "", "deployment_id": dep["deployment_id"]})
        assert holder() is None, "the last unit frees the target"
        rollbacks = run_events_of(ROLLBACK_DAG, "rollback")
        assert sorted((e.details["unit"], e.details["restored_version"]) for e in rollbacks) == [
            ("api", "1.0.0"),
            ("web", "1.0.0"),
        ]


def test_a_unit_the_rollback_plan_does_not_name_is_not_rolled_back(monkeypatch):
    with running_fleet() as (fleet, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        planned(fleet, units={"web": {"from_version": "2.0.0", "from_digest": None, "digest": None}})
        with pytest.raises(AirflowFailException, match="says nothing of unit api"):
            manual_op(unit="api").execute(manual_ctx())
        assert fleet.deployments == {}


def _released(run_id: str, version: str, units: dict[str, tuple[list[str], str]]) -> None:
    """A modular release run of ``version`` that packaged these units and passed prod."""
    hook = store()
    try:
        packaged = [{"unit": u, "components": c, "digest": d} for u, (c, d) in units.items()]
        hook.append(
            "packaged", release=RELEASE, run_id=run_id, dag_id=DAG_ID, details={"version": version, "units": packaged}
        )
        hook.append(
            "environment_passed",
            release=RELEASE,
            run_id=run_id,
            dag_id=DAG_ID,
            environment="prod",
            details={"version": version, "digest": "sha256:" + "ee" * 32},
        )
    finally:
        hook.close()


def plan_units(fleet, monkeypatch, url, **units_now):
    from releasetrain.operators.manual_rollback import ManualRollbackPlanOperator

    monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
    for unit, (version, digest) in units_now.items():
        fleet.env(f"prod/{unit}").update(version=version, digest=digest)
    op = ManualRollbackPlanOperator(
        task_id="plan", release=RELEASE, targets={"prod": "t_prod"}, units={"web": ["web"], "api": ["api", "worker"]}
    )
    ctx = context(
        AliveTI(), task_id="plan", triggered_by="oncall", params={"environment": "prod", "reason": "incident"}
    )
    ctx["dag_run"].dag_id = ROLLBACK_DAG
    return op.execute(ctx)


def test_a_modular_rollback_plan_names_each_units_bundle_of_the_newest_version_that_passed(monkeypatch):
    _released("r1", "1.0.0", {"web": (["web"], "sha256:w1"), "api": (["api", "worker"], "sha256:a1")})
    _released("r2", "1.1.0", {"web": (["web"], "sha256:w2"), "api": (["api", "worker"], "sha256:a2")})
    with running_fleet() as (fleet, url):
        plan = plan_units(fleet, monkeypatch, url, web=("1.1.0", "sha256:w2"), api=("1.1.0", "sha256:a2"))
    assert (plan["from_version"], plan["version"]) == ("1.1.0", "1.0.0")
    assert plan["units"] == {
        "web": {"from_version": "1.1.0", "from_digest": "sha256:w2", "digest": "sha256:w1"},
        "api": {"from_version": "1.1.0", "from_digest": "sha256:a2", "digest": "sha256:a1"},
    }


@pytest.mark.parametrize(
    "then, now, reason",
    [
        (  # the worker was not coupled with the api then: that bundle is not today's unit
            {"web": (["web"], "sha256:w1"), "api": (["api"], "sha256:a1")},
            {"web": ("1.1.0", "sha256:w2"), "api": ("1.1.0", "sha256:a2")},
            "unit api (api, worker) has no bundle of 1.0.0 (then: api)",
        ),
        (
            {"web": (["web"], "sha256:w1")},  # packaged without an api unit
            {"web": ("1.1.0", "sha256:w2"), "api": ("1.1.0", "sha256:a2")},
            "unit api (api, worker) has no bundle of 1.0.0: roll back",
        ),
        (  # web was left behind: a rollback moves nothing forward
            {"web": (["web"], "sha256:w1"), "api": (["api", "worker"], "sha256:a1")},
            {"web": ("0.9.0", "sha256:w0"), "api": ("1.1.0", "sha256:a2")},
            "unit web runs 0.9.0, older than 1.0.0",
        ),
    ],
)
def test_a_modular_rollback_plan_refuses_units_it_cannot_return_as_they_are(monkeypatch, then, now, reason):
    _released("r1", "1.0.0", then)
    with running_fleet() as (fleet, url):
        with pytest.raises(AirflowFailException, match=re.escape(reason)):
            plan_units(fleet, monkeypatch, url, **now)
        assert fleet.deployments == {}
    assert not run_events_of(ROLLBACK_DAG, "rollback_requested")
