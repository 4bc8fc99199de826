"""The release train's lanes: held, superseded or free, decided from the ledger (no Airflow)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from releasetrain.core.train import FREE, HELD, SUPERSEDED, admission_details, hold_on, lane_of
from releasetrain.core.vocabulary import LANE_HOTFIX, LANE_NORMAL, Event, train_slot

DAG = "release_shop"


@dataclass
class E:
    kind: str
    run_id: str
    environment: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    dag_id: str = DAG
    seq: int = 0


def chain(*events: E) -> list[E]:
    for seq, e in enumerate(events, 1):
        e.seq = seq
    return list(events)


def admitted(run: str, lane: str = LANE_HOTFIX, dag_id: str = DAG) -> E:
    return E(Event.RUN_ADMITTED, run, details=admission_details(lane, incident="INC-1", severity="sev1"), dag_id=dag_id)


def packaged(run: str) -> E:
    return E(Event.PACKAGED, run)


def passed(run: str, environment: str) -> E:
    return E(Event.ENVIRONMENT_PASSED, run, environment)


def ended(run: str, state: str = "success") -> E:
    return E(Event.RUN_STATE, run, details={"state": state})


def test_lanes_and_slots():
    assert lane_of(hotfix=False, emergency=False) == LANE_NORMAL
    assert lane_of(hotfix=True, emergency=False) == lane_of(hotfix=False, emergency=True) == LANE_HOTFIX
    # only what the trigger form offers overtakes: a stray conf key does not
    assert lane_of(hotfix=True, emergency=False, offered=["emergency"]) == LANE_NORMAL
    assert lane_of(hotfix=False, emergency=True, offered=["hotfix"]) == LANE_NORMAL
    assert lane_of(hotfix=False, emergency=True, offered=["emergency"]) == LANE_HOTFIX
    assert train_slot("release_shop", LANE_NORMAL) == "train:release_shop"
    assert train_slot("release_shop", LANE_HOTFIX) == "train:release_shop:hotfix"
    assert admission_details(LANE_HOTFIX, incident="INC-9", severity="sev2")["why"] == "hotfix for INC-9 (sev2)"
    assert admission_details(LANE_HOTFIX, justification="card payments down")["why"] == "emergency: card payments down"
    assert admission_details(LANE_NORMAL) == {"lane": LANE_NORMAL}


NORMAL = [admitted("n", LANE_NORMAL), packaged("n"), passed("n", "staging")]


@pytest.mark.parametrize(
    ("events", "state", "by"),
    [
        pytest.param(NORMAL, FREE, "", id="no hotfix"),
        pytest.param([*NORMAL, admitted("h")], HELD, "h", id="hotfix admitted: held"),
        pytest.param(
            [*NORMAL, admitted("h"), packaged("h"), passed("h", "staging")], HELD, "h", id="hotfix in staging"
        ),
        pytest.param(
            [*NORMAL, admitted("h"), packaged("h"), passed("h", "prod")], SUPERSEDED, "h", id="hotfix in production"
        ),
        pytest.param(
            [*NORMAL, admitted("h"), packaged("h"), passed("h", "prod"), ended("h")],
            SUPERSEDED,
            "h",
            id="hotfix ended in production",
        ),
        pytest.param([*NORMAL, admitted("h"), packaged("h"), ended("h", "failed")], FREE, "", id="hotfix failed"),
        pytest.param(
            [admitted("n", LANE_NORMAL), admitted("h"), packaged("h"), passed("h", "prod"), packaged("n")],
            FREE,
            "",
            id="cut after the fix",
        ),
        pytest.param([*NORMAL, admitted("h", dag_id="release_other")], FREE, "", id="another release's hotfix"),
        pytest.param([*NORMAL, admitted("h", LANE_NORMAL)], FREE, "", id="a normal run holds nothing"),
        pytest.param(
            [*NORMAL, admitted("h1"), packaged("h1"), ended("h1", "failed"), admitted("h2")], HELD, "h2", id="second"
        ),
    ],
)
def test_the_hold_on_a_normal_run(events, state, by):
    hold = hold_on(chain(*events), DAG, "n", ["prod"])
    assert (hold.state, hold.by) == (state, by)
    if state == SUPERSEDED:
        assert hold.environment == "prod" and "hotfix for INC-1 (sev1)" in hold.reasons[0]
        assert "take the fix out again" in hold.reasons[0]
    if state == HELD:
        assert "underway" in hold.reasons[0]


def test_a_hotfix_run_airflow_no_longer_has_holds_nothing():
    events = chain(*NORMAL, admitted("h"))
    assert hold_on(events, DAG, "n", ["prod"]).state == HELD
    assert hold_on(events, DAG, "n", ["prod"], gone=["h"]).state == FREE


def test_a_hotfix_is_never_held_by_itself():
    events = chain(admitted("h"), packaged("h"))
    assert hold_on(events, DAG, "h", ["prod"]).state == FREE
