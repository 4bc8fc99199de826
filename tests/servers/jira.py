"""A local Jira: the REST API v2 subset releasetrain's Jira change backend uses.

Standard library only, and independent of ``releasetrain.core.change`` (a workflow of its
own), so a mistake there is not mirrored here. Faithful where it matters:

* basic auth on everything (``401`` with Jira's ``{"errorMessages": [...], "errors": {}}``);
* ``POST /rest/api/2/issue`` -> ``201 {"id", "key", "self"}``: the project and issue type
  must exist, ``summary`` is required, labels may hold no spaces (``400`` with ``errors``
  per field otherwise); a new issue starts in status New;
* ``GET /rest/api/2/issue/{key}[?fields=a,b]`` -> ``{"id", "key", "fields": {...}}`` (``404``);
* ``GET /rest/api/2/issue/{key}/transitions[?expand=transitions.fields]`` ->
  ``{"transitions": [{"id", "name", "to"[, "fields"]}]}``: the workflow below, from the
  issue's status; the screens into Closed and Canceled have a required ``resolution``;
* ``POST /rest/api/2/issue/{key}/transitions`` -> ``204``: the id must be one of the issue's
  transitions now (``400`` otherwise); Closed and Canceled require a known ``resolution``
  (``400 {"errors": {"resolution": ...}}``), and no other transition takes one (not on its
  screen: ``400``); ``update.comment[].add.body`` adds comments;
* ``GET /rest/api/2/search?jql=...`` -> ``{"issues": [...], "total"}`` for the JQL subset
  ``field = "value" [AND field = "value" ...]`` over project, labels and status (``400``
  "Error in the JQL Query" otherwise).

Workflow (the "Change" issue type): New -> Assess | Authorize | Scheduled; Assess ->
Authorize; Authorize -> Scheduled; Scheduled -> Implement; Implement -> Review; Review ->
Closed; any open status -> Canceled. ``GET /_test/walk/{key}`` (not Jira's) gives the tests
an issue's statuses, in order, from other processes.
"""

from __future__ import annotations

import base64
import hmac
import json
import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

API = "/rest/api/2/"
WALK_PATH = "/_test/walk/"
WORKFLOW = {
    "New": [("11", "Assess", "Assess"), ("12", "Seek authorization", "Authorize"), ("13", "Schedule", "Scheduled")],
    "Assess": [("21", "Seek authorization", "Authorize")],
    "Authorize": [("31", "Authorize", "Scheduled")],
    "Scheduled": [("41", "Start implementation", "Implement")],
    "Implement": [("51", "Review", "Review")],
    "Review": [("61", "Close", "Closed")],
}
CANCEL = ("91", "Cancel", "Canceled")
FINAL = ("Closed", "Canceled")
RESOLUTIONS = ("Done", "Failed", "Won't Do")
JQL_TERM = re.compile(r'^\s*(project|labels|status)\s*=\s*(?:"([^"]*)"|(\S+))\s*$', re.IGNORECASE)


class JiraError(Exception):
    def __init__(self, status: int, messages: list[str] | None = None, errors: dict[str, str] | None = None):
        super().__init__("; ".join(messages or []) or json.dumps(errors))
        self.status, self.messages, self.errors = status, messages or [], errors or {}


@dataclass
class JiraInstance:
    user: str
    password: str
    projects: tuple[str, ...] = ("CHG",)
    issue_types: tuple[str, ...] = ("Change",)
    issues: dict[str, dict[str, Any]] = field(default_factory=dict)
    history: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # key -> (status, comment)
    requests: list[tuple[str, str]] = field(default_factory=list)
    next_id: int = 10001
    lock: threading.RLock = field(default_factory=threading.RLock)
    _failures: list[int] = field(default_factory=list)

    def fail_next(self, count: int = 1, status: int = 500) -> None:
        with self.lock:
            self._failures.extend([status] * count)

    def walk(self, key: str) -> list[str]:
        """The issue's statuses, in order, from creation on (comments without a move are left out)."""
        with self.lock:
            statuses: list[str] = []
            for status, _ in self.history[key]:
                if not statuses or statuses[-1] != status:
                    statuses.append(status)
            return statuses

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any, auth: str | None):
        with self.lock:
            self.requests.append((method, path))
            if self._failures:
                raise JiraError(self._failures.pop(0), ["Internal server error (injected fault)"])
            self._authenticate(auth)
            if method == "GET" and path.startswith(WALK_PATH):
                return 200, self.walk(self._issue(path[len(WALK_PATH) :])["key"])
            if not path.startswith(API):
                raise JiraError(404, [f"no resource {path}"])
            parts = path[len(API) :].split("/")
            if parts == ["issue"] and method == "POST":
                return 201, self._create(body)
            if parts == ["search"] and method == "GET":
                return 200, self._search(query)
            if len(parts) == 2 and parts[0] == "issue" and method == "GET":
                return 200, self._present(self._issue(parts[1]), query)
            if len(parts) == 3 and parts[0] == "issue" and parts[2] == "transitions":
                issue = self._issue(parts[1])
                if method == "GET":
                    fields = "transitions.fields" in query.get("expand", [""])[0]
                    return 200, {"expand": "transitions", "transitions": self._transitions(issue, fields)}
                if method == "POST":
                    self._transition(issue, body)
                    return 204, None
            raise JiraError(405, [f"{method} is not supported for {path}"])

    def _authenticate(self, auth: str | None) -> None:
        expected = base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
        if not auth or not auth.startswith("Basic ") or not hmac.compare_digest(auth[6:].strip(), expected):
            raise JiraError(401, ["You are not authenticated. Authentication required to perform this operation."])

    def _issue(self, key: str) -> dict[str, Any]:
        issue = self.issues.get(key) or next((i for i in self.issues.values() if i["id"] == key), None)
        if issue is None:
            raise JiraError(404, ["Issue does not exist or you do not have permission to see it."])
        return issue

    def _create(self, body: Any) -> dict[str, Any]:
        fields = body.get("fields") if isinstance(body, dict) else None
        if not isinstance(fields, dict):
            raise JiraError(400, ["Can not deserialize the request: no fields"])
        errors = {}
        project = (fields.get("project") or {}).get("key")
        if project not in self.projects:
            errors["project"] = "valid project is required"
        if (fields.get("issuetype") or {}).get("name") not in self.issue_types:
            errors["issuetype"] = "valid issue type is required"
        if not str(fields.get("summary") or "").strip():
            errors["summary"] = "You must specify a summary of the issue."
        labels = fields.get("labels") or []
        if not isinstance(labels, list) or any(not isinstance(x, str) or " " in x or not x for x in labels):
            errors["labels"] = "The label must not contain spaces."
        if errors:
            raise JiraError(400, [], errors)
        number = sum(1 for i in self.issues.values() if i["fields"]["project"]["key"] == project) + 1
        key, issue_id = f"{project}-{number}", str(self.next_id)
        self.next_id += 1
        self.issues[key] = {
            "id": issue_id,
            "key": key,
            "fields": {
                "project": {"key": project},
                "issuetype": {"name": fields["issuetype"]["name"]},
                "summary": fields["summary"],
                "description": fields.get("description") or "",
                "labels": list(labels),
                "status": {"name": "New"},
                "resolution": None,
                "comment": {"comments": []},
            },
        }
        self.history[key] = [("New", "")]
        return {"id": issue_id, "key": key, "self": f"{API}issue/{issue_id}"}

    @staticmethod
    def _transitions(issue: dict[str, Any], fields: bool = False) -> list[dict[str, Any]]:
        """The ways out of the issue's status; with ``fields``, each one's screen: the ones into
        Closed and Canceled ask for a resolution (required, from RESOLUTIONS)."""
        status = issue["fields"]["status"]["name"]
        ways = [] if status in FINAL else [*WORKFLOW.get(status, []), CANCEL]
        out = []
        for tid, name, to in ways:
            way: dict[str, Any] = {"id": tid, "name": name, "to": {"name": to, "id": to.lower()}}
            if fields:
                screen = {"resolution": {"required": True, "allowedValues": [{"name": r} for r in RESOLUTIONS]}}
                way["fields"] = screen if to in FINAL else {}
            out.append(way)
        return out

    def _transition(self, issue: dict[str, Any], body: Any) -> None:
        if not isinstance(body, dict) or not isinstance(body.get("transition"), dict):
            raise JiraError(400, ["Missing 'transition' identifier"])
        wanted = str(body["transition"].get("id"))
        chosen = [t for t in self._transitions(issue) if t["id"] == wanted]
        if not chosen:
            raise JiraError(400, [f"Transition id '{wanted}' is not valid for this issue."])
        target = chosen[0]["to"]["name"]
        resolution = ((body.get("fields") or {}).get("resolution") or {}).get("name")
        if target in FINAL and resolution not in RESOLUTIONS:
            raise JiraError(400, [], {"resolution": f"Resolution is required (one of {', '.join(RESOLUTIONS)})."})
        if target not in FINAL and resolution is not None:
            # like Jira: a field that is not on the transition's screen cannot be set
            raise JiraError(
                400,
                [],
                {"resolution": "Field 'resolution' cannot be set. It is not on the appropriate screen, or unknown."},
            )
        comments = [
            str(((c or {}).get("add") or {}).get("body") or "")
            for c in ((body.get("update") or {}).get("comment") or [])
        ]
        issue["fields"]["status"] = {"name": target}
        if resolution:
            issue["fields"]["resolution"] = {"name": resolution}
        for text in comments or [""]:
            if text:
                issue["fields"]["comment"]["comments"].append({"body": text})
            self.history[issue["key"]].append((target, text))

    def _search(self, query: dict[str, list[str]]) -> dict[str, Any]:
        jql = query.get("jql", [""])[0]
        terms = []
        for part in re.split(r"\s+AND\s+", jql, flags=re.IGNORECASE):
            match = JQL_TERM.match(part)
            if not match:
                raise JiraError(400, [f"Error in the JQL Query: unsupported clause {part!r} (field = value only)"])
            terms.append((match.group(1).lower(), match.group(2) if match.group(2) is not None else match.group(3)))

        def matches(issue: dict[str, Any]) -> bool:
            f = issue["fields"]
            have = {"project": [f["project"]["key"]], "labels": f["labels"], "status": [f["status"]["name"]]}
            return all(value in have[name] for name, value in terms)

        found = [i for i in self.issues.values() if matches(i)]
        limit = int(query.get("maxResults", ["50"])[0])
        return {
            "startAt": 0,
            "maxResults": limit,
            "total": len(found),
            "issues": [self._present(i, query) for i in found[:limit]],
        }

    @staticmethod
    def _present(issue: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        wanted = [f for f in query.get("fields", [""])[0].split(",") if f and f != "*all"]
        fields = issue["fields"]
        return {
            "id": issue["id"],
            "key": issue["key"],
            "fields": {k: fields[k] for k in wanted if k in fields} if wanted else dict(fields),
        }


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args: Any) -> None:
        pass

    def _serve(self) -> None:
        url = urlsplit(self.path)
        body: Any = None
        try:
            if self.command in ("POST", "PUT"):
                raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    body = json.loads(raw or b"null")
                except ValueError:
                    raise JiraError(400, ["Unexpected character: the body is not JSON"]) from None
            status, payload = self.server.instance.handle(
                self.command, url.path.rstrip("/"), parse_qs(url.query), body, self.headers.get("Authorization")
            )
        except JiraError as exc:
            status, payload = exc.status, {"errorMessages": exc.messages, "errors": exc.errors}
        data = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json;charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = _serve


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, instance: JiraInstance):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.instance = instance


@contextmanager
def running_jira(user: str = "svc-release", password: str = "j1ra-t0ken") -> Iterator[tuple[JiraInstance, str]]:
    """A local Jira in a thread; yields ``(instance, base_url)``."""
    instance = JiraInstance(user=user, password=password)
    server = _Server(instance)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield instance, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
