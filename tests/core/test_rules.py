"""Promotion and segregation-of-duties rules."""

from __future__ import annotations

import pytest

from releasetrain.core.approval import SegregationOfDutiesError, authors, check_responder, eligible_approvers
from releasetrain.core.promotion import PromotionError, check_promotion

D1, D2 = "sha256:" + "1" * 64, "sha256:" + "2" * 64


def test_first_environment_needs_no_predecessor():
    check_promotion("dev", D1, None, None)


def test_promotion_of_the_digest_that_passed():
    check_promotion("prod", D1, "staging", {"environment": "staging", "digest": D1, "passed": True})


@pytest.mark.parametrize(
    "previous, message",
    [
        pytest.param(None, "no successful result recorded for staging", id="nothing-recorded"),
        pytest.param(
            {"environment": "staging", "digest": D2, "passed": True},
            f"digest {D1} is not the digest that passed staging",
            id="other-digest",
        ),
        pytest.param({"environment": "staging", "digest": D1, "passed": False}, "staging did not pass", id="failed"),
        pytest.param({"environment": "dev", "digest": D1, "passed": True}, "staging did not pass", id="wrong-env"),
    ],
)
def test_promotion_refused(previous, message):
    with pytest.raises(PromotionError, match=message):
        check_promotion("prod", D1, "staging", previous)


def test_authors_are_never_eligible():
    excluded = authors("alice", "bob")
    assert eligible_approvers(["alice", "bob", "carol"], excluded) == ["carol"]
    assert authors(None, "bob") == {"bob"} and authors("alice", None) == {"alice"}


def test_no_eligible_approver_is_an_error():
    with pytest.raises(SegregationOfDutiesError, match="no eligible approver"):
        eligible_approvers(["alice"], {"alice"})


@pytest.mark.parametrize(
    "responder, message",
    [
        ("alice", "alice is an author"),
        ("bob", "bob is an author"),
        ("mallory", "not an approver"),
        (None, "does not name who"),
    ],
)
def test_response_time_recheck(responder, message):
    with pytest.raises(SegregationOfDutiesError, match=message):
        check_responder(responder, ["alice", "bob", "carol"], {"alice", "bob"})
    check_responder("carol", ["alice", "bob", "carol"], {"alice", "bob"})
