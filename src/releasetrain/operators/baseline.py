"""Baselines under change control: a new or changed configuration profile needs the change
advisory board's approval before a release deploys it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator

from releasetrain.core.approval import SegregationOfDutiesError, check_responder
from releasetrain.core.gatekeeper import Decision
from releasetrain.core.profile import profile_changes
from releasetrain.core.vocabulary import OPTION_APPROVE_BASELINE, OPTION_REJECT, Event
from releasetrain.operators._common import enforce, record, record_decision, release_request
from releasetrain.operators._common import responder as responder_of
from releasetrain.operators.approval import _md, assign_non_authors


class BaselineApprovalOperator(HITLOperator):
    """Ask the change advisory board to approve the environment's configuration profile when
    the board has not approved this profile (by digest) for the environment before.

    Approved before (this run or an earlier one of the release): recorded
    (``baseline_checked``, naming the approval), the stage goes on. New or changed: the
    request shows what changed against the last approved profile
    (``baseline_change_requested``); a board member who is not an author of the release
    approves (``baseline_approved``, with the profile's values and secret references) or
    rejects (``gate_refused``). The deploy asks the ledger for the approval: this step
    marked success by hand proves nothing.

    :param config: the profile (``{version, sha256, values, secrets}``, secrets as references)
    :param board: the change advisory board's group name; ``members``: its members
    """

    ui_color = "#fef7e0"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        config: dict[str, Any],
        board: str,
        members: list[str],
        **kwargs: Any,
    ) -> None:
        kwargs.pop("params", None)  # the DAG's trigger params are not part of this form
        kwargs.setdefault("retries", 2)  # see ReleaseApprovalOperator: Airflow 3.3's fast-answer race
        kwargs.setdefault("retry_delay", timedelta(seconds=5))
        super().__init__(
            subject=f"Configuration profile {config['version']} of {environment} ({release}): change approval",
            options=[OPTION_APPROVE_BASELINE, OPTION_REJECT],
            **kwargs,
        )
        self.release = release
        self.environment = environment
        self.config = config
        self.board = board
        self.members = list(members)

    def _approvals(self) -> list[Any]:
        """The board's approvals of profiles for this environment, oldest first."""
        from releasetrain.hooks.ledger import LedgerHook

        hook = LedgerHook()
        try:
            return [
                e
                for e in hook.events(release=self.release, kind=Event.BASELINE_APPROVED)
                if e.environment == self.environment
            ]
        finally:
            hook.close()

    def _shown(self, approvals: list[Any]) -> dict[str, Any]:
        before = approvals[-1].details if approvals else None
        return {
            "version": self.config["version"],
            "sha256": self.config["sha256"],
            "previous": {"version": before.get("version"), "sha256": before.get("sha256")} if before else None,
            "changes": profile_changes(before, self.config),
        }

    def execute(self, context: Any) -> Any:
        approvals = self._approvals()
        request = release_request(context, self.release)
        same = [  # an approval counts for this run when its approver may approve it now
            e
            for e in approvals
            if e.details.get("sha256") == self.config["sha256"]
            and e.actor in self.members
            and e.actor not in request.authors
        ]
        if same:
            details = {
                "version": self.config["version"],
                "sha256": self.config["sha256"],
                "approved_by": same[-1].actor,
                "approved_in": same[-1].run_id,
            }
            record(context, Event.BASELINE_CHECKED, self.release, environment=self.environment, details=details)
            self.log.info(
                "%s: profile %s (%s) approved by %s in %s",
                self.environment,
                self.config["version"],
                self.config["sha256"],
                same[-1].actor,
                same[-1].run_id,
            )
            return details
        shown = self._shown(approvals)
        record(context, Event.BASELINE_CHANGE_REQUESTED, self.release, environment=self.environment, details=shown)
        assign_non_authors(self, request, self.members, f"the {self.board} approval of {self.environment}'s profile")
        previous = shown["previous"]
        self.body = "\n".join(
            [
                f"**{self.release} {request.version}** would deploy configuration profile "
                f"**{_md(self.config['version'])}** to **{self.environment}** ({self.config['sha256']}), "
                + (
                    f"which the change advisory board has not approved; the last approved one is "
                    f"{_md(str(previous['version']))} ({previous['sha256']})."
                    if previous
                    else "the environment's first profile under change control."
                ),
                "",
                *[f"- {_md(line)}" for line in shown["changes"] or ["no setting changed (only the version)"]],
                "",
                f"Approve it as a member of {_md(self.board)} (recorded with your name), or reject to stop the "
                "promotion. Secrets are shown by reference only.",
            ]
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        request = release_request(context, self.release)
        result = super().execute_complete(context=context, event=event)
        responder = responder_of(result, request)
        if result["chosen_options"] != [OPTION_APPROVE_BASELINE]:
            enforce(
                context,
                Decision.refuse(
                    self.task_id,
                    f"configuration profile {self.config['version']} of {self.environment} rejected by "
                    f"{responder or 'nobody'} ({self.board})",
                ),
                self.release,
                self.environment,
            )
        try:
            check_responder(responder, self.members, set(request.authors))
        except SegregationOfDutiesError as exc:  # recorded: who tried to decide what they may not
            refusal = Decision.refuse(self.task_id, f"{self.environment}'s profile: {exc} ({self.board})")
            enforce(context, refusal, self.release, self.environment)
        shown = self._shown(self._approvals())
        details = {
            **shown,
            "board": self.board,
            "values": dict(self.config.get("values") or {}),
            "secrets": dict(self.config.get("secrets") or {}),  # references, never a secret
        }
        record_decision(
            context,
            Event.BASELINE_APPROVED,
            self.release,
            environment=self.environment,
            actor=responder or "",
            details=details,
        )
        return {k: details[k] for k in ("version", "sha256", "changes")}
