"""The release train's lanes: which run of a release may go now. Nothing here imports Airflow.

Normal runs of a release go one at a time (each waits, deferred, in its ``admit`` step for
the one before it to end). Hotfix and emergency runs have a lane of their own and never wait
behind a normal run, whatever gate that run waits in. While a hotfix run of the release is
underway, a normal run is **held**: it takes no deploy target (its next lock waits, deferred).
Once the hotfix reached production, a normal run whose bundle was cut before the hotfix's
(packaged earlier) is **superseded**: deploying it would take the fix out of production
again, so it is refused and a new run that carries the fix must be triggered. A hotfix that
ends without reaching production lifts the hold. Every admission, hold and supersession is
recorded in the ledger.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from releasetrain.core.gatekeeper import EventLike
from releasetrain.core.vocabulary import LANE_HOTFIX, LANE_NORMAL, Event

# the release-wide events the lanes read
TRAIN_EVENTS = (Event.RUN_ADMITTED, Event.PACKAGED, Event.ENVIRONMENT_PASSED, Event.RUN_STATE)
TERMINAL = frozenset({"success", "failed"})
FREE, HELD, SUPERSEDED = "free", "held", "superseded"


OVERTAKING = ("hotfix", "emergency")  # the trigger params that may put a run in the hotfix lane


def lane_of(*, hotfix: bool, emergency: bool, offered: Iterable[str] = OVERTAKING) -> str:
    """A hotfix or an emergency change goes in the hotfix lane where the release offers it
    (``offered``: the trigger form has the param); everything else is normal."""
    offered = set(offered)
    return LANE_HOTFIX if (hotfix and "hotfix" in offered) or (emergency and "emergency" in offered) else LANE_NORMAL


def admission_details(lane: str, *, incident: str = "", severity: str = "", justification: str = "") -> dict[str, Any]:
    """What ``run_admitted`` records: the lane, and for the hotfix lane why it may overtake."""
    details: dict[str, Any] = {"lane": lane}
    if lane == LANE_HOTFIX:
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

    def details(self) -> dict[str, Any]:
        return {"by": self.by, "why": self.why, **({"environment": self.environment} if self.environment else {})}


def _of(e: EventLike, dag_id: str) -> bool:
    return str(getattr(e, "dag_id", "") or "") == dag_id


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
    production, gone = set(production), set(gone)
    events = [e for e in events if _of(e, dag_id)]
    hotfixes: dict[str, str] = {}  # run id -> why, in order of admission
    ended, packaged, passed = set(gone), {}, {}
    for e in events:
        run = str(getattr(e, "run_id", "") or "")
        if e.kind == Event.RUN_ADMITTED and e.details.get("lane") == LANE_HOTFIX and run != run_id:
            hotfixes.setdefault(run, str(e.details.get("why") or ""))
        elif e.kind == Event.RUN_STATE and e.details.get("state") in TERMINAL:
            ended.add(run)
        elif e.kind == Event.PACKAGED:
            packaged.setdefault(run, e.seq)
        elif e.kind == Event.ENVIRONMENT_PASSED and e.environment in production:
            passed.setdefault(run, e.environment)
    mine = packaged.get(run_id)
    for run, why in hotfixes.items():
        if run in passed and run in packaged and mine is not None and mine < packaged[run]:
            reason = (
                f"superseded by hotfix run {run} ({why}): it reached production ({passed[run]}) after this run's "
                "bundle was cut, so deploying this run would take the fix out again; trigger a new run that carries it"
            )
            return Hold(SUPERSEDED, run, why, passed[run], [reason])
    for run, why in hotfixes.items():
        if run not in ended and run not in passed:
            reason = f"held while hotfix run {run} ({why}) of this release is underway: it goes first"
            return Hold(HELD, run, why, reasons=[reason])
    return Hold(FREE)
