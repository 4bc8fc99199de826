"""Runs synthetic transactions (:mod:`releasetrain.core.journey`) through an Airflow HTTP connection.

The connection's host is the base URL the journey's paths are relative to (e.g. the demo
fleet's ``http://fleet:8080/environments/prod``): the journey is the application's user,
so the connection's credentials (the deploy target's) are never sent, and its paths stay
in the application's routes. One ``requests`` session serves the whole journey, so cookies an answer sets go
with the next steps, as a browser's would. The hook only sends and times requests; the
core judges the answers. Neither headers, bodies nor the connection's password are logged.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import requests
from airflow.providers.http.hooks.http import HttpHook
from airflow.sdk import BaseHook

from releasetrain.core.journey import Journey, JourneyResult, run_journey
from releasetrain.hooks.http_check import APP_ROUTES, _anonymous_session

_MAX_BODY = 1024 * 1024  # enough for any JSON answer a journey inspects


class JourneyHook(BaseHook):
    """:param http_conn_id: HTTP connection of the target (host: base URL, login/password: basic auth)
    :param timeout: seconds for each request"""

    conn_name_attr = "http_conn_id"
    default_conn_name = "http_default"
    conn_type = "http"
    hook_name = "Release synthetic transaction"

    def __init__(
        self, http_conn_id: str = default_conn_name, timeout: float = 10, app_routes: tuple[str, ...] = APP_ROUTES
    ) -> None:
        super().__init__()
        self.http_conn_id = http_conn_id
        self.timeout = timeout
        self.app_routes = tuple(app_routes)

    def run(self, journey: Journey, values: Mapping[str, Any] | None = None) -> JourneyResult:
        """Run the journey against the connection; see :func:`releasetrain.core.journey.run_journey`."""
        http = HttpHook(method="GET", http_conn_id=self.http_conn_id)
        options = {"check_response": False, "timeout": self.timeout}
        sessions: list[requests.Session] = []

        def send(method: str, path: str, headers: dict[str, str], body: Any) -> tuple[int, str, float]:
            if not sessions:  # a missing connection fails the first step, with the connection named
                try:
                    sessions.append(_anonymous_session(http))  # the application: no deploy credentials
                except Exception as exc:
                    raise RuntimeError(f"connection {self.http_conn_id!r}: {exc}") from exc
            session = sessions[0]
            request = requests.Request(
                method,
                http.url_from_endpoint(path),
                headers=headers,
                json=body,
            )
            started = time.monotonic()
            try:
                response = http.run_and_check(session, session.prepare_request(request), options)
                text = response.text[:_MAX_BODY]
            except Exception as exc:  # refused, DNS, timeout: name the target, never its credentials
                raise RuntimeError(f"{method} {path} on {self.http_conn_id!r} failed: {exc}") from exc
            elapsed_ms = (time.monotonic() - started) * 1000
            self.log.info(
                "Journey %r: %s %s -> HTTP %s in %.0f ms", journey.name, method, path, response.status_code, elapsed_ms
            )
            return response.status_code, text, elapsed_ms

        try:
            result = run_journey(journey, send, values, routes=self.app_routes)
        finally:
            for session in sessions:
                session.close()
        if result.ok:
            self.log.info("%s", result.summary)
        else:
            self.log.warning("%s", result.summary)
        return result
