"""Change records for release runs, on ServiceNow's change state model.

Each change type walks its own documented lifecycle (ServiceNow "State models for change
requests")::

    normal     new -> assess -> authorize -> scheduled -> implement -> review -> closed
    standard   new -> scheduled -> implement -> review -> closed           (pre-approved)
    emergency  new -> authorize -> scheduled -> implement -> review -> closed

Any state but ``closed`` and ``canceled`` may go to ``canceled``; both are final.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class ChangeRecordError(RuntimeError):
    """A change record that cannot be opened, moved or closed as asked."""


class ChangeState(StrEnum):
    """A change record's state; the values are releasetrain's names, not ServiceNow's numbers."""

    NEW = "new"
    ASSESS = "assess"
    AUTHORIZE = "authorize"
    SCHEDULED = "scheduled"
    IMPLEMENT = "implement"
    REVIEW = "review"
    CLOSED = "closed"
    CANCELED = "canceled"


#: ServiceNow's numeric ``change_request.state`` values, as the Table API sends them (strings).
SERVICENOW_STATE_VALUES: dict[ChangeState, str] = {
    ChangeState.NEW: "-5",
    ChangeState.ASSESS: "-4",
    ChangeState.AUTHORIZE: "-3",
    ChangeState.SCHEDULED: "-2",
    ChangeState.IMPLEMENT: "-1",
    ChangeState.REVIEW: "0",
    ChangeState.CLOSED: "3",
    ChangeState.CANCELED: "4",
}
SERVICENOW_STATES: dict[str, ChangeState] = {value: state for state, value in SERVICENOW_STATE_VALUES.items()}

CHANGE_TYPES = ("standard", "normal", "emergency")
FINAL_STATES = frozenset({ChangeState.CLOSED, ChangeState.CANCELED})

_S = ChangeState
_LIFECYCLES: dict[str, tuple[ChangeState, ...]] = {
    "normal": (_S.NEW, _S.ASSESS, _S.AUTHORIZE, _S.SCHEDULED, _S.IMPLEMENT, _S.REVIEW, _S.CLOSED),
    "standard": (_S.NEW, _S.SCHEDULED, _S.IMPLEMENT, _S.REVIEW, _S.CLOSED),
    "emergency": (_S.NEW, _S.AUTHORIZE, _S.SCHEDULED, _S.IMPLEMENT, _S.REVIEW, _S.CLOSED),
}

CLOSE_CODES = ("successful", "successful_issues", "unsuccessful")
_CLOSE_CODE_BY_OUTCOME = {
    "success": "successful",
    "success_with_issues": "successful_issues",
    "failed": "unsuccessful",
    "rolled_back": "unsuccessful",
}


def lifecycle(change_type: str) -> list[ChangeState]:
    """The states a change of this type walks, from ``new`` to ``closed`` (``canceled`` excluded).

    :raises ChangeRecordError: for a type outside :data:`CHANGE_TYPES`
    """
    try:
        return list(_LIFECYCLES[change_type])
    except KeyError:
        raise ChangeRecordError(
            f"unknown change type {change_type!r}: expected one of {', '.join(CHANGE_TYPES)}"
        ) from None


def path_to(change_type: str, current: ChangeState | str, target: ChangeState | str) -> list[ChangeState]:
    """The states to walk, in order, to get from ``current`` to ``target`` (current excluded).

    ``canceled`` is one step from any state that is not final.

    :raises ChangeRecordError: when the target is behind the current state, not in the type's
        lifecycle, or the record is already closed or canceled
    """
    states = lifecycle(change_type)
    current, target = _state(current), _state(target)
    if current == target:
        return []
    where = f"{change_type} change in state {current.value!r} cannot move to {target.value!r}"
    if current in FINAL_STATES:
        raise ChangeRecordError(f"{where}: the record is already {current.value}")
    if current not in states:
        raise ChangeRecordError(f"{where}: {current.value!r} is not in the {change_type} lifecycle {_names(states)}")
    if target == ChangeState.CANCELED:
        return [ChangeState.CANCELED]
    if target not in states:
        raise ChangeRecordError(f"{where}: {target.value!r} is not in the {change_type} lifecycle {_names(states)}")
    start, end = states.index(current), states.index(target)
    if end < start:
        raise ChangeRecordError(f"{where}: {target.value!r} is behind {current.value!r} in {_names(states)}")
    return states[start + 1 : end + 1]


def reached(change_type: str, current: ChangeState | str, state: ChangeState | str) -> bool:
    """Whether a change in ``current`` has got to ``state`` (or past it) in its lifecycle."""
    states = lifecycle(change_type)
    current, state = _state(current), _state(state)
    if current not in states or state not in states:
        return current == state
    return states.index(current) >= states.index(state)


def close_code(outcome: str) -> str:
    """ServiceNow's ``close_code`` for a release outcome.

    :raises ValueError: for an outcome other than success, success_with_issues, failed, rolled_back
    """
    try:
        return _CLOSE_CODE_BY_OUTCOME[outcome]
    except KeyError:
        raise ValueError(
            f"unknown release outcome {outcome!r}: expected one of {', '.join(_CLOSE_CODE_BY_OUTCOME)}"
        ) from None


def closing(change_type: str, current: ChangeState | str, outcome: str, number: str = "the change") -> str:
    """What closing a change in ``current`` with a release ``outcome`` means:

    - ``"done"``: already closed (or canceled, for an unsuccessful outcome): nothing to do;
    - ``"cancel"``: unsuccessful and never implemented: cancel it (nothing was changed);
    - ``"close"``: walk to review, then close with :func:`close_code`.

    :raises ChangeRecordError: closing a canceled change as successful
    """
    code = close_code(outcome)
    current = _state(current)
    if current == ChangeState.CLOSED:
        return "done"
    if current == ChangeState.CANCELED:
        if code == "unsuccessful":
            return "done"
        raise ChangeRecordError(f"{number} was canceled: it cannot be closed as {code}")
    if code == "unsuccessful" and not reached(change_type, current, ChangeState.IMPLEMENT):
        return "cancel"
    return "close"


@dataclass(frozen=True)
class ChangeRef:
    """Where a release's change record lives and the state it was last seen in.

    :param backend: the backend kind (``servicenow``, ``builtin``)
    :param id: the backend's record id (ServiceNow: the ``sys_id``)
    :param number: the human-facing number, e.g. ``CHG0030001``
    """

    backend: str
    id: str
    number: str
    state: ChangeState
    change_type: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", _state(self.state))

    def to_dict(self) -> dict[str, str]:
        """JSON-safe, for XCom."""
        return {
            "backend": self.backend,
            "id": self.id,
            "number": self.number,
            "state": self.state.value,
            "change_type": self.change_type,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChangeRef:
        missing = [key for key in ("backend", "id", "number", "state", "change_type") if not data.get(key)]
        if missing:
            raise ChangeRecordError(f"change reference {data!r} lacks {', '.join(missing)}")
        return cls(
            backend=str(data["backend"]),
            id=str(data["id"]),
            number=str(data["number"]),
            state=_state(data["state"]),
            change_type=str(data["change_type"]),
        )


def _state(value: ChangeState | str) -> ChangeState:
    try:
        return ChangeState(value)
    except ValueError:
        raise ChangeRecordError(
            f"unknown change state {value!r}: expected one of {', '.join(s.value for s in ChangeState)}"
        ) from None


def _names(states: list[ChangeState]) -> str:
    return " -> ".join(s.value for s in states)
