"""Trends drive procedure: a release's recent rollbacks and failed changes, and the policy
the spec states for them (``trends``).

The trend is counted from the release ledger, per release, over the last 30 and 90 days:

- **rollbacks**: environments rolled back, one per run and environment (``rollback_started``
  or ``rollback`` records: a rollback that failed counts too; one that returned several
  deploy units counts once);
- **failed changes**: runs whose change record closed unsuccessful (rolled back or failed;
  a change canceled before anything was implemented is not a failed change).

Every run counts, the asking one included: the risk step runs before its run has rolled
anything back, and a run id reused (a rollback DAG's run, a deleted run triggered again)
never hides another run's history.

A rule (``when: {rollbacks: 2, days: 30}``) that the trend reaches adds procedure to the
run: a soak period in an environment (the new version must have been live there that long
before the environment passes) and extra approvals on the production approvals. The risk
assessment records the trend and the rules it triggered; the soak steps and the approvals
read that record, and approvers are shown the trend.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, model_validator

from releasetrain.core.vocabulary import Event

WINDOWS = (30, 90)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TrendCondition(_Model):
    rollbacks: int | None = Field(default=None, ge=1, description="At least this many rollbacks in the window.")
    failed_changes: int | None = Field(
        default=None, ge=1, description="At least this many changes closed unsuccessful in the window."
    )
    days: Literal[30, 90] = Field(default=30, description="The window: the last 30 or 90 days.")

    @model_validator(mode="after")
    def _one(self) -> TrendCondition:
        if (self.rollbacks is None) == (self.failed_changes is None):
            raise ValueError("a trend condition counts either rollbacks or failed_changes (one of them)")
        return self

    @property
    def measure(self) -> str:
        return "rollbacks" if self.rollbacks is not None else "failed_changes"

    @property
    def threshold(self) -> int:
        return int(self.rollbacks if self.rollbacks is not None else self.failed_changes)  # type: ignore[arg-type]

    def describe(self) -> str:
        return f"{self.threshold} or more {self.measure.replace('_', ' ')} in {self.days} days"


class Soak(_Model):
    environment: str = Field(min_length=1, description="Where the new version must soak before it passes.")
    minutes: float = Field(gt=0, le=7 * 24 * 60, description="How long after its deploy (at most a week).")


class TrendRule(_Model):
    """``when`` the trend reaches a threshold, ``soak`` and/or ``extra_approvals``."""

    when: TrendCondition
    soak: Soak | None = None
    extra_approvals: int = Field(
        default=0, ge=0, le=3, description="Approvals added to the quorum of every production approval."
    )

    @model_validator(mode="after")
    def _does_something(self) -> TrendRule:
        if self.soak is None and not self.extra_approvals:
            raise ValueError(f"trend rule ({self.when.describe()}) does nothing: give soak or extra_approvals")
        return self


class EventLike(Protocol):
    kind: str
    at: str
    dag_id: str
    run_id: str
    environment: str
    details: dict[str, Any]


@dataclass(frozen=True)
class Trend:
    rollbacks_30: int = 0
    rollbacks_90: int = 0
    failed_changes_30: int = 0
    failed_changes_90: int = 0

    def count(self, measure: str, days: int) -> int:
        return int(getattr(self, f"{measure}_{days}"))

    def to_dict(self) -> dict[str, int]:
        return asdict(self)

    def describe(self) -> str:
        return (
            f"{self.rollbacks_30} rollback(s) in 30 days ({self.rollbacks_90} in 90), "
            f"{self.failed_changes_30} failed change(s) in 30 days ({self.failed_changes_90} in 90)"
        )


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def failed_change(event: EventLike) -> bool:
    """A change record closed (not canceled) unsuccessful: the built-in backend's close code,
    or the outcome mirrored from an external backend."""
    if event.kind != Event.CHANGE_CLOSED or event.details.get("state") != "closed":
        return False
    details = event.details
    return details.get("close_code") == "unsuccessful" or details.get("outcome") in ("failed", "rolled_back")


def trend_of(events: Iterable[EventLike], now: datetime) -> Trend:
    """The release's rollbacks and failed changes over the last 30 and 90 days."""
    since = {days: now - timedelta(days=days) for days in WINDOWS}
    rollbacks: dict[int, set[tuple[str, str, str]]] = {days: set() for days in WINDOWS}
    failed: dict[int, set[tuple[str, str]]] = {days: set() for days in WINDOWS}
    for event in events:
        if event.kind in (Event.ROLLBACK, Event.ROLLBACK_STARTED):
            key: Any = (event.dag_id, event.run_id, event.environment)
            into = rollbacks
        elif failed_change(event):
            key, into = (event.dag_id, event.run_id), failed
        else:
            continue
        at = _at(event.at)
        for days in WINDOWS:
            if since[days] <= at <= now:
                into[days].add(key)
    return Trend(len(rollbacks[30]), len(rollbacks[90]), len(failed[30]), len(failed[90]))


def triggered(rules: Sequence[TrendRule], trend: Trend) -> list[dict[str, Any]]:
    """The rules the trend reaches, each as a record: what it says, what was counted, what it adds."""
    out = []
    for index, rule in enumerate(rules):
        counted = trend.count(rule.when.measure, rule.when.days)
        if counted < rule.when.threshold:
            continue
        out.append(
            {
                "rule": index,
                "when": rule.when.describe(),
                "counted": counted,
                "soak": rule.soak.model_dump() if rule.soak else None,
                "extra_approvals": rule.extra_approvals,
            }
        )
    return out


def extra_approvals(rules: Iterable[dict[str, Any]]) -> int:
    """Approvals the triggered rules add (the largest one asked: rules do not stack)."""
    return max((int(r.get("extra_approvals") or 0) for r in rules), default=0)


def soak_minutes(rules: Iterable[dict[str, Any]], environment: str) -> float:
    """How long ``environment`` must soak (the longest any triggered rule asks; 0: no soak)."""
    return max(
        (float(r["soak"]["minutes"]) for r in rules if r.get("soak") and r["soak"]["environment"] == environment),
        default=0.0,
    )


def adds(rule: dict[str, Any]) -> str:
    """What a triggered rule adds, for people: ``a 30-minute soak in staging and 1 extra ...``."""
    parts = []
    if rule.get("soak"):
        parts.append(f"a {float(rule['soak']['minutes']):g}-minute soak in {rule['soak']['environment']}")
    if rule.get("extra_approvals"):
        parts.append(f"{rule['extra_approvals']} extra production approval(s)")
    return " and ".join(parts)


def soak_start(events: Iterable[EventLike], environment: str) -> datetime | None:
    """When the new version took the environment's traffic: its latest deploy or (canary,
    blue-green) promotion record there; None before either."""
    times = [_at(e.at) for e in events if e.kind in (Event.DEPLOYED, Event.PROMOTED) and e.environment == environment]
    return max(times, default=None)
