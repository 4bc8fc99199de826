"""Waits, without a worker, while a hotfix of the release is underway."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from releasetrain.core.train import TERMINAL
from releasetrain.core.vocabulary import Event


class HotfixHoldTrigger(BaseTrigger):
    """Fire once the hotfix run ``dag_id``/``run_id`` ended or passed every production
    environment (any one of them when ``any_production``: the held run lacks the fix, so one
    pass supersedes it), from its ledger records (one indexed read per ``poll_interval``), or
    after ``recheck_after`` seconds so the held task can ask Airflow whether that run still exists.

    :param release: the release (the ledger's partition)
    :param production: the release's production environments
    :param since: the seq of the hotfix's admission (older records under its run id are
        another run's, deleted and triggered again)
    """

    def __init__(
        self,
        *,
        release: str,
        dag_id: str,
        run_id: str,
        production: list[str],
        ledger_conn_id: str,
        poll_interval: float = 5.0,
        recheck_after: float = 120.0,
        since: int = 0,
        any_production: bool = True,
    ) -> None:
        super().__init__()
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.release = release
        self.dag_id = dag_id
        self.run_id = run_id
        self.production = list(production)
        self.ledger_conn_id = ledger_conn_id
        self.poll_interval = float(poll_interval)
        self.recheck_after = float(recheck_after)
        self.since = int(since)
        self.any_production = bool(any_production)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "releasetrain.triggers.train.HotfixHoldTrigger",
            {
                "release": self.release,
                "dag_id": self.dag_id,
                "run_id": self.run_id,
                "production": self.production,
                "ledger_conn_id": self.ledger_conn_id,
                "poll_interval": self.poll_interval,
                "recheck_after": self.recheck_after,
                "since": self.since,
                "any_production": self.any_production,
            },
        )

    def _over(self, store: Any) -> bool:
        passed = set()
        for e in store.events(release=self.release, run_id=self.run_id, dag_id=self.dag_id):
            if e.seq <= self.since:
                continue
            if e.kind == Event.RUN_STATE and e.details.get("state") in TERMINAL:
                return True
            if e.kind == Event.ENVIRONMENT_PASSED and e.environment in self.production:
                passed.add(e.environment)
        return bool(passed) if self.any_production else set(self.production) <= passed

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from releasetrain.core.ledger import LedgerError
        from releasetrain.hooks.ledger import astore

        try:
            store = await astore(self.ledger_conn_id)
        except LedgerError as exc:  # the task looks again itself, after a while
            self.log.warning("the ledger cannot be read: %s", exc)
            await asyncio.sleep(self.recheck_after)
            yield TriggerEvent({"hold_over": False, "recheck": True})
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.recheck_after
        try:
            while True:
                try:
                    over = await asyncio.to_thread(self._over, store)
                except LedgerError as exc:
                    self.log.warning("reading the ledger failed, trying again: %s", exc)
                    over = False
                if over or loop.time() >= deadline:
                    yield TriggerEvent({"hold_over": over, "recheck": not over})
                    return
                self.log.info("held while hotfix run %s/%s is underway", self.dag_id, self.run_id)
                await asyncio.sleep(self.poll_interval)
        finally:
            await asyncio.to_thread(store.close)
