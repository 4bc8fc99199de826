"""The metrics releasetrain emits through Airflow's ``Stats`` (StatsD or OpenTelemetry, as
the deployment configured ``[metrics]``), derived from the ledger event just written.

Each is emitted under its name with ``release`` and ``environment`` tags (OpenTelemetry,
tagged StatsD), and under the dotted name ``<name>.<release>.<environment>`` for plain
StatsD, as Airflow names its own per-DAG metrics:

======================================  =======  ==============================================
name                                    kind     when, and the value
======================================  =======  ==============================================
``releasetrain.deploys``                counter  a new version went live in an environment
``releasetrain.deploy_failures``        counter  a deploy failed
``releasetrain.rollbacks``              counter  a rollback completed
``releasetrain.lead_time``              timer    with each deploy: from the run's first record
``releasetrain.time_to_restore``        timer    with each rollback: from its start
``releasetrain.approval_wait``          timer    an approval answered (tag ``decision``): from
                                                 its request
======================================  =======  ==============================================
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from releasetrain.core.vocabulary import Event

DEPLOYS = "releasetrain.deploys"
DEPLOY_FAILURES = "releasetrain.deploy_failures"
ROLLBACKS = "releasetrain.rollbacks"
LEAD_TIME = "releasetrain.lead_time"
TIME_TO_RESTORE = "releasetrain.time_to_restore"
APPROVAL_WAIT = "releasetrain.approval_wait"
NAMES = (DEPLOYS, DEPLOY_FAILURES, ROLLBACKS, LEAD_TIME, TIME_TO_RESTORE, APPROVAL_WAIT)
ANSWERS = {Event.APPROVAL_GIVEN: "approved", Event.APPROVAL_REJECTED: "rejected"}


@dataclass(frozen=True)
class Stat:
    kind: str  # "incr" | "timing"
    name: str
    tags: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0  # timers

    @property
    def dotted(self) -> str:
        """The plain-StatsD name: the base name, then release and environment."""
        parts = [self.tags.get("release", ""), self.tags.get("environment", "")]
        return ".".join([self.name, *(_safe(p) for p in parts if p)])


def _safe(part: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in part)


def _at(event: Any) -> dt.datetime:
    value = dt.datetime.fromisoformat(str(event.at).replace("Z", "+00:00"))
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


def stats_of(
    kind: str,
    *,
    release: str,
    environment: str,
    details: dict[str, Any],
    run_events: Iterable[Any],
    now: dt.datetime,
) -> list[Stat]:
    """What to emit for a ledger event of ``kind`` just written (``run_events``: the run's
    events before it, for the durations)."""
    tags = {"release": release, "environment": environment}
    if kind == Event.DEPLOYED:
        if details.get("noop") or details.get("slot"):
            return []
        events = list(run_events)
        stats = [Stat("incr", DEPLOYS, tags)]
        if events:
            stats.append(Stat("timing", LEAD_TIME, tags, (now - min(_at(e) for e in events)).total_seconds()))
        return stats
    if kind == Event.DEPLOY_FAILED:
        return [Stat("incr", DEPLOY_FAILURES, tags)]
    if kind == Event.ROLLBACK:
        if details.get("noop"):
            return []
        started = [e for e in run_events if e.kind == Event.ROLLBACK_STARTED and e.environment == environment]
        stats = [Stat("incr", ROLLBACKS, tags)]
        if started:
            stats.append(Stat("timing", TIME_TO_RESTORE, tags, (now - _at(started[-1])).total_seconds()))
        return stats
    if kind in ANSWERS:
        task_id = details.get("task_id")
        asked = [
            e
            for e in run_events
            if e.kind == Event.APPROVAL_REQUESTED and (e.details.get("task_id") == task_id or not task_id)
        ]
        if not asked:
            return []
        waited = (now - _at(asked[-1])).total_seconds()
        return [Stat("timing", APPROVAL_WAIT, {**tags, "decision": ANSWERS[kind]}, waited)]
    return []


EMITTED = frozenset({Event.DEPLOYED, Event.DEPLOY_FAILED, Event.ROLLBACK, *ANSWERS})
