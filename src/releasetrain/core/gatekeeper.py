"""The one place that decides gates: allow or refuse a step from a run's ledger events.

Only authoritative records count. XCom and task states can be written by any UI or REST
user; the ledger is written by the task that saw the event happen (an approval from the
HITL response Airflow's API recorded, an analysis verdict from the trigger's
measurements). A task marked ``success`` by hand writes nothing, so whatever depends on
it finds no record here and is refused, naming the task.

Every decision is a :class:`Decision` with reasons; adapters turn a refusal into a failed
task and record it (``gate_refused``). Nothing here imports Airflow.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from releasetrain.core.approval import SegregationOfDutiesError, check_approvals
from releasetrain.core.versioning import Version
from releasetrain.core.vocabulary import (
    ALERTS,
    ANALYSIS,
    DEPLOY,
    HEALTH,
    OPTION_PROMOTE,
    OPTION_ROLL_BACK,
    PROMOTE,
    SMOKE,
    SOAK,
    TESTS,
    VERIFY,
    WATCH,
    Event,
    decide_task,
)

# An analysis that lets the rollout go on: the canary judge's "successful", or "skipped"
# (the version was already live: nothing to analyse).
PASSING_OUTCOMES = frozenset({"successful", "skipped"})


class EventLike(Protocol):
    kind: str
    environment: str
    actor: str
    at: str
    details: dict[str, Any]


@dataclass(frozen=True)
class Decision:
    """A gate's answer: ``allowed``, or refused with the reasons (each names the missing record)."""

    step: str
    allowed: bool
    reasons: tuple[str, ...] = ()

    @classmethod
    def allow(cls, step: str) -> Decision:
        return cls(step, True)

    @classmethod
    def refuse(cls, step: str, *reasons: str) -> Decision:
        return cls(step, False, tuple(reasons))

    @classmethod
    def combine(cls, step: str, decisions: Iterable[Decision]) -> Decision:
        reasons = tuple(r for d in decisions if not d.allowed for r in d.reasons)
        return cls(step, not reasons, reasons)

    def message(self) -> str:
        if self.allowed:
            return f"{self.step}: allowed"
        return f"{self.step} refused: " + "; ".join(self.reasons)


def current_incarnation(events: Iterable[EventLike]) -> list[EventLike]:
    """The events of the run that exists now under a DAG id and run id.

    A run deleted through the API and triggered again under the same run id is a new run:
    it must not inherit the old one's approvals, verdicts or locks. The listener records
    ``run_started`` each time a run starts running, with the DAG run's database key (its
    id and creation time, which neither a clear nor a state change through the API
    alters); everything before the first start under the last key belonged to a deleted run.
    """
    events = list(events)
    begin, key = 0, None
    for i, e in enumerate(events):
        if e.kind != Event.RUN_STARTED or not e.details.get("dag_run_key"):
            continue
        if e.details["dag_run_key"] != key:
            begin, key = i, e.details["dag_run_key"]
    return events[begin:]


def incarnation_events(events: Iterable[EventLike], key: str) -> list[EventLike]:
    """The events of the incarnation whose DAG run key is ``key`` (from its first start up to
    a start under another key); all of them when no start under ``key`` was recorded."""
    events = list(events)
    begin = None
    for i, e in enumerate(events):
        found = e.details.get("dag_run_key") if e.kind == Event.RUN_STARTED else None
        if not found:
            continue
        if found == key and begin is None:
            begin = i
        elif begin is not None and found != key:
            return events[begin:i]
    return events[begin:] if begin is not None else events


def _of_other_incarnation(event: EventLike, me: str) -> bool:
    """Written (by the listener, late) for another incarnation of the run than ``me``."""
    key = event.details.get("dag_run_key")
    return bool(me and key and key != me)


class RunLedger:
    """The ledger events of one run (one DAG id and run id), read as facts.

    Only the current incarnation of the run counts (see :func:`current_incarnation`).
    """

    def __init__(self, events: Iterable[EventLike]) -> None:
        self.events = current_incarnation(events)

    @property
    def incarnation(self) -> str:
        """What tells this run from a deleted one of the same id: its DAG run's key ("" unknown)."""
        keys = [
            e.details["dag_run_key"]
            for e in self.events
            if e.kind == Event.RUN_STARTED and e.details.get("dag_run_key")
        ]
        return str(keys[-1]) if keys else ""

    def ended(self) -> EventLike | None:
        """The run's end, when it already ended once (a finished run that was cleared).

        An end recorded for another incarnation (a deleted run's, written after the new run
        under its id started) is not this run's."""
        ends = [e for e in self.of(Event.RUN_STATE) if not _of_other_incarnation(e, self.incarnation)]
        return ends[-1] if ends else None

    def of(self, kind: str, *, environment: str | None = None, task_id: str | None = None) -> list[EventLike]:
        return [
            e
            for e in self.events
            if e.kind == kind
            and (environment is None or e.environment == environment)
            and (task_id is None or e.details.get("task_id") == task_id)
        ]

    def last(self, kind: str, **filters: Any) -> EventLike | None:
        found = self.of(kind, **filters)
        return found[-1] if found else None

    def set_by_hand(self, task_id: str) -> bool:
        """Whether a user set the task's state by hand (the listener's record)."""
        return any(e.details.get("by_hand") for e in self.of(Event.TASK_STATE, task_id=task_id))

    def latest(self, task_id: str, *kinds: str, environment: str | None = None) -> EventLike | None:
        """The newest record of ``task_id`` among ``kinds`` (a step cleared and run again
        decides by its latest try)."""
        found = [
            e
            for e in self.events
            if e.kind in kinds
            and e.details.get("task_id") == task_id
            and (environment is None or e.environment == environment)
        ]
        return found[-1] if found else None

    def by_hand(self, task_id: str) -> str:
        """A refusal's tail when the step was set to success by hand ("" otherwise)."""
        return "; it was set to success by hand, which proves nothing" if self.set_by_hand(task_id) else ""

    def missing(self, task_id: str, what: str) -> str:
        """A refusal reason naming the task whose record is missing, and saying when it was set by hand."""
        how = (
            "it was set to success by hand, which proves nothing"
            if self.set_by_hand(task_id)
            else "was it marked successful by hand?"
        )
        return f"no {what} recorded in the ledger by {task_id} in this run ({how})"

    def request(self) -> Mapping[str, Any] | None:
        """What ``prepare`` recorded (the version a scheduled train pinned, its author)."""
        event = self.last(Event.TRIGGERED)
        return event.details if event else None


# --- proof that a step succeeded ---------------------------------------------------------------
def step_kind(task_id: str) -> str:
    """What a stage's task is, from its id (``prod.canary_10`` -> ``analysis``)."""
    name = task_id.rsplit(".", 1)[-1]
    if name.startswith("canary_") or name in (ANALYSIS, WATCH):
        return ANALYSIS
    if name.startswith(f"{TESTS}_"):
        return TESTS
    if name.startswith(f"{DEPLOY}_"):  # a deploy unit's own deploy (packaging: modular)
        return DEPLOY
    return name


def suites_passed(run: RunLedger, task_ids: Sequence[str], digest: str, step: str) -> Decision:
    """Each test suite's latest record says it passed, on ``digest``: a suite that failed and
    was set to success by hand (or not run) holds ``step`` up."""
    reasons = []
    for task_id in task_ids:
        last = run.latest(task_id, Event.TESTS_PASSED, Event.TESTS_FAILED)
        if last is None:
            reasons.append(run.missing(task_id, "test suite result"))
        elif last.kind == Event.TESTS_FAILED:
            failures = "; ".join(last.details.get("failures") or []) or "see its log"
            reasons.append(f"test suite {task_id} failed in {last.environment} ({failures}){run.by_hand(task_id)}")
        elif digest and last.details.get("digest") != digest:
            reasons.append(f"test suite {task_id} passed on {last.details.get('digest')}, not {digest}")
    return Decision.refuse(step, *reasons) if reasons else Decision.allow(step)


def step_proof(run: RunLedger, task_id: str, environment: str, *, digest: str | None = None) -> Decision:
    """The record a successful run of ``task_id`` leaves; refused (named) when there is none."""
    kind = step_kind(task_id)
    if kind == ANALYSIS:
        return analysis_proof(run, task_id, environment)
    if kind == TESTS:
        return suites_passed(run, [task_id], digest or "", task_id)
    expected = {
        VERIFY: Event.VERIFIED,
        DEPLOY: Event.DEPLOYED,
        SMOKE: Event.CHECKS_PASSED,
        HEALTH: Event.CHECKS_PASSED,
        PROMOTE: Event.PROMOTED,
        ALERTS: Event.ALERTS_QUIET,
        SOAK: Event.SOAKED,
    }.get(kind)
    if expected is None:
        raise ValueError(f"{task_id}: no proof is defined for a {kind!r} step")
    found = run.of(expected, environment=environment, task_id=task_id)
    if not found:
        return Decision.refuse(task_id, run.missing(task_id, f"'{expected.value}'"))
    if kind == ALERTS:  # an alert that started during the watch and was delivered after it
        until = found[-1].details.get("until") or ""
        from releasetrain.core.alerts import concerns

        late = [
            e.details
            for e in run.of(Event.ALERT_RECEIVED, environment=environment)
            if concerns(e.details) and str(e.details.get("starts_at") or "") <= until
        ]
        if late:
            return Decision.refuse(
                task_id, f"alert {late[0].get('alert')} started during the watch (at {late[0].get('starts_at')})"
            )
    if kind == SOAK:
        refused = _soak_short(run, found[-1], environment)
        if refused:
            return Decision.refuse(task_id, refused)
    recorded = found[-1].details.get("release_digest") or found[-1].details.get("digest")  # a unit: its release's
    if digest and kind in (VERIFY, DEPLOY) and recorded != digest:
        return Decision.refuse(task_id, f"{task_id} recorded digest {recorded}, not {digest}")
    return Decision.allow(task_id)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _soak_short(run: RunLedger, soaked: EventLike, environment: str) -> str | None:
    """Why a soak record does not prove the soak the run's risk assessment asked for (None:
    it does). The deadline is the gate's own: the latest deploy or promotion there plus the
    minutes asked, never the record's word."""
    from datetime import timedelta

    from releasetrain.core.trends import soak_minutes, soak_start

    assessed = [e for e in run.of(Event.RISK_ASSESSED) if "level" in e.details]
    needed = soak_minutes(assessed[-1].details.get("trend_rules") or [], environment) if assessed else 0.0
    if not needed:
        return None
    start = soak_start(
        [*run.of(Event.DEPLOYED, environment=environment), *run.of(Event.PROMOTED, environment=environment)],
        environment,
    )
    if start is None:
        return f"{environment}: no deploy is recorded to soak from"
    until = start + timedelta(minutes=needed)
    if _instant(soaked.at) < until:
        return (
            f"{environment} must soak {needed:g} minutes after its last deploy or promotion ({start.isoformat()}); "
            f"the soak was recorded at {soaked.at}, before {until.isoformat()}"
        )
    return None


# An analysis outcome that condemns the version for the rest of the run in that environment
# ("error" is not one: the metrics could not be read, nothing was judged).
CONDEMNING_OUTCOMES = frozenset({"failed", "aborted"})


def condemned(run: RunLedger, environment: str, step: str) -> Decision:
    """A failed analysis, or a human's "Roll back", is final for the environment in this run:
    clearing the step and running it again until it passes proves nothing."""
    for e in run.of(Event.ANALYSIS, environment=environment):
        if e.details.get("outcome") in CONDEMNING_OUTCOMES:
            reason = f": {e.details['reason']}" if e.details.get("reason") else ""
            return Decision.refuse(
                step,
                f"{e.details.get('task_id')}'s analysis {e.details.get('outcome')}{reason} ({e.at}); a failed "
                f"analysis is final for {environment} in this run: trigger a new run",
            )
    for e in run.of(Event.ANALYSIS_DECISION, environment=environment):
        if e.details.get("choice") == OPTION_ROLL_BACK:
            who = e.actor or "nobody (timed out)"
            return Decision.refuse(
                step,
                f"{who} chose {OPTION_ROLL_BACK!r} at {e.details.get('task_id')} ({e.at}): final for {environment} "
                "in this run; trigger a new run",
            )
    return Decision.allow(step)


def analysis_proof(run: RunLedger, task_id: str, environment: str) -> Decision:
    """An analysis passed, or was inconclusive and a human chose to promote (``decide_*``);
    never after a verdict in the environment condemned the version (:func:`condemned`)."""
    final = condemned(run, environment, task_id)
    if not final.allowed:
        return final
    verdict = run.last(Event.ANALYSIS, environment=environment, task_id=task_id)
    if verdict is None:
        return Decision.refuse(task_id, run.missing(task_id, "analysis verdict"))
    outcome = verdict.details.get("outcome")
    if outcome in PASSING_OUTCOMES:
        return Decision.allow(task_id)
    if outcome == "inconclusive":
        decider = f"{task_id.rsplit('.', 1)[0]}.{decide_task(task_id)}" if "." in task_id else decide_task(task_id)
        decision = run.last(Event.ANALYSIS_DECISION, environment=environment, task_id=decider)
        if decision is None:
            return Decision.refuse(
                task_id, f"{task_id} was inconclusive and " + run.missing(decider, "decision to promote")
            )
        if decision.details.get("choice") == OPTION_PROMOTE:
            return Decision.allow(task_id)
        return Decision.refuse(task_id, f"{decision.actor} chose {OPTION_ROLL_BACK!r} at {decider}")
    return Decision.refuse(task_id, f"{task_id}'s analysis {outcome}: {verdict.details.get('reason') or ''}".strip())


def steps_passed(
    run: RunLedger, environment: str, task_ids: Sequence[str], *, digest: str | None = None, step: str = ""
) -> Decision:
    """Every step in ``task_ids`` left its proof."""
    return Decision.combine(
        step or f"{environment} steps", (step_proof(run, t, environment, digest=digest) for t in task_ids)
    )


# --- the gates -----------------------------------------------------------------------------------
def risk_gates(
    run: RunLedger, environment: str, quorum: int, reviews: Sequence[str], *, assess_task_id: str
) -> tuple[int, list[str]] | Decision:
    """The quorum and reviews the recorded risk assessment chose (the spec's when it chose none)."""
    assessed = [e for e in run.of(Event.RISK_ASSESSED, task_id=assess_task_id) if "level" in e.details]
    if not assessed:
        return Decision.refuse(environment, run.missing(assess_task_id, "risk assessment"))
    gates = (assessed[-1].details.get("gates") or {}).get(environment)
    if not gates:
        return int(quorum), list(reviews)
    return int(gates["quorum"]), list(gates["reviews"])


def approvals(
    run: RunLedger,
    environment: str,
    *,
    digest: str,
    quorum: int,
    reviews: Sequence[str],
    pool: Iterable[str],
    review_members: Mapping[str, list[str]],
    authors: Iterable[str],
    step: str,
    task_ids: Sequence[str] = (),
) -> Decision:
    """The environment's approvals, as recorded by the approval tasks, add up to what it needs.

    A refusal names the approval tasks (``task_ids``) that recorded nothing although they
    were set to success by hand, or the first one when no approval was recorded at all.
    """
    final = not_rejected(run, step, environment=environment)
    if not final.allowed:
        return final
    records, answered = [], set()
    for e in run.of(Event.APPROVAL_GIVEN, environment=environment):
        # one person's answer to one request, recorded twice (a completion retried after
        # Airflow's fast-answer race), is one approval, not "both"
        if (e.actor, e.details.get("task_id")) in answered:
            continue
        answered.add((e.actor, e.details.get("task_id")))
        records.append({"approver": e.actor, "digest": e.details.get("digest"), "group": e.details.get("group")})
    try:
        check_approvals(
            records,
            quorum=quorum,
            reviews=list(reviews),
            pool=pool,
            review_members=dict(review_members),
            excluded=set(authors),
            digest=digest,
        )
    except SegregationOfDutiesError as exc:
        given = {e.details.get("task_id") for e in run.of(Event.APPROVAL_GIVEN, environment=environment)}
        silent = [t for t in task_ids if t not in given and (run.set_by_hand(t) or (not given and t == task_ids[0]))]
        return Decision.refuse(
            step, f"approvals in the ledger do not hold: {exc}", *(run.missing(t, "approval") for t in silent)
        )
    return Decision.allow(step)


def window(run: RunLedger, environment: str, window_task_id: str) -> Decision:
    """The window gate recorded that it let the run through (open, or an emergency exception)."""
    if run.of(Event.WINDOW_PASSED, environment=environment, task_id=window_task_id):
        return Decision.allow(window_task_id)
    if run.of(Event.EXCEPTION, environment=environment, task_id=window_task_id):
        return Decision.allow(window_task_id)
    return Decision.refuse(window_task_id, run.missing(window_task_id, "window decision"))


def drift(run: RunLedger, environment: str, drift_task_id: str) -> Decision:
    """The drift check's latest record says no drift, or that an owner accepted the drift it
    found; a drift found later (the step cleared and run again) stands until accepted."""
    kinds = (Event.DRIFT_CHECKED, Event.DRIFT_DETECTED, Event.DRIFT_ACCEPTED)
    last = run.latest(drift_task_id, *kinds, environment=environment)
    if last is None:
        return Decision.refuse(drift_task_id, run.missing(drift_task_id, "drift check or accepted drift"))
    if last.kind == Event.DRIFT_DETECTED:
        return Decision.refuse(
            drift_task_id,
            f"{drift_task_id} found configuration drift in {environment} that nobody accepted"
            f"{run.by_hand(drift_task_id)}",
        )
    return Decision.allow(drift_task_id)


def baseline(
    run: RunLedger,
    approvals: Iterable[EventLike],
    environment: str,
    sha256: str,
    baseline_task_id: str,
    excluded: Iterable[str] = (),
) -> Decision:
    """The environment's profile (by digest) was approved by the change advisory board, in
    this run or an earlier one of the release (``approvals``: the release's
    ``baseline_approved`` events, written by the baseline step from Airflow's HITL response),
    by someone who is not an author of this run (``excluded``)."""
    excluded = set(excluded)
    if any(
        e.environment == environment and e.details.get("sha256") == sha256 and e.actor not in excluded
        for e in approvals
    ):
        return Decision.allow(baseline_task_id)
    return Decision.refuse(
        baseline_task_id,
        f"the configuration profile of {environment} ({sha256}) has no approval of the change advisory board "
        f"in the ledger: {baseline_task_id} asks for it{run.by_hand(baseline_task_id)}",
    )


def scope(run: RunLedger, scope_task_id: str) -> Decision:
    """The scope step's latest record: the contents are within the frozen scope (or it is not
    frozen yet), or an exception was granted; a change nobody granted holds every deploy."""
    kinds = (Event.SCOPE_CHECKED, Event.SCOPE_FROZEN, Event.SCOPE_CHANGE_REQUESTED, Event.SCOPE_EXCEPTION)
    last = run.latest(scope_task_id, *kinds)
    if last is None:
        return Decision.refuse(scope_task_id, run.missing(scope_task_id, "scope check or scope exception"))
    if last.kind == Event.SCOPE_CHANGE_REQUESTED:
        changes = "; ".join(last.details.get("changes") or [])
        return Decision.refuse(
            scope_task_id,
            f"the contents changed after the scope freeze ({changes}) and no exception was granted"
            f"{run.by_hand(scope_task_id)}",
        )
    return Decision.allow(scope_task_id)


def libraries(run: RunLedger, libraries_task_id: str) -> Decision:
    """The library check's latest record: no conflicting versions across the components, or
    a waiver recorded for the conflicts it found."""
    kinds = (Event.LIBRARIES_CHECKED, Event.LIBRARY_CONFLICTS, Event.CONFLICTS_WAIVED)
    last = run.latest(libraries_task_id, *kinds)
    if last is None:
        return Decision.refuse(libraries_task_id, run.missing(libraries_task_id, "library check or waiver"))
    if last.kind == Event.LIBRARY_CONFLICTS:
        found = "; ".join(last.details.get("conflicts") or [])
        return Decision.refuse(
            libraries_task_id,
            f"components pin conflicting library versions ({found}) and nobody waived them"
            f"{run.by_hand(libraries_task_id)}",
        )
    return Decision.allow(libraries_task_id)


def masking(run: RunLedger, check_task_id: str) -> Decision:
    """The masking check's latest record in this run says every rule held."""
    last = run.latest(check_task_id, Event.MASKING_CHECKED)
    if last is None:
        return Decision.refuse(check_task_id, run.missing(check_task_id, "masking check"))
    if not last.details.get("passed"):
        problems = "; ".join(last.details.get("problems") or [])
        return Decision.refuse(check_task_id, f"{check_task_id} found unmasked data: {problems}")
    return Decision.allow(check_task_id)


def hotfix(run: RunLedger, hotfix_task_id: str, planned: Mapping[str, str] | None = None) -> Decision:
    """A hotfix run's policy decision: its latest record says allowed, about the contents
    (``planned``: component -> version) about to be packaged."""
    last = run.latest(hotfix_task_id, Event.HOTFIX_DECIDED)
    if last is None:
        return Decision.refuse(hotfix_task_id, run.missing(hotfix_task_id, "hotfix decision"))
    if not last.details.get("allowed"):
        reasons = "; ".join(last.details.get("reasons") or [])
        return Decision.refuse(
            hotfix_task_id, f"the hotfix policy refused this run ({reasons}){run.by_hand(hotfix_task_id)}"
        )
    if planned is not None and last.details.get("planned") != dict(planned):
        return Decision.refuse(
            hotfix_task_id,
            f"the hotfix decision was about {last.details.get('planned')}, not {dict(planned)}: "
            f"clear {hotfix_task_id} to decide again",
        )
    return Decision.allow(hotfix_task_id)


def migrated(run: RunLedger, environment: str, migrate_task_id: str, digest: str) -> Decision:
    """The environment's migrate step recorded its databases at the new schema for this digest."""
    latest = run.latest(
        migrate_task_id, Event.MIGRATED, Event.MIGRATION_FAILED, Event.GATE_REFUSED, environment=environment
    )
    if latest is None or latest.kind != Event.MIGRATED:  # its latest try is what the database saw last
        return Decision.refuse(migrate_task_id, run.missing(migrate_task_id, "'migrated' record"))
    if latest.details.get("digest") != digest:
        return Decision.refuse(
            migrate_task_id, f"{migrate_task_id} migrated for {latest.details.get('digest')}, not {digest}"
        )
    return Decision.allow(migrate_task_id)


def drift_record(run: RunLedger, environment: str, drift_task_id: str) -> dict[str, Any] | None:
    """What the drift check saw on the target when it let the stage go on (``reported``)."""
    kinds = (Event.DRIFT_CHECKED, Event.DRIFT_ACCEPTED)
    records = [
        e
        for e in run.events
        if e.kind in kinds and e.environment == environment and e.details.get("task_id") == drift_task_id
    ]
    return dict(records[-1].details) if records else None


def environment_passed(run: RunLedger, environment: str, digest: str, *, gate_task_id: str) -> Decision:
    """The environment recorded that it passed, with this digest."""
    passed = run.of(Event.ENVIRONMENT_PASSED, environment=environment)
    if not passed:
        return Decision.refuse(gate_task_id, run.missing(gate_task_id, f"pass of {environment}"))
    if passed[-1].details.get("digest") != digest:
        return Decision.refuse(
            gate_task_id,
            f"digest {digest} is not the digest that passed {environment} ({passed[-1].details.get('digest')})",
        )
    return Decision.allow(gate_task_id)


def not_rejected(run: RunLedger, task_id: str, *, environment: str | None = None) -> Decision:
    """A rejection (or timeout) is final for the run: the request is never asked again.

    With ``environment``, a rejection of *any* of the environment's approvals is final for
    all of them (one approver's Reject is not outvoted by clearing the slot and asking
    someone else)."""
    for kind in (Event.APPROVAL_REJECTED, Event.APPROVAL_TIMED_OUT):
        found = run.of(kind, environment=environment) if environment is not None else run.of(kind, task_id=task_id)
        if found:
            by = f" by {found[-1].actor}" if found[-1].actor else ""
            what = "rejected" if kind == Event.APPROVAL_REJECTED else "timed out"
            where = found[-1].details.get("task_id") or task_id
            return Decision.refuse(
                task_id,
                f"{where} was {what}{by} at {found[-1].at}: a rejection is final for "
                f"{environment + ' in ' if environment else ''}this run; trigger a new run to ask again",
            )
    return Decision.allow(task_id)


def not_aborted(run: RunLedger, environment: str, step: str) -> Decision:
    aborted = run.last(Event.ABORTED, environment=environment)
    if aborted is None:
        return Decision.allow(step)
    return Decision.refuse(
        step, f"the rollout was aborted by {aborted.actor}: {aborted.details.get('reason') or 'no reason given'}"
    )


def recorded_person(run: RunLedger, kind: str, task_id: str, what: str) -> Decision:
    """A human record (closure, review) exists for the task."""
    if run.of(kind, task_id=task_id):
        return Decision.allow(task_id)
    return Decision.refuse(task_id, run.missing(task_id, what))


def may_lock(run: RunLedger, environment: str, target: str, step: str) -> Decision:
    """A run takes a target's lock for an environment once: never again after it released it,
    nor after the run ended (a finished run that is cleared must not deploy, or roll back,
    again: trigger a new run)."""
    released = [
        e
        for e in run.of(Event.LOCK_RELEASED)
        if e.details.get("target") == target
        and e.environment in (environment, "")
        and not _of_other_incarnation(e, run.incarnation)  # a deleted run's late release
    ]
    if released:
        return Decision.refuse(
            step,
            f"this run already held and released deploy target {target} for {environment} ({released[-1].at}): "
            "a run's stage is not run again after it ended; trigger a new run",
        )
    return not_ended(run, step)


def admitted(run: RunLedger, admit_task_id: str, step: str) -> Decision:
    """A release run takes a deploy target only after the release train admitted it (its lane
    recorded): ``admit`` set to success by hand skipped the queue and proves nothing."""
    if run.last(Event.RUN_ADMITTED) is not None:
        return Decision.allow(step)
    return Decision.refuse(step, run.missing(admit_task_id, "admission to the release train"))


def not_ended(run: RunLedger, step: str) -> Decision:
    """A run that already ended (and was cleared) does not act again: trigger a new run."""
    ended = run.ended()
    if ended is None:
        return Decision.allow(step)
    return Decision.refuse(
        step,
        f"this run already ended {ended.details.get('state')} at {ended.at}: a cleared run does not deploy, roll "
        "back or pass again; trigger a new run",
    )


# --- manual rollback -----------------------------------------------------------------------------
def unit_bundle(events: Iterable[EventLike], unit: str, version: str) -> dict[str, Any] | None:
    """Deploy unit ``unit``'s bundle of ``version`` (packaging modular) as the packaging
    recorded it: ``{unit, components, digest, ...}``; None when that version was not packaged
    with such a unit (packaged monolithic, or the unit had another name then)."""
    found = None
    for e in events:
        if e.kind == Event.PACKAGED and e.details.get("version") == version:
            found = next((u for u in e.details.get("units") or [] if u.get("unit") == unit and u.get("digest")), found)
    return found


def rollback_candidates(
    events: Iterable[EventLike], environment: str, live_version: str | None, *, passed_only: bool = False
) -> list[dict]:
    """Versions a manual rollback may return ``environment`` to, newest first.

    A version qualifies when it is older than the live version, was never rolled back there
    (by a release's rollback or a manual one: ``events`` are all of the release's, from its
    release DAG and its rollback DAG; a later pass does not clear that), and either a release run passed
    in the environment with it or it was live there when a release run started deploying
    (the version in service before it). ``passed_only`` (packaging modular, where a "before"
    is one unit's): only versions a release run passed there with.
    """
    passed: dict[str, dict] = {}
    bad: set[str] = set()
    for e in events:
        if e.environment != environment:
            continue
        if e.kind == Event.ENVIRONMENT_PASSED and e.details.get("version"):
            passed[e.details["version"]] = {"version": e.details["version"], "digest": e.details.get("digest")}
        elif e.kind == Event.DEPLOY_STARTED and not passed_only:
            before = e.details.get("before") or {}
            if before.get("version") and not before.get("noop"):
                passed.setdefault(before["version"], {"version": before["version"], "digest": before.get("digest")})
        elif e.kind in (Event.ROLLBACK, Event.ROLLBACK_STARTED) and e.details.get("failed_version"):
            bad.add(e.details["failed_version"])  # started counts: the record is written before acting
    live = Version.parse(live_version) if live_version else None
    good = [
        v for version, v in passed.items() if version not in bad and (live is None or Version.parse(version) < live)
    ]
    return sorted(good, key=lambda v: Version.parse(v["version"])._key(), reverse=True)
