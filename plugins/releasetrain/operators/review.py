"""The post-implementation review an emergency change owes before it can end green."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from releasetrain.core.approval import SegregationOfDutiesError, authors, check_responder
from releasetrain.operators._common import REQUEST_TASK_ID, pull, record, require
from releasetrain.operators.approval import _md, assign_non_authors


class PostImplementationReviewOperator(HITLOperator):
    """A human review of an emergency run's exceptions, required before ``success``.

    Skips for normal runs. For emergency runs it asks the reviewers (never the release's
    authors) to confirm the review with their findings, listing every window or blackout
    that was bypassed, with who, when and why.

    :param reviewers: user ids that may review
    :param gate_task_ids: the window gates whose exceptions are reviewed
    """

    REVIEWED = "Reviewed"

    def __init__(self, *, release: str, reviewers: list[str], gate_task_ids: list[str], **kwargs: Any) -> None:
        kwargs.pop("params", None)  # the DAG's trigger params are not part of the review form
        kwargs.setdefault("retries", 2)  # see ReleaseApprovalOperator: Airflow 3.3's fast-answer race
        kwargs.setdefault("retry_delay", timedelta(seconds=5))
        super().__init__(
            subject=f"Post-implementation review of emergency release {release}",
            options=[self.REVIEWED],
            params={
                "findings": Param(
                    None,
                    type=["null", "string"],
                    title="Findings",
                    description="What was checked after the emergency change, and what follows from it.",
                )
            },
            **kwargs,
        )
        self.release = release
        self.reviewers = list(reviewers)
        self.gate_task_ids = list(gate_task_ids)

    def _exceptions(self, context: Any) -> list[dict[str, Any]]:
        records = [pull(context, task_id) or {} for task_id in self.gate_task_ids]
        return [r["emergency_exception"] for r in records if r.get("emergency_exception")]

    def execute(self, context: Any) -> Any:
        request = require(context, REQUEST_TASK_ID, "the release request")
        if not request.get("emergency"):
            raise AirflowSkipException("not an emergency change: no post-implementation review needed")
        assign_non_authors(self, request, self.reviewers, "post-implementation review")
        lines = [
            f"Emergency release **{self.release} {request['version']}** ran with this justification:",
            "",
            f"> {_md(request.get('emergency_justification') or '-')}",
            "",
            "**Exceptions recorded**",
            "",
        ]
        for item in self._exceptions(context):
            lines.append(
                f"- {item['environment']}: at {item['at']}, triggered by {_md(item.get('triggered_by') or '-')} "
                f"for {_md(item.get('requested_by') or '-')}, "
                f"bypassed {_md(', '.join(item['rules']))} ({_md(item['bypassed'])})"
            )
        if len(lines) == 6:
            lines.append("- none: every window was open when the run passed it")
        self.body = "\n".join(lines)
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        request = require(context, REQUEST_TASK_ID, "the release request")
        result = super().execute_complete(context=context, event=event)
        responder = (result.get("responded_by_user") or {}).get("id")
        try:
            check_responder(
                responder, self.reviewers, authors(request.get("triggered_by"), request.get("requested_by"))
            )
        except SegregationOfDutiesError as exc:
            raise AirflowFailException(f"post-implementation review refused: {exc}") from None
        findings = " ".join(str(result["params_input"].get("findings") or "").split())
        if len(findings) < 10:
            raise AirflowFailException(
                "post-implementation review: 'findings' must say what was checked (at least 10 characters)"
            )
        self.log.info("Post-implementation review by %s: %s", responder, findings)
        record(context, "review", self.release, actor=responder or "", details={"findings": findings})
        return {**result, "exceptions": self._exceptions(context)}
