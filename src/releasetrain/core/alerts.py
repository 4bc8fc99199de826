"""Alerts correlated with deploys: Alertmanager's webhook format read and checked, and which
release runs an alert belongs to (the newest deploy of each release into the alert's
environment, when the alert started within the window after it). Pure."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

MAX_ALERTS = 200  # one webhook call (Alertmanager groups; its default max_alerts is 0 = all)
MAX_LABEL_CHARS = 200


class AlertError(ValueError):
    """A webhook body that is not Alertmanager's format, named with where."""


@dataclass(frozen=True)
class Alert:
    fingerprint: str
    status: str  # firing | resolved
    name: str
    labels: dict[str, str]
    starts_at: datetime
    summary: str = ""

    @property
    def environment(self) -> str | None:
        return self.labels.get("environment")


def _time(value: Any, where: str) -> datetime:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        raise AlertError(f"{where}: {value!r} is not an RFC 3339 time") from None
    if parsed.tzinfo is None:
        raise AlertError(f"{where}: {value!r} has no time zone")
    return parsed


def parse_alertmanager(payload: Any) -> list[Alert]:
    """The alerts of one Alertmanager webhook call (format version 4)."""
    if not isinstance(payload, Mapping):
        raise AlertError("the body is not a JSON object (Alertmanager's webhook format)")
    if str(payload.get("version", "4")) != "4":
        raise AlertError(f"version: {payload.get('version')!r} is not Alertmanager's webhook format 4")
    alerts = payload.get("alerts")
    if not isinstance(alerts, list):
        raise AlertError("alerts: a list is required")
    if len(alerts) > MAX_ALERTS:
        raise AlertError(f"alerts: {len(alerts)} alerts in one call, at most {MAX_ALERTS}")
    found = []
    for i, raw in enumerate(alerts):
        where = f"alerts[{i}]"
        if not isinstance(raw, Mapping):
            raise AlertError(f"{where}: an object is required")
        status = raw.get("status")
        if status not in ("firing", "resolved"):
            raise AlertError(f"{where}.status: {status!r} is not firing or resolved")
        labels = raw.get("labels")
        if not isinstance(labels, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
        ):
            raise AlertError(f"{where}.labels: an object of strings is required")
        annotations = raw.get("annotations") or {}
        summary = ""
        if isinstance(annotations, Mapping):
            summary = annotations.get("summary") or annotations.get("description") or ""
        found.append(
            Alert(
                fingerprint=str(raw.get("fingerprint") or ""),
                status=status,
                name=str(labels.get("alertname") or "unnamed alert")[:MAX_LABEL_CHARS],
                labels={k[:MAX_LABEL_CHARS]: v[:MAX_LABEL_CHARS] for k, v in list(labels.items())[:30]},
                starts_at=_time(raw.get("startsAt"), f"{where}.startsAt"),
                summary=str(summary)[:500],
            )
        )
    return found


@dataclass(frozen=True)
class Deploy:
    """A ``deployed`` record of the ledger: where a release run put a version, and when."""

    release: str
    dag_id: str
    run_id: str
    environment: str
    version: str
    at: datetime


def attached_to(alert: Alert, deploys: Iterable[Deploy], window: timedelta) -> list[Deploy]:
    """The deploys ``alert`` is attached to: per release (narrowed by a ``release`` label), the
    newest deploy into the alert's environment at or before the alert started, when the alert
    started within ``window`` after it. No ``environment`` label: none."""
    if not alert.environment:
        return []
    newest: dict[str, Deploy] = {}
    for deploy in deploys:
        if deploy.environment != alert.environment or deploy.at > alert.starts_at:
            continue
        if alert.labels.get("release") not in (None, deploy.release):
            continue
        if deploy.release not in newest or deploy.at >= newest[deploy.release].at:
            newest[deploy.release] = deploy
    return [d for d in newest.values() if alert.starts_at - d.at <= window]


def attachment(alert: Alert, deploy: Deploy) -> dict[str, Any]:
    """What the ledger keeps of an alert attached to a release run."""
    return {
        "alert": alert.name,
        "status": alert.status,
        "fingerprint": alert.fingerprint,
        "starts_at": alert.starts_at.astimezone(UTC).isoformat(),
        "summary": alert.summary,
        "labels": alert.labels,
        "deployed_version": deploy.version,
        "deployed_at": deploy.at.astimezone(UTC).isoformat(),
        "minutes_after_deploy": round((alert.starts_at - deploy.at).total_seconds() / 60, 1),
    }


def concerns(details: Mapping[str, Any]) -> bool:
    """Whether an alert attached to a run may roll it back: it is firing, and it names the
    run's release (label ``release``: only then is it attached to a run of that release) or
    was attached to no other release (an environment several releases deploy into rolls back
    only the release an alert names)."""
    if details.get("status") != "firing":
        return False
    return bool((details.get("labels") or {}).get("release")) or details.get("releases_attached", 1) == 1
