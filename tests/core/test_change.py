"""Change records: ServiceNow's state models per change type, close codes, references."""

from __future__ import annotations

import json

import pytest

from releasetrain.core.change import (
    CHANGE_TYPES,
    CLOSE_CODES,
    SERVICENOW_STATE_VALUES,
    SERVICENOW_STATES,
    ChangeRecordError,
    ChangeRef,
    ChangeState,
    close_code,
    lifecycle,
    path_to,
    reached,
)


def names(states: list[ChangeState]) -> list[str]:
    return [s.value for s in states]


@pytest.mark.parametrize(
    "change_type, expected",
    [
        ("normal", "new assess authorize scheduled implement review closed"),
        ("standard", "new scheduled implement review closed"),
        ("emergency", "new authorize scheduled implement review closed"),
    ],
)
def test_lifecycles(change_type, expected):
    assert names(lifecycle(change_type)) == expected.split()


def test_every_type_has_a_lifecycle_and_unknown_types_are_named():
    assert set(CHANGE_TYPES) == {"standard", "normal", "emergency"}
    for change_type in CHANGE_TYPES:
        assert lifecycle(change_type)[0] == ChangeState.NEW and lifecycle(change_type)[-1] == ChangeState.CLOSED
    with pytest.raises(ChangeRecordError, match="unknown change type 'urgent'"):
        lifecycle("urgent")


def test_servicenow_state_values_both_ways():
    assert {s.value: v for s, v in SERVICENOW_STATE_VALUES.items()} == {
        "new": "-5",
        "assess": "-4",
        "authorize": "-3",
        "scheduled": "-2",
        "implement": "-1",
        "review": "0",
        "closed": "3",
        "canceled": "4",
    }
    assert set(SERVICENOW_STATE_VALUES) == set(ChangeState)
    assert all(SERVICENOW_STATES[v] == s for s, v in SERVICENOW_STATE_VALUES.items())


@pytest.mark.parametrize(
    "change_type, current, target, expected",
    [
        ("normal", "new", "closed", "assess authorize scheduled implement review closed"),
        ("normal", "new", "implement", "assess authorize scheduled implement"),
        ("normal", "authorize", "scheduled", "scheduled"),
        ("normal", "review", "closed", "closed"),
        ("standard", "new", "implement", "scheduled implement"),
        ("standard", "scheduled", "closed", "implement review closed"),
        ("emergency", "new", "scheduled", "authorize scheduled"),
        ("emergency", "implement", "review", "review"),
        ("normal", "assess", "canceled", "canceled"),
        ("standard", "implement", "canceled", "canceled"),
        ("emergency", "new", "canceled", "canceled"),
        ("normal", "implement", "implement", ""),
        ("normal", "closed", "closed", ""),
        ("standard", "canceled", "canceled", ""),
    ],
)
def test_path_to(change_type, current, target, expected):
    assert names(path_to(change_type, current, target)) == expected.split()
    assert path_to(change_type, ChangeState(current), ChangeState(target)) == path_to(change_type, current, target)


@pytest.mark.parametrize(
    "change_type, current, target, message",
    [
        (
            "normal",
            "implement",
            "scheduled",
            "normal change in state 'implement' cannot move to 'scheduled': .* behind",
        ),
        ("normal", "closed", "review", "the record is already closed"),
        ("normal", "closed", "canceled", "the record is already closed"),
        ("emergency", "canceled", "closed", "emergency change in state 'canceled' .* already canceled"),
        ("standard", "new", "assess", "'assess' is not in the standard lifecycle new -> scheduled"),
        ("standard", "new", "authorize", "standard change .*'authorize' is not in the standard lifecycle"),
        ("emergency", "new", "assess", "'assess' is not in the emergency lifecycle"),
        ("standard", "assess", "implement", "'assess' is not in the standard lifecycle"),
        ("normal", "new", "done", "unknown change state 'done'"),
        ("rapid", "new", "closed", "unknown change type 'rapid'"),
    ],
)
def test_path_to_refuses(change_type, current, target, message):
    with pytest.raises(ChangeRecordError, match=message):
        path_to(change_type, current, target)


@pytest.mark.parametrize(
    "change_type, current, state, expected",
    [
        ("normal", "scheduled", "implement", False),
        ("normal", "implement", "implement", True),
        ("normal", "review", "implement", True),
        ("standard", "new", "implement", False),
        ("emergency", "closed", "implement", True),
        ("normal", "canceled", "implement", False),
    ],
)
def test_reached(change_type, current, state, expected):
    assert reached(change_type, current, state) is expected


@pytest.mark.parametrize(
    "outcome, code",
    [
        ("success", "successful"),
        ("success_with_issues", "successful_issues"),
        ("failed", "unsuccessful"),
        ("rolled_back", "unsuccessful"),
    ],
)
def test_close_code(outcome, code):
    assert close_code(outcome) == code and code in CLOSE_CODES


@pytest.mark.parametrize("outcome", ["", "succeeded", "SUCCESS", "canceled"])
def test_close_code_refuses_unknown_outcomes(outcome):
    with pytest.raises(ValueError, match=f"unknown release outcome '{outcome}'"):
        close_code(outcome)


@pytest.mark.parametrize("change_type", CHANGE_TYPES)
@pytest.mark.parametrize("state", list(ChangeState))
def test_change_ref_round_trips_through_json(change_type, state):
    ref = ChangeRef(backend="servicenow", id="a" * 32, number="CHG0030001", state=state, change_type=change_type)
    data = json.loads(json.dumps(ref.to_dict()))
    assert data == {
        "backend": "servicenow",
        "id": "a" * 32,
        "number": "CHG0030001",
        "state": state.value,
        "change_type": change_type,
    }
    assert ChangeRef.from_dict(data) == ref and ChangeRef.from_dict(data).state is state


def test_change_ref_from_bad_dicts():
    good = {"backend": "servicenow", "id": "x", "number": "CHG1", "state": "new", "change_type": "normal"}
    with pytest.raises(ChangeRecordError, match="lacks id, number"):
        ChangeRef.from_dict({**good, "id": "", "number": None})
    with pytest.raises(ChangeRecordError, match="unknown change state 'open'"):
        ChangeRef.from_dict({**good, "state": "open"})
    assert ChangeRef(**{**good, "state": "review"}).state is ChangeState.REVIEW


@pytest.mark.parametrize(
    ("change_type", "state", "outcome", "step"),
    [
        ("normal", "implement", "success", "close"),
        ("normal", "implement", "rolled_back", "close"),
        ("normal", "review", "failed", "close"),
        ("normal", "authorize", "failed", "cancel"),
        ("standard", "scheduled", "rolled_back", "cancel"),
        ("emergency", "new", "failed", "cancel"),
        ("normal", "closed", "success", "done"),
        ("normal", "canceled", "failed", "done"),
    ],
)
def test_closing_decision(change_type, state, outcome, step):
    from releasetrain.core.change import closing

    assert closing(change_type, state, outcome) == step


def test_a_canceled_change_cannot_close_successful():
    from releasetrain.core.change import ChangeRecordError, closing

    with pytest.raises(ChangeRecordError, match="CHG1 was canceled"):
        closing("normal", "canceled", "success", "CHG1")
