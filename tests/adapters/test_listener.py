"""The listener: run states and hand-made task states go to the ledger, off the caller's thread."""

from __future__ import annotations

import json
import threading
from types import SimpleNamespace

import pytest

from releasetrain import listener
from releasetrain.core.change import ChangeState
from releasetrain.hooks.ledger import BuiltinChangeBackend, LedgerHook
from tests.conftest import init_ledger


@pytest.fixture
def ledger(tmp_path, monkeypatch):
    monkeypatch.setenv(
        "AIRFLOW_CONN_RELEASETRAIN_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "l.db")})
    )
    init_ledger(tmp_path / "l.db")
    threads = []
    original = listener._append

    def spy(*args, **kwargs):
        threads.append(threading.get_ident())
        return original(*args, **kwargs)

    monkeypatch.setattr(listener, "_append", spy)
    yield threads


def events(run_id):
    return list(LedgerHook().events(release="storefront", run_id=run_id))


def test_a_failed_run_is_recorded_and_its_open_change_canceled_off_the_callers_thread(ledger):
    backend = BuiltinChangeBackend()
    ref = backend.open(
        correlation_id="storefront/release_storefront/run1",
        change_type="normal",
        short_description="x",
        description="y",
        risk="low",
        planned_start=None,
        planned_end=None,
    )
    backend.move_to(ref, ChangeState.AUTHORIZE, note="risk assessed")
    listener.on_dag_run_failed(SimpleNamespace(dag_id="release_storefront", run_id="run1"), "approval rejected")
    listener.flush()
    recorded = events("run1")
    assert recorded[-2].kind == "run_state" and recorded[-2].details["state"] == "failed"
    assert recorded[-1].kind == "change_closed" and recorded[-1].details["state"] == "canceled"
    # listeners run inside the scheduler's DB session: the ledger work must happen on another thread
    assert ledger and threading.get_ident() not in ledger


def test_a_rollback_run_reusing_a_release_run_id_never_closes_the_release_change(ledger):
    backend = BuiltinChangeBackend()
    ref = backend.open(
        correlation_id="storefront/release_storefront/run7",
        change_type="normal",
        short_description="x",
        description="y",
        risk="low",
        planned_start=None,
        planned_end=None,
    )
    backend.move_to(ref, ChangeState.AUTHORIZE, note="risk assessed")
    listener.on_dag_run_failed(SimpleNamespace(dag_id="rollback_storefront", run_id="run7"), "no version")
    listener.flush()
    assert backend.get(ref).state == ChangeState.AUTHORIZE, "runs are keyed by DAG id and run id"
    [ended] = [e for e in events("run7") if e.kind == "run_state"]
    assert ended.dag_id == "rollback_storefront"


def test_hand_made_task_states_are_recorded_and_task_runner_reports_are_not(ledger):
    ti = SimpleNamespace(dag_id="release_storefront", run_id="run2", task_id="prod.approve")
    listener.on_task_instance_success(previous_state=None, task_instance=ti)  # the API: set by hand
    listener.on_task_instance_success(previous_state="running", task_instance=ti)  # the task itself
    listener.on_task_instance_failed(previous_state=None, task_instance=ti, error="marked failed")
    listener.flush()
    assert [e.details for e in events("run2")] == [
        {"task_id": "prod.approve", "state": "success", "by_hand": True},
        {"task_id": "prod.approve", "state": "failed", "by_hand": True},
    ]


def test_other_dags_are_ignored_and_errors_never_reach_airflow(ledger, monkeypatch):
    listener.on_dag_run_success(SimpleNamespace(dag_id="etl_daily", run_id="r"), "")
    listener.flush()
    assert ledger == []
    monkeypatch.setenv("AIRFLOW_CONN_RELEASETRAIN_LEDGER", json.dumps({"conn_type": "ftp", "host": "x"}))
    listener.on_dag_run_success(SimpleNamespace(dag_id="release_storefront", run_id="r3"), "")  # logged, not raised
    listener.flush()


def test_a_run_start_is_recorded_with_its_row_key(ledger):
    import datetime as dt

    created = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
    run = SimpleNamespace(dag_id="release_storefront", run_id="run9", id=41, created_at=created, clear_number=3)
    listener.on_dag_run_running(run, "started")
    [started] = events("run9")
    assert started.kind == "run_started" and started.details == {
        "clear_number": 3,
        "dag_run_key": "41:2026-11-28T10:00:00+00:00",
    }
    listener.on_dag_run_running(SimpleNamespace(dag_id="some_other_dag", run_id="run9"), "started")
    assert len(events("run9")) == 1, "only release DAGs are recorded"


def test_a_deleted_runs_late_end_frees_only_its_own_locks(ledger):
    """A run deleted and triggered again under its id: the new run's start may be written before
    the old one's end (starts have their own worker). The old end names its row key, releases
    only the old incarnation's locks and does not end the new run."""
    import datetime as dt

    from releasetrain.core.gatekeeper import RunLedger

    created = dt.datetime(2026, 11, 28, 10, 0, tzinfo=dt.UTC)
    old = SimpleNamespace(dag_id="release_storefront", run_id="r5", id=7, created_at=created, clear_number=0)
    new = SimpleNamespace(dag_id="release_storefront", run_id="r5", id=8, created_at=created, clear_number=0)
    listener.on_dag_run_running(old, "")
    listener.on_dag_run_running(new, "")
    old_key, new_key = listener._dag_run_key(old), listener._dag_run_key(new)
    hook = LedgerHook()
    try:
        hook.store.try_lock("t_prod", f"release_storefront/r5@{new_key}")
        hook.store.try_lock("t_stage", f"release_storefront/r5@{old_key}")
    finally:
        hook.close()
    listener.on_dag_run_failed(old, "deleted")
    listener.flush()
    hook = LedgerHook()
    try:
        assert hook.store.lock_holder("t_prod") == f"release_storefront/r5@{new_key}"
        assert hook.store.lock_holder("t_stage") is None
    finally:
        hook.close()
    recorded = events("r5")
    [end] = [e for e in recorded if e.kind == "run_state"]
    assert end.details["dag_run_key"] == old_key
    assert [e.details["target"] for e in recorded if e.kind == "lock_released"] == ["t_stage"]
    run = RunLedger(recorded)
    assert run.incarnation == new_key and run.ended() is None
    from releasetrain.core import gatekeeper

    [released] = [e for e in recorded if e.kind == "lock_released"]
    assert released.details["dag_run_key"] == old_key
    assert gatekeeper.may_lock(run, "staging", "t_stage", "staging.lock").allowed, "the old run's release is not ours"


def test_a_slow_ledger_never_stalls_the_scheduler_and_a_full_queue_leaves_a_recorded_gap(ledger, monkeypatch):
    """Issue 11 finding 7: a locked SQLite ledger held the scheduler for up to 60 s per event."""
    import queue
    import time

    original = listener._append

    def slow(*args, **kwargs):
        if args[0] != "listener_gap":
            time.sleep(0.5)
        return original(*args, **kwargs)

    monkeypatch.setattr(listener, "_append", slow)
    monkeypatch.setattr(listener, "_queue", queue.Queue(maxsize=1))
    monkeypatch.setattr(listener, "_starts", queue.Queue())
    monkeypatch.setattr(listener, "_workers", {})  # workers of the patched queues
    took = 0.0
    for i in range(3):  # one being written, one waiting, one dropped
        started = time.monotonic()
        listener.on_dag_run_success(SimpleNamespace(dag_id="release_storefront", run_id=f"q{i}"), "")
        took = max(took, time.monotonic() - started)
        deadline = time.monotonic() + 5
        while i == 0 and not listener._queue.empty() and time.monotonic() < deadline:
            time.sleep(0.01)  # the worker picked the first up
    assert took < 0.2, "the caller (the scheduler) never waits on the ledger"
    assert listener.flush(10)
    recorded = [e.run_id for e in LedgerHook().events(kind="run_state")]
    assert len(recorded) == 2
    [gap] = list(LedgerHook().events(kind="listener_gap"))
    assert gap.details["dropped"] == 1 and "the end of storefront" in gap.details["what"][0]


def test_run_starts_wait_bounded_in_order_and_start_no_threads_of_their_own(ledger, monkeypatch):
    """A stuck ledger: each run start holds the scheduler at most START_WAIT_SECONDS, and
    starts wait in the one bounded queue (no thread per start that could pile up)."""
    import queue
    import time

    original, gate = listener._append, threading.Event()

    def stuck(*args, **kwargs):
        gate.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(listener, "_append", stuck)
    monkeypatch.setattr(listener, "_queue", queue.Queue(maxsize=100))
    monkeypatch.setattr(listener, "_workers", {})  # workers of the patched queues
    monkeypatch.setattr(listener, "START_WAIT_SECONDS", 0.2)
    monkeypatch.setattr(listener, "_starts", queue.Queue())
    before = threading.active_count()
    for i in range(5):
        started = time.monotonic()
        run = SimpleNamespace(dag_id="release_storefront", run_id=f"s{i}", id=i, clear_number=0, created_at=None)
        listener.on_dag_run_running(run, "started")
        assert time.monotonic() - started < 1.5
    assert threading.active_count() <= before + 2, "a worker for events and one for starts, no thread per start"
    gate.set()
    assert listener.flush(10)
    assert [e.run_id for e in LedgerHook().events(kind="run_started")] == [f"s{i}" for i in range(5)]


def test_a_run_start_is_never_dropped_by_a_full_queue(ledger, monkeypatch):
    """Hand-set task states can fill the queue; a run's start must still be recorded, or a
    run deleted and triggered again under the same id would inherit the old run's records."""
    import queue
    import time

    original, gate = listener._append, threading.Event()

    def stuck(*args, **kwargs):
        gate.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(listener, "_append", stuck)
    monkeypatch.setattr(listener, "_queue", queue.Queue(maxsize=2))
    monkeypatch.setattr(listener, "_workers", {})  # workers of the patched queues
    monkeypatch.setattr(listener, "START_WAIT_SECONDS", 0.3)
    monkeypatch.setattr(listener, "_starts", queue.Queue())
    for i in range(4):  # one being written, two waiting, one dropped
        ti = SimpleNamespace(dag_id="release_storefront", run_id="r", task_id=f"t{i}")
        listener.on_task_instance_success(None, ti)  # set by hand (no previous state)
    run = SimpleNamespace(dag_id="release_storefront", run_id="r", id=7, clear_number=0, created_at=None)
    started = time.monotonic()
    listener.on_dag_run_running(run, "started")
    assert time.monotonic() - started < 2, "bounded wait"
    assert not any("the start of" in what for what in listener._dropped)
    gate.set()
    assert listener.flush(10)
    [start] = list(LedgerHook().events(kind="run_started"))
    assert start.details["dag_run_key"].startswith("7:")


def test_a_run_start_does_not_wait_behind_a_slow_event(ledger, monkeypatch):
    """A run's end writes a checkpoint (it verifies the chain): the scheduler's next run start
    must not wait for it."""
    import queue
    import time

    original, gate = listener._append, threading.Event()

    def slow_end(*args, **kwargs):
        if args[0] != "run_started":
            gate.wait(30)
        return original(*args, **kwargs)

    monkeypatch.setattr(listener, "_append", slow_end)
    monkeypatch.setattr(listener, "_queue", queue.Queue(maxsize=10))
    monkeypatch.setattr(listener, "_starts", queue.Queue())
    monkeypatch.setattr(listener, "_workers", {})
    listener.on_dag_run_success(SimpleNamespace(dag_id="release_storefront", run_id="old"), "")
    started = time.monotonic()
    run = SimpleNamespace(dag_id="release_storefront", run_id="new", id=3, clear_number=0, created_at=None)
    listener.on_dag_run_running(run, "started")
    took = time.monotonic() - started
    gate.set()
    assert listener.flush(10)
    assert took < 2, f"the start waited {took:.1f}s behind another event"
    assert [e.run_id for e in LedgerHook().events(kind="run_started")] == ["new"]
