"""Waits, without a worker, until the shared services a deploy needs run where it needs them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


def ledger_live(store: Any) -> Any:
    """``live(release, environment)`` read from a ledger store (the newest deploy or rollback)."""
    from releasetrain.core.incident import live_version

    def live(release: str, environment: str) -> str | None:
        return live_version(store.events(release=release), [environment])

    return live


class DependencyTrigger(BaseTrigger):
    """Check the requirements against the ledger every ``poll_interval`` seconds until they
    are met or ``timeout_seconds`` passed; the task decides again from the ledger either way.

    :param requirements: ``[{release, environment, min_version, wait_minutes}]``
    :param ledger_conn_id: the ledger's connection
    """

    def __init__(
        self,
        *,
        requirements: list[dict[str, Any]],
        ledger_conn_id: str,
        timeout_seconds: float,
        poll_interval: float = 10.0,
    ) -> None:
        super().__init__()
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self.requirements = requirements
        self.ledger_conn_id = ledger_conn_id
        self.timeout_seconds = float(timeout_seconds)
        self.poll_interval = float(poll_interval)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "releasetrain.triggers.dependency.DependencyTrigger",
            {
                "requirements": self.requirements,
                "ledger_conn_id": self.ledger_conn_id,
                "timeout_seconds": self.timeout_seconds,
                "poll_interval": self.poll_interval,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from releasetrain.core.incident import unmet_requirements
        from releasetrain.core.ledger import LedgerError
        from releasetrain.hooks.ledger import astore

        try:
            store = await astore(self.ledger_conn_id)
        except LedgerError as exc:
            yield TriggerEvent({"met": False, "problems": [str(exc)]})
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_seconds
        try:
            while True:
                try:
                    problems = await asyncio.to_thread(unmet_requirements, self.requirements, ledger_live(store))
                except LedgerError as exc:
                    problems = [f"the ledger cannot be read: {exc}"]
                if not problems or loop.time() >= deadline:
                    yield TriggerEvent({"met": not problems, "problems": problems})
                    return
                self.log.info("waiting for shared services: %s", "; ".join(problems))
                await asyncio.sleep(self.poll_interval)
        finally:
            await asyncio.to_thread(store.close)
