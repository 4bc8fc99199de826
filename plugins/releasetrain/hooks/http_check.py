"""Runs HTTP checks (smoke and health) through Airflow HTTP connections.

The hook only observes (status, body, latency); :mod:`releasetrain.core.checks` judges.
"""

from __future__ import annotations

import time
from urllib.parse import urljoin

from airflow.providers.http.hooks.http import HttpAsyncHook, HttpHook
from airflow.sdk import BaseHook

from releasetrain.core.checks import CheckResult, Observation, evaluate
from releasetrain.core.spec import HttpCheck

_MAX_BODY = 64 * 1024


class HttpCheckHook(BaseHook):
    """:param http_conn_id: connection used by checks that name no ``conn_id`` of their own"""

    conn_name_attr = "http_conn_id"
    default_conn_name = "http_default"
    conn_type = "http"
    hook_name = "Release HTTP check"

    def __init__(self, http_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.http_conn_id = http_conn_id

    def run_check(self, check: HttpCheck) -> CheckResult:
        """Run one rendered check synchronously."""
        hook = HttpHook(method=check.method, http_conn_id=check.conn_id or self.http_conn_id)
        url = check.endpoint
        started = time.monotonic()
        try:
            response = hook.run(
                endpoint=check.endpoint,
                extra_options={"check_response": False, "timeout": check.timeout_seconds},
            )
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
        hook = HttpAsyncHook(method=check.method, http_conn_id=check.conn_id or self.http_conn_id, retry_limit=1)
        url = check.endpoint
        started = time.monotonic()
        try:
            async with hook.session() as session:
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
