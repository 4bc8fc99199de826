"""The alert webhook: Alertmanager posts its alerts here (a ``webhook_config`` with
``url: <api server>/releasetrain/alerts/alertmanager`` and ``http_config.authorization``
carrying the token), served by the Airflow API server as part of the plugin.

Each firing or resolved alert is attached, as an ``alert_received`` ledger event, to the
release runs whose newest deploy into the alert's environment (label ``environment``;
``release`` narrows it) came at most ``AIRFLOW__RELEASETRAIN__ALERT_WINDOW_MINUTES`` (default
60) before the alert started. A release whose spec watches for alerts rolls back when one
fires during its watch (``<env>.alerts``). The token is the password of the Airflow
connection ``releasetrain_alerts``: without it the webhook answers 503, with another one 401.
"""

from __future__ import annotations

import asyncio
import hmac
from datetime import timedelta
from typing import Any

from fastapi import FastAPI, HTTPException, Request

from releasetrain.core.alerts import AlertError, Deploy, attached_to, attachment, parse_alertmanager
from releasetrain.core.vocabulary import Event

ALERTS_CONN_ID = "releasetrain_alerts"
PATH = "/alerts/alertmanager"


def _window() -> timedelta:
    from releasetrain.core.policy import _setting

    try:
        return timedelta(minutes=float(_setting("ALERT_WINDOW_MINUTES") or 60))
    except ValueError:
        return timedelta(minutes=60)


def receive(payload: Any) -> list[dict[str, Any]]:
    """Attach the alerts to their release runs in the ledger; returns what was attached (an
    alert already attached to a run with the same status is not attached again)."""
    from datetime import datetime

    from releasetrain.hooks.ledger import LedgerHook

    alerts = parse_alertmanager(payload)
    environments = {a.environment for a in alerts if a.environment}
    if not environments:
        return []
    hook = LedgerHook()
    try:
        deploys = [
            Deploy(
                release=e.release,
                dag_id=e.dag_id,
                run_id=e.run_id,
                environment=e.environment,
                version=str(e.details.get("version") or ""),
                at=datetime.fromisoformat(e.at.replace("Z", "+00:00")),
            )
            for e in hook.events(kind=Event.DEPLOYED.value)  # an idle colour's too: its canary takes traffic
            if e.environment in environments
        ]
        attached = []
        window = _window()
        for alert in alerts:
            matches = attached_to(alert, deploys, window)
            for deploy in matches:
                seen = {
                    (e.details.get("fingerprint"), e.details.get("status"), e.details.get("alert"))
                    for e in hook.events(release=deploy.release, run_id=deploy.run_id, dag_id=deploy.dag_id)
                    if e.kind == Event.ALERT_RECEIVED and e.environment == deploy.environment
                }
                if (alert.fingerprint, alert.status, alert.name) in seen:
                    continue
                details = {**attachment(alert, deploy), "releases_attached": len(matches)}
                hook.append(
                    Event.ALERT_RECEIVED.value,
                    release=deploy.release,
                    run_id=deploy.run_id,
                    dag_id=deploy.dag_id,
                    environment=deploy.environment,
                    actor="alertmanager",
                    details=details,
                )
                attached.append({"release": deploy.release, "run_id": deploy.run_id, **details})
        return attached
    finally:
        hook.close()


_TOKEN_TTL = 60.0
_cached: dict[str, Any] = {}
MAX_BODY_BYTES = 1_000_000


def _token() -> str | None:
    """The webhook's token (the connection's password), looked up at most once a minute."""
    import time

    from releasetrain.hooks.ledger import _get_connection

    if _cached and time.monotonic() - _cached["at"] < _TOKEN_TTL:
        return _cached["token"]
    conn = _get_connection(ALERTS_CONN_ID)
    token = conn.password if conn is not None and conn.password else None
    _cached.update(token=token, at=time.monotonic())
    return token


def create_app() -> FastAPI:
    app = FastAPI(title="releasetrain alerts", description="Alertmanager webhook: alerts attached to releases")

    @app.post(PATH)
    async def alertmanager(request: Request) -> dict[str, Any]:
        token = await asyncio.to_thread(_token)
        if token is None:
            raise HTTPException(503, f"the alert webhook is not configured (connection {ALERTS_CONN_ID})")
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            raise HTTPException(401, "a valid bearer token is required")
        if int(request.headers.get("content-length") or 0) > MAX_BODY_BYTES:
            raise HTTPException(413, f"at most {MAX_BODY_BYTES} bytes")
        raw = await request.body()
        if len(raw) > MAX_BODY_BYTES:
            raise HTTPException(413, f"at most {MAX_BODY_BYTES} bytes")
        try:
            import json

            payload = json.loads(raw)
        except ValueError:
            raise HTTPException(400, "the body is not JSON") from None
        try:
            attached = await asyncio.to_thread(receive, payload)
        except AlertError as exc:
            raise HTTPException(400, str(exc)) from None
        return {"attached": attached}

    return app
