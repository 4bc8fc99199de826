"""Segregation of duties for approvals: the release's author never approves it."""

from __future__ import annotations

from collections.abc import Iterable


class SegregationOfDutiesError(PermissionError):
    """An approval that would break segregation of duties."""


def authors(triggered_by: str | None, requested_by: str | None) -> set[str]:
    """The people who asked for the release: they may not approve it."""
    return {name for name in (triggered_by, requested_by) if name}


def eligible_approvers(approvers: Iterable[str], excluded: set[str]) -> list[str]:
    """The configured approvers minus the release's authors, in the configured order.

    :raises SegregationOfDutiesError: when nobody is left to approve
    """
    configured = list(approvers)
    eligible = [user for user in configured if user not in excluded]
    if not eligible:
        raise SegregationOfDutiesError(
            f"no eligible approver: the approvers {configured} are all authors of this release "
            f"({sorted(excluded)}); ask another approver to be added to the spec"
        )
    return eligible


def check_responder(responder: str | None, approvers: Iterable[str], excluded: set[str]) -> None:
    """Re-check, at response time, that the person who answered may approve."""
    if not responder:
        raise SegregationOfDutiesError("the approval response does not name who gave it")
    if responder in excluded:
        raise SegregationOfDutiesError(f"{responder} is an author of this release and cannot approve it")
    if responder not in set(approvers):
        raise SegregationOfDutiesError(f"{responder} is not an approver for this environment")
