"""Watches an environment's health for a period after a deploy."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from releasetrain.core.checks import CheckResult, judge_health
from releasetrain.core.spec import HttpCheck
from releasetrain.hooks.http_check import HttpCheckHook


class HealthVerificationTrigger(BaseTrigger):
    """Run the health checks every ``interval_seconds`` for ``period_seconds``.

    Fires one event, the :class:`~releasetrain.core.checks.HealthVerdict` as a dict, as
    soon as the verdict is known: early when too many rounds fail, else at the end.

    :param http_conn_id: connection for checks without their own ``conn_id``
    :param checks: rendered checks, as plain dicts (``HttpCheck.model_dump()``)
    """

    def __init__(
        self,
        *,
        http_conn_id: str,
        checks: list[dict[str, Any]],
        period_seconds: float,
        interval_seconds: float,
        max_failures: int = 0,
        started_at: float | None = None,
    ) -> None:
        super().__init__()
        if not checks:
            raise ValueError("at least one health check is required")
        self.http_conn_id = http_conn_id
        self.checks = [HttpCheck.model_validate(c).model_dump(mode="json") for c in checks]
        self.period_seconds = float(period_seconds)
        self.interval_seconds = float(interval_seconds)
        self.max_failures = int(max_failures)
        self.started_at = float(started_at if started_at is not None else time.time())

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "releasetrain.triggers.health.HealthVerificationTrigger",
            {
                "http_conn_id": self.http_conn_id,
                "checks": self.checks,
                "period_seconds": self.period_seconds,
                "interval_seconds": self.interval_seconds,
                "max_failures": self.max_failures,
                "started_at": self.started_at,
            },
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = HttpCheckHook(self.http_conn_id)
        checks = [HttpCheck.model_validate(c) for c in self.checks]
        rounds: list[list[CheckResult]] = []
        while True:
            round_started = time.time()
            results = list(await asyncio.gather(*(hook.arun_check(c) for c in checks)))
            rounds.append(results)
            for result in results:
                if not result.passed:
                    self.log.warning("health check %r failed: %s", result.name, "; ".join(result.failures))
            finished = time.time() + self.interval_seconds - self.started_at > self.period_seconds
            verdict = judge_health(rounds, self.max_failures, finished=finished)
            if verdict is not None:
                yield TriggerEvent(verdict.to_dict())
                return
            await asyncio.sleep(max(0.0, self.interval_seconds - (time.time() - round_started)))
