"""Change records as Jira issues, through the Atlassian Jira provider (``JiraHook``).

The issue's workflow is the change state model: each change state is a Jira status (by
default the state's name: New, Assess, Authorize, Scheduled, Implement, Review, Closed,
Canceled), and a move is walked one workflow transition at a time, the way the ServiceNow
backend walks the state model. The connection (type ``jira``: host = the Jira base URL,
login and password or API token) says where; its extra says which project and how the
workflow is named::

    {"project": "CHG", "issue_type": "Change",
     "statuses": {"authorize": "Awaiting CAB", ...},          # optional, per change state
     "resolutions": {"unsuccessful": "Failed", ...}}         # optional, per close code

Calls (Jira REST API v2, as the provider's client makes them):

===========================================================  ================================
``POST /rest/api/2/issue``                                    open: ``{fields: {project,
                                                              issuetype, summary, description,
                                                              labels}}``
``GET  /rest/api/2/search?jql=project = "P" AND labels = "L"``  find the run's issue
``GET  /rest/api/2/issue/{key}?fields=status,labels``         read its status
``GET  /rest/api/2/issue/{key}/transitions``                  the workflow's ways out, with
                                                              their screens' fields
                                                              (``expand=transitions.fields``)
``POST /rest/api/2/issue/{key}/transitions``                  one step: ``{transition: {id},
                                                              update: {comment}}`` (+ the
                                                              resolution, when the screen has
                                                              the field)
===========================================================  ================================

A run's issue carries the labels ``releasetrain``, ``rt-<hash of the correlation id>`` (how a
retried open finds it) and ``change-<type>``; the risk and planned times are in its
description.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from releasetrain.core.change import (
    CHANGE_TYPES,
    ChangeRecordError,
    ChangeRef,
    ChangeState,
    close_code,
    closing,
    path_to,
)
from releasetrain.hooks._http import short

#: a change state's Jira status unless the connection names another
DEFAULT_STATUSES = {state: state.value.title() for state in ChangeState}
#: the resolution set when an issue closes (per ServiceNow-style close code) or is canceled
DEFAULT_RESOLUTIONS = {
    "successful": "Done",
    "successful_issues": "Done",
    "unsuccessful": "Failed",
    "canceled": "Won't Do",
}
PROJECT_KEY = re.compile(r"^[A-Z][A-Z0-9_]{0,9}$")
LABEL = "releasetrain"


def correlation_label(correlation_id: str) -> str:
    """The label that finds a run's issue again (Jira labels allow no spaces)."""
    return "rt-" + hashlib.sha256(correlation_id.encode()).hexdigest()[:20]


class JiraChangeBackend:
    """Change records in Jira.

    :param jira_conn_id: a ``jira`` connection (host, login, password/API token; extra as above)
    """

    name = "jira"

    def __init__(self, jira_conn_id: str = "jira_default") -> None:
        try:
            from airflow.providers.atlassian.jira.hooks.jira import JiraHook
        except ImportError:
            raise ChangeRecordError(
                "the jira change backend needs the Atlassian Jira provider: pip install 'releasetrain[jira]' "
                "(apache-airflow-providers-atlassian-jira)"
            ) from None

        self.jira_conn_id = jira_conn_id
        try:
            hook = JiraHook(jira_conn_id=jira_conn_id)
            self.client = hook.get_conn()
            extra = hook.get_connection(jira_conn_id).extra_dejson or {}
        except Exception as exc:  # an undefined connection, a bad URL
            raise ChangeRecordError(f"Jira {jira_conn_id!r}: cannot connect: {exc}") from exc
        self.project = str(extra.get("project") or "")
        if not PROJECT_KEY.match(self.project):
            raise ChangeRecordError(
                f"Jira {jira_conn_id!r}: the connection's extra must name the project key, e.g. "
                f'{{"project": "CHG"}} (got {self.project!r})'
            )
        self.issue_type = str(extra.get("issue_type") or "Change")
        named = extra.get("statuses") or {}
        unknown = sorted(set(named) - {s.value for s in ChangeState})
        if unknown:
            raise ChangeRecordError(f"Jira {jira_conn_id!r}: extra.statuses names unknown change states {unknown}")
        self.statuses = {state: str(named.get(state.value) or default) for state, default in DEFAULT_STATUSES.items()}
        self.states = {status.casefold(): state for state, status in self.statuses.items()}
        self.resolutions = {**DEFAULT_RESOLUTIONS, **(extra.get("resolutions") or {})}

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
        if change_type not in CHANGE_TYPES:
            raise ChangeRecordError(f"unknown change type {change_type!r}: expected one of {', '.join(CHANGE_TYPES)}")
        label = correlation_label(correlation_id)
        existing = self._find(label)
        if existing is not None:
            if existing.change_type != change_type:
                raise ChangeRecordError(
                    f"Jira {self.jira_conn_id!r}: {existing.number} for {correlation_id!r} is a "
                    f"{existing.change_type} change, not {change_type}"
                )
            return existing
        text = (
            f"{description}\n\nRisk: {risk}\nPlanned start: {planned_start or '-'}\n"
            f"Planned end: {planned_end or '-'}\nCorrelation: {correlation_id}"
        )
        fields = {
            "project": {"key": self.project},
            "issuetype": {"name": self.issue_type},
            "summary": short_description,
            "description": text,
            "labels": [LABEL, label, f"change-{change_type}", f"risk-{risk}"],
        }
        created = self._call("create an issue", self.client.issue_create, fields)
        key = created.get("key") if isinstance(created, dict) else None
        if not key:
            raise ChangeRecordError(f"Jira {self.jira_conn_id!r}: creating an issue answered {short(created)}")
        ref = self._read(key)
        if ref.state != ChangeState.NEW:
            raise ChangeRecordError(
                f"Jira {self.jira_conn_id!r}: {key} starts in {ref.state.value!r}; the {self.issue_type} "
                f"workflow must start in {self.statuses[ChangeState.NEW]!r}"
            )
        return ref

    def get(self, ref: ChangeRef) -> ChangeRef:
        if ref.backend != self.name:
            raise ChangeRecordError(f"{ref.number} is a {ref.backend!r} change record, not a Jira one")
        return self._read(ref.id)

    def move_to(self, ref: ChangeRef, target: ChangeState, *, note: str) -> ChangeRef:
        current = self.get(ref)
        for state in path_to(current.change_type, current.state, ChangeState(target)):
            current = self._step(current, state, note)
        return current

    def close(self, ref: ChangeRef, *, outcome: str, notes: str) -> ChangeRef:
        code = close_code(outcome)  # an unknown outcome is refused before any request
        if not notes.strip():
            raise ChangeRecordError(f"closing {ref.number} needs close notes")
        current = self.get(ref)
        step = closing(current.change_type, current.state, outcome, current.number)
        if step == "done":
            return current
        if step == "cancel":
            return self._step(current, ChangeState.CANCELED, notes, resolution=self.resolutions["canceled"])
        current = self.move_to(current, ChangeState.REVIEW, note=notes)
        return self._step(current, ChangeState.CLOSED, f"{notes} (close code: {code})", self.resolutions[code])

    def cancel(self, ref: ChangeRef, *, note: str) -> ChangeRef:
        current = self.get(ref)
        if current.state == ChangeState.CANCELED:
            return current
        path_to(current.change_type, current.state, ChangeState.CANCELED)  # refuses a closed change
        return self._step(current, ChangeState.CANCELED, note, resolution=self.resolutions["canceled"])

    # -- Jira ----------------------------------------------------------------------------------

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ChangeRecordError:
            raise
        except Exception as exc:  # requests' HTTPError carries Jira's errorMessages; never the password
            response = getattr(exc, "response", None)
            status = f"HTTP {response.status_code}: " if response is not None else ""
            body = short(response.text) if response is not None and response.text else str(exc)
            raise ChangeRecordError(f"Jira {self.jira_conn_id!r}: cannot {what}: {status}{body}") from None

    def _find(self, label: str) -> ChangeRef | None:
        jql = f'project = "{self.project}" AND labels = "{label}"'
        found = self._call("search issues", self.client.jql, jql, fields="status,labels", limit=2)
        issues = found.get("issues") if isinstance(found, dict) else None
        if not isinstance(issues, list):
            raise ChangeRecordError(f"Jira {self.jira_conn_id!r}: the search answered {short(found)}")
        if len(issues) > 1:
            keys = ", ".join(str(i.get("key")) for i in issues)
            raise ChangeRecordError(
                f"Jira {self.jira_conn_id!r}: {keys} all carry the run's label {label}: one change per run; "
                "cancel the duplicate"
            )
        return self._ref(issues[0]) if issues else None

    def _read(self, key: str) -> ChangeRef:
        return self._ref(self._call(f"read {key}", self.client.get_issue, key, fields="status,labels"))

    def _ref(self, issue: Any) -> ChangeRef:
        fields = issue.get("fields") if isinstance(issue, dict) else None
        key = issue.get("key") if isinstance(issue, dict) else None
        if not key or not isinstance(fields, dict):
            raise ChangeRecordError(f"Jira {self.jira_conn_id!r}: expected an issue, got {short(issue)}")
        status = str((fields.get("status") or {}).get("name") or "")
        state = self.states.get(status.casefold())
        if state is None:
            raise ChangeRecordError(
                f"Jira {self.jira_conn_id!r}: {key} is in status {status!r}, which is no change state "
                f"(mapped: {', '.join(self.statuses.values())}); set extra.statuses"
            )
        types = [t for t in CHANGE_TYPES if f"change-{t}" in (fields.get("labels") or [])]
        if len(types) != 1:
            raise ChangeRecordError(f"Jira {self.jira_conn_id!r}: {key} has no change-<type> label")
        return ChangeRef(backend=self.name, id=key, number=key, state=state, change_type=types[0])

    def _step(self, current: ChangeRef, state: ChangeState, note: str, resolution: str | None = None) -> ChangeRef:
        """One workflow transition, to ``state``'s status, with the note as a comment; the
        resolution goes along when the transition's screen has the field (and must be one it allows)."""
        status = self.statuses[state]
        listed = self._call(
            f"list {current.number}'s transitions",
            self.client.get_issue_transitions_full,
            current.id,
            expand="transitions.fields",
        )
        transitions = listed.get("transitions") if isinstance(listed, dict) else None
        if not isinstance(transitions, list):
            raise ChangeRecordError(f"Jira {self.jira_conn_id!r}: the transitions answer was {short(listed)}")
        chosen = [t for t in transitions if str((t.get("to") or {}).get("name", "")).casefold() == status.casefold()]
        if not chosen:
            ways = ", ".join(f"{t.get('name')} -> {(t.get('to') or {}).get('name')}" for t in transitions) or "none"
            raise ChangeRecordError(
                f"Jira {self.jira_conn_id!r}: {current.number} in {self.statuses[current.state]!r} has no "
                f"transition to {status!r} (workflow allows: {ways})"
            )
        transition = chosen[0]
        body: dict[str, Any] = {
            "transition": {"id": str(transition["id"])},
            "update": {"comment": [{"add": {"body": note}}]},
        }
        field = (transition.get("fields") or {}).get("resolution")
        if resolution and field is not None:
            allowed = [str(v.get("name")) for v in field.get("allowedValues") or [] if v.get("name")]
            if allowed and resolution not in allowed:
                raise ChangeRecordError(
                    f"Jira {self.jira_conn_id!r}: {transition.get('name')!r} allows the resolutions {allowed}, not "
                    f"{resolution!r}; map it in the connection's extra.resolutions"
                )
            body["fields"] = {"resolution": {"name": resolution}}
        endpoint = f"{self.client.resource_url('issue')}/{current.id}/transitions"
        self._call(f"move {current.number} to {status!r}", self.client.post, endpoint, data=body)
        updated = self._read(current.id)
        if updated.state != state:
            raise ChangeRecordError(
                f"Jira {self.jira_conn_id!r}: the transition left {updated.number} in "
                f"{self.statuses[updated.state]!r}, not {status!r}"
            )
        return updated
