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
from releasetrain.core.vocabulary import RUN_TERMINAL_STATES, Event

# the release-wide events the decision reads
HOTFIX_EVENTS = (
    Event.PACKAGED,
    Event.DEPLOYED,
    Event.PROMOTED,
    Event.ROLLBACK,
    Event.ENVIRONMENT_PASSED,
    Event.RUN_STATE,
)
TERMINAL = RUN_TERMINAL_STATES


@dataclass(frozen=True)
class HotfixDecision:
    allowed: bool
    reasons: list[str] = field(default_factory=list)
    changed: dict[str, str] = field(default_factory=dict)  # component -> version it changes to
    production: dict[str, str] = field(default_factory=dict)
    in_test: dict[str, list[str]] = field(default_factory=dict)  # "component version" -> open runs
    planned: dict[str, str] = field(default_factory=dict)  # what the decision was about

    def details(self, severity: str, incident: str) -> dict[str, Any]:
        return {
            "allowed": self.allowed,
            "planned": dict(self.planned),
            "reasons": list(self.reasons),
            "severity": severity,
            "incident": incident,
            "changed": dict(self.changed),
            "production": dict(self.production),
            "in_test": {k: list(v) for k, v in self.in_test.items()},
        }


def _run(e: EventLike) -> tuple[str, str]:
    """A run's key: DAG id and run id (a rollback DAG's run may share a release run's id)."""
    return str(getattr(e, "dag_id", "") or ""), str(getattr(e, "run_id", "") or "")


def production_contents(events: Iterable[EventLike], production: Iterable[str]) -> dict[str, set[str]]:
    """Component -> the versions production runs, over every production environment: what
    the version live there (the newest deploy that takes traffic, promotion or rollback:
    :func:`releasetrain.core.incident.live_version`) was packaged with."""
    from releasetrain.core.incident import live_version

    events = list(events)
    by_version = {e.details.get("version"): e for e in events if e.kind == Event.PACKAGED and e.details.get("version")}
    running: dict[str, set[str]] = {}
    for environment in production:
        version = live_version(events, [environment])
        source = by_version.get(version)
        for name, component_version in contents(source.details.get("components") or [] if source else []).items():
            running.setdefault(name, set()).add(component_version)
    return running


def in_test(
    events: Iterable[EventLike], production: Iterable[str], run_id: str, dag_id: str = ""
) -> dict[str, list[str]]:
    """``component version`` -> the other open runs of the release DAG ``dag_id`` that carry it
    untested in production (packaged, no production pass, not ended)."""
    events = [e for e in events if not dag_id or str(getattr(e, "dag_id", "") or "") == dag_id]
    production = set(production)
    ended = {_run(e) for e in events if e.kind == Event.RUN_STATE and e.details.get("state") in TERMINAL}
    released = {_run(e) for e in events if e.kind == Event.ENVIRONMENT_PASSED and e.environment in production}
    found: dict[str, list[str]] = {}
    for e in events:
        key = _run(e)
        if e.kind != Event.PACKAGED or key[1] == run_id or key in ended or key in released:
            continue
        for name, version in contents(e.details.get("components") or []).items():
            runs = found.setdefault(f"{name} {version}", [])
            if key[1] not in runs:
                runs.append(key[1])
    return found


def decide_hotfix(
    policy: Mapping[str, Any],
    severity: str,
    planned: Mapping[str, str],
    production: Mapping[str, set[str]],
    testing: Mapping[str, list[str]],
) -> HotfixDecision:
    """``policy``: the spec's ``hotfix_policy``; ``planned``: component -> version this run
    will package; ``production``: what production runs; ``testing``: :func:`in_test`."""
    reasons = []
    severities = list(policy.get("severities") or [])
    if severity not in severities:
        reasons.append(f"severity {severity} is not one a hotfix may be for ({', '.join(severities)})")
    # changed: not what every production environment runs
    changed = {name: version for name, version in sorted(planned.items()) if production.get(name) != {version}}
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
    shown = {name: "/".join(sorted(versions)) for name, versions in sorted(production.items())}
    return HotfixDecision(not reasons, reasons, changed, shown, carried, dict(planned))
