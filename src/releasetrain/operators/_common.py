"""What every release operator shares: the run's request (from the DAG run), its ledger
records, the gatekeeper's decisions enforced, and XCom for display only.

Trust: XCom and task states can be written by any UI/REST user, so nothing here decides
from them. :func:`release_request` reads the DAG run Airflow created; :func:`run_ledger`
reads what this run's tasks wrote to the ledger; :func:`enforce` fails the task with the
gatekeeper's reasons and records the refusal.
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk.exceptions import AirflowFailException

from releasetrain.core.gatekeeper import Decision, RunLedger
from releasetrain.core.ledger import LedgerError
from releasetrain.core.request import ReleaseRequest, ReleaseRequestError, build_request
from releasetrain.core.vocabulary import Event

log = logging.getLogger(__name__)


def pull(context: Any, task_id: str, key: str = "return_value") -> Any:
    """An earlier task's XCom: for display and convenience only, never for a gate."""
    return context["ti"].xcom_pull(task_ids=task_id, key=key)


def require(context: Any, task_id: str, what: str) -> dict[str, Any]:
    """An earlier task's result that this task cannot do without (display data, not a gate)."""
    value = pull(context, task_id)
    if not value:
        raise AirflowFailException(f"{what} is missing: task {task_id!r} recorded no result in this run")
    return value


def dag_id_of(context: Any) -> str:
    dag = context.get("dag")
    if dag is not None:
        return dag.dag_id
    return getattr(context.get("dag_run"), "dag_id", "") or ""


def run_ledger(context: Any, release: str) -> RunLedger:
    """This run's ledger events (keyed by DAG id and run id)."""
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    try:
        return RunLedger(hook.events(release=release, run_id=context["run_id"], dag_id=dag_id_of(context)))
    except LedgerError as exc:
        raise AirflowFailException(f"the release ledger cannot be read: {exc}") from None
    finally:
        hook.close()


def release_request(
    context: Any, release: str, *, planned_version: str | None = None, candidate: Any = None
) -> ReleaseRequest:
    """The run's request, from the DAG run Airflow created (never from XCom).

    A scheduled train's version and author come from what ``prepare`` pinned in the ledger
    (``candidate`` is given only by ``prepare`` itself, from the published variable).
    """
    dag_run = context["dag_run"]
    run_type = str(getattr(dag_run, "run_type", "") or "")
    if candidate is None and run_type.lower().endswith("scheduled") and not context["params"].get("version"):
        pinned = run_ledger(context, release).request()
        if pinned is None:
            raise AirflowFailException(
                "the release request is missing: prepare recorded nothing in the ledger for this run "
                "(was it marked successful by hand?)"
            )
        candidate = {"version": pinned.get("version"), "published_by": pinned.get("requested_by")}
    people = getattr(context.get("task"), "user_directory", None)  # the directory the factory gave the task
    try:
        return build_request(
            release=release,
            people=people,
            dag_id=dag_id_of(context),
            run_id=context["run_id"],
            params=context["params"],
            conf=getattr(dag_run, "conf", None) or {},
            triggering_user=dag_run.triggering_user_name,
            run_type=run_type,
            planned_version=planned_version,
            candidate=candidate,
        )
    except ReleaseRequestError as exc:
        raise AirflowFailException(str(exc)) from None


def assigned(context_or_task: Any, user_ids: list[str]) -> list[dict[str, str]]:
    """HITL ``assigned_users`` by id, named from the people directory the factory gave the task."""
    from releasetrain.core.identity import Directory

    task = context_or_task.get("task") if isinstance(context_or_task, dict) else context_or_task
    return Directory(getattr(task, "user_directory", None) or {}).assigned(user_ids)


def responder(result: dict[str, Any], request: ReleaseRequest | None = None) -> str | None:
    """The id of who answered a HITL request (as Airflow authenticated them).

    When the responder's *name* is one of the request's authors (a user the directory does
    not know under that id), the name is returned, so segregation of duties still catches it.
    """
    user = result.get("responded_by_user") or {}
    if request is not None and user.get("name") in request.authors:
        return user.get("name")
    return user.get("id")


def release_values(request: ReleaseRequest, environment: str, digest: str = "") -> dict[str, str]:
    """Placeholders available to checks: ``${release}``, ``${version}``, ``${environment}``, ``${digest}``."""
    return {
        "release": request.release,
        "version": request.version,
        "environment": environment,
        "digest": digest,
    }


def record(
    context: Any,
    kind: str,
    release: str,
    *,
    environment: str = "",
    actor: str = "",
    details: dict[str, Any] | None = None,
) -> None:
    """Append an event of this run to the release ledger, naming the task that saw it.

    A failure to record fails the task; callers that record a *decision* use
    :func:`record_decision`, which never lets a retry ask again.
    """
    from releasetrain.hooks.ledger import LedgerHook

    details = dict(details or {})
    ti = context.get("ti")
    if getattr(ti, "task_id", None):
        details.setdefault("task_id", ti.task_id)
    hook = LedgerHook()
    try:
        hook.append(
            kind,
            release=release,
            run_id=context["run_id"],
            dag_id=dag_id_of(context),
            environment=environment,
            actor=actor or "",
            details=details,
        )
    finally:
        hook.close()
    from releasetrain.core.markers import MARKED
    from releasetrain.core.telemetry import EMITTED

    if str(kind) in MARKED:
        mark(context, str(kind), release, environment, details)
    if str(kind) in EMITTED:
        emit(context, str(kind), release, environment, details)


def emit(context: Any, kind: str, release: str, environment: str, details: dict[str, Any]) -> None:
    """Emit the metrics of the event just recorded through Airflow's ``Stats`` (see
    :mod:`releasetrain.core.telemetry` for their names). Metrics never fail a step."""
    from datetime import UTC, datetime, timedelta

    from releasetrain.core.telemetry import stats_of

    try:
        from airflow.sdk.observability import stats as airflow_stats

        run = run_ledger(context, release).events
        for stat in stats_of(
            kind, release=release, environment=environment, details=details, run_events=run, now=datetime.now(UTC)
        ):
            for name, tags in ((stat.name, stat.tags), (stat.dotted, {})):
                if stat.kind == "incr":
                    airflow_stats.incr(name, tags=tags)
                else:
                    airflow_stats.timing(name, timedelta(seconds=stat.seconds), tags=tags)
    except Exception as exc:  # noqa: BLE001 - a metric lost is logged, the step goes on
        import logging

        logging.getLogger(__name__).warning("releasetrain metrics for %s not emitted: %s", kind, exc)


def mark(context: Any, kind: str, release: str, environment: str, details: dict[str, Any]) -> None:
    """Publish a deploy marker (an annotation on the deployment's Grafana, when it configured
    one: ``AIRFLOW__RELEASETRAIN__ANNOTATIONS_CONN_ID``) and keep it in the ledger
    (``annotated``: its id, or why it failed). A marker that cannot be published never fails
    the step that changed the environment."""
    from datetime import UTC, datetime

    from releasetrain.core.markers import annotation
    from releasetrain.core.policy import _setting

    conn_id = _setting("ANNOTATIONS_CONN_ID")
    body = annotation(kind, release, environment, context["run_id"], details, datetime.now(UTC)) if conn_id else None
    if body is None:
        return
    from releasetrain.hooks.annotations import AnnotationError, GrafanaAnnotationHook

    outcome: dict[str, Any] = {"of": kind, "text": body["text"], "tags": body["tags"], "conn_id": conn_id}
    try:
        outcome["id"] = GrafanaAnnotationHook(conn_id, timeout=5.0).annotate(body)
    except AnnotationError as exc:
        outcome["error"] = str(exc)
        log.warning("deploy marker not published: %s", exc)
    except Exception as exc:  # never the step's failure: it changed the environment already
        outcome["error"] = f"{type(exc).__name__}"
        log.warning("deploy marker not published: %s", type(exc).__name__)
    try:
        record(context, Event.ANNOTATED, release, environment=environment, details=outcome)
    except Exception as exc:  # the marker is a courtesy: the step's own record is what counts
        log.warning("deploy marker not recorded: %s", exc)


def record_decision(context: Any, kind: str, release: str, **fields: Any) -> None:
    """Record a human decision; when the ledger refuses, fail without retry (never ask again)."""
    try:
        record(context, kind, release, **fields)
    except Exception as exc:
        raise AirflowFailException(
            f"the {kind} decision could not be recorded in the release ledger ({exc}); the task fails "
            "without asking again: trigger a new run once the ledger is back"
        ) from None


def enforce(context: Any, decision: Decision, release: str, environment: str = "") -> None:
    """Fail the task when the gatekeeper refused, after recording the refusal with its reasons."""
    if decision.allowed:
        return
    unrecorded = ""
    try:
        record(
            context,
            Event.GATE_REFUSED,
            release,
            environment=environment,
            details={"step": decision.step, "reasons": list(decision.reasons)},
        )
    except Exception as exc:  # the refusal stands even when it cannot be recorded
        unrecorded = f" (the refusal could not be recorded: {exc})"
    raise AirflowFailException(decision.message() + "; nothing was changed" + unrecorded)


def verified_digest(context: Any, run: RunLedger, release: str, environment: str, verify_task_id: str) -> str:
    """The digest this environment's verify step checked (its ledger record, not its XCom);
    refused, named, when there is none (e.g. the step set to success by hand)."""
    verified = run.last(Event.VERIFIED, environment=environment, task_id=verify_task_id)
    if verified is None or not verified.details.get("digest"):
        step = context["ti"].task_id
        enforce(context, Decision.refuse(step, run.missing(verify_task_id, "verified bundle")), release, environment)
    return str(verified.details["digest"])  # type: ignore[union-attr]
