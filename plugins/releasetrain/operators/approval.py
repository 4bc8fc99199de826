"""Human approval before an environment, with segregation of duties."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk.exceptions import AirflowFailException

from releasetrain.core.approval import (
    SegregationOfDutiesError,
    authors,
    check_responder,
    eligible_approvers,
)
from releasetrain.operators._common import PACKAGE_TASK_ID, REQUEST_TASK_ID, pull, require


def assign_non_authors(
    operator: HITLOperator, request: dict[str, Any], users: list[str], what: str
) -> tuple[set[str], list[str]]:
    """Assign a HITL request to ``users`` minus the release's authors (fails when none is left)."""
    excluded = authors(request.get("triggered_by"), request.get("requested_by"))
    try:
        eligible = eligible_approvers(users, excluded)
    except SegregationOfDutiesError as exc:
        raise AirflowFailException(f"{what}: {exc}") from None
    operator.assigned_users = [{"id": user, "name": user} for user in eligible]
    return excluded, eligible


class ReleaseApprovalOperator(ApprovalOperator):
    """An Airflow HITL approval whose author can never approve.

    - At request time the assignees are the spec's approvers minus the release's authors
      (the triggering user and ``requested_by``); Airflow's API refuses anyone else (403).
    - At response time the responder is checked again; a response that breaks
      segregation of duties fails the task, so nothing downstream deploys.
    - The stored request (with its assignees) is reused on retry/clear, and the response
      check runs again on every resume.
    - *Reject* (or no answer before the timeout) fails the task with the reason: a
      rejected release ends ``failed``, never green, with nothing deployed past the gate.
    - It retries once, only for infrastructure failures (see ``__init__``); a retry asks
      the same assignees again.

    :param release: release name
    :param environment: the environment this approval lets the release into
    :param approvers: user ids allowed to approve
    :param passed_task_ids: gates already passed in this run, shown in the request
    :param timeout_hours: reject when nobody answers in time (None: wait)
    """

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        approvers: list[str],
        passed_task_ids: list[str] | None = None,
        timeout_hours: float | None = None,
        **kwargs: Any,
    ) -> None:
        if not approvers:
            raise ValueError(f"{environment}: an approval needs at least one approver")
        timeout = timedelta(hours=timeout_hours) if timeout_hours else None
        # One retry, for Airflow 3.3's race between a fast answer and the scheduler noticing
        # that the worker parked the task (the task is then failed as "killed externally").
        # The retry asks again with the stored request; decisions (reject, refusal, timeout)
        # raise AirflowFailException and are never retried.
        kwargs.setdefault("retries", 1)
        kwargs.setdefault("retry_delay", timedelta(seconds=5))
        super().__init__(
            subject=f"Release {release} to {environment}",
            body=None,
            response_timeout=timeout,
            defaults=[ApprovalOperator.REJECT] if timeout else None,
            **kwargs,
        )
        self.release = release
        self.environment = environment
        self.approvers = list(approvers)
        self.passed_task_ids = list(passed_task_ids or [])

    def execute(self, context: Any) -> Any:
        request = require(context, REQUEST_TASK_ID, "the release request")
        excluded, eligible = assign_non_authors(self, request, self.approvers, f"{self.environment} approval")
        packaged = pull(context, PACKAGE_TASK_ID) or {}
        self.subject = f"Approve {self.release} {request['version']} for {self.environment}?"
        self.body = self._body(context, request, packaged, excluded, eligible)
        self.log.info(
            "Approval for %s requested from %s (authors excluded: %s)",
            self.environment,
            ", ".join(eligible),
            ", ".join(sorted(excluded)) or "none",
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        request = require(context, REQUEST_TASK_ID, "the release request")
        result = HITLOperator.execute_complete(self, context=context, event=event)
        chosen = result["chosen_options"][0]
        responder = (result.get("responded_by_user") or {}).get("id")
        if event.get("timedout"):
            raise AirflowFailException(
                f"{self.environment} approval: no answer before the timeout; the release is rejected"
            )
        excluded = authors(request.get("triggered_by"), request.get("requested_by"))
        try:
            check_responder(responder, self.approvers, excluded)
        except SegregationOfDutiesError as exc:
            raise AirflowFailException(f"{self.environment} approval refused: {exc}") from None
        if chosen != self.APPROVE:
            raise AirflowFailException(
                f"{self.release} {request['version']} was rejected for {self.environment} by {responder}; "
                f"nothing was deployed to {self.environment}"
            )
        self.log.info("%s approved %s %s for %s", responder, self.release, request["version"], self.environment)
        return {
            **result,
            "environment": self.environment,
            "digest": (pull(context, PACKAGE_TASK_ID) or {}).get("digest"),
        }

    def _body(
        self, context: Any, request: dict[str, Any], packaged: dict[str, Any], excluded: set[str], eligible: list[str]
    ) -> str:
        lines = [
            f"**{self.release} {request['version']}** is ready for **{self.environment}**.",
            "",
            "| | |",
            "|---|---|",
            f"| Version | `{request['version']}` |",
            f"| Bundle digest | `{packaged.get('digest', 'not packaged')}` |",
            f"| Requested by | {_md(request.get('requested_by') or '-')} |",
            f"| Triggered by | {_md(request.get('triggered_by') or 'scheduler')} |",
            f"| Change | {_md(request.get('change_summary') or '-')} |",
            f"| May approve | {', '.join(eligible)} (authors cannot: {', '.join(sorted(excluded)) or '-'}) |",
            "",
            "**Passed so far**",
            "",
        ]
        passed = [pull(context, task_id) for task_id in self.passed_task_ids]
        for record in filter(None, passed):
            checks = record.get("checks") or []
            detail = f"{len(checks)} smoke checks passed" if checks else "healthy"
            if record.get("health"):
                detail = record["health"].get("reason", detail)
            lines.append(f"- {record['environment']}: `{record['digest']}` deployed, {detail}")
        if not any(passed):
            lines.append("- nothing yet (this is the first environment)")
        run_url = self._run_url(context)
        if run_url:
            lines += ["", f"[Open the release run]({run_url})"]
        return "\n".join(lines)

    @staticmethod
    def _run_url(context: Any) -> str | None:
        from airflow.sdk.configuration import conf

        base = conf.get("api", "base_url", fallback=None)
        if not base:
            return None
        return f"{base.rstrip('/')}/dags/{context['dag'].dag_id}/runs/{context['run_id']}"


_MARKDOWN_SPECIALS = str.maketrans({c: f"\\{c}" for c in "\\`*_{}[]()<>#+-.!|~"})


def _md(text: str) -> str:
    """User input shown to approvers as plain text: no table rows, links or markup of its own."""
    return " ".join(str(text).split()).translate(_MARKDOWN_SPECIALS)
