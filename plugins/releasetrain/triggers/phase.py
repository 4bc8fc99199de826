"""Watch other tasks of the same run from the triggerer (no worker slot)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

# A task in one of these states will not run again in this try of the run.
FINISHED = frozenset({"success", "failed", "upstream_failed", "skipped", "removed"})


async def task_states(dag_id: str, run_id: str, task_ids: list[str]) -> dict[str, str | None]:
    """States of ``task_ids`` in one run, asked through the triggerer's supervisor."""
    from airflow.sdk.execution_time.task_runner import RuntimeTaskInstance
    from asgiref.sync import sync_to_async

    states = await sync_to_async(RuntimeTaskInstance.get_task_states)(
        dag_id=dag_id, task_ids=list(task_ids), run_ids=[run_id]
    )
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
            await asyncio.sleep(self.poll_interval)
