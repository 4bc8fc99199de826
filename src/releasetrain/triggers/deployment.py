"""Waits for a deploy target to finish a deployment (or a rollback)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any, TypedDict

from airflow.triggers.base import BaseTrigger, TriggerEvent

from releasetrain.hooks.deploy_target import DeployTargetError, DeployTargetHook

TERMINAL_STATES = frozenset({"succeeded", "failed"})


class DeploymentEvent(TypedDict):
    """The JSON-safe payload of the single event this trigger fires.

    ``state`` is the target's terminal state (``succeeded``/``failed``), or ``timeout`` /
    ``error`` when the target did not finish in time or stopped answering.
    """

    state: str
    deployment_id: str
    message: str
    deployment: dict[str, Any]


class DeploymentCompletionTrigger(BaseTrigger):
    """Poll ``GET deployments/{id}`` until the deployment is terminal.

    :param deploy_target_conn_id: the target's connection
    :param deployment_id: id returned by ``POST deployments`` or ``POST rollback``
    :param poll_interval: seconds between polls
    :param timeout_seconds: give up after this long (event state ``timeout``)
    :param max_consecutive_errors: transient errors tolerated in a row (event state ``error``)
    :param started_at: epoch seconds when waiting began (kept across triggerer restarts)
    """

    def __init__(
        self,
        *,
        deploy_target_conn_id: str,
        deployment_id: str,
        poll_interval: float = 2.0,
        timeout_seconds: float = 900.0,
        max_consecutive_errors: int = 5,
        started_at: float | None = None,
    ) -> None:
        super().__init__()
        if not deployment_id:
            raise ValueError("deployment_id is required")
        if poll_interval <= 0 or timeout_seconds <= 0:
            raise ValueError("poll_interval and timeout_seconds must be positive")
        self.deploy_target_conn_id = deploy_target_conn_id
        self.deployment_id = str(deployment_id)
        self.poll_interval = float(poll_interval)
        self.timeout_seconds = float(timeout_seconds)
        self.max_consecutive_errors = int(max_consecutive_errors)
        self.started_at = float(started_at if started_at is not None else time.time())

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "releasetrain.triggers.deployment.DeploymentCompletionTrigger",
            {
                "deploy_target_conn_id": self.deploy_target_conn_id,
                "deployment_id": self.deployment_id,
                "poll_interval": self.poll_interval,
                "timeout_seconds": self.timeout_seconds,
                "max_consecutive_errors": self.max_consecutive_errors,
                "started_at": self.started_at,
            },
        )

    def _event(self, state: str, message: str, deployment: dict[str, Any] | None = None) -> TriggerEvent:
        return TriggerEvent(completion_event(self.deployment_id, state, message, deployment))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        hook = DeployTargetHook(self.deploy_target_conn_id)
        errors = 0
        while True:
            try:
                deployment = await hook.aget_deployment(self.deployment_id)
                errors = 0
            except DeployTargetError as exc:
                errors += 1
                self.log.warning("polling deployment %s failed (%d in a row): %s", self.deployment_id, errors, exc)
                if errors > self.max_consecutive_errors:
                    yield self._event("error", f"deploy target stopped answering: {exc}")
                    return
            else:
                state = str(deployment.get("state", ""))
                if state in TERMINAL_STATES:
                    yield self._event(state, str(deployment.get("message", "")), deployment)
                    return
                self.log.info("deployment %s is %s", self.deployment_id, state or "in an unknown state")
            if time.time() - self.started_at > self.timeout_seconds:
                yield self._event("timeout", f"deployment did not finish within {self.timeout_seconds:.0f} seconds")
                return
            await asyncio.sleep(self.poll_interval)


def completion_event(
    deployment_id: str, state: str, message: str, deployment: dict[str, Any] | None = None
) -> DeploymentEvent:
    """What the trigger hands the task when a deployment ends (also built by a task that
    found the deployment already ended, so both paths resume the same way)."""
    return {"state": state, "deployment_id": deployment_id, "message": message, "deployment": deployment or {}}
