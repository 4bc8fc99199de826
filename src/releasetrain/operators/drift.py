"""Configuration drift before a deploy: the target's reported settings against the baseline."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk.exceptions import AirflowFailException

from releasetrain.core.approval import SegregationOfDutiesError, check_responder
from releasetrain.core.gatekeeper import Decision
from releasetrain.core.profile import drift_report
from releasetrain.core.vocabulary import OPTION_ACCEPT_DRIFT, OPTION_REJECT, Event
from releasetrain.hooks.deploy_target import DeployTargetError, DeployTargetHook
from releasetrain.operators._common import enforce, record, record_decision, release_request
from releasetrain.operators._common import responder as responder_of
from releasetrain.operators.approval import _md, assign_non_authors


class ConfigDriftOperator(HITLOperator):
    """Compare the configuration the deploy target reports with the environment's baseline
    (its profile in the spec, or the one recorded with the deploy that put the reported
    profile there). No drift: recorded (``drift_checked``), the stage goes on. Drift: recorded
    with a readable diff (``drift_detected``) and an owner of the environment (never an
    author of the release) must accept it here, or the promotion stops. The deploy asks the
    ledger for this step's record: the step marked success by hand proves nothing.

    :param config: the profile about to be deployed (``{version, sha256, values, secrets}``)
    :param owners: who may accept a drift (the environment's owners or approvers)
    """

    ui_color = "#fce8e6"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        deploy_target_conn_id: str,
        config: dict[str, Any],
        owners: list[str],
        **kwargs: Any,
    ) -> None:
        kwargs.pop("params", None)  # the DAG's trigger params are not part of this form
        kwargs.setdefault("retries", 2)  # see ReleaseApprovalOperator: Airflow 3.3's fast-answer race
        kwargs.setdefault("retry_delay", timedelta(seconds=5))
        super().__init__(
            subject=f"Configuration drift in {environment} before deploying {release}",
            options=[OPTION_ACCEPT_DRIFT, OPTION_REJECT],
            **kwargs,
        )
        self.release = release
        self.environment = environment
        self.deploy_target_conn_id = deploy_target_conn_id
        self.config = config
        self.owners = list(owners)

    def _report(self, context: Any) -> dict[str, Any]:
        try:
            reported = DeployTargetHook(self.deploy_target_conn_id).get_status().get("config")
        except DeployTargetError as exc:
            raise AirflowFailException(f"{self.environment}: {exc}") from None
        from releasetrain.hooks.ledger import LedgerHook

        hook = LedgerHook()
        try:  # every run's deploys to this environment: the profiles releases put there
            earlier = [
                e.details["config"]
                for e in hook.events(release=self.release, kind=Event.DEPLOYED)
                if e.environment == self.environment and isinstance(e.details.get("config"), dict)
            ]
        finally:
            hook.close()
        return drift_report(reported, self.config, earlier)

    def execute(self, context: Any) -> Any:
        report = self._report(context)
        if not report["drift"]:
            record(context, Event.DRIFT_CHECKED, self.release, environment=self.environment, details=report)
            self.log.info("%s: no configuration drift (%s)", self.environment, report.get("note") or "baseline holds")
            return report
        record(context, Event.DRIFT_DETECTED, self.release, environment=self.environment, details=report)
        request = release_request(context, self.release)
        if not self.owners:
            enforce(
                context,
                Decision.refuse(self.task_id, "configuration drift, and no owner or approver who could accept it"),
                self.release,
                self.environment,
            )
        assign_non_authors(self, request, self.owners, f"configuration drift in {self.environment}")
        baseline = report["baseline"] or {}
        self.body = "\n".join(
            [
                f"**{self.environment}** does not run the configuration its baseline says "
                f"(baseline {_md(str(baseline.get('version') or 'none'))}); deploying "
                f"**{self.release} {request.version}** would promote over it.",
                "",
                *[f"- {_md(line)}" for line in report["drift"]],
                "",
                f"Accept the drift to deploy anyway (recorded with your name), or reject to stop the promotion. "
                f"The profile about to be deployed is {_md(self.config['version'])} ({self.config['sha256']}).",
            ]
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        request = release_request(context, self.release)
        result = super().execute_complete(context=context, event=event)
        responder = responder_of(result, request)
        report = self._report(context)
        if result["chosen_options"] != [OPTION_ACCEPT_DRIFT]:
            enforce(
                context,
                Decision.refuse(
                    self.task_id, f"configuration drift in {self.environment} rejected by {responder or 'nobody'}"
                ),
                self.release,
                self.environment,
            )
        try:
            check_responder(responder, self.owners, set(request.authors))
        except SegregationOfDutiesError as exc:
            raise AirflowFailException(f"configuration drift in {self.environment}: {exc}") from None
        from releasetrain.operators._common import run_ledger

        detected = run_ledger(context, self.release).of(
            Event.DRIFT_DETECTED, environment=self.environment, task_id=self.task_id
        )
        shown = detected[-1].details if detected else {}
        if (shown.get("drift"), shown.get("reported")) != (report["drift"], report.get("reported")):
            enforce(
                context,
                Decision.refuse(
                    self.task_id,
                    f"the configuration of {self.environment} changed while the request waited; the answer was "
                    f"about another drift: clear {self.task_id} to ask again",
                ),
                self.release,
                self.environment,
            )
        record_decision(
            context,
            Event.DRIFT_ACCEPTED,
            self.release,
            environment=self.environment,
            actor=responder or "",
            details=report,
        )
        return {**report, "accepted_by": responder}
