"""The post-implementation review an emergency change owes before it can end green."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import Param
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from releasetrain.core.approval import SegregationOfDutiesError, check_responder
from releasetrain.core.vocabulary import OPTION_REVIEWED, Event
from releasetrain.operators._common import record_decision, release_request, run_ledger
from releasetrain.operators._common import responder as responder_of
from releasetrain.operators.approval import _md, assign_non_authors


class PostImplementationReviewOperator(HITLOperator):
    """A human review of an emergency run's exceptions, required before ``success``.

    Skips for normal runs. For emergency runs it asks the reviewers (never the release's
    authors) to confirm the review with their findings, listing every window or blackout
    that was bypassed, with who, when and why.

    :param reviewers: user ids that may review
    :param gate_task_ids: the window gates whose exceptions are reviewed
    """

    REVIEWED = OPTION_REVIEWED

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
        """The window exceptions the run's gates recorded in the ledger."""
        run = run_ledger(context, self.release)
        return [e.details for task_id in self.gate_task_ids for e in run.of(Event.EXCEPTION, task_id=task_id)]

    def execute(self, context: Any) -> Any:
        request = release_request(context, self.release)
        if not request.emergency:
            raise AirflowSkipException("not an emergency change: no post-implementation review needed")
        assign_non_authors(self, request, self.reviewers, "post-implementation review")
        lines = [
            f"Emergency release **{self.release} {request.version}** ran with this justification:",
            "",
            f"> {_md(request.emergency_justification or '-')}",
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
        request = release_request(context, self.release)
        result = super().execute_complete(context=context, event=event)
        responder = responder_of(result, request)
        try:
            check_responder(responder, self.reviewers, set(request.authors))
        except SegregationOfDutiesError as exc:
            raise AirflowFailException(f"post-implementation review refused: {exc}") from None
        findings = " ".join(str(result["params_input"].get("findings") or "").split())
        if len(findings) < 10:
            raise AirflowFailException(
                "post-implementation review: 'findings' must say what was checked (at least 10 characters)"
            )
        self.log.info("Post-implementation review by %s: %s", responder, findings)
        record_decision(context, Event.REVIEW, self.release, actor=responder or "", details={"findings": findings})
        return {**result, "exceptions": self._exceptions(context)}
