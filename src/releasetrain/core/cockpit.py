"""What the release cockpit shows, computed from ledger events alone (no Airflow here).

- :func:`live_matrix`: per release and environment, the version live there, since when and
  by which run, its health as the ledger last saw it, and whether it is the last good one;
- :func:`dora`: the four DORA measures per release and environment over a window
  (deployment frequency, lead time for changes, change failure rate, time to restore),
  and rollbacks per day, for the charts;
- :func:`story`: one run's events as a timeline (who, what, when, where);
- :func:`waits`: what waits for people (approvals, reviews, decisions), from Airflow's
  pending human-in-the-loop requests, with who may answer and for how long it has waited.

Definitions (documented in the cockpit and the README, kept here as the one truth):
a *deployment* is a run that put a new version live in an environment (a ``deployed``
record that is not a no-op nor an idle colour, or a ``promoted`` one); its *lead time* is
from the run's first record to that deployment; it *failed* when the same run then started
a rollback there; its *time to restore* is from the first failure signal after it (checks,
analysis, deploy failure, alert, abort, rollback request or start) to the rollback's record.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from releasetrain.core.vocabulary import Event

FAILURE_SIGNALS = frozenset(
    {
        Event.CHECKS_FAILED,
        Event.DEPLOY_FAILED,
        Event.ABORTED,
        Event.ROLLBACK_REQUESTED,
        Event.ROLLBACK_STARTED,
        Event.ALERT_RECEIVED,
    }
)
HEALTH_GOOD = frozenset({Event.CHECKS_PASSED, Event.ALERTS_QUIET, Event.ENVIRONMENT_PASSED, Event.SOAKED})
HEALTH_BAD = frozenset({Event.CHECKS_FAILED, Event.DEPLOY_FAILED, Event.ROLLBACK_STARTED, Event.ROLLBACK_FAILED})


def at(event: Any) -> dt.datetime:
    """An event's time (the ledger writes ISO 8601 UTC)."""
    value = dt.datetime.fromisoformat(str(event.at).replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def _run(event: Any) -> tuple[str, str]:
    return (getattr(event, "dag_id", "") or "", event.run_id)


def _puts_live(event: Any) -> str | None:
    """The version this event made live in its environment, if it did."""
    if event.kind == Event.DEPLOYED and event.details.get("version") and not event.details.get("slot"):
        return None if event.details.get("noop") else str(event.details["version"])
    if event.kind == Event.PROMOTED and event.details.get("version"):
        return str(event.details["version"])
    if event.kind == Event.ROLLBACK and event.details.get("restored_version") and not event.details.get("noop"):
        return str(event.details["restored_version"])
    return None


def _bad(event: Any) -> bool:
    if event.kind in HEALTH_BAD:
        return True
    if event.kind == Event.ANALYSIS and event.details.get("outcome") in ("failed", "error", "aborted"):
        return True
    return event.kind == Event.ALERT_RECEIVED and event.details.get("status") == "firing"


@dataclass
class Live:
    release: str
    environment: str
    version: str
    digest: str | None
    since: dt.datetime
    dag_id: str
    run_id: str
    how: str  # deployed | promoted | rolled back
    health: str = "unknown"  # healthy | failing | unknown
    health_reason: str = ""
    run_state: str | None = None
    last_good: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "since": self.since.isoformat()}


def live_matrix(events: Iterable[Any]) -> list[Live]:
    """Per (release, environment) the version live now, as the ledger last recorded it."""
    events = list(events)
    ended = {_run(e): str(e.details.get("state") or "") for e in events if e.kind == Event.RUN_STATE}
    live: dict[tuple[str, str], Live] = {}
    rolled_back: set[tuple[str, str, str]] = set()  # (dag_id, run_id, environment)
    for event in events:
        if not event.environment:
            continue
        key = (event.release, event.environment)
        if event.kind == Event.ROLLBACK:
            rolled_back.add((*_run(event), event.environment))
        version = _puts_live(event)
        if version is not None:
            how = {Event.PROMOTED: "promoted", Event.ROLLBACK: "rolled back"}.get(event.kind, "deployed")
            digest = (
                event.details.get("restored_digest") if event.kind == Event.ROLLBACK else event.details.get("digest")
            )
            live[key] = Live(event.release, event.environment, version, digest, at(event), *_run(event), how)
            continue
        current = live.get(key)
        if current is None or _run(event) != (current.dag_id, current.run_id):
            continue
        if _bad(event):
            current.health, current.health_reason = "failing", event.kind.replace("_", " ")
        elif event.kind in HEALTH_GOOD or (event.kind == Event.ANALYSIS and event.details.get("outcome") == "passed"):
            current.health, current.health_reason = "healthy", event.kind.replace("_", " ")
    for current in live.values():
        current.run_state = ended.get((current.dag_id, current.run_id))
        if current.how == "rolled back":
            current.last_good = True  # what a rollback restores is by definition the last good one
            current.health = "healthy" if current.health == "unknown" else current.health
        else:
            current.last_good = (
                current.run_state == "success"
                and (
                    current.dag_id,
                    current.run_id,
                    current.environment,
                )
                not in rolled_back
            )
    return sorted(live.values(), key=lambda lv: (lv.release, lv.environment))


@dataclass
class Deployment:
    release: str
    environment: str
    dag_id: str
    run_id: str
    version: str
    at: dt.datetime
    lead: dt.timedelta
    failed: bool = False
    restored_in: dt.timedelta | None = None


def deployments(events: Iterable[Any]) -> list[Deployment]:
    """Every deployment (a run putting a new version live in an environment), with its lead
    time, whether it failed, and how long its restore took."""
    events = list(events)
    first: dict[tuple[str, str], dt.datetime] = {}
    for event in events:
        first.setdefault(_run(event), at(event))
    found: dict[tuple[str, str, str], Deployment] = {}
    for event in events:
        if event.kind not in (Event.DEPLOYED, Event.PROMOTED):
            continue
        version = _puts_live(event)
        key = (*_run(event), event.environment)
        if version is None or key in found:  # a modular run's units or a race retry: one deployment
            continue
        when = at(event)
        found[key] = Deployment(
            event.release, event.environment, *_run(event), version, when, when - first[_run(event)]
        )
    signal: dict[tuple[str, str, str], dt.datetime] = {}
    for event in events:
        key = (*_run(event), event.environment)
        deployment = found.get(key)
        if deployment is None or at(event) < deployment.at:
            continue
        if event.kind in FAILURE_SIGNALS or _bad(event):
            signal.setdefault(key, at(event))
        if event.kind in (Event.ROLLBACK_STARTED, Event.ROLLBACK):
            deployment.failed = True
        if event.kind == Event.ROLLBACK and deployment.restored_in is None:
            deployment.restored_in = at(event) - signal.get(key, at(event))
    return sorted(found.values(), key=lambda d: d.at)


def _median_minutes(values: list[dt.timedelta]) -> float | None:
    return round(statistics.median(v.total_seconds() for v in values) / 60, 1) if values else None


def dora(events: Iterable[Any], now: dt.datetime, days: int) -> dict[str, Any]:
    """The DORA measures per release and environment over the last ``days`` days, and the
    rollbacks per day (every release) for the chart."""
    start = now - dt.timedelta(days=days)
    events = list(events)
    recent = [d for d in deployments(events) if start <= d.at <= now]
    rows: dict[tuple[str, str], list[Deployment]] = {}
    for deployment in recent:
        rows.setdefault((deployment.release, deployment.environment), []).append(deployment)
    measures = []
    for (release, environment), found in sorted(rows.items()):
        failed = [d for d in found if d.failed]
        measures.append(
            {
                "release": release,
                "environment": environment,
                "deployments": len(found),
                "per_week": round(len(found) * 7 / days, 2),
                "lead_time_minutes": _median_minutes([d.lead for d in found]),
                "change_failure_rate": round(len(failed) / len(found), 3),
                "time_to_restore_minutes": _median_minutes([d.restored_in for d in failed if d.restored_in]),
            }
        )
    per_day: dict[str, int] = {
        (start + dt.timedelta(days=i + 1)).date().isoformat(): 0 for i in range(days)
    }  # every day of the window, the quiet ones too
    seen: set[tuple[str, str, str]] = set()
    for event in events:
        key = (*_run(event), event.environment)
        if event.kind == Event.ROLLBACK and start <= at(event) <= now and key not in seen:
            seen.add(key)
            day = at(event).date().isoformat()
            if day in per_day:
                per_day[day] += 1
    return {
        "days": days,
        "from": start.isoformat(),
        "to": now.isoformat(),
        "measures": measures,
        "rollbacks_per_day": [{"day": day, "rollbacks": n} for day, n in per_day.items()],
    }


def story(events: Iterable[Any]) -> list[dict[str, Any]]:
    """One run's events, oldest first, as the timeline shows them."""
    timeline = []
    for event in events:
        details = event.details or {}
        summary = (
            details.get("reason")
            or details.get("message")
            or details.get("note")
            or (f"{details['version']}" if details.get("version") else "")
        )
        timeline.append(
            {
                "seq": event.seq,
                "at": at(event).isoformat(),
                "kind": event.kind,
                "environment": event.environment,
                "actor": event.actor,
                "task_id": details.get("task_id"),
                "summary": str(summary)[:300],
            }
        )
    return timeline


def waits(pending: Iterable[Mapping[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
    """Pending human requests (``dag_id``, ``run_id``, ``task_id``, ``map_index``, ``subject``,
    ``assignees``: [{"id", "name"}], ``created_at``), longest waiting first, with what the
    request is for (approval, review, decision, closure) and the link to answer it."""
    rows = []
    for item in pending:
        created = item["created_at"]
        task_id = str(item["task_id"])
        rows.append(
            {
                "dag_id": item["dag_id"],
                "run_id": item["run_id"],
                "task_id": task_id,
                "what": request_kind(task_id, str(item.get("subject") or "")),
                "subject": item.get("subject") or "",
                "may_answer": [a.get("name") or a.get("id") for a in item.get("assignees") or []] or ["anyone"],
                "waiting_since": created.isoformat(),
                "waiting_minutes": round((now - created).total_seconds() / 60, 1),
                "answer_url": (
                    f"/dags/{quote(str(item['dag_id']), safe='')}/runs/{quote(str(item['run_id']), safe='')}"
                    f"/tasks/{quote(task_id, safe='')}"
                    + (f"/mapped/{item['map_index']}" if int(item.get("map_index", -1)) >= 0 else "")
                    + "/required_actions"
                ),
            }
        )
    return sorted(rows, key=lambda r: -r["waiting_minutes"])


def request_kind(task_id: str, subject: str) -> str:
    text = f"{task_id} {subject}".lower()
    for word, kind in (
        ("approv", "approval"),
        ("review", "review"),
        ("postmortem", "review"),
        ("clos", "closure"),
        ("reconcil", "decision"),
        ("decid", "decision"),
        ("decision", "decision"),
    ):
        if word in text:
            return kind
    return "decision"
