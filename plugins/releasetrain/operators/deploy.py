"""Deploy a verified bundle to an environment's deploy target, and wait without a worker."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from releasetrain.core.approval import SegregationOfDutiesError, authors, check_approvals
from releasetrain.core.change import ChangeState
from releasetrain.core.promotion import PromotionError, check_promotion
from releasetrain.hooks.deploy_target import DeployTargetError, DeployTargetHook
from releasetrain.operators._common import REQUEST_TASK_ID, gates_for, pull, record, require
from releasetrain.triggers.deployment import DeploymentCompletionTrigger

PRE_DEPLOY_KEY = "pre_deploy"


class DeployTargetCalls:
    """What operators that talk to a deploy target share: target errors named with the
    environment (``call_prefix`` first), and deferred waits for a deployment to end."""

    call_prefix = ""
    environment: str
    deploy_target_conn_id: str
    deploy_timeout_seconds: float = 900
    poll_interval: float = 2.0

    def _call(self, fn: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return fn(**kwargs)
        except DeployTargetError as exc:
            raise AirflowException(f"{self.call_prefix}{self.environment}: {exc}") from None

    def _wait(self, deployment_id: str, method_name: str = "execute_complete") -> None:
        self.defer(  # type: ignore[attr-defined]
            trigger=DeploymentCompletionTrigger(
                deploy_target_conn_id=self.deploy_target_conn_id,
                deployment_id=deployment_id,
                poll_interval=self.poll_interval,
                timeout_seconds=self.deploy_timeout_seconds,
            ),
            method_name=method_name,
            timeout=timedelta(seconds=self.deploy_timeout_seconds + 60),
        )


class EnvironmentDeployOperator(DeployTargetCalls, BaseOperator):
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
    :param approval_task_ids: the environment's approval tasks (quorum slots and
        readiness reviews); the approvals they recorded are checked again here against the
        gates the risk assessment selected: distinct, non-author, eligible, for this very
        digest (an approval task marked "success" by hand records no approval and stops
        the deploy)
    :param approvers: the quorum pool
    :param review_members: review group -> members
    :param quorum: the spec's quorum; ``reviews``: the spec's review groups
    :param owners: members of the group owning the environment: only they may release into it
    :param production: a production environment: the change record must be in Implement
    :param slot: ``idle`` for progressive strategies: the new version goes to the target's
        idle colour and takes no traffic until the rollout's steps move it
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
        approval_task_ids: list[str] | None = None,
        approvers: list[str] | None = None,
        review_members: dict[str, list[str]] | None = None,
        quorum: int = 1,
        reviews: list[str] | None = None,
        owners: list[str] | None = None,
        production: bool = False,
        window_task_id: str | None = None,
        deploy_timeout_seconds: float = 900,
        poll_interval: float = 2.0,
        slot: str | None = None,
        **kwargs: Any,
    ) -> None:
        # Retried only for infrastructure trouble and Airflow 3.3's race between a fast
        # trigger and the scheduler noticing the deferral ("killed externally"): a retry
        # re-attaches to the running deployment or finds the version live. A deployment
        # that failed, or a refused gate, raises AirflowFailException: never retried.
        kwargs.setdefault("retries", 2)
        kwargs.setdefault("retry_delay", timedelta(seconds=3))
        super().__init__(**kwargs)
        self.slot = slot
        if (previous_environment is None) != (promotion_gate_task_id is None):
            raise ValueError("previous_environment and promotion_gate_task_id go together")
        if approval_task_ids and not approvers:
            raise ValueError("approval_task_ids need the approvers to check them against")
        self.approval_task_ids = list(approval_task_ids or [])
        self.approvers = list(approvers or [])
        self.review_members = {k: list(v) for k, v in (review_members or {}).items()}
        self.quorum = quorum
        self.reviews = list(reviews or [])
        self.owners = list(owners) if owners is not None else None
        self.production = production
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
        self._check_owner(request)
        if self.approval_task_ids:
            self._check_approval(context, request, digest)
        if self.window_task_id:
            self._check_window(context)
        if self.production:
            from releasetrain.operators.governance import move_change

            move_change(
                context, self.release, ChangeState.IMPLEMENT, f"deploying {version} ({digest}) to {self.environment}"
            )

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
            return self._result(version, digest, live, deployment_id=None, noop=True, context=context)

        self.log.info(
            "Deploying %s %s (%s) to %s%s, replacing %s",
            self.release,
            version,
            digest,
            self.environment,
            " (idle colour, no traffic yet)" if self.slot == "idle" else "",
            live.get("version") or "nothing",
        )
        started = self._call(
            hook.start_deployment,
            release=self.release,
            version=version,
            digest=digest,
            run_id=context["run_id"],
            slot=self.slot,
        )
        if started.get("state") == "succeeded":
            return self._result(
                version,
                digest,
                live,
                deployment_id=started.get("deployment_id"),
                noop=bool(started.get("noop")),
                context=context,
            )
        self._wait(str(started["deployment_id"]))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        version = require(context, REQUEST_TASK_ID, "the release request")["version"]
        if event["state"] != "succeeded":
            record(
                context,
                "deploy_failed",
                self.release,
                environment=self.environment,
                details={"version": version, "state": event["state"], "message": event.get("message") or ""},
            )
            raise AirflowFailException(
                f"deploying {self.release} {version} to {self.environment} ended {event['state']}: "
                f"{event['message'] or 'no message from the target'} (deployment {event['deployment_id']})"
            )
        deployment = event["deployment"]
        digest = require(context, self.verify_task_id, "the verified bundle")["digest"]
        if (deployment.get("version"), deployment.get("digest")) != (version, digest):
            raise AirflowFailException(
                f"{self.environment}: the target reports {deployment.get('version')} "
                f"({deployment.get('digest')}) for deployment {event['deployment_id']}, "
                f"but {version} ({digest}) was deployed"
            )
        pre = pull(context, self.task_id, key=PRE_DEPLOY_KEY) or {}
        self.log.info(
            "%s now runs %s %s (deployment %s)", self.environment, self.release, version, event["deployment_id"]
        )
        return self._result(version, digest, pre, deployment_id=event["deployment_id"], noop=False, context=context)

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

    def _check_owner(self, request: dict[str, Any]) -> None:
        """Only the owning team releases into its environment (the release's own schedule may too)."""
        if self.owners is None:
            return
        people = {request.get("requested_by"), request.get("triggered_by")} - {None, "scheduler"}
        outsiders = sorted(p for p in people if p not in set(self.owners))
        if outsiders:
            raise AirflowFailException(
                f"{self.environment}: {', '.join(outsiders)} may not release into {self.environment}: only its "
                f"owners ({', '.join(self.owners)}) may; nothing is deployed"
            )

    def _check_approval(self, context: Any, request: dict[str, Any], digest: str) -> None:
        """The approvals this deploy relies on, checked again where they are used."""
        records = []
        for task_id in self.approval_task_ids:
            approval = pull(context, task_id) or {}
            responder = (approval.get("responded_by_user") or {}).get("id")
            if approval.get("chosen_options") == ["Approve"] and responder:
                records.append(
                    {"approver": responder, "digest": approval.get("digest"), "group": approval.get("group")}
                )
        quorum, reviews = gates_for(context, self.environment, self.quorum, self.reviews)
        try:
            approvers = check_approvals(
                records,
                quorum=quorum,
                reviews=reviews,
                pool=self.approvers,
                review_members=self.review_members,
                excluded=authors(request.get("triggered_by"), request.get("requested_by")),
                digest=digest,
            )
        except SegregationOfDutiesError as exc:
            record(
                context,
                "approval_refused",
                self.release,
                environment=self.environment,
                details={"reason": str(exc), "at": "deploy", "records": records},
            )
            raise AirflowFailException(
                f"{self.environment}: {exc} (was an approval task marked successful by hand?); nothing is deployed"
            ) from None
        self.log.info("%s: approvals hold: %s for %s", self.environment, ", ".join(approvers), digest)

    def _result(
        self,
        version: str,
        digest: str | None,
        previous: dict[str, Any],
        *,
        deployment_id: Any,
        noop: bool,
        context: Any = None,
    ) -> dict[str, Any]:
        result = {
            "environment": self.environment,
            "version": version,
            "digest": digest,
            "deployment_id": deployment_id,
            "noop": noop,
            "previous_version": previous.get("version"),
            "previous_digest": previous.get("digest"),
        }
        if context is not None:
            record(context, "deployed", self.release, environment=self.environment, details=result)
        return result
