"""Deploy a verified bundle to an environment's deploy target, and wait without a worker."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from releasetrain.core.approval import SegregationOfDutiesError, authors, check_responder
from releasetrain.core.promotion import PromotionError, check_promotion
from releasetrain.hooks.deploy_target import DeployTargetError, DeployTargetHook
from releasetrain.operators._common import REQUEST_TASK_ID, pull, require
from releasetrain.triggers.deployment import DeploymentCompletionTrigger

PRE_DEPLOY_KEY = "pre_deploy"


class EnvironmentDeployOperator(BaseOperator):
    """Deploy version + digest to one environment.

    - Promotion: the digest must be the one that passed ``previous_environment``
      (read from ``promotion_gate_task_id``).
    - Idempotent: if the target already runs this version and digest, nothing is sent.
    - Before changing anything, the target's current version is recorded (XCom key
      ``pre_deploy``) so that a rollback knows where to return.
    - Waiting for the target is deferred to :class:`DeploymentCompletionTrigger`.

    :param release: release name
    :param environment: environment name
    :param deploy_target_conn_id: the environment's deploy target connection
    :param verify_task_id: the task that verified the bundle for this environment
    :param previous_environment: the environment before this one, if any
    :param promotion_gate_task_id: the last gate of the previous environment
    :param approval_task_id: the environment's approval task, if it needs one; the
        approval it recorded is checked again here (an approval task marked "success" by
        hand records no approval and stops the deploy)
    :param approvers: who may approve (with ``approval_task_id``)
    """

    ui_color = "#d2e3fc"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        deploy_target_conn_id: str,
        verify_task_id: str,
        previous_environment: str | None = None,
        promotion_gate_task_id: str | None = None,
        approval_task_id: str | None = None,
        approvers: list[str] | None = None,
        window_task_id: str | None = None,
        deploy_timeout_seconds: float = 900,
        poll_interval: float = 2.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if (previous_environment is None) != (promotion_gate_task_id is None):
            raise ValueError("previous_environment and promotion_gate_task_id go together")
        if approval_task_id and not approvers:
            raise ValueError("an approval_task_id needs the approvers to check it against")
        self.approval_task_id = approval_task_id
        self.approvers = list(approvers or [])
        self.window_task_id = window_task_id
        self.release = release
        self.environment = environment
        self.deploy_target_conn_id = deploy_target_conn_id
        self.verify_task_id = verify_task_id
        self.previous_environment = previous_environment
        self.promotion_gate_task_id = promotion_gate_task_id
        self.deploy_timeout_seconds = deploy_timeout_seconds
        self.poll_interval = poll_interval

    def execute(self, context: Any) -> dict[str, Any]:
        request = require(context, REQUEST_TASK_ID, "the release request")
        version = request["version"]
        digest = require(context, self.verify_task_id, "the verified bundle")["digest"]
        gate = pull(context, self.promotion_gate_task_id) if self.promotion_gate_task_id else None
        try:
            check_promotion(self.environment, digest, self.previous_environment, gate)
        except PromotionError as exc:
            raise AirflowFailException(str(exc)) from None
        if self.approval_task_id:
            self._check_approval(context, request)
        if self.window_task_id:
            self._check_window(context)

        hook = DeployTargetHook(self.deploy_target_conn_id)
        live = self._call(hook.get_status)
        already_live = live.get("version") == version and live.get("digest") == digest
        if already_live and live.get("run_id") == context["run_id"]:
            # this run deployed it in an earlier try (retry or clear): a rollback returns to what ran before
            before = {"version": live.get("previous_version"), "digest": live.get("previous_digest"), "noop": False}
        else:
            before = {"version": live.get("version"), "digest": live.get("digest"), "noop": already_live}
        context["ti"].xcom_push(key=PRE_DEPLOY_KEY, value=before)
        running = live.get("in_progress") or {}
        if (running.get("version"), running.get("digest"), running.get("run_id")) == (
            version,
            digest,
            context["run_id"],
        ):
            self.log.info(
                "%s: re-attaching to deployment %s started by an earlier try",
                self.environment,
                running["deployment_id"],
            )
            self._wait(str(running["deployment_id"]))
        if already_live:
            self.log.info(
                "%s already runs %s %s (%s): nothing to deploy", self.environment, self.release, version, digest
            )
            return self._result(version, digest, live, deployment_id=None, noop=True)

        self.log.info(
            "Deploying %s %s (%s) to %s, replacing %s",
            self.release,
            version,
            digest,
            self.environment,
            live.get("version") or "nothing",
        )
        started = self._call(
            hook.start_deployment, release=self.release, version=version, digest=digest, run_id=context["run_id"]
        )
        if started.get("state") == "succeeded":
            return self._result(
                version, digest, live, deployment_id=started.get("deployment_id"), noop=bool(started.get("noop"))
            )
        self._wait(str(started["deployment_id"]))

    def _wait(self, deployment_id: str) -> None:
        self.defer(
            trigger=DeploymentCompletionTrigger(
                deploy_target_conn_id=self.deploy_target_conn_id,
                deployment_id=deployment_id,
                poll_interval=self.poll_interval,
                timeout_seconds=self.deploy_timeout_seconds,
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self.deploy_timeout_seconds + 60),
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        version = require(context, REQUEST_TASK_ID, "the release request")["version"]
        if event["state"] != "succeeded":
            raise AirflowException(
                f"deploying {self.release} {version} to {self.environment} ended {event['state']}: "
                f"{event['message'] or 'no message from the target'} (deployment {event['deployment_id']})"
            )
        deployment = event["deployment"]
        digest = require(context, self.verify_task_id, "the verified bundle")["digest"]
        if (deployment.get("version"), deployment.get("digest")) != (version, digest):
            raise AirflowException(
                f"{self.environment}: the target reports {deployment.get('version')} "
                f"({deployment.get('digest')}) for deployment {event['deployment_id']}, "
                f"but {version} ({digest}) was deployed"
            )
        pre = pull(context, self.task_id, key=PRE_DEPLOY_KEY) or {}
        self.log.info(
            "%s now runs %s %s (deployment %s)", self.environment, self.release, version, event["deployment_id"]
        )
        return self._result(version, digest, pre, deployment_id=event["deployment_id"], noop=False)

    def _check_window(self, context: Any) -> None:
        """The window gate's decision, and the window itself, checked again right before deploying."""
        gate = pull(context, self.window_task_id) or {}
        if not gate:
            raise AirflowFailException(
                f"{self.environment}: no decision recorded by {self.window_task_id} in this run "
                "(was the window gate marked successful by hand?); nothing is deployed"
            )
        if gate.get("emergency_exception"):
            return
        window = context["dag"].get_task(self.window_task_id)
        decision = window.decide_now()
        if not decision.open:
            raise AirflowFailException(
                f"{self.environment}: the release window closed before the deploy could start ({decision.reason}); "
                f"nothing is deployed: clear {self.window_task_id} to wait for the next opening"
            )

    def _check_approval(self, context: Any, request: dict[str, Any]) -> None:
        """The approval this deploy relies on, checked again where it is used."""
        approval = pull(context, self.approval_task_id) or {}
        responder = (approval.get("responded_by_user") or {}).get("id")
        if approval.get("chosen_options") != ["Approve"] or not responder:
            raise AirflowFailException(
                f"{self.environment}: no recorded approval from {self.approval_task_id} in this run "
                "(was the approval task marked successful by hand?); nothing is deployed"
            )
        try:
            check_responder(
                responder, self.approvers, authors(request.get("triggered_by"), request.get("requested_by"))
            )
        except SegregationOfDutiesError as exc:
            raise AirflowFailException(f"{self.environment}: {exc}; nothing is deployed") from None

    def _result(
        self, version: str, digest: str | None, previous: dict[str, Any], *, deployment_id: Any, noop: bool
    ) -> dict[str, Any]:
        return {
            "environment": self.environment,
            "version": version,
            "digest": digest,
            "deployment_id": deployment_id,
            "noop": noop,
            "previous_version": previous.get("version"),
            "previous_digest": previous.get("digest"),
        }

    def _call(self, fn: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return fn(**kwargs)
        except DeployTargetError as exc:
            raise AirflowException(f"{self.environment}: {exc}") from None
