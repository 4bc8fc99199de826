"""The release cockpit: pages and a JSON API served by the Airflow API server (under
``/releasetrain/cockpit``), shown in the UI as the "Releases" nav entry and the "Release"
tab of each run.

Airflow does not authenticate a plugin's FastAPI app: every route here resolves the user
through Airflow's own ``get_user`` (the UI's ``_token`` cookie or a bearer token: 401
without one) and shows only the DAGs the auth manager lets that user read. What it shows
comes from the ledger (:mod:`releasetrain.core.cockpit`), Airflow's pending
human-in-the-loop requests, and the release specs' calendars.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import HTMLResponse, JSONResponse

from releasetrain.core import cockpit
from releasetrain.core.vocabulary import Event

PREFIX = "/cockpit"
TREND_DAYS = (30, 90)


async def current_user(request: Request) -> Any:
    """The Airflow user of this request, as Airflow's own API resolves it (401 without one)."""
    from airflow.api_fastapi.core_api.security import get_user
    from fastapi.security import HTTPAuthorizationCredentials

    header = request.headers.get("authorization", "")
    bearer = None
    if header[:7].lower() == "bearer ":
        bearer = HTTPAuthorizationCredentials(scheme="Bearer", credentials=header[7:].strip())
    return await get_user(request, None, bearer)


def readable_dags(user: Any, entity: str = "RUN") -> set[str]:
    """The DAGs whose ``entity`` (their runs; ``HITL_DETAIL``: their human requests) the auth
    manager lets the user read."""
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    manager = get_auth_manager()
    dags = set(manager.get_authorized_dag_ids(user=user, method="GET"))
    return {
        dag_id
        for dag_id in dags
        if manager.is_authorized_dag(
            method="GET", access_entity=DagAccessEntity[entity], details=DagDetails(id=dag_id), user=user
        )
    }


def may_read_run(user: Any, dag_id: str) -> bool:
    from airflow.api_fastapi.app import get_auth_manager
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity, DagDetails

    return get_auth_manager().is_authorized_dag(
        method="GET", access_entity=DagAccessEntity.RUN, details=DagDetails(id=dag_id), user=user
    )


def _events(**filters: Any) -> list[Any]:
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    try:
        return list(hook.events(**filters))
    finally:
        hook.close()


def pending_requests(dag_ids: set[str]) -> list[dict[str, Any]]:
    """Airflow's unanswered human-in-the-loop requests of these DAGs' waiting tasks."""
    from airflow.models.hitl import HITLDetail
    from airflow.models.taskinstance import TaskInstance
    from airflow.utils.session import create_session
    from airflow.utils.state import TaskInstanceState
    from sqlalchemy import select

    if not dag_ids:
        return []
    waiting = (TaskInstanceState.AWAITING_INPUT, TaskInstanceState.DEFERRED)
    with create_session() as session:
        rows = session.execute(
            select(HITLDetail, TaskInstance)
            .join(TaskInstance, HITLDetail.ti_id == TaskInstance.id)
            .where(HITLDetail.responded_at.is_(None), TaskInstance.state.in_(waiting))
            .where(TaskInstance.dag_id.in_(sorted(dag_ids)))
        ).all()
        return [
            {
                "dag_id": ti.dag_id,
                "run_id": ti.run_id,
                "task_id": ti.task_id,
                "map_index": ti.map_index,
                "subject": detail.subject,
                "assignees": detail.assignees or [],
                "created_at": detail.created_at,
            }
            for detail, ti in rows
        ]


def project_root() -> Path:
    from airflow.configuration import conf

    from releasetrain.core.policy import _setting

    configured = _setting("PROJECT_ROOT")
    return Path(configured) if configured else Path(conf.get("core", "dags_folder")).resolve().parent


def calendar(dag_ids: set[str], now: dt.datetime) -> dict[str, Any]:
    """This week's and next week's windows and blackouts per environment of the releases the
    user may read, with the planned releases and conflicts (``releasetrain calendar``'s data)."""
    from releasetrain.core.planning import calendar_view
    from releasetrain.core.spec import CalendarLibrary
    from releasetrain.factory import load_release_specs, spec_dirs

    root = project_root()
    specs, errors = load_release_specs(spec_dirs(root), project_root=root)
    specs = [s for s in specs if s.dag_id in dag_ids]
    start = (now - dt.timedelta(days=now.weekday())).replace(hour=0, minute=0, second=0, microsecond=0)
    end = start + dt.timedelta(days=14)
    library = CalendarLibrary(root)
    environments = sorted({e.name for s in specs for e in s.environments})
    # (broken specs are not shown: their paths and messages are for the DAG processor's import errors)
    out: dict[str, Any] = {"from": start.isoformat(), "to": end.isoformat(), "environments": []}
    conflicts: list[dict[str, Any]] = []
    for name in environments:
        view = calendar_view(specs, library, start, end, name).to_dict()
        releases = sorted(s.name for s in specs if name in {e.name for e in s.environments})
        out["environments"].append({"environment": name, "releases": releases, **view})
        conflicts += [c for c in view.get("conflicts", []) if c not in conflicts]
    out["conflicts"] = conflicts
    out["planned"] = [
        {
            "release": s.name,
            "start": s.planned_start.astimezone(dt.UTC).isoformat(),
            "minutes": s.planned_duration_minutes,
        }
        for s in specs
        if s.planned_start is not None
    ]
    return out


def overview(user: Any, days: int) -> dict[str, Any]:
    now = dt.datetime.now(dt.UTC)
    dags = readable_dags(user)
    events = [e for e in _events() if e.dag_id in dags]
    return {
        "user": getattr(user, "get_name", lambda: str(user))(),
        "generated_at": now.isoformat(),
        "live": [row.to_dict() for row in cockpit.live_matrix(events)],
        "waits": cockpit.waits(pending_requests(readable_dags(user, "HITL_DETAIL")), now),
        "calendar": calendar(dags, now),
        "trends": cockpit.dora(events, now, days),
    }


def run_story(dag_id: str, run_id: str) -> dict[str, Any]:
    from releasetrain.core.gatekeeper import current_incarnation
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    try:
        events = current_incarnation([e for e in hook.events(run_id=run_id, dag_id=dag_id)])
        intact = chain_intact(hook)
    finally:
        hook.close()
    change = None
    for event in events:  # the risk assessment opened it; the backends' mirrors and the built-in record move it
        if event.kind == Event.RISK_ASSESSED and event.details.get("change"):
            change = dict(event.details["change"])
        elif event.kind in (Event.CHANGE_TRANSITION, Event.CHANGE_CLOSED) and change is not None:
            change["state"] = event.details.get("state") or event.details.get("to") or change.get("state")
    release = events[0].release if events else None
    return {
        "dag_id": dag_id,
        "run_id": run_id,
        "release": release,
        "timeline": cockpit.story(events),
        "change": change,
        "ledger": {
            "ok": intact,
            "message": "the whole ledger's hash chain verifies"
            if intact
            else "the ledger does not verify: `releasetrain ledger verify` tells an administrator where",
        },
        "evidence_url": f"/releasetrain{PREFIX}/api/runs/{quote(dag_id, safe='')}/{quote(run_id, safe='')}/evidence"
        if events
        else None,
    }


_verified: dict[str, Any] = {}


def chain_intact(hook: Any) -> bool:
    """Whether the whole ledger verifies, verified again only when its head moved (one
    reader's page loads never make the API server re-read the whole chain each time)."""
    head = hook.store.head()
    if _verified.get("head") != head:
        _verified.update(head=head, ok=hook.verify().ok)
    return bool(_verified["ok"])


def evidence(dag_id: str, run_id: str) -> dict[str, Any]:
    from releasetrain.cli import export_evidence
    from releasetrain.core.vocabulary import release_of_dag
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    try:
        document, _ = export_evidence(
            hook.store, release_of_dag(dag_id) or "", run_id, dag_id, "releasetrain_evidence_signing"
        )
        return document
    finally:
        hook.close()


def router() -> APIRouter:
    routes = APIRouter(prefix=PREFIX)

    @routes.get("/api/overview")
    async def api_overview(request: Request, days: int = 30) -> dict[str, Any]:
        user = await current_user(request)
        if days not in TREND_DAYS:
            raise HTTPException(400, f"days: one of {', '.join(map(str, TREND_DAYS))}")
        return await asyncio.to_thread(overview, user, days)

    @routes.get("/api/runs/{dag_id}/{run_id}")
    async def api_run(request: Request, dag_id: str, run_id: str) -> dict[str, Any]:
        user = await current_user(request)
        if not await asyncio.to_thread(may_read_run, user, dag_id):
            raise HTTPException(403, f"you may not read the runs of {dag_id}")
        return await asyncio.to_thread(run_story, dag_id, run_id)

    @routes.get("/api/runs/{dag_id}/{run_id}/evidence")
    async def api_evidence(request: Request, dag_id: str, run_id: str) -> JSONResponse:
        user = await current_user(request)
        if not await asyncio.to_thread(may_read_run, user, dag_id):
            raise HTTPException(403, f"you may not read the runs of {dag_id}")
        try:
            document = await asyncio.to_thread(evidence, dag_id, run_id)
        except Exception as exc:  # no key, a broken chain: said, never a half bundle
            raise HTTPException(503, f"no evidence bundle: {exc}") from None
        name = f"evidence-{dag_id}-{run_id}.json".replace("/", "_").replace(":", "_")
        return JSONResponse(document, headers={"Content-Disposition": f'attachment; filename="{name}"'})

    @routes.get("/", response_class=HTMLResponse)
    async def page(request: Request) -> HTMLResponse:
        await current_user(request)
        return HTMLResponse(page_html())

    @routes.get("/runs/{dag_id}/{run_id}", response_class=HTMLResponse)
    async def run_page(request: Request, dag_id: str, run_id: str) -> HTMLResponse:
        user = await current_user(request)
        if not await asyncio.to_thread(may_read_run, user, dag_id):
            raise HTTPException(403, f"you may not read the runs of {dag_id}")
        return HTMLResponse(page_html())

    return routes


def page_html() -> str:
    return (Path(__file__).parent / "cockpit" / "index.html").read_text()
