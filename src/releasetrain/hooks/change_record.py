"""Change records: the backend interface and its ServiceNow implementation (Table API).

The ServiceNow connection is an HTTP connection whose host is the instance's base URL (e.g.
``https://acme.service-now.com``); login/password are sent as HTTP basic auth. Calls, all on
the ``change_request`` table and with ``Accept: application/json``:

=====================================================================  ==============================
``POST  api/now/table/change_request``                                 open: ``201 {"result": {...}}``
``GET   api/now/table/change_request/{sys_id}``                        read one record
``GET   api/now/table/change_request?sysparm_query=correlation_id=..``  find the run's record
``PATCH api/now/table/change_request/{sys_id}``                        one state step: ``{state,
                                                                       work_notes}`` (+ ``close_code``,
                                                                       ``close_notes`` to close)
=====================================================================  ==============================

ServiceNow's state model business rules allow one step of the type's lifecycle per update,
so moves are walked state by state (see :func:`releasetrain.core.change.path_to`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Protocol
from urllib.parse import urlencode

from airflow.providers.http.hooks.http import HttpHook
from airflow.sdk import BaseHook

from releasetrain.core.change import (
    CHANGE_TYPES,
    SERVICENOW_STATE_VALUES,
    SERVICENOW_STATES,
    ChangeRecordError,
    ChangeRef,
    ChangeState,
    close_code,
    closing,
    path_to,
)
from releasetrain.hooks._http import json_or_text as _json_or_text
from releasetrain.hooks._http import short as _short

TABLE = "api/now/table/change_request"
#: releasetrain's risk levels as ServiceNow's ``change_request.risk`` choice values.
SERVICENOW_RISK_VALUES = {"low": "4", "moderate": "3", "high": "2"}
CORRELATION_DISPLAY = "releasetrain"
MAX_CORRELATION_ID = 100  # the length of change_request.correlation_id


class ChangeRecordBackend(Protocol):
    """Where a release run's change record lives."""

    name: str

    def open(
        self,
        *,
        correlation_id: str,
        change_type: str,
        short_description: str,
        description: str,
        risk: str,
        planned_start: str | None,
        planned_end: str | None,
    ) -> ChangeRef:
        """Open the run's record in ``new``; returns the existing one when ``correlation_id`` has one."""
        ...

    def get(self, ref: ChangeRef) -> ChangeRef:
        """The record as it is now."""
        ...

    def move_to(self, ref: ChangeRef, target: ChangeState, *, note: str) -> ChangeRef:
        """Walk the record to ``target`` one state at a time; nothing to do when it is there."""
        ...

    def close(self, ref: ChangeRef, *, outcome: str, notes: str) -> ChangeRef:
        """Walk to review, then closed with the outcome's close code; cancel a failed change never implemented."""
        ...

    def cancel(self, ref: ChangeRef, *, note: str) -> ChangeRef:
        """Cancel the record (from any state but closed)."""
        ...


class ServiceNowChangeHook(BaseHook):
    """Change records in ServiceNow, through an Airflow HTTP connection.

    :param servicenow_conn_id: connection whose host is the instance base URL
    :param timeout: seconds for each HTTP request
    """

    conn_name_attr = "servicenow_conn_id"
    default_conn_name = "servicenow_default"
    conn_type = "http"
    hook_name = "ServiceNow change records"
    name = "servicenow"

    def __init__(self, servicenow_conn_id: str = default_conn_name, *, timeout: float = 30.0) -> None:
        super().__init__()
        self.servicenow_conn_id = servicenow_conn_id
        self.timeout = timeout

    # -- the backend interface -----------------------------------------------------------------

    def open(
        self,
        *,
        correlation_id: str,
        change_type: str,
        short_description: str,
        description: str,
        risk: str,
        planned_start: str | None,
        planned_end: str | None,
    ) -> ChangeRef:
        if not correlation_id or "^" in correlation_id or len(correlation_id) > MAX_CORRELATION_ID:
            raise ChangeRecordError(
                f"correlation id {correlation_id!r} must be 1-{MAX_CORRELATION_ID} characters without '^'"
            )
        if change_type not in CHANGE_TYPES:
            raise ChangeRecordError(f"unknown change type {change_type!r}: expected one of {', '.join(CHANGE_TYPES)}")
        if risk not in SERVICENOW_RISK_VALUES:
            raise ChangeRecordError(f"unknown risk {risk!r}: expected one of {', '.join(SERVICENOW_RISK_VALUES)}")
        body = {
            "short_description": short_description,
            "description": description,
            "type": change_type,
            "risk": SERVICENOW_RISK_VALUES[risk],
            "state": SERVICENOW_STATE_VALUES[ChangeState.NEW],
            "start_date": _glide_datetime("planned_start", planned_start),
            "end_date": _glide_datetime("planned_end", planned_end),
            "correlation_id": correlation_id,
            "correlation_display": CORRELATION_DISPLAY,
        }
        existing = self._find(correlation_id)
        if existing is not None:
            if existing.change_type != change_type:
                raise ChangeRecordError(
                    f"ServiceNow {self.servicenow_conn_id!r}: {existing.number} for {correlation_id!r} is a "
                    f"{existing.change_type} change, not {change_type}"
                )
            self.log.info("ServiceNow: %s is already open for %s", existing.number, correlation_id)
            return existing
        body = {key: value for key, value in body.items() if value is not None}
        ref = self._ref("POST", TABLE, self._expect("POST", TABLE, (201, 200), body))
        self.log.info("ServiceNow: opened %s (%s change) for %s", ref.number, change_type, correlation_id)
        return ref

    def get(self, ref: ChangeRef) -> ChangeRef:
        self._own(ref)
        endpoint = f"{TABLE}/{ref.id}"
        return self._ref("GET", endpoint, self._expect("GET", endpoint, (200,)))

    def move_to(self, ref: ChangeRef, target: ChangeState, *, note: str) -> ChangeRef:
        return self._walk(self.get(ref), ChangeState(target), note)

    def close(self, ref: ChangeRef, *, outcome: str, notes: str) -> ChangeRef:
        code = close_code(outcome)  # an unknown outcome is refused before any request
        if not notes.strip():
            raise ChangeRecordError(f"closing {ref.number} needs close notes")
        current = self.get(ref)
        step = closing(current.change_type, current.state, outcome, current.number)
        if step == "done":
            return current
        if step == "cancel":
            self.log.info("ServiceNow: %s never reached implement; canceling it", current.number)
            return self._step(current, ChangeState.CANCELED, {"work_notes": notes})
        current = self._walk(current, ChangeState.REVIEW, notes)
        fields = {"work_notes": notes, "close_code": code, "close_notes": notes}
        return self._step(current, ChangeState.CLOSED, fields)

    def cancel(self, ref: ChangeRef, *, note: str) -> ChangeRef:
        return self._walk(self.get(ref), ChangeState.CANCELED, note)

    # -- the Table API -------------------------------------------------------------------------

    def _find(self, correlation_id: str) -> ChangeRef | None:
        query = urlencode({"sysparm_query": f"correlation_id={correlation_id}", "sysparm_limit": 1}, safe="=^")
        endpoint = f"{TABLE}?{query}"
        found = self._expect("GET", endpoint, (200,))
        if not isinstance(found, list):
            raise ChangeRecordError(
                f"ServiceNow {self.servicenow_conn_id!r}: GET {endpoint} answered {_short(found)}, not a list"
            )
        return self._ref("GET", endpoint, found[0]) if found else None

    def _walk(self, current: ChangeRef, target: ChangeState, note: str) -> ChangeRef:
        for state in path_to(current.change_type, current.state, target):
            current = self._step(current, state, {"work_notes": note})
        return current

    def _step(self, current: ChangeRef, state: ChangeState, fields: dict[str, str]) -> ChangeRef:
        """One PATCH: the business rules allow one state step per update."""
        endpoint = f"{TABLE}/{current.id}"
        body = {"state": SERVICENOW_STATE_VALUES[state], **fields}
        updated = self._ref("PATCH", endpoint, self._expect("PATCH", endpoint, (200,), body))
        if updated.state != state:
            raise ChangeRecordError(
                f"ServiceNow {self.servicenow_conn_id!r}: PATCH {endpoint} left {updated.number} in "
                f"{updated.state.value!r}, not {state.value!r}"
            )
        self.log.info("ServiceNow: %s %s -> %s", updated.number, current.state.value, state.value)
        return updated

    def _own(self, ref: ChangeRef) -> None:
        if ref.backend != self.name:
            raise ChangeRecordError(f"{ref.number} is a {ref.backend!r} change record, not a ServiceNow one")

    def _request(self, method: str, endpoint: str, body: dict[str, Any] | None) -> tuple[int, Any]:
        hook = HttpHook(method=method, http_conn_id=self.servicenow_conn_id)
        try:
            response = hook.run(
                endpoint=endpoint,
                json=body,
                headers={"Accept": "application/json"},
                extra_options={"check_response": False, "timeout": self.timeout},
            )
        except Exception as exc:  # connection refused, DNS, timeouts: name the instance
            raise ChangeRecordError(
                f"ServiceNow {self.servicenow_conn_id!r}: {method} {endpoint} failed: {exc}"
            ) from exc
        return response.status_code, _json_or_text(response.text)

    def _expect(self, method: str, endpoint: str, ok: tuple[int, ...], body: dict[str, Any] | None = None) -> Any:
        """The ``result`` of a Table API answer; ServiceNow's ``error`` message and detail otherwise."""
        status, payload = self._request(method, endpoint, body)
        if status not in ok:
            raise ChangeRecordError(
                f"ServiceNow {self.servicenow_conn_id!r}: {method} {endpoint} answered HTTP {status}: {_error(payload)}"
            )
        if not isinstance(payload, dict) or "result" not in payload:
            raise ChangeRecordError(
                f"ServiceNow {self.servicenow_conn_id!r}: {method} {endpoint} answered {_short(payload)!r}, "
                "not a Table API result"
            )
        return payload["result"]

    def _ref(self, method: str, endpoint: str, record: Any) -> ChangeRef:
        """A change reference from a ``change_request`` record."""
        fields = record if isinstance(record, dict) else {}
        state = SERVICENOW_STATES.get(str(fields.get("state")))
        complete = fields.get("sys_id") and fields.get("number") and fields.get("type") in CHANGE_TYPES
        if not complete or state is None:
            raise ChangeRecordError(
                f"ServiceNow {self.servicenow_conn_id!r}: {method} {endpoint} answered {_short(record)}, not a "
                "change_request with sys_id, number, a change state and type"
            )
        return ChangeRef(
            backend=self.name, id=fields["sys_id"], number=fields["number"], state=state, change_type=fields["type"]
        )


def change_backend(kind: str, conn_id: str | None) -> ChangeRecordBackend:
    """The change-record backend of this kind (``servicenow``, ``jira`` or ``builtin``)."""
    if kind == "servicenow":
        return ServiceNowChangeHook(conn_id or ServiceNowChangeHook.default_conn_name)
    if kind == "jira":
        from releasetrain.hooks.jira_change import JiraChangeBackend

        return JiraChangeBackend(conn_id or "jira_default")
    if kind == "builtin":
        # --- built-in kind: releasetrain's own change ledger (added separately) ---
        from releasetrain.hooks.ledger import BuiltinChangeBackend

        return BuiltinChangeBackend(conn_id)
    raise ChangeRecordError(f"unknown change record backend {kind!r}: expected servicenow, jira or builtin")


def _glide_datetime(name: str, value: str | None) -> str | None:
    """An ISO 8601 time as ServiceNow's ``yyyy-MM-dd HH:mm:ss`` in UTC (naive times are UTC)."""
    if not value:
        return None
    try:
        moment = dt.datetime.fromisoformat(value)
    except ValueError:
        raise ChangeRecordError(f"{name} {value!r} is not an ISO 8601 date-time") from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S")


def _error(payload: Any) -> str:
    """ServiceNow's ``{"error": {"message", "detail"}}``, or the start of whatever else came."""
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict) and error.get("message"):
        detail = error.get("detail")
        return _short(f"{error['message']} ({detail})" if detail else str(error["message"]))
    return _short(payload)
