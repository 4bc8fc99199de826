"""Watch other tasks of the same run from the triggerer (no worker slot).

Thousands of rollouts may wait at once in one triggerer. They do not each ask Airflow for
task states every few seconds: watchers wake on the same wall-clock ticks
(:func:`until_tick`), and the questions asked within one short window go to Airflow as
one request per DAG (:func:`task_states` batches runs and tasks), so the cost per
interval is one request per release DAG, whatever the number of waiting rollouts.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

# A task in one of these states will not run again in this try of the run.
FINISHED = frozenset({"success", "failed", "upstream_failed", "skipped", "removed"})
BATCH_WINDOW_SECONDS = 0.05
REQUESTS = [0]  # task-state requests this process made to Airflow (benchmarks read it)


class _Batch:
    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.runs: set[str] = set()
        self.tasks: set[str] = set()
        self.result: asyncio.Future = loop.create_future()
        # read even when every waiter went away (a cancelled trigger): no "never retrieved" noise
        self.result.add_done_callback(lambda f: f.cancelled() or f.exception())


_batches: dict[tuple[int, str], _Batch] = {}


def until_tick(interval: float, now: float | None = None) -> float:
    """Seconds to the next multiple of ``interval`` on the wall clock: watchers with the same
    interval wake together, so their questions share one request."""
    now = time.time() if now is None else now
    return interval - (now % interval) if interval > 0 else 0.0


async def _fetch_states(dag_id: str, run_ids: list[str], task_ids: list[str]) -> dict[str, dict[str, Any]]:
    """One request to Airflow (through the triggerer's supervisor) for many runs' tasks."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
    from asgiref.sync import sync_to_async

    REQUESTS[0] += 1
    return await sync_to_async(RuntimeTaskInstance.get_task_states)(dag_id=dag_id, task_ids=task_ids, run_ids=run_ids)


async def _send(key: tuple[int, str], batch: _Batch) -> None:
    try:
        await asyncio.sleep(BATCH_WINDOW_SECONDS)
        _batches.pop(key, None)
        states = await _fetch_states(key[1], sorted(batch.runs), sorted(batch.tasks))
        if not batch.result.done():
            batch.result.set_result(states)
    except BaseException as exc:  # every waiter hears it, also of a cancellation (loop shutdown)
        if not batch.result.done():
            batch.result.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
        if not isinstance(exc, Exception):
            raise
    finally:
        _batches.pop(key, None)  # never left behind for another loop with the same id


async def task_states(dag_id: str, run_id: str, task_ids: list[str]) -> dict[str, str | None]:
    """States of ``task_ids`` in one run, asked together with every other watcher of the
    same DAG in this process within :data:`BATCH_WINDOW_SECONDS`."""
    loop = asyncio.get_running_loop()
    key = (id(loop), dag_id)
    batch = _batches.get(key)
    if batch is None:
        batch = _batches[key] = _Batch(loop)
        loop.create_task(_send(key, batch))
    batch.runs.add(run_id)
    batch.tasks.update(task_ids)
    states = await asyncio.shield(batch.result)
    found = states.get(run_id) or {}
    return {task_id: found.get(task_id) for task_id in task_ids}


class PhaseEndTrigger(BaseTrigger):
    """Fire once every one of ``task_ids`` has finished (success, failure or skipped).

    The manual-abort task waits on it: a human answer resumes the task directly (Airflow's
    HITL response handler), and the end of the rollout phase ends the wait.
    """

    def __init__(self, *, dag_id: str, run_id: str, task_ids: list[str], poll_interval: float = 5.0) -> None:
        super().__init__()
        self.dag_id = dag_id
        self.run_id = run_id
        self.task_ids = list(task_ids)
        self.poll_interval = float(poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "releasetrain.triggers.phase.PhaseEndTrigger",
            {
                "dag_id": self.dag_id,
                "run_id": self.run_id,
                "task_ids": self.task_ids,
                "poll_interval": self.poll_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            states = await task_states(self.dag_id, self.run_id, self.task_ids)
            if all(state in FINISHED for state in states.values()):
                yield TriggerEvent({"phase_over": True, "states": states})
                return
            await asyncio.sleep(until_tick(self.poll_interval))
