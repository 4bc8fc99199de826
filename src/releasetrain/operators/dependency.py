"""The shared services an environment's deploy needs: waited for (deferred), then recorded."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from releasetrain.core.gatekeeper import Decision
from releasetrain.core.vocabulary import Event
from releasetrain.operators._common import enforce, record

LEDGER_CONN_ID = "releasetrain_ledger"


def requirements_decision(requirements: list[dict[str, Any]], step: str) -> Decision:
    """Allowed when every shared service runs its minimum version where needed, from the
    ledger now (the deploy asks again: the waiting task marked success by hand proves nothing)."""
    from releasetrain.core.incident import unmet_requirements
    from releasetrain.hooks.ledger import LedgerHook
    from releasetrain.triggers.dependency import ledger_live

    if not requirements:
        return Decision.allow(step)
    hook = LedgerHook()
    try:
        problems = unmet_requirements(requirements, ledger_live(hook.store))
    finally:
        hook.close()
    return Decision.refuse(step, *problems) if problems else Decision.allow(step)


class DependencyGateOperator(BaseOperator):
    """Wait (deferred, no worker slot) until every shared service the environment needs runs at
    least its minimum version there; fail after the longest ``wait_minutes`` with the reasons.

    :param requirements: ``[{release, environment, min_version, wait_minutes}]`` (the spec's ``depends_on``)
    :param poll_interval: seconds between looks at the ledger while waiting
    """

    ui_color = "#e8eaed"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        requirements: list[dict[str, Any]],
        poll_interval: float = 5.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.environment = environment
        self.requirements = requirements
        self.poll_interval = poll_interval

    def execute(self, context: Any) -> dict[str, Any]:
        from releasetrain.triggers.dependency import DependencyTrigger

        decision = requirements_decision(self.requirements, self.task_id)
        wait = max(need["wait_minutes"] for need in self.requirements) * 60
        if decision.allowed or not wait:
            return self._decided(context, decision)
        self.log.info("%s waits (deferred) for %s", self.environment, "; ".join(decision.reasons))
        self.defer(
            trigger=DependencyTrigger(
                requirements=self.requirements,
                ledger_conn_id=LEDGER_CONN_ID,
                timeout_seconds=wait,
                poll_interval=self.poll_interval,
            ),
            method_name="execute_complete",
        )
        return {}

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        return self._decided(context, requirements_decision(self.requirements, self.task_id))  # not the event's word

    def _decided(self, context: Any, decision: Decision) -> dict[str, Any]:
        enforce(context, decision, self.release, self.environment)
        details = {"requirements": self.requirements}
        record(context, Event.DEPENDENCIES_MET, self.release, environment=self.environment, details=details)
        return details
