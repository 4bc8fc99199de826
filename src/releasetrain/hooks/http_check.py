"""Runs HTTP checks (smoke and health) through Airflow HTTP connections.

The hook only observes (status, body, latency); :mod:`releasetrain.core.checks` judges.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urljoin

import requests
from airflow.providers.http.hooks.http import HttpAsyncHook, HttpHook
from airflow.sdk import BaseHook

from releasetrain.core.checks import CheckResult, Observation, evaluate, path_problem
from releasetrain.core.spec import HttpCheck

_MAX_BODY = 64 * 1024


# The routes of the application on a deploy target's base URL. A check that names no
# connection of its own is sent there *without* the target's credentials and only to these
# routes: an application check can never call the target's own API (deploy, promote, rollback).
APP_ROUTES = ("app", "preview", "health")


def _anonymous_session(hook: HttpHook) -> Any:
    """A fresh session for the connection's base URL only: none of its credentials, extra
    headers (API keys), client certificates or ~/.netrc."""
    hook.get_conn()  # resolves the base URL; that session, with its credentials, is dropped
    session = requests.Session()
    session.trust_env = False
    return session


class HttpCheckHook(BaseHook):
    """:param http_conn_id: connection used by checks that name no ``conn_id`` of their own
    (the deploy target's, for its base URL only: its credentials are never sent)
    :param app_routes: the routes such checks may use (see :data:`APP_ROUTES`)"""

    conn_name_attr = "http_conn_id"
    default_conn_name = "http_default"
    conn_type = "http"
    hook_name = "Release HTTP check"

    def __init__(self, http_conn_id: str = default_conn_name, app_routes: tuple[str, ...] = APP_ROUTES) -> None:
        super().__init__()
        self.http_conn_id = http_conn_id
        self.app_routes = tuple(app_routes)

    def _refused(self, check: HttpCheck) -> CheckResult | None:
        problem = path_problem(check.endpoint, () if check.conn_id else self.app_routes)
        if problem is None:
            return None
        return evaluate(check, check.endpoint, Observation(status=None, latency_ms=0.0, error=f"not sent: {problem}"))

    def run_check(self, check: HttpCheck) -> CheckResult:
        """Run one rendered check synchronously."""
        refused = self._refused(check)
        if refused is not None:
            return refused
        hook = HttpHook(method=check.method, http_conn_id=check.conn_id or self.http_conn_id)
        url = check.endpoint
        started = time.monotonic()
        try:
            options = {"check_response": False, "timeout": check.timeout_seconds}
            if check.conn_id:  # the check's own connection, credentials and all
                response = hook.run(endpoint=check.endpoint, extra_options=options)
            else:
                session = _anonymous_session(hook)
                request = requests.Request(check.method, hook.url_from_endpoint(check.endpoint))
                response = hook.run_and_check(session, session.prepare_request(request), options)
            url = response.url
            observation = Observation(
                status=response.status_code,
                body=response.text[:_MAX_BODY],
                latency_ms=(time.monotonic() - started) * 1000,
            )
        except Exception as exc:
            observation = Observation(status=None, latency_ms=(time.monotonic() - started) * 1000, error=str(exc))
        return evaluate(check, url, observation)

    async def arun_check(self, check: HttpCheck) -> CheckResult:
        """Async twin of :meth:`run_check`, for triggers."""
        refused = self._refused(check)
        if refused is not None:
            return refused
        hook = HttpAsyncHook(method=check.method, http_conn_id=check.conn_id or self.http_conn_id, retry_limit=1)
        url = check.endpoint
        started = time.monotonic()
        try:
            async with hook.session() as session:
                if not check.conn_id:  # the deploy target's base URL, never its credentials or headers
                    session.config.auth = None
                    session.config.headers = {}
                url = urljoin(session.base_url.rstrip("/") + "/", check.endpoint.lstrip("/"))
                response = await session.run(
                    endpoint=check.endpoint,
                    extra_options={"check_response": False, "timeout": _aiohttp_timeout(check.timeout_seconds)},
                )
                body = (await response.text())[:_MAX_BODY]
            observation = Observation(status=response.status, body=body, latency_ms=(time.monotonic() - started) * 1000)
        except Exception as exc:
            observation = Observation(
                status=None, latency_ms=(time.monotonic() - started) * 1000, error=str(exc) or type(exc).__name__
            )
        return evaluate(check, url, observation)


def _aiohttp_timeout(seconds: float):
    import aiohttp

    return aiohttp.ClientTimeout(total=seconds)
