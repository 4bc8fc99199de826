"""Hotfix policy: what a hotfix run may carry, decided before packaging from the spec's
``hotfix_policy``, the run's request and the release's ledger. Nothing here imports Airflow.

A hotfix changes the components whose version differs from what production runs. It is
allowed when its severity is one the policy lists, every changed component is one the
policy allows, and (``exclude_in_test``) no changed component is at a version another open
run of the release still has in test (packaged, not yet in production, not ended): a hotfix
must not ship a feature nobody has finished testing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from releasetrain.core.gatekeeper import EventLike
from releasetrain.core.scope import contents
from releasetrain.core.vocabulary import Event

# the release-wide events the decision reads
HOTFIX_EVENTS = (Event.PACKAGED, Event.DEPLOYED, Event.ROLLBACK, Event.ENVIRONMENT_PASSED, Event.RUN_STATE)
TERMINAL = frozenset({"success", "failed"})


@dataclass(frozen=True)
class HotfixDecision:
    allowed: bool
    reasons: list[str] = field(default_factory=list)
    changed: dict[str, str] = field(default_factory=dict)  # component -> version it changes to
    production: dict[str, str] = field(default_factory=dict)
    in_test: dict[str, list[str]] = field(default_factory=dict)  # "component version" -> open runs

    def details(self, severity: str, incident: str) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "reasons": list(self.reasons),
            "severity": severity,
            "incident": incident,
            "changed": dict(self.changed),
            "production": dict(self.production),
            "in_test": {k: list(v) for k, v in self.in_test.items()},
        }


def _run(e: EventLike) -> str:
    return str(getattr(e, "run_id", "") or "")


def production_contents(events: Iterable[EventLike], production: Iterable[str]) -> dict[str, str]:
    """Component -> version of what production runs: the newest deploy to a production
    environment, or the version the newest rollback there restored (events in ledger order)."""
    events = list(events)
    production = set(production)
    packaged = {_run(e): e for e in events if e.kind == Event.PACKAGED}
    by_digest = {e.details.get("digest"): e for e in events if e.kind == Event.PACKAGED and e.details.get("digest")}
    by_version = {e.details.get("version"): e for e in events if e.kind == Event.PACKAGED and e.details.get("version")}
    for e in reversed(events):
        if e.environment not in production:
            continue
        source = None
        if e.kind == Event.DEPLOYED:
            source = packaged.get(_run(e))
        elif e.kind == Event.ROLLBACK and e.details.get("restored_version"):
            source = by_digest.get(e.details.get("restored_digest")) or by_version.get(e.details["restored_version"])
        if source is not None:
            return contents(source.details.get("components") or [])
    return {}


def in_test(events: Iterable[EventLike], production: Iterable[str], run_id: str) -> dict[str, list[str]]:
    """``component version`` -> the other open runs of the release that carry it untested in
    production (packaged, no production pass, not ended)."""
    events = list(events)
    production = set(production)
    ended = {_run(e) for e in events if e.kind == Event.RUN_STATE and e.details.get("state") in TERMINAL}
    released = {_run(e) for e in events if e.kind == Event.ENVIRONMENT_PASSED and e.environment in production}
    found: dict[str, list[str]] = {}
    for e in events:
        run = _run(e)
        if e.kind != Event.PACKAGED or run == run_id or run in ended or run in released:
            continue
        for name, version in contents(e.details.get("components") or []).items():
            runs = found.setdefault(f"{name} {version}", [])
            if run not in runs:
                runs.append(run)
    return found


def decide_hotfix(
    policy: Mapping[str, Any],
    severity: str,
    planned: Mapping[str, str],
    production: Mapping[str, str],
    testing: Mapping[str, list[str]],
) -> HotfixDecision:
    """``policy``: the spec's ``hotfix_policy``; ``planned``: component -> version this run
    will package; ``production``: what production runs; ``testing``: :func:`in_test`."""
    reasons = []
    severities = list(policy.get("severities") or [])
    if severity not in severities:
        reasons.append(f"severity {severity} is not one a hotfix may be for ({', '.join(severities)})")
    changed = {name: version for name, version in sorted(planned.items()) if production.get(name) != version}
    allowed = policy.get("components")
    if allowed is not None:
        for name in changed:
            if name not in allowed:
                reasons.append(f"component {name} may not change in a hotfix (allowed: {', '.join(allowed) or 'none'})")
    carried = {}
    if policy.get("exclude_in_test", True):
        for name, version in changed.items():
            runs = testing.get(f"{name} {version}")
            if runs:
                carried[f"{name} {version}"] = list(runs)
                reasons.append(f"component {name} {version} is still in test in run {', '.join(runs)}")
    if not changed:
        reasons.append("nothing changes against production: a hotfix must change something")
    return HotfixDecision(not reasons, reasons, changed, dict(production), carried)
