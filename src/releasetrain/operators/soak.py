"""A soak period a trend rule asks for: the new version stays live in an environment that
long before the environment passes (spec ``trends[].soak``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from releasetrain.core.trends import soak_minutes, soak_start
from releasetrain.core.vocabulary import Event
from releasetrain.operators._common import record, run_ledger


class SoakOperator(BaseOperator):
    """Wait, deferred (no worker), until the environment's latest deploy (or, canary and
    blue-green, promotion) record is ``minutes`` old,
    where ``minutes`` is what the rules the run's risk assessment recorded as triggered ask
    for here (the ledger, not XCom; 0: no soak, recorded as such). The record
    (``soaked``) is the environment gate's proof: marked successful by hand, the step left
    none, and the environment does not pass.

    :param deploy_task_id: the deploy whose record starts the soak
    """

    template_fields = ()
    ui_color = "#e6f4ea"

    def __init__(self, *, release: str, environment: str, deploy_task_id: str, **kwargs: Any) -> None:
        kwargs.setdefault("retries", 2)  # infrastructure only (and Airflow 3.3's fast-trigger race)
        kwargs.setdefault("retry_delay", timedelta(seconds=3))
        super().__init__(**kwargs)
        self.release = release
        self.environment = environment
        self.deploy_task_id = deploy_task_id

    def _asked(self, context: Any) -> tuple[float, list[str], datetime]:
        """Minutes asked, the rules asking, and when the soak ends."""
        run = run_ledger(context, self.release)
        assessed = [e for e in run.of(Event.RISK_ASSESSED) if "level" in e.details]
        if not assessed:
            raise AirflowFailException(f"{self.environment} soak: no risk assessment of this run is recorded")
        rules = assessed[-1].details.get("trend_rules") or []
        minutes = soak_minutes(rules, self.environment)
        # from when the new version took the traffic: its deploy, or (canary, blue-green) its promotion
        start = soak_start(
            [
                *run.of(Event.DEPLOYED, environment=self.environment),
                *run.of(Event.PROMOTED, environment=self.environment),
            ],
            self.environment,
        )
        if minutes and start is None:
            raise AirflowFailException(f"{self.environment} soak: {self.deploy_task_id} recorded no deploy")
        start = start or datetime.now(UTC)
        asking = [r["when"] for r in rules if r.get("soak") and r["soak"]["environment"] == self.environment]
        return minutes, asking, start + timedelta(minutes=minutes)

    def execute(self, context: Any) -> Any:
        minutes, asking, until = self._asked(context)
        if not minutes or datetime.now(UTC) >= until:
            return self._soaked(context, minutes, asking, until)
        from airflow.providers.standard.triggers.temporal import DateTimeTrigger

        self.log.info(
            "%s soaks %g minutes (%s), until %s", self.environment, minutes, "; ".join(asking), until.isoformat()
        )
        self.defer(
            trigger=DateTimeTrigger(moment=until),
            method_name="execute_complete",
            timeout=until - datetime.now(UTC) + timedelta(minutes=10),
        )

    def execute_complete(self, context: Any, event: Any = None) -> Any:
        return self.execute(context)  # from the ledger again: a clock ahead of this worker's waits on

    def _soaked(self, context: Any, minutes: float, asking: list[str], until: datetime) -> dict[str, Any]:
        details = {
            "minutes": minutes,
            "until": until.isoformat().replace("+00:00", "Z"),
            "rules": asking,
            "reason": f"soaked {minutes:g} minutes: {'; '.join(asking)}"
            if minutes
            else "no trend rule asks for a soak",
        }
        record(context, Event.SOAKED, self.release, environment=self.environment, details=details)
        self.log.info("%s: %s", self.environment, details["reason"])
        return details
