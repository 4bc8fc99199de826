"""The release train's lanes: which run of a release may go now. Nothing here imports Airflow.

Normal runs of a release go one at a time (each waits, deferred, in its ``admit`` step for
the one before it to end). Hotfix and emergency runs have a lane of their own and never wait
behind a normal run for their admission. A hotfix whose policy allowed it, or an emergency
run, **holds** the normal runs of its release: they take no deploy target (their next lock
waits, deferred) until it ended or passed every production environment. Once it passed a
production environment, a normal run that does not carry the fix is **superseded**: deploying
it would take the fix out of production again, so it is refused and a new run that carries
the fix must be triggered. A run carries the fix when each component the hotfix changed is,
in the run's bundle, the hotfix's own version (one version is one set of bytes: the component
index) or a newer one packaged after the hotfix's. Every admission, hold and supersession is
recorded in the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from releasetrain.core.gatekeeper import EventLike
from releasetrain.core.scope import contents
from releasetrain.core.versioning import Version, VersionError
from releasetrain.core.vocabulary import LANE_HOTFIX, LANE_NORMAL, RUN_TERMINAL_STATES, Event

# the release-wide events the lanes read
TRAIN_EVENTS = (
    Event.RUN_ADMITTED,
    Event.HOTFIX_DECIDED,
    Event.PACKAGED,
    Event.ENVIRONMENT_PASSED,
    Event.RUN_STATE,
)
TERMINAL = RUN_TERMINAL_STATES
FREE, HELD, SUPERSEDED = "free", "held", "superseded"
OVERTAKING = ("hotfix", "emergency")  # the trigger params that may put a run in the hotfix lane


def lane_of(*, hotfix: bool, emergency: bool, offered: Iterable[str] = OVERTAKING) -> str:
    """A hotfix or an emergency change goes in the hotfix lane where the release offers it
    (``offered``: the trigger form has the param); everything else is normal."""
    offered = set(offered)
    return LANE_HOTFIX if (hotfix and "hotfix" in offered) or (emergency and "emergency" in offered) else LANE_NORMAL


def admission_details(
    lane: str, *, incident: str = "", severity: str = "", justification: str = "", incarnation: str = ""
) -> dict[str, Any]:
    """What ``run_admitted`` records: the lane, the run's incarnation (a run id deleted and
    triggered again is another run), and for the hotfix lane what kind of run it is and why."""
    details: dict[str, Any] = {"lane": lane}
    if incarnation:
        details["incarnation"] = incarnation
    if lane == LANE_HOTFIX:
        details["kind"] = "hotfix" if incident else "emergency"
        details["why"] = f"hotfix for {incident} ({severity})" if incident else f"emergency: {justification}"
    return details


@dataclass(frozen=True)
class Hold:
    """Whether a normal run may take a deploy target now (:data:`FREE`), must wait for a
    hotfix (:data:`HELD`), or may not deploy any more (:data:`SUPERSEDED`)."""

    state: str
    by: str = ""  # the hotfix run's id
    why: str = ""  # the hotfix's reason, as admitted
    environment: str = ""  # the production environment the hotfix reached (superseded)
    reasons: list[str] = field(default_factory=list)
    since: int = 0  # the seq of the hotfix's admission: its records from then on are its own
    carries: bool = True  # held: whether this run carries the fix (else a production pass ends the hold)

    def details(self) -> dict[str, Any]:
        return {"by": self.by, "why": self.why, **({"environment": self.environment} if self.environment else {})}


@dataclass
class _Run:
    """One run of the release DAG, as its ledger records say since its admission."""

    lane: str = LANE_NORMAL
    admitted: int = 0  # seq of its admission
    kind: str = ""
    why: str = ""
    incarnation: str = ""
    ended: bool = False
    allowed: bool = False  # its hotfix decision allowed it
    fix: dict[str, str] = field(default_factory=dict)  # component -> version the hotfix changes
    packaged: int | None = None  # seq of its packaged record
    contents: dict[str, str] = field(default_factory=dict)
    passed: list[str] = field(default_factory=list)  # production environments it passed

    def holds(self) -> bool:
        """A hotfix run holds others once its policy allowed it; an emergency run at once."""
        return self.lane == LANE_HOTFIX and (self.kind == "emergency" or self.allowed)

    def the_fix(self) -> dict[str, str]:
        return self.fix if self.kind != "emergency" else self.contents


def _runs(events: Iterable[EventLike], dag_id: str) -> list[tuple[str, _Run]]:
    """Every incarnation of every run of the release DAG, in order of admission. A run id
    deleted and triggered again is a new incarnation; the old one is over (it holds nothing)
    but what it did stays: a hotfix that reached production under that id still supersedes."""
    found: list[tuple[str, _Run]] = []
    latest: dict[str, _Run] = {}
    for e in events:
        if str(getattr(e, "dag_id", "") or "") != dag_id:
            continue
        run_id, d = str(getattr(e, "run_id", "") or ""), e.details
        run = latest.get(run_id)
        if e.kind == Event.RUN_ADMITTED:
            incarnation = str(d.get("incarnation") or "")
            fresh = run is None or run.ended or bool(incarnation and run.incarnation and incarnation != run.incarnation)
            if fresh:
                if run is not None:
                    run.ended = True  # deleted (or ended): it runs no more
                run = latest[run_id] = _Run(admitted=e.seq)
                found.append((run_id, run))
            run.lane = str(d.get("lane") or LANE_NORMAL)
            run.kind, run.why = str(d.get("kind") or ""), str(d.get("why") or "")
            run.incarnation = incarnation or run.incarnation
            continue
        if run is None:
            continue
        if e.kind == Event.RUN_STATE and d.get("state") in TERMINAL:
            run.ended = True
        elif e.kind == Event.HOTFIX_DECIDED and run.packaged is None and not run.ended:
            # decided before packaging; a decision taken again later (the step cleared after the
            # fix reached production: "nothing changes") does not undo what the run shipped
            run.allowed = bool(d.get("allowed"))
            run.fix = {str(k): str(v) for k, v in (d.get("changed") or {}).items()}
        elif e.kind == Event.PACKAGED and run.packaged is None:  # packaging again reuses the bundle
            run.packaged = e.seq
            run.contents = contents(d.get("components") or [])
        elif e.kind == Event.ENVIRONMENT_PASSED and e.environment not in run.passed:
            run.passed.append(e.environment)
    return found


def _carries(mine: _Run, hotfix: _Run) -> bool:
    """Whether ``mine`` carries ``hotfix``'s fix (see the module's docstring)."""
    if mine.packaged is None:
        return True  # packages later, from sources that have the fix: judged again at its lock
    for component, fixed in hotfix.the_fix().items():
        version = mine.contents.get(component)
        if version == fixed:
            continue
        try:
            newer = version is not None and Version.parse(fixed) < Version.parse(version)
        except VersionError:
            newer = False
        if not (newer and hotfix.packaged is not None and hotfix.packaged < mine.packaged):
            return False
    return True


def hold_on(
    events: Iterable[EventLike],
    dag_id: str,
    run_id: str,
    production: Iterable[str],
    gone: Iterable[str] = (),
) -> Hold:
    """The hold on run ``run_id`` of release DAG ``dag_id`` (release-wide ``events`` in chain
    order). ``gone``: hotfix runs Airflow no longer has running (ended or deleted without a
    terminal record in the ledger)."""
    production, gone = list(production), set(gone)
    runs = _runs(events, dag_id)
    mine = next((run for rid, run in reversed(runs) if rid == run_id), _Run())
    hotfixes = [(rid, run) for rid, run in runs if run is not mine and run.holds()]
    for rid, run in hotfixes:
        reached = [env for env in run.passed if env in production]
        if reached and not _carries(mine, run):
            missing = ", ".join(f"{c} {v}" for c, v in sorted(run.the_fix().items()))
            reason = (
                f"superseded by hotfix run {rid} ({run.why}): it reached production ({reached[0]}) with "
                f"{missing}, which this run's bundle does not carry, so deploying it would take the fix out "
                "again; trigger a new run that carries it"
            )
            return Hold(SUPERSEDED, rid, run.why, reached[0], [reason])
    for rid, run in hotfixes:
        if not run.ended and rid not in gone and not set(production) <= set(run.passed):
            reason = f"held while hotfix run {rid} ({run.why}) of this release is underway: it goes first"
            return Hold(HELD, rid, run.why, reasons=[reason], since=run.admitted, carries=_carries(mine, run))
    return Hold(FREE)
