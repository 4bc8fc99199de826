"""The gatekeeper decides from ledger events only; every refusal names the missing record."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from releasetrain.core import gatekeeper
from releasetrain.core.gatekeeper import Decision, RunLedger
from releasetrain.core.request import ReleaseRequestError, build_request
from releasetrain.core.vocabulary import Event, decide_task

DIGEST = "sha256:" + "a" * 64


@dataclass
class E:
    kind: str
    environment: str = ""
    actor: str = ""
    at: str = "2026-11-28T10:00:00Z"
    details: dict[str, Any] = field(default_factory=dict)


def ev(kind: str, task_id: str = "", environment: str = "", actor: str = "", **details: Any) -> E:
    if task_id:
        details["task_id"] = task_id
    return E(kind, environment, actor, details=details)


RISK = ev(Event.RISK_ASSESSED, "assess_risk", level="moderate", gates={"prod": {"quorum": 2, "reviews": ["ops"]}})


def approval(actor: str, task: str, group: str | None = None, digest: str = DIGEST) -> E:
    return ev(Event.APPROVAL_GIVEN, task, "prod", actor, digest=digest, group=group)


def approvals(run: RunLedger) -> Decision:
    gates = gatekeeper.risk_gates(run, "prod", 1, [], assess_task_id="assess_risk")
    if isinstance(gates, Decision):
        return gates
    quorum, reviews = gates
    return gatekeeper.approvals(
        run,
        "prod",
        digest=DIGEST,
        quorum=quorum,
        reviews=reviews,
        pool=["approver", "admin", "author"],
        review_members={"ops": ["ops"]},
        authors={"author"},
        step="prod.deploy",
    )


def test_approvals_hold_only_with_the_recorded_quorum_and_review():
    events = [RISK, approval("approver", "prod.approve"), approval("admin", "prod.approve_2")]
    refused = approvals(RunLedger(events))
    assert not refused.allowed and "readiness review of ['ops']" in refused.message()
    assert approvals(RunLedger([*events, approval("ops", "prod.review_ops", "ops")])).allowed


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        pytest.param([approval("approver", "prod.approve")], "no risk assessment recorded", id="no-risk-record"),
        pytest.param([RISK, approval("approver", "prod.approve")], "1 of 2 required", id="quorum-from-ledger"),
        pytest.param(
            [RISK, approval("approver", "a"), approval("author", "b"), approval("ops", "c", "ops")],
            "author is an author",
            id="author",
        ),
        pytest.param(
            [
                RISK,
                approval("approver", "a"),
                approval("admin", "b", digest="sha256:other"),
                approval("ops", "c", "ops"),
            ],
            "an approval is for one artifact only",
            id="other-digest",
        ),
    ],
)
def test_approvals_refused_name_the_problem(events, reason):
    decision = approvals(RunLedger(events))
    assert not decision.allowed and reason in decision.message()


def test_a_step_set_by_hand_is_named_as_such():
    run = RunLedger([ev(Event.TASK_STATE, "prod.smoke", state="success", by_hand=True)])
    decision = gatekeeper.step_proof(run, "prod.smoke", "prod")
    assert not decision.allowed
    assert "no 'checks_passed' recorded in the ledger by prod.smoke" in decision.message()
    assert "set to success by hand" in decision.message()


@pytest.mark.parametrize(
    ("events", "allowed", "reason"),
    [
        pytest.param([ev(Event.ANALYSIS, "cn.canary_10", "cn", outcome="successful")], True, "", id="passed"),
        pytest.param(
            [ev(Event.ANALYSIS, "cn.canary_10", "cn", outcome="failed", reason="5xx")], False, "failed", id="failed"
        ),
        pytest.param([], False, "no analysis verdict recorded", id="missing"),
        pytest.param(
            [ev(Event.ANALYSIS, "cn.canary_10", "cn", outcome="inconclusive")],
            False,
            "no decision to promote recorded in the ledger by cn.decide_10",
            id="inconclusive-undecided",
        ),
        pytest.param(
            [
                ev(Event.ANALYSIS, "cn.canary_10", "cn", outcome="inconclusive"),
                ev(Event.ANALYSIS_DECISION, "cn.decide_10", "cn", "approver", choice="Promote"),
            ],
            True,
            "",
            id="inconclusive-promoted",
        ),
        pytest.param(
            [ev(Event.ANALYSIS, "cn.canary_10", "other-env", outcome="successful")],
            False,
            "no analysis",
            id="other-env",
        ),
    ],
)
def test_traffic_moves_on_only_with_the_earlier_verdicts(events, allowed, reason):
    decision = gatekeeper.analysis_proof(RunLedger(events), "cn.canary_10", "cn")
    assert decision.allowed is allowed
    assert reason in decision.message()


def test_decide_task_names():
    assert decide_task("cn.canary_10") == "decide_10"
    assert decide_task("watch") == "decide_watch"


def test_a_rejection_is_final():
    run = RunLedger([ev(Event.APPROVAL_REJECTED, "prod.approve", "prod", "approver")])
    decision = gatekeeper.not_rejected(run, "prod.approve")
    assert not decision.allowed and "rejected by approver" in decision.message() and "final" in decision.message()
    assert gatekeeper.not_rejected(run, "prod.approve_2").allowed


def test_a_rejection_of_any_approval_is_final_for_the_environment():
    """A quorum slot rejected, then another slot (or the same, cleared) approved by someone else."""
    run = RunLedger(
        [
            ev(Event.APPROVAL_REJECTED, "prod.approve", "prod", "approver"),
            approval("approver2", "prod.approve_2"),
        ]
    )
    slot = gatekeeper.not_rejected(run, "prod.approve_2", environment="prod")
    assert not slot.allowed and "prod.approve was rejected by approver" in slot.message()
    assert "final for prod in this run" in slot.message()
    assert gatekeeper.not_rejected(run, "staging.approve", environment="staging").allowed
    deploy = gatekeeper.approvals(
        run,
        "prod",
        digest=DIGEST,
        quorum=1,
        reviews=[],
        pool=["approver", "approver2"],
        review_members={},
        authors=["author"],
        step="prod.deploy",
    )
    assert not deploy.allowed and "rejected by approver" in deploy.message()


@pytest.mark.parametrize(
    "events, reason",
    [
        (
            [
                ev(Event.ANALYSIS, "prod.canary_10", "prod", outcome="failed", reason="5xx"),
                ev(Event.ANALYSIS, "prod.canary_10", "prod", outcome="successful"),
            ],
            "prod.canary_10's analysis failed: 5xx",
        ),
        (
            [
                ev(Event.ANALYSIS, "prod.canary_10", "prod", outcome="inconclusive"),
                ev(Event.ANALYSIS_DECISION, "prod.decide_10", "prod", "approver", choice="Roll back"),
                ev(Event.ANALYSIS_DECISION, "prod.decide_10", "prod", "approver2", choice="Promote"),
            ],
            "approver chose 'Roll back' at prod.decide_10",
        ),
        (
            [
                ev(Event.ANALYSIS, "prod.canary_10", "prod", outcome="inconclusive"),
                ev(Event.ANALYSIS_DECISION, "prod.decide_10", "prod", choice="Roll back", timed_out=True),
            ],
            "nobody \\(timed out\\) chose 'Roll back'",
        ),
    ],
    ids=["failed-then-passed", "rolled-back-then-promoted", "timed-out"],
)
def test_a_condemning_verdict_is_final_for_the_environment(events, reason):
    import re

    run = RunLedger(events)
    for step in ("prod.canary_50", "prod.promote"):
        decision = gatekeeper.analysis_proof(run, "prod.canary_10", "prod")
        assert not decision.allowed and re.search(reason, decision.message()), decision.message()
        assert not gatekeeper.condemned(run, "prod", step).allowed
    assert gatekeeper.condemned(run, "staging", "staging.promote").allowed
    error = RunLedger([ev(Event.ANALYSIS, "prod.canary_10", "prod", outcome="error")])
    assert gatekeeper.condemned(error, "prod", "prod.canary_50").allowed, "an unreadable metric judges nothing"


def test_only_the_run_that_exists_now_counts():
    """A run deleted and triggered again under its id starts over; a cleared run does not."""
    old = [ev(Event.RUN_STARTED, clear_number=0, dag_run_key="1:a"), approval("approver", "prod.approve")]
    cleared = [*old, ev(Event.RUN_STARTED, clear_number=1, dag_run_key="1:a")]
    assert RunLedger(cleared).of(Event.APPROVAL_GIVEN) and RunLedger(cleared).incarnation == "1:a"
    again = [*cleared, ev(Event.RUN_STARTED, clear_number=0, dag_run_key="2:b")]
    assert not RunLedger(again).of(Event.APPROVAL_GIVEN) and RunLedger(again).incarnation == "2:b"
    assert RunLedger([approval("approver", "prod.approve")]).incarnation == ""  # no listener record: all count
    # a run set back to queued through the API starts again with clear number 0, same row: same run
    requeued = [*old, ev(Event.RUN_STARTED, clear_number=0, dag_run_key="1:a")]
    assert RunLedger(requeued).of(Event.APPROVAL_GIVEN) and RunLedger(requeued).incarnation == "1:a"


def test_a_deleted_runs_end_written_after_the_new_run_started_is_not_the_new_runs():
    """Run starts are recorded on a worker of their own, so a deleted run's end can land after
    the start of the run triggered again under its id: it must not end the new run."""
    new = [
        ev(Event.RUN_STARTED, clear_number=0, dag_run_key="1:a"),
        ev(Event.RUN_STARTED, clear_number=0, dag_run_key="2:b"),
        ev(Event.RUN_STATE, state="failed", dag_run_key="1:a"),
    ]
    assert RunLedger(new).ended() is None
    assert gatekeeper.not_ended(RunLedger(new), "prod.deploy").allowed
    mine = [*new, ev(Event.RUN_STATE, state="success", dag_run_key="2:b")]
    assert RunLedger(mine).ended().details["state"] == "success"
    assert not gatekeeper.not_ended(RunLedger(mine), "prod.deploy").allowed
    unkeyed = [*new, ev(Event.RUN_STATE, state="failed")]  # an end of unknown incarnation still counts
    assert RunLedger(unkeyed).ended() is not None


def test_a_retried_completion_recording_one_answer_twice_is_one_approval():
    """Airflow 3.3's fast-answer race can run an approval's completion twice (seen in the
    governance end-to-end test under load): one person's one answer is not 'both'."""
    run = RunLedger([RISK, approval("admin", "prod.approve_2"), approval("admin", "prod.approve_2")])
    decision = gatekeeper.approvals(
        run,
        "prod",
        digest=DIGEST,
        quorum=1,
        reviews=[],
        pool=["admin"],
        review_members={},
        authors=["author"],
        step="prod.deploy",
    )
    assert decision.allowed, decision.message()
    twice = RunLedger([RISK, approval("admin", "prod.approve"), approval("admin", "prod.approve_2")])
    assert (
        "one person never counts twice"
        in gatekeeper.approvals(
            twice,
            "prod",
            digest=DIGEST,
            quorum=2,
            reviews=[],
            pool=["admin", "x"],
            review_members={},
            authors=["author"],
            step="prod.deploy",
        ).message()
    )


def test_promotion_needs_the_recorded_pass_with_the_same_digest():
    run = RunLedger([ev(Event.ENVIRONMENT_PASSED, "staging.passed", "staging", digest=DIGEST)])
    assert gatekeeper.environment_passed(run, "staging", DIGEST, gate_task_id="staging.passed").allowed
    other = gatekeeper.environment_passed(run, "staging", "sha256:b", gate_task_id="staging.passed")
    assert not other.allowed and "not the digest that passed staging" in other.message()
    missing = gatekeeper.environment_passed(RunLedger([]), "staging", DIGEST, gate_task_id="staging.passed")
    assert "no pass of staging recorded in the ledger by staging.passed" in missing.message()


def test_rollback_candidates_are_passed_older_and_never_rolled_back():
    events = [
        ev(Event.ENVIRONMENT_PASSED, environment="prod", version="1.0.0", digest="d1"),
        ev(Event.ENVIRONMENT_PASSED, environment="prod", version="1.1.0", digest="d11"),
        ev(Event.ENVIRONMENT_PASSED, environment="prod", version="1.2.0", digest="d12"),
        ev(Event.ROLLBACK, environment="prod", failed_version="1.1.0"),
        ev(Event.DEPLOYED, environment="prod", version="0.9.0"),  # deployed, never passed
        ev(Event.ENVIRONMENT_PASSED, environment="staging", version="1.1.5"),
    ]
    assert [c["version"] for c in gatekeeper.rollback_candidates(events, "prod", "1.2.0")] == ["1.0.0"]
    # what was in service before a release run deployed counts (never a no-op's "before")
    started = ev(Event.DEPLOY_STARTED, environment="prod", version="1.0.0", before={"version": "0.8.0", "noop": False})
    noop = ev(Event.DEPLOY_STARTED, environment="prod", version="1.0.0", before={"version": "0.9.5", "noop": True})
    assert [c["version"] for c in gatekeeper.rollback_candidates([*events, started, noop], "prod", "1.2.0")] == [
        "1.0.0",
        "0.8.0",
    ]
    assert [c["version"] for c in gatekeeper.rollback_candidates(events, "prod", "2.0.0")] == ["1.2.0", "1.0.0"]


def test_a_version_a_manual_rollback_left_is_never_a_candidate_again():
    events = [
        ev(Event.ENVIRONMENT_PASSED, environment="prod", version="1.0.0", digest="d1"),
        ev(Event.ENVIRONMENT_PASSED, environment="prod", version="2.0.0", digest="d2"),
        # the rollback DAG's record: prod rolled back from 2.0.0 to 1.0.0 in an incident
        ev(Event.ROLLBACK, "rollback_prod", "prod", failed_version="2.0.0", restored_version="1.0.0"),
        ev(Event.ENVIRONMENT_PASSED, environment="prod", version="3.0.0", digest="d3"),
    ]
    assert [c["version"] for c in gatekeeper.rollback_candidates(events, "prod", "3.0.0")] == ["1.0.0"]
    # a pass recorded again later (e.g. an old run's prod.passed cleared) does not clear the record
    passed_again = [*events, ev(Event.ENVIRONMENT_PASSED, environment="prod", version="2.0.0", digest="d2")]
    assert [c["version"] for c in gatekeeper.rollback_candidates(passed_again, "prod", "3.0.0")] == ["1.0.0"]


def test_request_comes_from_the_run_and_names_bad_params():
    request = build_request(
        release="r",
        dag_id="release_r",
        run_id="x",
        params={"version": "1.2.3", "requested_by": "dev"},
        conf={"version": "1.2.3"},
        triggering_user="alice",
        run_type="manual",
    )
    assert request.authors == {"alice", "dev"} and request.version == "1.2.3"
    with pytest.raises(ReleaseRequestError, match="unknown trigger param"):
        build_request(
            release="r",
            dag_id="d",
            run_id="x",
            params={},
            conf={"triggered_by": "x"},
            triggering_user="a",
            run_type="manual",
        )
    scheduled = build_request(
        release="r",
        dag_id="d",
        run_id="x",
        params={"version": None},
        conf={},
        triggering_user=None,
        run_type="DagRunType.SCHEDULED",
        candidate={"version": "2.0.0", "published_by": "ci-bot"},
    )
    assert scheduled.version == "2.0.0" and scheduled.requested_by == "ci-bot" and scheduled.authors == {"ci-bot"}


def test_passing_outcomes_are_the_canary_judges_words():
    from typing import get_args

    from releasetrain.core.canary import Outcome

    assert gatekeeper.PASSING_OUTCOMES - {"skipped"} == {"successful"} <= set(get_args(Outcome))


def test_a_profile_is_deployed_only_with_the_boards_approval_of_its_digest():
    other = "sha256:" + "0" * 64
    approvals = [ev(Event.BASELINE_APPROVED, "prod.baseline", "prod", "cab", sha256=DIGEST)]
    run = RunLedger([])
    assert gatekeeper.baseline(run, approvals, "prod", DIGEST, "prod.baseline").allowed
    refused = gatekeeper.baseline(run, approvals, "prod", other, "prod.baseline")
    assert not refused.allowed and "profile of prod (sha256:000" in refused.message()
    assert not gatekeeper.baseline(run, approvals, "staging", DIGEST, "staging.baseline").allowed, "per environment"
    by_hand = RunLedger([ev(Event.TASK_STATE, "prod.baseline", state="success", by_hand=True)])
    assert "set to success by hand" in gatekeeper.baseline(by_hand, [], "prod", DIGEST, "prod.baseline").message()


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ([], "no test suite result recorded in the ledger by dev.tests_api"),
        ([ev(Event.TESTS_PASSED, "dev.tests_api", "dev", digest=DIGEST)], None),
        (
            [
                ev(Event.TESTS_PASSED, "dev.tests_api", "dev", digest=DIGEST),
                ev(Event.TESTS_FAILED, "dev.tests_api", "dev", digest=DIGEST, failures=["cart: HTTP 500"]),
            ],
            "test suite dev.tests_api failed in dev (cart: HTTP 500)",
        ),
        (
            [
                ev(Event.TESTS_FAILED, "dev.tests_api", "dev", digest=DIGEST, failures=["cart: HTTP 500"]),
                ev(Event.TASK_STATE, "dev.tests_api", state="success", by_hand=True),
            ],
            "set to success by hand, which proves nothing",
        ),
        ([ev(Event.TESTS_PASSED, "dev.tests_api", "dev", digest="sha256:old")], "passed on sha256:old, not"),
    ],
)
def test_production_waits_for_the_latest_record_of_each_suite_on_its_digest(events, reason):
    decision = gatekeeper.suites_passed(RunLedger(events), ["dev.tests_api"], DIGEST, "prod.deploy")
    assert decision.allowed is (reason is None)
    if reason:
        assert reason in decision.message()
    proof = gatekeeper.step_proof(RunLedger(events), "dev.tests_api", "dev", digest=DIGEST)
    assert proof.allowed is (reason is None), "a suite as a stage's proof: the same rule"


def test_library_conflicts_hold_every_deploy_until_waived():
    found = ev(Event.LIBRARY_CONFLICTS, "libraries", conflicts=["pypi a: 2 in api, 1 in web"])
    assert "no library check or waiver recorded" in gatekeeper.libraries(RunLedger([]), "libraries").message()
    assert (
        "pypi a: 2 in api, 1 in web) and nobody waived"
        in gatekeeper.libraries(RunLedger([found]), "libraries").message()
    )
    assert gatekeeper.libraries(RunLedger([found, ev(Event.CONFLICTS_WAIVED, "libraries")]), "libraries").allowed
    assert gatekeeper.libraries(RunLedger([ev(Event.LIBRARIES_CHECKED, "libraries")]), "libraries").allowed


def test_a_profile_approved_by_an_author_of_this_run_is_no_approval_for_it():
    approvals = [ev(Event.BASELINE_APPROVED, "prod.baseline", "prod", "mallory", sha256=DIGEST)]
    assert gatekeeper.baseline(RunLedger([]), approvals, "prod", DIGEST, "prod.baseline", ["bob"]).allowed
    assert not gatekeeper.baseline(RunLedger([]), approvals, "prod", DIGEST, "prod.baseline", ["mallory"]).allowed


# --- packaging modular: each unit's deploy is a proof of its stage -----------------------------
UNIT = "sha256:" + "c" * 64


@pytest.mark.parametrize(
    "events, expected",
    [
        ([], "no 'deployed' record"),  # marked successful by hand: no record
        ([ev(Event.DEPLOYED, "prod.deploy_web", "prod", digest=UNIT, release_digest=DIGEST, unit="web")], None),
        (
            [ev(Event.DEPLOYED, "prod.deploy_web", "prod", digest=UNIT, release_digest="sha256:" + "f" * 64)],
            "prod.deploy_web recorded digest sha256:ffff",
        ),
        ([ev(Event.DEPLOYED, "prod.deploy_api", "prod", digest=UNIT, release_digest=DIGEST)], "no 'deployed' record"),
    ],
)
def test_a_units_deploy_is_proven_by_its_own_record_of_the_release_bundle(events, expected):
    assert gatekeeper.step_kind("prod.deploy_web") == "deploy"
    decision = gatekeeper.step_proof(RunLedger(events), "prod.deploy_web", "prod", digest=DIGEST)
    if expected is None:
        assert decision.allowed
    else:
        assert not decision.allowed and expected in " ".join(decision.reasons), decision.reasons


@pytest.mark.parametrize(
    "events, expected",
    [
        ([], None),
        ([ev(Event.PACKAGED, "package", version="1.0.0", units=[{"unit": "web", "digest": "sha256:p"}])], "sha256:p"),
        ([ev(Event.PACKAGED, "package", version="1.1.0", units=[{"unit": "web", "digest": "sha256:p"}])], None),
        ([ev(Event.PACKAGED, "package", version="1.0.0", units=[{"unit": "api", "digest": "sha256:p"}])], None),
        ([ev(Event.PACKAGED, "package", version="1.0.0")], None),  # packaged monolithic: no unit bundle
        (  # a deploy's record is not the packaging's: the unit's bundle is what was packaged
            [ev(Event.DEPLOYED, "prod.deploy_web", "prod", unit="web", version="1.0.0", digest="sha256:d")],
            None,
        ),
    ],
)
def test_a_units_bundle_of_a_version_is_the_one_packaging_recorded(events, expected):
    found = gatekeeper.unit_bundle(events, "web", "1.0.0")
    assert (found or {}).get("digest") == expected


def test_a_modular_rollback_returns_only_to_versions_that_passed_there():
    events = [
        ev(Event.ENVIRONMENT_PASSED, "prod.passed", "prod", version="1.0.0", digest="sha256:r"),
        ev(Event.DEPLOY_STARTED, "prod.deploy_web", "prod", unit="web", before={"version": "0.9.0", "digest": "x"}),
    ]
    assert [c["version"] for c in gatekeeper.rollback_candidates(events, "prod", "1.2.0")] == ["1.0.0", "0.9.0"]
    modular = gatekeeper.rollback_candidates(events, "prod", "1.2.0", passed_only=True)
    assert [c["version"] for c in modular] == ["1.0.0"], "one unit's 'before' is not the environment's"


def test_a_deploy_needs_its_stages_migration_on_record_for_its_digest() -> None:
    missing = gatekeeper.migrated(RunLedger([]), "prod", "prod.migrate", DIGEST)
    assert not missing.allowed and "no 'migrated' record recorded in the ledger by prod.migrate" in missing.message()
    by_hand = RunLedger([ev(Event.TASK_STATE, "prod.migrate", state="success", by_hand=True)])
    assert "set to success by hand" in gatekeeper.migrated(by_hand, "prod", "prod.migrate", DIGEST).message()
    other = RunLedger([ev(Event.MIGRATED, "prod.migrate", "prod", digest="sha256:other")])
    assert (
        "prod.migrate migrated for sha256:other" in gatekeeper.migrated(other, "prod", "prod.migrate", DIGEST).message()
    )
    done = RunLedger([ev(Event.MIGRATED, "prod.migrate", "prod", digest=DIGEST)])
    assert gatekeeper.migrated(done, "prod", "prod.migrate", DIGEST).allowed
    assert not gatekeeper.migrated(done, "staging", "staging.migrate", DIGEST).allowed
