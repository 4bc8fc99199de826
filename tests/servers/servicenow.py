"""A local ServiceNow instance: the Table API subset releasetrain uses, for ``change_request``.

Standard library only, and deliberately independent of ``releasetrain.core.change`` (its own
state tables), so a mistake there is not mirrored here. Faithful where it matters:

* basic auth on everything (``401 {"error": {...}, "status": "failure"}`` otherwise);
* ``POST /api/now/table/change_request`` -> ``201 {"result": record}`` with a 32-hex ``sys_id``
  and numbers from ``CHG0030001``; every field is a string, ``state`` the numeric value;
* ``GET /api/now/table/change_request/{sys_id}`` (``404`` when unknown) and
  ``GET /api/now/table/change_request?sysparm_query=a=b^c=d&sysparm_limit=n`` -> ``{"result": [...]}``;
* ``PATCH``/``PUT /api/now/table/change_request/{sys_id}``, enforcing the change state model
  like ServiceNow's business rules: one step forward in the type's lifecycle (or to Canceled)
  per update, else ``403``; Closed needs ``close_code`` and ``close_notes`` (``403`` data
  policy otherwise).

Every record keeps a history of ``(state, work_notes)`` (creation first) for tests to assert the
walk; :meth:`ServiceNowInstance.fail_next` makes the next requests answer ``500``.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TABLE_PATH = "/api/now/table/"
WALK_PATH = "/_test/walk/"

NEW, ASSESS, AUTHORIZE, SCHEDULED, IMPLEMENT, REVIEW, CLOSED, CANCELED = "-5", "-4", "-3", "-2", "-1", "0", "3", "4"
STATE_LABELS = {
    NEW: "New",
    ASSESS: "Assess",
    AUTHORIZE: "Authorize",
    SCHEDULED: "Scheduled",
    IMPLEMENT: "Implement",
    REVIEW: "Review",
    CLOSED: "Closed",
    CANCELED: "Canceled",
}
STATE_MODELS = {
    "normal": [NEW, ASSESS, AUTHORIZE, SCHEDULED, IMPLEMENT, REVIEW, CLOSED],
    "standard": [NEW, SCHEDULED, IMPLEMENT, REVIEW, CLOSED],
    "emergency": [NEW, AUTHORIZE, SCHEDULED, IMPLEMENT, REVIEW, CLOSED],
}
RISKS = {"1": "Very High", "2": "High", "3": "Moderate", "4": "Low"}
CLOSE_CODES = ("successful", "successful_issues", "unsuccessful")
FIELDS = (
    "sys_id",
    "number",
    "state",
    "type",
    "risk",
    "short_description",
    "description",
    "start_date",
    "end_date",
    "correlation_id",
    "correlation_display",
    "close_code",
    "close_notes",
    "work_notes",
    "active",
    "sys_created_on",
    "sys_created_by",
    "sys_updated_on",
    "sys_updated_by",
)
WRITABLE = (
    "state",
    "type",
    "risk",
    "short_description",
    "description",
    "start_date",
    "end_date",
    "correlation_id",
    "correlation_display",
    "close_code",
    "close_notes",
)
GLIDE_DATETIME = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")
STATE_RULE = "State model - Can change state?"


class TableApiError(Exception):
    def __init__(self, status: int, message: str, detail: str | None = None):
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


@dataclass
class ServiceNowInstance:
    """The instance's data: change requests, their histories, and injected faults."""

    user: str
    password: str
    records: dict[str, dict[str, str]] = field(default_factory=dict)
    history: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)
    next_number: int = 30001
    lock: threading.RLock = field(default_factory=threading.RLock)
    _failures: list[tuple[int, str, str | None]] = field(default_factory=list)

    def fail_next(
        self, count: int = 1, status: int = 500, message: str = "Internal server error", method: str | None = None
    ) -> None:
        """The next ``count`` requests (authenticated or not; only ``method`` ones if given) answer ``status``."""
        with self.lock:
            self._failures.extend([(status, message, method)] * count)

    def by_number(self, number: str) -> dict[str, str]:
        with self.lock:
            return next(r for r in self.records.values() if r["number"] == number)

    def walk(self, sys_id: str) -> list[str]:
        """The record's states, by label, from creation on (``["New", "Assess", ...]``)."""
        with self.lock:
            return [STATE_LABELS[state] for state, _ in self.history[sys_id]]

    # -- the Table API -------------------------------------------------------------------------

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any, auth: str | None):
        with self.lock:
            self.requests.append((method, path))
            if self._failures and self._failures[0][2] in (None, method):
                status, message, _ = self._failures.pop(0)
                raise TableApiError(status, message, "injected fault")
            self._authenticate(auth)
            if method == "GET" and path.startswith(WALK_PATH):
                # not ServiceNow's: the tests' view of a record's state history, for test
                # processes other than the one running this instance (pytest-xdist workers)
                return 200, self.walk(self._record(path[len(WALK_PATH) :])["sys_id"])
            if not path.startswith(TABLE_PATH):
                raise TableApiError(400, "Requested URI does not represent any resource", path)
            table, _, sys_id = path[len(TABLE_PATH) :].partition("/")
            if table != "change_request":
                raise TableApiError(400, f"Invalid table {table}", None)
            if method == "GET" and not sys_id:
                return 200, self._query(query)
            if method == "POST" and not sys_id:
                return 201, self._insert(body)
            if sys_id and method == "GET":
                return 200, self._present(self._record(sys_id), query)
            if sys_id and method in ("PATCH", "PUT"):
                return 200, self._update(self._record(sys_id), body)
            raise TableApiError(405, "Method not Supported", f"{method} is not supported for {path}")

    def _authenticate(self, auth: str | None) -> None:
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if not auth or not auth.startswith("Basic ") or not hmac.compare_digest(auth[6:].strip(), expected):
            raise TableApiError(401, "User Not Authenticated", "Required to provide Auth information")

    def _record(self, sys_id: str) -> dict[str, str]:
        record = self.records.get(sys_id)
        if record is None:
            raise TableApiError(404, "No Record found", "Record doesn't exist or ACL restricts the record retrieval")
        return record

    def _query(self, query: dict[str, list[str]]) -> list[dict[str, str]]:
        conditions = []
        for term in filter(None, query.get("sysparm_query", [""])[0].split("^")):
            name, sep, value = term.partition("=")
            if not sep:
                raise TableApiError(400, "Invalid query", f"unsupported condition {term!r} (only field=value)")
            conditions.append((name, value))
        limit = query.get("sysparm_limit", [""])[0]
        if limit and not limit.isdigit():
            raise TableApiError(400, "Invalid sysparm_limit", limit)
        matches = [r for r in self.records.values() if all(r.get(n) == v for n, v in conditions)]
        return [self._present(r, query) for r in matches[: int(limit) if limit else None]]

    def _insert(self, body: Any) -> dict[str, str]:
        values = self._writable(body)
        change_type = values.setdefault("type", "normal")
        if change_type not in STATE_MODELS:
            raise TableApiError(400, "Invalid type", f"{change_type!r} is not a change type")
        if values.setdefault("state", NEW) != NEW:
            raise _state_rule(f"a new change request starts in state New ({NEW}), not {values['state']}")
        self._check_values(values)
        now = _now()
        sys_id = uuid.uuid4().hex
        record = dict.fromkeys(FIELDS, "")
        record.update(values)
        record.update(
            sys_id=sys_id,
            number=f"CHG{self.next_number:07d}",
            active="true",
            sys_created_on=now,
            sys_updated_on=now,
            sys_created_by=self.user,
            sys_updated_by=self.user,
        )
        self.next_number += 1
        self.records[sys_id] = record
        self.history[sys_id] = [(NEW, str(body.get("work_notes", "")))]
        return self._present(record, {})

    def _update(self, record: dict[str, str], body: Any) -> dict[str, str]:
        values = self._writable(body)
        self._check_values(values)
        if "type" in values and values["type"] != record["type"]:
            raise _state_rule("the type of a change request cannot change once created")
        current, target = record["state"], values.get("state", record["state"])
        if target != current:
            allowed = _next_states(record["type"], current)
            if target not in allowed:
                raise _state_rule(
                    f"{record['type']} change {record['number']} cannot move from "
                    f"{STATE_LABELS.get(current, current)} to {STATE_LABELS.get(target, target)}; "
                    f"allowed: {', '.join(STATE_LABELS[s] for s in allowed) or 'none'}"
                )
        if target == CLOSED:
            missing = [
                label
                for name, label in (("close_code", "Close code"), ("close_notes", "Close notes"))
                if not (values.get(name) or record[name])
            ]
            if missing:
                raise TableApiError(
                    403,
                    "Operation Failed",
                    f"Data Policy Exception: \n\tThe following fields are mandatory: {', '.join(missing)}\n",
                )
        record.update(values)
        record.update(
            active="false" if record["state"] in (CLOSED, CANCELED) else "true",
            sys_updated_on=_now(),
            sys_updated_by=self.user,
        )
        work_notes = str(body.get("work_notes", ""))
        if target != current or work_notes:
            self.history[record["sys_id"]].append((record["state"], work_notes))
        return self._present(record, {})

    @staticmethod
    def _writable(body: Any) -> dict[str, str]:
        if not isinstance(body, dict):
            raise TableApiError(400, "Exception while reading request", "The payload is not valid JSON.")
        return {name: "" if body[name] is None else str(body[name]) for name in WRITABLE if name in body}

    @staticmethod
    def _check_values(values: dict[str, str]) -> None:
        if "state" in values and values["state"] not in STATE_LABELS:
            raise TableApiError(400, "Invalid state", f"{values['state']!r} is not a change request state")
        if values.get("risk") and values["risk"] not in RISKS:
            raise TableApiError(400, "Invalid risk", f"{values['risk']!r} is not one of {', '.join(RISKS)}")
        if values.get("close_code") and values["close_code"] not in CLOSE_CODES:
            raise TableApiError(400, "Invalid close_code", f"{values['close_code']!r} is not a close code")
        for name in ("start_date", "end_date"):
            if values.get(name) and not GLIDE_DATETIME.match(values[name]):
                raise TableApiError(400, f"Invalid {name}", f"{values[name]!r} is not yyyy-MM-dd HH:mm:ss")

    @staticmethod
    def _present(record: dict[str, str], query: dict[str, list[str]]) -> dict[str, str]:
        wanted = [f for f in query.get("sysparm_fields", [""])[0].split(",") if f]
        shown = {**record, "work_notes": ""}  # a journal field: never read back through the Table API
        return {f: shown.get(f, "") for f in wanted} if wanted else shown


def _next_states(change_type: str, current: str) -> list[str]:
    if current in (CLOSED, CANCELED):
        return []
    model = STATE_MODELS[change_type]
    following = model[model.index(current) + 1 : model.index(current) + 2]
    return [*following, CANCELED]


def _state_rule(detail: str) -> TableApiError:
    return TableApiError(
        403,
        f"Operation against file 'change_request' was aborted by Business Rule '{STATE_RULE}^{uuid.uuid4().hex}'. "
        "Business Rule Stack:State model - Can change state?",
        detail,
    )


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S")


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        url = urlsplit(self.path)
        body: Any = None
        try:
            if self.command in ("POST", "PATCH", "PUT"):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    raise TableApiError(
                        400, "Exception while reading request", "The payload is not valid JSON."
                    ) from None
            status, result = self.server.instance.handle(
                self.command, url.path.rstrip("/"), parse_qs(url.query), body, self.headers.get("Authorization")
            )
            payload: dict[str, Any] = {"result": result}
        except TableApiError as exc:
            status, payload = exc.status, {"error": {"message": exc.message, "detail": exc.detail}, "status": "failure"}
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        if status == 401:
            self.send_header("WWW-Authenticate", 'BASIC realm="Service-now"')
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, instance: ServiceNowInstance):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.instance = instance


@contextmanager
def running_servicenow(
    user: str = "svc-release", password: str = "Sn0w-s3cret!"
) -> Iterator[tuple[ServiceNowInstance, str]]:
    """A local instance in a thread; yields ``(instance, base_url)``."""
    instance = ServiceNowInstance(user=user, password=password)
    server = _Server(instance)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield instance, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
