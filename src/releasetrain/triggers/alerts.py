"""Waits, without a worker, for an alert attached to a release run (the ledger) or the end of
its watch."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class AlertWatchTrigger(BaseTrigger):
    """Read the run's ``alert_received`` records for ``environment`` every ``poll_interval``
    seconds until one is firing or ``until`` passed; the task decides again from the ledger.

    :param until: ISO time the watch ends
    """

    def __init__(
        self,
        *,
        release: str,
        dag_id: str,
        run_id: str,
        environment: str,
        until: str,
        ledger_conn_id: str,
        poll_interval: float = 3.0,
    ) -> None:
        super().__init__()
        self.release = release
        self.dag_id = dag_id
        self.run_id = run_id
        self.environment = environment
        self.until = until
        self.ledger_conn_id = ledger_conn_id
        self.poll_interval = float(poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "releasetrain.triggers.alerts.AlertWatchTrigger",
            {
                "release": self.release,
                "dag_id": self.dag_id,
                "run_id": self.run_id,
                "environment": self.environment,
                "until": self.until,
                "ledger_conn_id": self.ledger_conn_id,
                "poll_interval": self.poll_interval,
            },
        )

    def _firing(self, store: Any) -> bool:
        from releasetrain.core.alerts import concerns

        return any(
            e.kind == "alert_received" and e.environment == self.environment and concerns(e.details)
            for e in store.events(release=self.release, run_id=self.run_id, dag_id=self.dag_id)
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from releasetrain.core.ledger import LedgerError
        from releasetrain.hooks.ledger import astore

        try:
            store = await astore(self.ledger_conn_id)
        except LedgerError as exc:
            yield TriggerEvent({"error": str(exc)})
            return
        until = datetime.fromisoformat(self.until)
        try:
            while True:
                try:
                    firing = await asyncio.to_thread(self._firing, store)
                except LedgerError as exc:
                    self.log.warning("the ledger cannot be read: %s", exc)
                    firing = False
                if firing or datetime.now(UTC) >= until:
                    yield TriggerEvent({"firing": firing})
                    return
                await asyncio.sleep(self.poll_interval)
        finally:
            await asyncio.to_thread(store.close)
