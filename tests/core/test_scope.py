"""Scope freeze, read from the release's ledger events (no Airflow)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

import pytest

from releasetrain.core import gatekeeper
from releasetrain.core.gatekeeper import RunLedger
from releasetrain.core.scope import Freeze, decide_scope, scope_changes
from releasetrain.core.spec import ReleaseSpecError, parse_spec
from releasetrain.core.vocabulary import Event

AT_STAGING = Freeze(environment="staging", production=("prod",))
ON_DEC_1 = Freeze(date=datetime.date(2026, 12, 1), production=("prod",))
WEB_1, WEB_2 = [{"name": "web", "version": "1.0.0"}], [{"name": "web", "version": "1.1.0"}]


@dataclass
class E:
    kind: str
    run_id: str
    environment: str = ""
    at: str = "2026-11-20T10:00:00Z"
    actor: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def packaged(run: str, components: list, at: str = "2026-11-20T10:00:00Z") -> E:
    return E(Event.PACKAGED, run, at=at, details={"components": components})


def passed(run: str, env: str) -> E:
    return E(Event.ENVIRONMENT_PASSED, run, env)


NOW = {"web": "1.1.0"}
TODAY = datetime.date(2026, 12, 5)


@pytest.mark.parametrize(
    ("events", "freeze", "outcome", "source"),
    [
        ([], AT_STAGING, "open", None),
        ([packaged("r1", WEB_1), passed("r1", "dev")], AT_STAGING, "open", None),
        ([packaged("r1", WEB_1), passed("r1", "staging")], AT_STAGING, "change", "run r1 passed staging"),
        ([packaged("r1", WEB_2), passed("r1", "staging")], AT_STAGING, "match", "run r1 passed staging"),
        # production passed since: a new cycle, not frozen yet
        ([packaged("r1", WEB_1), passed("r1", "staging"), passed("r1", "prod")], AT_STAGING, "open", None),
        # an exception granted in this cycle is the frozen scope
        (
            [
                packaged("r1", WEB_1),
                passed("r1", "staging"),
                E(Event.SCOPE_EXCEPTION, "r2", details={"components": {"web": "1.1.0"}}),
            ],
            AT_STAGING,
            "match",
            "granted as an exception by nobody in run r2",
        ),
        ([packaged("r1", WEB_1, at="2026-11-30T23:00:00Z")], ON_DEC_1, "change", "the last before the freeze"),
        # nothing packaged before the freeze: nobody's run freezes it with its own contents
        ([packaged("r1", WEB_1, at="2026-12-02T09:00:00Z")], ON_DEC_1, "change", "nothing was packaged or released"),
        # ... the scope is what production was last released with
        (
            [packaged("r0", WEB_2, at="2026-11-02T09:00:00Z"), passed("r0", "prod")],
            ON_DEC_1,
            "match",
            "released to prod by run r0; nothing was packaged before the freeze",
        ),
        # a run packaged before the last production pass passes staging after it: its contents freeze
        ([packaged("r1", WEB_1), passed("r0", "prod"), passed("r1", "staging")], AT_STAGING, "change", "run r1 passed"),
        (
            [E(Event.SCOPE_FROZEN, "r1", details={"components": {"web": "1.0.0"}})],
            ON_DEC_1,
            "change",
            "frozen by nobody in run r1",
        ),
    ],
)
def test_the_frozen_scope_comes_from_the_ledger(events, freeze, outcome, source):
    decision = decide_scope(events, freeze, TODAY, "now", NOW)
    assert decision.outcome == outcome
    assert (
        (decision.frozen.source if decision.frozen else None) is None
        if source is None
        else source in decision.frozen.source
    )
    if outcome == "change" and decision.frozen.components:
        assert decision.changes == ["web: 1.1.0, frozen at 1.0.0"]


def test_a_date_in_the_future_freezes_nothing_and_this_runs_own_records_do_not_freeze_it():
    events = [packaged("r1", WEB_1)]
    assert decide_scope(events, ON_DEC_1, datetime.date(2026, 11, 30), "now", NOW).outcome == "open"
    own = [packaged("now", WEB_2), passed("now", "staging")]
    assert decide_scope(own, AT_STAGING, TODAY, "now", NOW).outcome == "open"


def test_scope_changes_name_each_component():
    assert scope_changes({"web": "1.0.0", "api": "2.0.0"}, {"web": "1.0.1", "search": "0.1.0"}) == [
        "api 2.0.0: removed after the freeze",
        "search 0.1.0: added after the freeze",
        "web: 1.0.1, frozen at 1.0.0",
    ]


def ev(kind, **details):
    return E(kind, "now", details={"task_id": "scope", **details})


@pytest.mark.parametrize(
    ("events", "reason"),
    [
        ([], "no scope check or scope exception recorded in the ledger by scope"),
        ([ev(Event.SCOPE_CHECKED)], None),
        ([ev(Event.SCOPE_FROZEN)], None),
        ([ev(Event.SCOPE_CHANGE_REQUESTED, changes=["web: 1.1.0, frozen at 1.0.0"])], "no exception was granted"),
        ([ev(Event.SCOPE_CHANGE_REQUESTED, changes=[]), ev(Event.SCOPE_EXCEPTION)], None),
        (
            [
                ev(Event.SCOPE_CHANGE_REQUESTED, changes=["x"]),
                E(Event.TASK_STATE, "now", details={"task_id": "scope", "by_hand": True}),
            ],
            "set to success by hand",
        ),
    ],
)
def test_every_deploy_needs_the_scope_steps_record(events, reason):
    decision = gatekeeper.scope(RunLedger(events), "scope")
    assert decision.allowed is (reason is None)
    if reason:
        assert reason in decision.message()


def spec(**extra):
    return parse_spec(
        {
            "name": "shop",
            "owner_team": "t",
            "components": [{"name": "web", "source": "include/web"}],
            "environments": [{"name": "staging", "deploy_target": "s"}, {"name": "prod", "deploy_target": "p"}],
            **extra,
        }
    )


@pytest.mark.parametrize(
    ("freeze", "error"),
    [
        ({}, "scope_freeze names either a date or an environment"),
        ({"date": "2026-12-01", "environment": "staging"}, "either a date or an environment"),
        ({"environment": "qa"}, "'qa' is not an environment of this release"),
        ({"environment": "prod"}, "passing production ends the release's cycle"),
    ],
)
def test_a_scope_freeze_is_a_date_or_an_environment_before_production(freeze, error):
    with pytest.raises(ReleaseSpecError, match=error):
        spec(scope_freeze=freeze)
    assert spec(scope_freeze={"date": "2026-12-01"}).scope_freeze.date == datetime.date(2026, 12, 1)


def test_an_exception_granted_by_an_author_of_this_run_is_no_decision_for_it():
    granted = [
        packaged("r1", WEB_1),
        passed("r1", "staging"),
        E(Event.SCOPE_EXCEPTION, "r2", actor="mallory", details={"components": {"web": "1.1.0"}}),
    ]
    assert decide_scope(granted, AT_STAGING, TODAY, "now", NOW, authors=["bob"]).outcome == "match"
    mine = decide_scope(granted, AT_STAGING, TODAY, "now", NOW, authors=["mallory"])
    assert mine.outcome == "change" and "granted by mallory, an author of this run" in mine.changes[0]
