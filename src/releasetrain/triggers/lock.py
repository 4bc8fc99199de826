"""Waits, without a worker, until a deploy target's lock is free, and takes it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, TypedDict

from airflow.triggers.base import BaseTrigger, TriggerEvent


class LockEvent(TypedDict):
    """``acquired`` is True once the lock is this holder's; ``error`` says why not otherwise."""

    acquired: bool
    recheck: bool
    target: str
    holder: str
    error: str


class TargetLockTrigger(BaseTrigger):
    """Try to take ``target`` for ``holder`` every ``poll_interval`` seconds (one indexed
    row read per try, in the ledger database) until it is free.

    :param target: the deploy target (its connection id)
    :param holder: ``<dag_id>/<run_id>`` of the waiting run
    :param ledger_conn_id: the ledger's connection (the lock table lives beside the ledger)
    :param poll_interval: seconds between tries
    :param priority: the waiter's place in the target's queue (higher first, then earlier)
    :param recheck_after: seconds after which the trigger hands back to the task
        (``recheck``) so it can ask Airflow whether the holder's run still exists: a run
        deleted through the API releases nothing
    """

    def __init__(
        self,
        *,
        target: str,
        holder: str,
        ledger_conn_id: str,
        poll_interval: float = 5.0,
        recheck_after: float = 120.0,
        priority: int = 0,
    ) -> None:
        super().__init__()
        if not target or not holder:
            raise ValueError("target and holder are required")
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.target = target
        self.holder = holder
        self.ledger_conn_id = ledger_conn_id
        self.poll_interval = float(poll_interval)
        self.recheck_after = float(recheck_after)
        self.priority = int(priority)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "releasetrain.triggers.lock.TargetLockTrigger",
            {
                "target": self.target,
                "holder": self.holder,
                "ledger_conn_id": self.ledger_conn_id,
                "poll_interval": self.poll_interval,
                "recheck_after": self.recheck_after,
                "priority": self.priority,
            },
        )

    def _event(self, acquired: bool, error: str = "", recheck: bool = False) -> TriggerEvent:
        payload: LockEvent = {
            "acquired": acquired,
            "recheck": recheck,
            "target": self.target,
            "holder": self.holder,
            "error": error,
        }
        return TriggerEvent(payload)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from releasetrain.core.ledger import LedgerError
        from releasetrain.hooks.ledger import astore

        try:
            store = await astore(self.ledger_conn_id)
        except LedgerError as exc:
            yield self._event(False, str(exc))
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.recheck_after
        try:
            while True:
                try:
                    holder = await asyncio.to_thread(
                        store.try_lock, self.target, self.holder, self.priority, max(180.0, 3 * self.poll_interval)
                    )
                except LedgerError as exc:
                    self.log.warning("locking %s failed, trying again: %s", self.target, exc)
                    holder = ""
                if holder == self.holder:
                    yield self._event(True)
                    return
                if loop.time() >= deadline:
                    yield self._event(False, f"still held by {holder}", recheck=True)
                    return
                self.log.info("%s is held by %s; waiting", self.target, holder or "nobody (retrying)")
                await asyncio.sleep(self.poll_interval)
        finally:
            await asyncio.to_thread(store.close)
