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


def admitted(run: str, lane: str = LANE_HOTFIX, dag_id: str = DAG, incarnation: str = "") -> E:
    details = admission_details(lane, incident="INC-1", severity="sev1", incarnation=incarnation)
    return E(Event.RUN_ADMITTED, run, details=details, dag_id=dag_id)


def emergency(run: str) -> E:
    return E(Event.RUN_ADMITTED, run, details=admission_details(LANE_HOTFIX, justification="card payments down"))


def decided(run: str, allowed: bool = True, **changed: str) -> E:
    return E(Event.HOTFIX_DECIDED, run, details={"allowed": allowed, "changed": changed or {"web": "1.0.1"}})


def packaged(run: str, web: str = "1.0.1") -> E:
    return E(Event.PACKAGED, run, details={"components": [{"name": "web", "version": web}]})


def passed(run: str, environment: str) -> E:
    return E(Event.ENVIRONMENT_PASSED, run, environment)


def ended(run: str, state: str = "success") -> E:
    return E(Event.RUN_STATE, run, details={"state": state})


def hotfix(run: str = "h") -> list[E]:
    """A hotfix run its policy allowed, packaged (web 1.0.1)."""
    return [admitted(run), decided(run), packaged(run)]


def test_lanes_and_slots():
    assert lane_of(hotfix=False, emergency=False) == LANE_NORMAL
    assert lane_of(hotfix=True, emergency=False) == lane_of(hotfix=False, emergency=True) == LANE_HOTFIX
    # only what the trigger form offers overtakes: a stray conf key does not
    assert lane_of(hotfix=True, emergency=False, offered=["emergency"]) == LANE_NORMAL
    assert lane_of(hotfix=False, emergency=True, offered=["hotfix"]) == LANE_NORMAL
    assert lane_of(hotfix=False, emergency=True, offered=["emergency"]) == LANE_HOTFIX
    assert train_slot("release_shop", LANE_NORMAL) == "train:release_shop"
    assert train_slot("release_shop", LANE_HOTFIX) == "train:release_shop:hotfix"
    fix = admission_details(LANE_HOTFIX, incident="INC-9", severity="sev2", incarnation="1:a")
    assert fix == {"lane": LANE_HOTFIX, "kind": "hotfix", "why": "hotfix for INC-9 (sev2)", "incarnation": "1:a"}
    urgent = admission_details(LANE_HOTFIX, justification="card payments down")
    assert urgent["kind"] == "emergency" and urgent["why"] == "emergency: card payments down"
    assert admission_details(LANE_NORMAL) == {"lane": LANE_NORMAL}


NORMAL = [admitted("n", LANE_NORMAL), packaged("n", "1.1.0"), passed("n", "staging")]  # cut before any fix


@pytest.mark.parametrize(
    ("events", "state", "by"),
    [
        pytest.param(NORMAL, FREE, "", id="no hotfix"),
        pytest.param([*NORMAL, admitted("h")], FREE, "", id="a hotfix its policy has not allowed yet"),
        pytest.param([*NORMAL, admitted("h"), decided("h", allowed=False)], FREE, "", id="a refused hotfix"),
        pytest.param([*NORMAL, admitted("h"), decided("h")], HELD, "h", id="allowed: held"),
        pytest.param([*NORMAL, *hotfix(), passed("h", "staging")], HELD, "h", id="hotfix in staging"),
        pytest.param([*NORMAL, emergency("e")], HELD, "e", id="an emergency holds at once"),
        pytest.param([*NORMAL, *hotfix(), passed("h", "prod")], SUPERSEDED, "h", id="hotfix in production"),
        pytest.param([*NORMAL, *hotfix(), passed("h", "prod"), ended("h")], SUPERSEDED, "h", id="hotfix ended"),
        pytest.param([*NORMAL, *hotfix(), ended("h", "failed")], FREE, "", id="hotfix failed before production"),
        pytest.param(
            [admitted("n", LANE_NORMAL), *hotfix(), passed("h", "prod"), packaged("n", "1.1.0")],
            FREE,
            "",
            id="newer, cut after the fix",
        ),
        pytest.param(
            [admitted("n", LANE_NORMAL), *hotfix(), passed("h", "prod"), packaged("n", "1.0.0")],
            SUPERSEDED,
            "h",
            id="cut after the fix but older: a downgrade",
        ),
        pytest.param(
            [admitted("n", LANE_NORMAL), packaged("n", "1.0.1"), *hotfix(), passed("h", "prod")],
            FREE,
            "",
            id="the fix's own version (the same bytes)",
        ),
        pytest.param([*NORMAL, admitted("h", dag_id="release_other"), decided("h")], FREE, "", id="another release"),
        pytest.param([*NORMAL, admitted("h", LANE_NORMAL)], FREE, "", id="a normal run holds nothing"),
        pytest.param([*NORMAL, *hotfix("h1"), ended("h1", "failed"), *hotfix("h2")], HELD, "h2", id="second"),
        pytest.param(
            [*NORMAL, *hotfix(), admitted("h", LANE_NORMAL)], FREE, "", id="a deleted hotfix's id, now a normal run"
        ),
        pytest.param(
            [*NORMAL, *hotfix(), passed("h", "prod"), ended("h"), admitted("h", LANE_NORMAL)],
            SUPERSEDED,
            "h",
            id="a hotfix in production, deleted and its id triggered again: what it shipped stays",
        ),
        pytest.param(
            [*NORMAL, *hotfix(), passed("h", "prod"), ended("h"), decided("h", allowed=False, web="1.0.1")],
            SUPERSEDED,
            "h",
            id="its decision taken again after production ('nothing changes') undoes nothing",
        ),
        pytest.param(
            [*NORMAL, *hotfix(), admitted("h", LANE_NORMAL, incarnation="2:b")],
            FREE,
            "",
            id="a hotfix deleted underway, its id now a normal run's: the old one holds nothing",
        ),
        pytest.param(
            [*NORMAL, *hotfix(), passed("h", "staging"), packaged("h", "9.9.9"), passed("h", "prod")],
            SUPERSEDED,
            "h",
            id="packaged again: the first record counts",
        ),
    ],
)
def test_the_hold_on_a_normal_run(events, state, by):
    hold = hold_on(chain(*events), DAG, "n", ["prod"])
    assert (hold.state, hold.by) == (state, by)
    if state == SUPERSEDED:
        assert hold.environment == "prod" and "hotfix for INC-1 (sev1)" in hold.reasons[0]
        assert "with web 1.0.1, which this run's bundle does not carry" in hold.reasons[0]
    if state == HELD:
        assert "underway" in hold.reasons[0] and hold.since > 0


def test_a_run_that_carries_the_fix_is_held_until_every_production_environment_has_it():
    events = chain(admitted("n", LANE_NORMAL), *hotfix(), passed("h", "prod-us"), packaged("n", "1.1.0"))
    hold = hold_on(events, DAG, "n", ["prod-us", "prod-eu"])
    assert hold.state == HELD and hold.carries, "the fix is not everywhere yet: the hotfix still goes first"
    events = chain(*events, passed("h", "prod-eu"))
    assert hold_on(events, DAG, "n", ["prod-us", "prod-eu"]).state == FREE


def test_a_hotfix_run_airflow_no_longer_has_holds_nothing():
    events = chain(*NORMAL, *hotfix())
    assert hold_on(events, DAG, "n", ["prod"]).state == HELD
    assert hold_on(events, DAG, "n", ["prod"], gone=["h"]).state == FREE


def test_a_hotfix_is_never_held_by_itself():
    events = chain(*hotfix())
    assert hold_on(events, DAG, "h", ["prod"]).state == FREE
