"""Scope freeze: after the freeze, a release's contents (its components and their versions)
no longer change without an exception.

A release's *cycle* is what happened since it last passed a production environment. In a
cycle, the scope freezes on the spec's ``scope_freeze``: on a date (the contents packaged
last before it; the first run after it when none was), or once a run passed an environment
(that run's contents). From then on each run's contents must match the frozen scope, or
someone other than the author grants a scope exception, which becomes the frozen scope.
Everything is read from the release's ledger events; nothing here imports Airflow.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from releasetrain.core.gatekeeper import EventLike
from releasetrain.core.vocabulary import Event

# the release-wide events the scope is read from
SCOPE_EVENTS = (
    Event.PACKAGED,
    Event.ENVIRONMENT_PASSED,
    Event.SCOPE_FROZEN,
    Event.SCOPE_EXCEPTION,
)


@dataclass(frozen=True)
class FrozenScope:
    """The contents a run must match: component -> version, and where that came from."""

    components: dict[str, str]
    source: str  # a sentence: "run X passed dev", "packaged by run X before 2026-12-01", ...
    run_id: str = ""
    actor: str = ""  # who granted it, when it is an exception


@dataclass(frozen=True)
class Freeze:
    """The spec's ``scope_freeze``: a date, or an environment."""

    date: datetime.date | None = None
    environment: str | None = None
    production: tuple[str, ...] = field(default_factory=tuple)


def contents(packaged_components: Iterable[Mapping[str, Any]]) -> dict[str, str]:
    """Component -> version, from a ``packaged`` record's ``components``."""
    return {str(c["name"]): str(c["version"]) for c in packaged_components}


def _run_of(e: EventLike) -> str:
    return str(getattr(e, "run_id", "") or "")


def _day(at: str) -> datetime.date:
    return datetime.datetime.fromisoformat(at.replace("Z", "+00:00")).astimezone(datetime.UTC).date()


def cycle(events: Iterable[EventLike], production: Iterable[str]) -> list[EventLike]:
    """The release's events since it last passed a production environment."""
    events = list(events)
    production = set(production)
    last = max(
        (i for i, e in enumerate(events) if e.kind == Event.ENVIRONMENT_PASSED and e.environment in production),
        default=-1,
    )
    return events[last + 1 :]


def frozen_scope(events: Iterable[EventLike], freeze: Freeze, today: datetime.date, run_id: str) -> FrozenScope | None:
    """The scope run ``run_id`` must match, or None while the scope is not frozen.

    ``events``: the release's :data:`SCOPE_EVENTS` in ledger order (other runs' and this one's).
    A run's contents are looked up over the whole ledger (a run packaged before the last
    production pass may pass the freeze environment after it); what freezes the scope is in
    this cycle. Nobody's run freezes the scope with its own contents: after a freeze date
    with nothing packaged before it in the cycle, the scope is what production was last
    released with (nothing: every component needs an exception)."""
    events = list(events)
    packaged = {_run_of(e): e for e in events if e.kind == Event.PACKAGED}  # the latest per run
    current = cycle(events, freeze.production)
    decided = [e for e in current if e.kind in (Event.SCOPE_FROZEN, Event.SCOPE_EXCEPTION)]
    if decided:  # the latest exception granted in this cycle
        last = decided[-1]
        how = "granted as an exception" if last.kind == Event.SCOPE_EXCEPTION else "frozen"
        return FrozenScope(
            dict(last.details.get("components") or {}),
            f"{how} by {last.actor or 'nobody'} in run {_run_of(last)}",
            _run_of(last),
            last.actor,
        )
    if freeze.environment:
        for e in current:
            run = _run_of(e)
            if e.kind == Event.ENVIRONMENT_PASSED and e.environment == freeze.environment and run != run_id:
                if run in packaged:
                    return FrozenScope(
                        contents(packaged[run].details.get("components") or []),
                        f"run {run} passed {freeze.environment}",
                        run,
                    )
        return None
    if freeze.date and today >= freeze.date:
        on = freeze.date.isoformat()
        before = [e for e in current if e.kind == Event.PACKAGED and _run_of(e) != run_id and _day(e.at) < freeze.date]
        if before:
            source = before[-1]
            return FrozenScope(
                contents(source.details.get("components") or []),
                f"packaged by run {_run_of(source)}, the last before the freeze on {on}",
                _run_of(source),
            )
        production = set(freeze.production)
        released = [e for e in events if e.kind == Event.ENVIRONMENT_PASSED and e.environment in production]
        if released and _run_of(released[-1]) in packaged:
            run = _run_of(released[-1])
            return FrozenScope(
                contents(packaged[run].details.get("components") or []),
                f"released to {released[-1].environment} by run {run}; nothing was packaged before the freeze on {on}",
                run,
            )
        return FrozenScope({}, f"nothing was packaged or released before the freeze on {on}", "")
    return None


@dataclass(frozen=True)
class ScopeDecision:
    """``open`` (not frozen), ``match`` or ``change`` (an exception is needed)."""

    outcome: str
    contents: dict[str, str]
    frozen: FrozenScope | None = None
    changes: list[str] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "components": dict(self.contents),
            "frozen": dict(self.frozen.components) if self.frozen else None,
            "source": self.frozen.source if self.frozen else None,
            "changes": list(self.changes),
        }


def decide_scope(
    events: Iterable[EventLike],
    freeze: Freeze,
    today: datetime.date,
    run_id: str,
    current: Mapping[str, str],
    authors: Iterable[str] = (),
) -> ScopeDecision:
    """What the scope check of run ``run_id`` (contents ``current``, by ``authors``) decides.
    A frozen scope an author of this run granted as an exception is no decision for it."""
    current = dict(current)
    frozen = frozen_scope(events, freeze, today, run_id)
    if frozen is None:
        return ScopeDecision("open", current)
    changes = scope_changes(frozen.components, current)
    if not changes and frozen.actor and frozen.actor in set(authors):
        changes = [f"the frozen scope was granted by {frozen.actor}, an author of this run: someone else must grant it"]
    return ScopeDecision("change" if changes else "match", current, frozen, changes)


def scope_changes(frozen: Mapping[str, str], current: Mapping[str, str]) -> list[str]:
    """How a run's contents differ from the frozen scope, one line per component (sorted)."""
    lines = []
    for name in sorted(set(frozen) | set(current)):
        if name not in frozen:
            lines.append(f"{name} {current[name]}: added after the freeze")
        elif name not in current:
            lines.append(f"{name} {frozen[name]}: removed after the freeze")
        elif frozen[name] != current[name]:
            lines.append(f"{name}: {current[name]}, frozen at {frozen[name]}")
    return lines
