"""The watch after a deploy: an alert attached to the release in that time rolls it back."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from releasetrain.core.vocabulary import Event
from releasetrain.operators._common import dag_id_of, record, run_ledger


def firing_alerts(run: Any, release: str, environment: str) -> list[dict[str, Any]]:
    """The firing alerts attached to this run for ``environment`` that may roll it back."""
    from releasetrain.core.alerts import concerns

    return [dict(e.details) for e in run.of(Event.ALERT_RECEIVED, environment=environment) if concerns(e.details)]


class AlertWatchOperator(BaseOperator):
    """Watch the environment for ``watch_minutes`` after its deploy, deferred (no worker): an
    alert that fires and is attached to this run (the alert webhook's ``alert_received``
    records, matched by environment and time) fails the step, which rolls the environment
    back. A quiet watch is recorded (``alerts_quiet``): the environment's gate asks for that
    record, so the step marked successful by hand proves nothing.

    :param watch_minutes: how long after the deploy
    :param deploy_task_id: the deploy whose record starts the watch
    """

    template_fields = ()
    ui_color = "#fce8b2"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        watch_minutes: float,
        deploy_task_id: str,
        poll_interval: float = 3.0,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("retries", 2)  # infrastructure only (and Airflow 3.3's fast-trigger race)
        kwargs.setdefault("retry_delay", timedelta(seconds=3))
        super().__init__(**kwargs)
        self.release = release
        self.environment = environment
        self.watch_minutes = watch_minutes
        self.deploy_task_id = deploy_task_id
        self.poll_interval = poll_interval

    def _firing(self, context: Any) -> list[dict[str, Any]]:
        return firing_alerts(run_ledger(context, self.release), self.release, self.environment)

    def _until(self, context: Any) -> datetime:
        """The watch ends ``watch_minutes`` after the deploy's record (a retry does not extend it)."""
        run = run_ledger(context, self.release)
        deployed = run.of(Event.DEPLOYED, environment=self.environment, task_id=self.deploy_task_id)
        start = datetime.fromisoformat(deployed[-1].at.replace("Z", "+00:00")) if deployed else datetime.now(UTC)
        return start + timedelta(minutes=self.watch_minutes)

    def execute(self, context: Any) -> Any:
        self._decide_if_firing(context)
        until = self._until(context)
        if datetime.now(UTC) >= until:
            return self._quiet(context, until)
        from releasetrain.hooks.ledger import DEFAULT_CONN_ID
        from releasetrain.triggers.alerts import AlertWatchTrigger

        self.log.info("%s: watching for alerts until %s", self.environment, until.isoformat())
        self.defer(
            trigger=AlertWatchTrigger(
                release=self.release,
                dag_id=dag_id_of(context),
                run_id=context["run_id"],
                environment=self.environment,
                until=until.isoformat(),
                ledger_conn_id=DEFAULT_CONN_ID,
                poll_interval=self.poll_interval,
            ),
            method_name="execute_complete",
            timeout=until - datetime.now(UTC) + timedelta(minutes=5),
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        self._decide_if_firing(context)  # from the ledger, whatever the trigger said
        if event.get("error"):
            raise RuntimeError(f"{self.environment}: the alert watch cannot read the ledger: {event['error']}")
        return self._quiet(context, self._until(context))

    def _decide_if_firing(self, context: Any) -> None:
        firing = self._firing(context)
        if firing:
            alert = firing[0]
            raise AirflowFailException(
                f"{self.environment}: alert {alert.get('alert')} fired {alert.get('minutes_after_deploy')} minutes "
                f"after {self.release} {alert.get('deployed_version')} was deployed"
                + (f" ({alert['summary']})" if alert.get("summary") else "")
                + ": rolling back"
            )

    def _quiet(self, context: Any, until: datetime) -> dict[str, Any]:
        if datetime.now(UTC) < until:  # the triggerer's clock ran ahead of this worker's: watch on
            return self.execute(context)
        details = {"watch_minutes": self.watch_minutes, "until": until.isoformat()}
        record(context, Event.ALERTS_QUIET, self.release, environment=self.environment, details=details)
        return details
