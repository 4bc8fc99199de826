"""Which bundles the artifact store keeps, and why (procedure 3, retention).

Per release: the last ``keep_last`` versions deployed to each environment and the last
``keep_last`` packaged, every version live now or last-good in an environment (from the
ledger), and everything under legal hold. The rest may go. The policy and the holds are
the deployment's (``include/retention.yaml``), never a run's conf.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from releasetrain.core.incident import last_good_version, live_version
from releasetrain.core.versioning import Version, is_semver
from releasetrain.core.vocabulary import Event

DEFAULT_KEEP_LAST = 5


class RetentionError(ValueError):
    """A retention policy file that cannot be used."""


@dataclass(frozen=True)
class RetentionPolicy:
    keep_last: int = DEFAULT_KEEP_LAST
    holds: tuple[tuple[str, str | None, str], ...] = ()  # (release, version or None: all, reason)

    def hold(self, release: str, version: str) -> str | None:
        for held_release, held_version, reason in self.holds:
            if held_release == release and held_version in (None, version):
                return reason
        return None


def load_policy(path: Path) -> RetentionPolicy:
    """``keep_last: N`` and ``legal_holds: [{release, version?, reason}]``; no file: the defaults."""
    if not path.is_file():
        return RetentionPolicy()
    data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    where = str(path)
    if not isinstance(data, dict) or set(data) - {"keep_last", "legal_holds"}:
        raise RetentionError(f"{where}: a mapping with keep_last and legal_holds only")
    keep = data.get("keep_last", DEFAULT_KEEP_LAST)
    if not isinstance(keep, int) or isinstance(keep, bool) or keep < 1:
        raise RetentionError(f"{where}: keep_last must be a whole number of at least 1, not {keep!r}")
    holds = []
    for i, hold in enumerate(data.get("legal_holds") or []):
        if not isinstance(hold, dict) or not isinstance(hold.get("release"), str) or not hold.get("reason"):
            raise RetentionError(f"{where}: legal_holds[{i}] needs release and reason (version is optional)")
        version = hold.get("version")
        if version is not None and not (isinstance(version, str) and is_semver(version)):
            raise RetentionError(f"{where}: legal_holds[{i}].version {version!r} is not a semantic version")
        holds.append((hold["release"], version, str(hold["reason"])))
    return RetentionPolicy(keep, tuple(holds))


@dataclass
class RetentionPlan:
    keep: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # release -> version -> reasons
    delete: list[tuple[str, str]] = field(default_factory=list)  # (release, version)

    def to_dict(self) -> dict[str, Any]:
        return {"keep": self.keep, "delete": [list(item) for item in self.delete]}


def _newest(versions: Iterable[str], n: int) -> list[str]:
    ordered = sorted({v for v in versions if is_semver(v)}, key=Version.parse, reverse=True)
    return ordered[:n]


def _latest(seq_versions: Iterable[tuple[int, str]], n: int) -> list[str]:
    """The ``n`` versions of the most recent events (not the highest numbers: a hotfix on an
    old line is recent)."""
    found: list[str] = []
    for _, version in sorted(seq_versions, reverse=True):
        if version not in found:
            found.append(version)
    return found[:n]


def plan_retention(
    stored: Mapping[str, Iterable[str]], events: Mapping[str, list[Any]], policy: RetentionPolicy
) -> RetentionPlan:
    """What to keep (with every reason) and what to delete, per release.

    ``stored``: release -> versions in the store; ``events``: release -> its ledger events.
    """
    plan = RetentionPlan()
    for release in sorted(stored):
        versions = sorted(set(stored[release]))
        history = events.get(release, [])
        reasons: dict[str, list[str]] = {v: [] for v in versions}

        def keep(version: str | None, why: str, reasons: dict[str, list[str]] = reasons) -> None:
            if version in reasons and why not in reasons[version]:
                reasons[version].append(why)

        packaged = [
            (e.seq, e.details["version"]) for e in history if e.kind == Event.PACKAGED and e.details.get("version")
        ]
        unrecorded = [v for v in versions if v not in {version for _, version in packaged}]
        last = (_latest(packaged, policy.keep_last) + _newest(unrecorded, policy.keep_last))[: policy.keep_last]
        for version in last:
            keep(version, f"one of the last {policy.keep_last} packaged")
        ended = {(e.dag_id, e.run_id) for e in history if e.kind == Event.RUN_STATE}
        for event in history:  # a run still open may yet deploy what it packaged
            if event.kind == Event.PACKAGED and (event.dag_id, event.run_id) not in ended:
                keep(event.details.get("version"), f"packaged by {event.run_id}, still running")
        deployed: dict[str, list[tuple[int, str]]] = {}
        for event in history:
            if event.kind == Event.DEPLOYED and event.environment and event.details.get("version"):
                deployed.setdefault(event.environment, []).append((event.seq, event.details["version"]))
        for environment in sorted(deployed):
            for version in _latest(deployed[environment], policy.keep_last):
                keep(version, f"one of the last {policy.keep_last} deployed to {environment}")
            live = live_version(history, [environment])
            keep(live, f"live in {environment}")
            good = last_good_version(history, environment, live)
            keep(good["version"] if good else None, f"last good in {environment}")
        for version in versions:
            held = policy.hold(release, version)
            if held:
                keep(version, f"legal hold: {held}")
        plan.keep[release] = {v: r for v, r in reasons.items() if r}
        plan.delete += [(release, v) for v, r in reasons.items() if not r]
    return plan
