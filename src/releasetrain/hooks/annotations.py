"""Grafana's annotations HTTP API (``POST /api/annotations``), the subset deploy markers use."""

from __future__ import annotations

from typing import Any

import requests
from airflow.sdk import BaseHook, Connection

from releasetrain.hooks._http import json_or_text, short


class AnnotationError(RuntimeError):
    """Grafana did not take the annotation (names the connection and its answer)."""


class GrafanaAnnotationHook(BaseHook):
    """An HTTP connection to Grafana: host = its base URL, password = a service account token
    (sent as ``Authorization: Bearer``; never logged, never in the ledger).

    :param conn_id: the connection
    :param dashboard_uid: puts the annotations on one dashboard (the connection's extra
        ``dashboard_uid``); without it they are organisation-wide
    """

    conn_name_attr = "conn_id"
    hook_name = "releasetrain Grafana annotations"

    def __init__(self, conn_id: str, timeout: float = 10.0) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.timeout = timeout

    def annotate(self, annotation: dict[str, Any]) -> int:
        """Add an annotation; returns Grafana's id for it."""
        try:
            conn = Connection.get(self.conn_id)
        except Exception as exc:
            raise AnnotationError(f"connection {self.conn_id!r}: {exc}") from None
        base = (conn.host or "").rstrip("/")
        if not base.startswith(("http://", "https://")):
            base = f"{conn.schema or 'http'}://{base}" + (f":{conn.port}" if conn.port else "")
        body = dict(annotation)
        dashboard = (conn.extra_dejson or {}).get("dashboard_uid")
        if dashboard:
            body["dashboardUID"] = dashboard
        headers = {"Authorization": f"Bearer {conn.password}"} if conn.password else {}
        try:
            response = requests.post(f"{base}/api/annotations", json=body, headers=headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise AnnotationError(f"Grafana ({self.conn_id}) cannot be reached: {type(exc).__name__}") from None
        answer = json_or_text(response.text)
        ident = answer.get("id") if isinstance(answer, dict) else None
        if response.status_code != 200 or isinstance(ident, bool) or not isinstance(ident, int):
            raise AnnotationError(f"Grafana ({self.conn_id}) answered HTTP {response.status_code}: {short(answer)}")
        return ident
