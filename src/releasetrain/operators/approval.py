"""Human approval before an environment, with segregation of duties."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import ApprovalOperator, HITLOperator
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException

from releasetrain.core import gatekeeper
from releasetrain.core.approval import SegregationOfDutiesError, check_responder, eligible_approvers
from releasetrain.core.gatekeeper import Decision, RunLedger
from releasetrain.core.request import ReleaseRequest
from releasetrain.core.trends import Trend, adds
from releasetrain.core.vocabulary import ASSESS_RISK, Event
from releasetrain.links import BundleLink, ChangeRecordLink
from releasetrain.operators._common import (
    assigned,
    enforce,
    pull,
    record,
    record_decision,
    release_request,
    run_ledger,
)
from releasetrain.operators._common import responder as responder_of


def assign_non_authors(
    operator: HITLOperator, request: ReleaseRequest, users: list[str], what: str
) -> tuple[set[str], list[str]]:
    """Assign a HITL request to ``users`` minus the release's authors (fails when none is left)."""
    excluded = set(request.authors)
    try:
        eligible = eligible_approvers(users, excluded)
    except SegregationOfDutiesError as exc:
        raise AirflowFailException(f"{what}: {exc}") from None
    operator.assigned_users = assigned(operator, eligible)
    return excluded, eligible


class ReleaseApprovalOperator(ApprovalOperator):
    """One approval of an environment, as one Airflow HITL request, with segregation of duties.

    An environment's approvals are several of these tasks: quorum slots ``approve``,
    ``approve_2``, ... (one after the other) and readiness reviews ``review_<group>`` (in
    parallel). Each one:

    - skips itself when the risk assessment does not need it (a slot beyond the quorum,
      a review the risk level does not ask for);
    - at request time, is assigned to the eligible users minus the release's authors
      (the triggering user and ``requested_by``) minus whoever already approved another of
      the environment's approvals; Airflow's API refuses anyone else (403);
    - at response time, checks the responder again (author? eligible? already counted?).
      A refused response is recorded in the ledger and the request is asked again, so
      the remaining approvers can still answer;
    - binds the approval to the bundle digest it was shown (checked again by the deploy);
    - records request, approval, rejection, refusal and timeout in the release ledger.

    *Reject*, or no answer before ``timeout_hours``, fails the task: the release is
    rejected and nothing is deployed past the gate. It retries twice, only for
    infrastructure failures (see ``__init__``).

    :param release: release name
    :param environment: the environment this approval lets the release into
    :param approvers: user ids allowed to give this approval (the quorum pool, or the
        review group's members)
    :param slot: the quorum slot (1, 2, ...), or None for a readiness review
    :param review_group: the review group (with ``slot=None``)
    :param quorum: the spec's quorum (the risk assessment may raise it)
    :param reviews: the spec's review groups (the risk assessment may add some)
    :param sibling_task_ids: the environment's other approval tasks
    :param passed_task_ids: gates already passed in this run, shown in the request
    :param timeout_hours: reject when nobody answers in time (None: wait)
    """

    operator_extra_links = (ChangeRecordLink(), BundleLink())

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        approvers: list[str],
        slot: int | None = 1,
        review_group: str | None = None,
        quorum: int = 1,
        reviews: list[str] | None = None,
        sibling_task_ids: list[str] | None = None,
        passed_task_ids: list[str] | None = None,
        timeout_hours: float | None = None,
        parity_task_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        if not approvers:
            raise ValueError(f"{environment}: an approval needs at least one approver")
        if (slot is None) == (review_group is None):
            raise ValueError("an approval is either a quorum slot or a review group")
        timeout = timedelta(hours=timeout_hours) if timeout_hours else None
        # Two retries, for Airflow 3.3's race between a fast answer and the scheduler noticing
        # that the worker parked the task (the task is then failed as "killed externally").
        # The retry asks again with the stored request; decisions (reject, timeout)
        # raise AirflowFailException and are never retried.
        kwargs.setdefault("retries", 2)
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
        self.slot = slot
        self.review_group = review_group
        self.quorum = quorum
        self.reviews = list(reviews or [])
        self.sibling_task_ids = [t for t in (sibling_task_ids or []) if t != self.task_id]
        self.passed_task_ids = list(passed_task_ids or [])
        self.parity_task_id = parity_task_id

    @property
    def what(self) -> str:
        if self.review_group:
            return f"{self.environment} {self.review_group} review"
        return f"{self.environment} approval" + (f" {self.slot}" if self.slot and self.slot > 1 else "")

    def _needed(self, context: Any, run: RunLedger) -> tuple[bool, str]:
        gates = gatekeeper.risk_gates(run, self.environment, self.quorum, self.reviews, assess_task_id=ASSESS_RISK)
        if isinstance(gates, Decision):
            enforce(context, gates, self.release, self.environment)
        quorum, reviews = gates  # type: ignore[misc]
        if self.review_group:
            return self.review_group in reviews, f"reviews needed: {reviews or 'none'}"
        return (self.slot or 1) <= quorum, f"quorum needed: {quorum}"

    def _others(self, run: RunLedger) -> dict[str, str]:
        """Who already approved one of the environment's other approvals (the ledger): user -> task."""
        return {
            e.actor: e.details.get("task_id", "")
            for e in run.of(Event.APPROVAL_GIVEN, environment=self.environment)
            if e.actor and e.details.get("task_id") != self.task_id
        }

    @staticmethod
    def _digest(run: RunLedger) -> str | None:
        """The bundle this run packaged (the ledger's record, not the package task's XCom)."""
        packaged = run.last(Event.PACKAGED)
        return packaged.details.get("digest") if packaged else None

    def execute(self, context: Any) -> Any:
        request = release_request(context, self.release)
        run = run_ledger(context, self.release)
        decision = gatekeeper.not_rejected(run, self.task_id, environment=self.environment)
        enforce(context, decision, self.release, self.environment)
        needed, why = self._needed(context, run)
        if not needed:
            raise AirflowSkipException(f"{self.what} is not needed at this release's risk ({why})")
        excluded, eligible = assign_non_authors(self, request, self.approvers, self.what)
        others = self._others(run)
        eligible = [user for user in eligible if user not in others]
        if not eligible:
            raise AirflowFailException(
                f"{self.what}: every eligible approver ({', '.join(self.approvers)}) is an author or has "
                f"already approved ({', '.join(sorted(others))}); add approvers to the spec"
            )
        self.assigned_users = assigned(self, eligible)
        packaged = {"digest": self._digest(run)} if self._digest(run) else {}
        self.subject = f"Approve {self.release} {request.version} for {self.environment}?"
        if self.review_group:
            self.subject = f"Readiness review ({self.review_group}): {self.release} {request.version} for " + (
                f"{self.environment}?"
            )
        self.body = self._body(context, request, packaged, excluded, eligible)
        record(
            context,
            Event.APPROVAL_REQUESTED,
            self.release,
            environment=self.environment,
            details={
                "task_id": self.task_id,
                "group": self.review_group,
                "slot": self.slot,
                "assigned": eligible,
                "digest": packaged.get("digest"),
            },
        )
        self.log.info(
            "%s requested from %s (authors excluded: %s; already approved: %s)",
            self.what,
            ", ".join(eligible),
            ", ".join(sorted(excluded)) or "none",
            ", ".join(sorted(others)) or "nobody",
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        request = release_request(context, self.release)
        run = run_ledger(context, self.release)
        digest = self._digest(run)
        details = {"task_id": self.task_id, "group": self.review_group, "slot": self.slot, "digest": digest}
        if event.get("timedout") or event.get("error_type") == "timeout":
            record_decision(
                context, Event.APPROVAL_TIMED_OUT, self.release, environment=self.environment, details=details
            )
            raise AirflowFailException(f"{self.what}: no answer before the timeout; the release is rejected")
        result = HITLOperator.execute_complete(self, context=context, event=event)
        chosen = result["chosen_options"][0]
        responder = responder_of(result, request)
        excluded = set(request.authors)
        others = self._others(run)
        try:
            check_responder(responder, self.approvers, excluded)
            if responder in others:
                raise SegregationOfDutiesError(
                    f"{responder} already approved {others[responder]}: one person never counts twice"
                )
        except SegregationOfDutiesError as exc:
            record_decision(
                context,
                Event.APPROVAL_REFUSED,
                self.release,
                environment=self.environment,
                actor=responder or "",
                details={**details, "reason": str(exc), "chosen": chosen},
            )
            self.log.warning("%s: response refused (%s); asking again", self.what, exc)
            return self.execute(context)  # the request is open again for the others
        if chosen != self.APPROVE:
            record_decision(
                context,
                Event.APPROVAL_REJECTED,
                self.release,
                environment=self.environment,
                actor=responder,
                details={**details, "reason": "rejected"},
            )
            raise AirflowFailException(
                f"{self.release} {request.version} was rejected for {self.environment} by {responder} "
                f"({self.what}); nothing was deployed to {self.environment}"
            )
        record_decision(
            context, Event.APPROVAL_GIVEN, self.release, environment=self.environment, actor=responder, details=details
        )
        self.log.info(
            "%s approved %s %s for %s (%s)", responder, self.release, request.version, self.environment, self.what
        )
        return {
            **result,
            "environment": self.environment,
            "digest": digest,
            "group": self.review_group,
            "slot": self.slot,
        }

    def _body(
        self, context: Any, request: ReleaseRequest, packaged: dict[str, Any], excluded: set[str], eligible: list[str]
    ) -> str:
        lines = [
            f"**{self.release} {request.version}** is ready for **{self.environment}**.",
            "",
            "| | |",
            "|---|---|",
            f"| Version | `{request.version}` |",
            f"| Bundle digest | `{packaged.get('digest', 'not packaged')}` |",
            f"| Requested by | {_md(request.requested_by or '-')} |",
            f"| Triggered by | {_md(request.triggered_by or 'scheduler')} |",
            f"| Change | {_md(request.change_summary or '-')} |",
            f"| May approve | {', '.join(eligible)} (authors cannot: {', '.join(sorted(excluded)) or '-'}) |",
            "",
            "**Passed so far**",
            "",
        ]
        passed = [pull(context, task_id) for task_id in self.passed_task_ids]
        for entry in filter(None, passed):
            checks = entry.get("checks") or []
            detail = f"{len(checks)} smoke checks passed" if checks else "healthy"
            if entry.get("health"):
                detail = entry["health"].get("reason", detail)
            lines.append(f"- {entry['environment']}: `{entry['digest']}` deployed, {detail}")
        if not any(passed):
            lines.append("- nothing yet (this is the first environment)")
        lines += self._parity(context)
        lines += self._trend(context)
        run_url = self._run_url(context)
        if run_url:
            lines += ["", f"[Open the release run]({run_url})"]
        return "\n".join(lines)

    def _parity(self, context: Any) -> list[str]:
        """The parity check's record (the ledger), as lines of the request."""
        if not self.parity_task_id:
            return []
        checked = run_ledger(context, self.release).of(
            Event.PARITY_CHECKED, environment=self.environment, task_id=self.parity_task_id
        )
        if not checked:
            return ["", f"**Parity**: no record of {self.parity_task_id} in the ledger"]
        report = checked[-1].details
        lines = ["", f"**Parity with {_md(report['compared_with'])}**", ""]
        return lines + [f"- {_md(line)}" for line in report["differences"] or ["no differences"]]

    def _trend(self, context: Any) -> list[str]:
        """The release's recent trend and the procedure it added, from the risk record."""
        assessed = [e for e in run_ledger(context, self.release).of(Event.RISK_ASSESSED) if "trend" in e.details]
        if not assessed:
            return []
        details = assessed[-1].details
        lines = ["", "**Recent trend**", "", f"- {Trend(**details['trend']).describe()}"]
        for rule in details.get("trend_rules") or []:
            lines.append(f"- policy: {rule['when']} (counted {rule['counted']}): {_md(adds(rule))}")
        return lines

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
