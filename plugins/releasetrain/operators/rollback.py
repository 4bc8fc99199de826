"""Return an environment to the version it ran before this release."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from releasetrain.hooks.deploy_target import DeployTargetError, DeployTargetHook
from releasetrain.operators._common import pull, record
from releasetrain.operators.deploy import PRE_DEPLOY_KEY
from releasetrain.triggers.deployment import DeploymentCompletionTrigger


class RollbackOperator(BaseOperator):
    """Roll an environment back after its deploy, smoke or health gate failed.

    Runs with ``trigger_rule=one_failed``. It acts only on what this run changed: if this
    run never deployed to the environment (or found the version already live), it skips
    with the reason. Otherwise it redeploys the version recorded before the deploy, waits
    (deferred), and checks that the target runs it again and is healthy. The release run
    still ends ``failed``: a rollback is never a green release.

    :param deploy_task_id: the deploy task whose ``pre_deploy`` record says where to return
    """

    ui_color = "#f28b82"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        deploy_target_conn_id: str,
        deploy_task_id: str,
        deploy_timeout_seconds: float = 900,
        poll_interval: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.environment = environment
        self.deploy_target_conn_id = deploy_target_conn_id
        self.deploy_task_id = deploy_task_id
        self.deploy_timeout_seconds = deploy_timeout_seconds
        self.poll_interval = poll_interval

    def execute(self, context: Any) -> dict[str, Any] | None:
        before = pull(context, self.deploy_task_id, key=PRE_DEPLOY_KEY)
        if not before:
            raise AirflowSkipException(f"this run deployed nothing to {self.environment}: nothing to roll back")
        if before.get("noop"):
            raise AirflowSkipException(
                f"{self.environment} already ran this version before the run: this run changed nothing there"
            )
        if not before.get("version"):
            raise AirflowFailException(
                f"{self.environment} ran no version before this release: there is nothing to roll back to; "
                "the environment needs manual recovery"
            )
        hook = DeployTargetHook(self.deploy_target_conn_id)
        live = self._call(hook.get_status)
        if live.get("version") == before["version"] and live.get("digest") == before.get("digest"):
            self.log.info("%s still runs %s: the failed deploy changed nothing", self.environment, before["version"])
            return self._verify(hook, before, context)
        self.log.warning("ROLLING BACK %s from %s to %s", self.environment, live.get("version"), before["version"])
        started = self._call(
            hook.start_rollback,
            version=before["version"],
            digest=before.get("digest"),
            reason=f"release {self.release} run {context['run_id']} failed in {self.environment}",
        )
        if started.get("state") == "succeeded":
            return self._verify(hook, before, context)
        self.defer(
            trigger=DeploymentCompletionTrigger(
                deploy_target_conn_id=self.deploy_target_conn_id,
                deployment_id=str(started["deployment_id"]),
                poll_interval=self.poll_interval,
                timeout_seconds=self.deploy_timeout_seconds,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.deploy_timeout_seconds + 60),
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        before = pull(context, self.deploy_task_id, key=PRE_DEPLOY_KEY)
        if event["state"] != "succeeded":
            raise AirflowException(
                f"ROLLBACK OF {self.environment} FAILED ({event['state']}): {event['message']}; "
                "the environment needs manual recovery"
            )
        return self._verify(DeployTargetHook(self.deploy_target_conn_id), before, context)

    def _verify(self, hook: DeployTargetHook, before: dict[str, Any], context: Any) -> dict[str, Any]:
        live = self._call(hook.get_status)
        if live.get("version") != before["version"]:
            raise AirflowException(
                f"rollback of {self.environment} did not restore {before['version']}: the target runs "
                f"{live.get('version')}"
            )
        status, health = hook.get_health()
        healthy = status == 200 and isinstance(health, dict) and health.get("healthy", True)
        if not healthy:
            raise AirflowException(
                f"{self.environment} runs {before['version']} again but is still unhealthy: HTTP {status} {health}"
            )
        self.log.info("%s rolled back to %s and healthy", self.environment, before["version"])
        result = {
            "environment": self.environment,
            "restored_version": before["version"],
            "restored_digest": before.get("digest"),
            "healthy": True,
        }
        record(context, "rollback", self.release, environment=self.environment, details=result)
        from releasetrain.operators.governance import close_change

        close_change(context, self.release, "rolled_back", f"{self.environment} rolled back to {before['version']}")
        return result

    def _call(self, fn: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return fn(**kwargs)
        except DeployTargetError as exc:
            raise AirflowException(f"rollback of {self.environment}: {exc}") from None
