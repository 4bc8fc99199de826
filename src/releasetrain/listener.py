"""What happens to a release run outside its tasks goes into the release ledger too.

Registered by the plugin. It records:

- every release run's start (``run_started``, with the DAG run's row key: a deleted run
  triggered again under the same id is told apart from a cleared one);
- every release run's final state (``run_state``), including runs marked by hand;
- task states set by hand through the UI or REST (``task_state`` with ``by_hand``),
  e.g. an approval task marked successful (the deploy refuses it; this is the record);
- and, when a run ends failed, closes its change record if it is still open
  (unsuccessful when something was implemented, canceled otherwise);
- when a run ends, a signed checkpoint of the ledger's head (``releasetrain_ledger_signing``),
  kept outside the database (see :class:`releasetrain.hooks.ledger.CheckpointStore`).

Listener errors are logged and never break Airflow's own bookkeeping. The work runs on a
thread of its own: listeners are called inside the scheduler's (or API server's) database
session, and looking up the ledger connection in Airflow's metastore from that thread
would commit and close that session under the scheduler's feet. And it is queued (bounded,
one worker): a slow or locked ledger never stalls the scheduler; what a full queue drops
is logged and recorded as a ``listener_gap``. Only a run's start is waited for (up to 10 s).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from airflow.listeners import hookimpl

from releasetrain.core.vocabulary import Event, release_of_dag

log = logging.getLogger(__name__)


# The scheduler must never wait on the ledger: events go through a bounded queue to one
# worker thread (its own DB session). Only a run's start is waited for, briefly, so that it
# is recorded before the run's first task writes anything; starts have a worker of their
# own, so a start never waits behind other events (a run's end writes a checkpoint, which
# verifies the chain) and is never dropped (one entry per real run start).
START_WAIT_SECONDS = 10.0
QUEUE_SIZE = 1000
_queue: queue.Queue = queue.Queue(maxsize=QUEUE_SIZE)
_starts: queue.Queue = queue.Queue()
_workers: dict[str, threading.Thread] = {}
_worker_lock = threading.Lock()
_dropped: list[str] = []  # what a full queue had to drop, recorded as a gap once it drains
_dropped_lock = threading.Lock()


def _run(work: Callable[[], None], what: str) -> None:
    try:
        work()
    except Exception:
        log.exception("releasetrain: could not record %s in the ledger", what)


def _drain() -> None:
    while True:
        work, what = _queue.get()
        try:
            _run(work, what)
            if _dropped and _queue.empty():
                with _dropped_lock:  # a drop recorded meanwhile is never lost
                    lost = list(_dropped)
                    _dropped.clear()
                _run(lambda lost=lost: _record_gap(lost), "the listener's gap")
        finally:
            _queue.task_done()


def _drain_starts() -> None:
    while True:
        work, what = _starts.get()
        try:
            _run(work, what)
        finally:
            _starts.task_done()


def _record_gap(lost: list[str]) -> None:
    details = {"dropped": len(lost), "what": lost[:50]}
    _append(Event.LISTENER_GAP, "releasetrain", "", "", actor="airflow", details=details)


def _ensure_workers() -> None:
    with _worker_lock:
        for name, target in (("releasetrain-listener", _drain), ("releasetrain-listener-starts", _drain_starts)):
            thread = _workers.get(name)
            if thread is None or not thread.is_alive():
                _workers[name] = threading.Thread(target=target, name=name, daemon=True)
                _workers[name].start()


def _isolated(work: Callable[[], None], what: str, *, wait: float | None = None) -> None:
    """Hand ``work`` to the ledger worker; never block the caller (unless ``wait``, bounded).

    A full queue drops the work and says so: in the log now, and in the ledger as a
    ``listener_gap`` event once the queue drains (never a silent loss). Run starts
    (``wait``) go to their own worker and are never dropped."""
    _ensure_workers()
    if wait is None:
        try:
            _queue.put_nowait((work, what))
        except queue.Full:
            with _dropped_lock:
                _dropped.append(what)
            log.error("releasetrain: the ledger queue is full (%s waiting): %s was dropped", QUEUE_SIZE, what)
        return
    done = threading.Event()

    def then_signal() -> None:
        try:
            work()
        finally:
            done.set()

    _starts.put((then_signal, what))
    if not done.wait(wait):
        log.error("releasetrain: recording %s took over %ss; it stays queued", what, wait)


def flush(timeout: float = 30.0) -> bool:
    """Wait until the ledger worker has written everything queued (tests, shutdown)."""
    deadline = time.monotonic() + timeout

    def busy() -> bool:
        return bool(_queue.unfinished_tasks or _starts.unfinished_tasks)

    while busy() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not busy()


def _append(kind: str, release: str, dag_id: str, run_id: str, **fields: Any) -> None:
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    try:
        hook.append(kind, release=release, run_id=run_id, dag_id=dag_id, **fields)
    finally:
        hook.close()


def _close_open_change(release: str, dag_id: str, run_id: str, reason: str, key: str = "") -> None:
    """Close the change record of this very run (keyed by DAG id and run id: a manual rollback
    run that reuses a release run's id never touches the release's change record; and by the
    run's row key: a deleted run's late end never closes the record of the run now under its id)."""
    from releasetrain.core.change import FINAL_STATES, ChangeRef
    from releasetrain.core.gatekeeper import incarnation_events
    from releasetrain.hooks.change_record import change_backend
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    ref, conn_id = None, None
    try:
        events = list(hook.events(release=release, run_id=run_id, dag_id=dag_id))
        for event in incarnation_events(events, key) if key else events:
            if event.kind in (Event.CHANGE_OPENED, Event.CHANGE_TRANSITION, Event.CHANGE_CLOSED):
                d = event.details
                ref = ChangeRef(d["backend"], d["id"], d["number"], d["state"], d.get("change_type") or "normal")
                conn_id = d.get("conn_id", conn_id)
            if event.kind == Event.RISK_ASSESSED and event.details.get("change_conn_id"):
                conn_id = event.details["change_conn_id"]
    finally:
        hook.close()
    if ref is None or ref.state in FINAL_STATES:
        return
    backend = change_backend(ref.backend, conn_id)
    closed = backend.close(ref, outcome="failed", notes=reason)
    if ref.backend != "builtin":
        _append(
            Event.CHANGE_CLOSED,
            release,
            dag_id,
            run_id,
            details={
                "backend": ref.backend,
                "id": ref.id,
                "number": ref.number,
                "state": closed.state.value,
                "change_type": ref.change_type,
                "note": reason,
                "outcome": "failed",
            },
        )


def _run_ended(dag_run: Any, state: str, msg: str) -> None:
    dag_id = getattr(dag_run, "dag_id", "")
    release = release_of_dag(dag_id)
    if not release:
        return
    run_id = dag_run.run_id  # read here, in the caller's session
    key = _dag_run_key(dag_run)

    def work() -> None:
        # the row key says which incarnation ended: a run deleted and triggered again under
        # the same id may start (its own worker) before this end is written
        details = {"state": state, "message": msg or "", "dag_run_key": key}
        _append(Event.RUN_STATE, release, dag_id, run_id, actor="airflow", details=details)
        _release_locks(dag_id, run_id, key)
        if state == "failed":
            _close_open_change(release, dag_id, run_id, f"run ended failed: {msg or 'see the run'}", key)
        elif state == "success":  # a change still open (e.g. in Review, its postmortem marked done by hand)
            _close_open_change(release, dag_id, run_id, "run marked success with its change still open", key)
        _checkpoint()

    _isolated(work, f"the end of {release} {run_id}")


def _checkpoint() -> None:
    """Anchor the ledger after each release run: its head, signed with the ledger key (when
    the deployment configured one for the scheduler), kept outside the database."""
    from releasetrain.hooks.ledger import LedgerHook, signing_key_connection, write_checkpoint

    if signing_key_connection(LEDGER_KEY_CONN) is None:
        return
    hook = LedgerHook()
    try:
        write_checkpoint(hook.store, LEDGER_KEY_CONN)
    finally:
        hook.close()


LEDGER_KEY_CONN = "releasetrain_ledger_signing"


def _release_locks(dag_id: str, run_id: str, key: str) -> None:
    """A run that ended (however) holds no deploy target any more; only this incarnation's
    locks are released (a new run under the same id keeps its own)."""
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    try:
        released = hook.store.unlock_run(f"{dag_id}/{run_id}", incarnation=key)
    finally:
        hook.close()
    release = release_of_dag(dag_id) or ""
    for target in released:
        details = {"target": target, "dag_run_key": key}
        _append(Event.LOCK_RELEASED, release, dag_id, run_id, actor="airflow", details=details)


def _dag_run_key(dag_run: Any) -> str:
    """The DAG run's row: its id (reused by SQLite after a delete) and creation time, which no
    clear and no state change through the API alters (queued_at and start_date do change)."""
    created = getattr(dag_run, "created_at", None)
    return f"{getattr(dag_run, 'id', '')}:{created.isoformat() if created else ''}"


@hookimpl
def on_dag_run_running(dag_run: Any, msg: str) -> None:
    """A run starts (or, cleared, starts again): its row key tells a new run from a cleared
    one, so a run deleted and triggered again under the same id inherits nothing."""
    dag_id = getattr(dag_run, "dag_id", "")
    release = release_of_dag(dag_id)
    if not release:
        return
    run_id = dag_run.run_id  # read here, in the caller's session
    clear_number = int(getattr(dag_run, "clear_number", 0) or 0)
    details = {"clear_number": clear_number, "dag_run_key": _dag_run_key(dag_run)}
    _isolated(
        lambda: _append(Event.RUN_STARTED, release, dag_id, run_id, actor="airflow", details=details),
        f"the start of {release} {run_id}",
        wait=START_WAIT_SECONDS,
    )


@hookimpl
def on_dag_run_success(dag_run: Any, msg: str) -> None:
    _run_ended(dag_run, "success", msg)


@hookimpl
def on_dag_run_failed(dag_run: Any, msg: str) -> None:
    _run_ended(dag_run, "failed", msg)


def _by_hand(previous_state: Any, task_instance: Any, state: str) -> None:
    # The task runner reports its own tasks with their previous state; the API's manual
    # state changes come with previous_state=None.
    if previous_state is not None:
        return
    dag_id = getattr(task_instance, "dag_id", "")
    release = release_of_dag(dag_id)
    if not release:
        return
    run_id, task_id = task_instance.run_id, task_instance.task_id
    details = {"task_id": task_id, "state": state, "by_hand": True}
    _isolated(
        lambda: _append(Event.TASK_STATE, release, dag_id, run_id, details=details),
        f"{task_id} set to {state} by hand",
    )


@hookimpl
def on_task_instance_success(previous_state: Any, task_instance: Any) -> None:
    _by_hand(previous_state, task_instance, "success")


@hookimpl
def on_task_instance_failed(previous_state: Any, task_instance: Any, error: Any) -> None:
    _by_hand(previous_state, task_instance, "failed")
