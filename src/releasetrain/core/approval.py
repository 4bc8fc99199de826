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


def check_approvals(
    records: list[dict],
    *,
    quorum: int,
    reviews: list[str],
    pool: Iterable[str],
    review_members: dict[str, list[str]],
    excluded: set[str],
    digest: str,
) -> list[str]:
    """Check, where the approvals are used, that they add up to what the release needs.

    ``records`` are the environment's recorded approvals: ``{approver, digest, group}``
    (``group`` None for quorum approvals). Every approver must be eligible and not an
    author, every approval must be for ``digest``, nobody may count twice, ``quorum``
    distinct pool members must have approved and every review group must have approved.

    :returns: the approvers, in record order
    :raises SegregationOfDutiesError: naming what is missing or wrong
    """
    pool_set = set(pool)
    seen: dict[str, str] = {}
    quorum_approvers: list[str] = []
    reviewed: set[str] = set()
    for record in records:
        approver = record.get("approver")
        group = record.get("group")
        what = f"the {group} review" if group else "the approval"
        if not approver:
            raise SegregationOfDutiesError(f"{what} does not name who gave it")
        if approver in excluded:
            raise SegregationOfDutiesError(f"{approver} is an author of this release and cannot approve it")
        if record.get("digest") != digest:
            raise SegregationOfDutiesError(
                f"{approver} approved bundle {record.get('digest')}, but {digest} is about to be deployed: "
                "an approval is for one artifact only; ask for a new approval"
            )
        if approver in seen:
            raise SegregationOfDutiesError(
                f"{approver} gave both {seen[approver]} and {what}: one person never counts twice"
            )
        seen[approver] = what
        if group:
            if approver not in set(review_members.get(group, [])):
                raise SegregationOfDutiesError(f"{approver} is not a member of {group!r}")
            reviewed.add(group)
        else:
            if approver not in pool_set:
                raise SegregationOfDutiesError(f"{approver} is not an approver for this environment")
            quorum_approvers.append(approver)
    if len(quorum_approvers) < quorum:
        raise SegregationOfDutiesError(
            f"{len(quorum_approvers)} of {quorum} required distinct approvals recorded ({quorum_approvers or 'none'})"
        )
    missing = [group for group in reviews if group not in reviewed]
    if missing:
        raise SegregationOfDutiesError(f"the readiness review of {missing} has not approved")
    return list(seen)
