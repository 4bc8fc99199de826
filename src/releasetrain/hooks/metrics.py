"""Metrics providers for canary analysis, behind one narrow interface.

``samples(query, start, end, step)`` returns the numbers a metric's query yields over a
time range (every sample of every series), which is what the canary judge compares.

- :class:`PrometheusHook`: Prometheus' HTTP API (``/api/v1/query``, ``/api/v1/query_range``)
  through an Airflow HTTP connection whose host is the Prometheus base URL.
- :class:`JsonMetricsHook`: any HTTP endpoint answering JSON; ``path`` (dotted, with list
  indexes) points at a number or a list of numbers.
"""

from __future__ import annotations

import json
import math
from typing import Any, Protocol

from airflow.providers.http.hooks.http import HttpHook
from airflow.sdk import BaseHook


class MetricsError(RuntimeError):
    """The metrics provider failed or answered something unusable (names provider and query)."""


class MetricsProvider(Protocol):
    def samples(self, query: str, start: float, end: float, step: float) -> list[float]: ...


def _get(conn_id: str, endpoint: str, params: dict[str, Any], what: str, timeout: float) -> tuple[int, Any]:
    hook = HttpHook(method="GET", http_conn_id=conn_id)
    try:
        response = hook.run(endpoint=endpoint, data=params, extra_options={"check_response": False, "timeout": timeout})
    except Exception as exc:
        raise MetricsError(f"{what}: GET {endpoint} failed: {exc}") from exc
    try:
        return response.status_code, response.json()
    except ValueError:
        return response.status_code, response.text[:300]


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class PrometheusHook(BaseHook):
    """Prometheus' HTTP query API.

    :param prometheus_conn_id: HTTP connection; host = Prometheus base URL (basic auth from
        login/password when set)
    """

    conn_name_attr = "prometheus_conn_id"
    default_conn_name = "prometheus_default"
    conn_type = "http"
    hook_name = "Prometheus (metrics for canary analysis)"

    def __init__(self, prometheus_conn_id: str = default_conn_name, *, timeout: float = 15.0) -> None:
        super().__init__()
        self.prometheus_conn_id = prometheus_conn_id
        self.timeout = timeout

    def _api(self, endpoint: str, params: dict[str, Any]) -> Any:
        what = f"Prometheus {self.prometheus_conn_id!r} ({params.get('query')!r})"
        status, body = _get(self.prometheus_conn_id, endpoint, params, what, self.timeout)
        if not isinstance(body, dict) or body.get("status") != "success":
            detail = body.get("error") if isinstance(body, dict) else body
            kind = body.get("errorType") if isinstance(body, dict) else "not JSON"
            raise MetricsError(f"{what}: {endpoint} answered HTTP {status} ({kind}): {detail}")
        return body["data"]

    def query(self, promql: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query: ``[{"metric": {...}, "value": float | None}]``."""
        params: dict[str, Any] = {"query": promql}
        if at is not None:
            params["time"] = at
        data = self._api("api/v1/query", params)
        if data.get("resultType") == "scalar":
            return [{"metric": {}, "value": _number(data["result"][1])}]
        if data.get("resultType") != "vector":
            raise MetricsError(f"Prometheus {self.prometheus_conn_id!r}: {promql!r} is not an instant vector")
        return [{"metric": r["metric"], "value": _number(r["value"][1])} for r in data["result"]]

    def query_range(self, promql: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        """A range query: ``[{"metric": {...}, "values": [float, ...]}]`` (NaN/Inf dropped)."""
        data = self._api("api/v1/query_range", {"query": promql, "start": start, "end": end, "step": step})
        series = []
        for result in data.get("result", []):
            values = [v for v in (_number(value) for _, value in result.get("values", [])) if v is not None]
            series.append({"metric": result.get("metric", {}), "values": values})
        return series

    def samples(self, query: str, start: float, end: float, step: float) -> list[float]:
        return [v for series in self.query_range(query, start, end, step) for v in series["values"]]


class JsonMetricsHook(BaseHook):
    """A generic JSON endpoint: ``GET <endpoint>?query=...&start=...&end=...&step=...``.

    :param json_metrics_conn_id: HTTP connection; host = base URL
    :param endpoint: path relative to the base URL
    :param path: where the number(s) are in the answer, e.g. ``data.values`` or ``result.0.value``
    """

    conn_name_attr = "json_metrics_conn_id"
    default_conn_name = "json_metrics_default"
    conn_type = "http"
    hook_name = "JSON metrics endpoint"

    def __init__(self, json_metrics_conn_id: str, *, endpoint: str = "", path: str = "", timeout: float = 15.0):
        super().__init__()
        self.json_metrics_conn_id = json_metrics_conn_id
        self.endpoint = endpoint
        self.path = path
        self.timeout = timeout

    def samples(self, query: str, start: float, end: float, step: float) -> list[float]:
        what = f"JSON metrics {self.json_metrics_conn_id!r} ({query!r})"
        params = {"query": query, "start": start, "end": end, "step": step}
        status, body = _get(self.json_metrics_conn_id, self.endpoint, params, what, self.timeout)
        if status != 200:
            raise MetricsError(f"{what}: GET {self.endpoint} answered HTTP {status}: {json.dumps(body)[:300]}")
        value: Any = body
        for part in filter(None, self.path.split(".")):
            try:
                value = value[int(part)] if isinstance(value, list) else value[part]
            except (KeyError, IndexError, ValueError, TypeError):
                raise MetricsError(f"{what}: the answer has no {self.path!r} (stopped at {part!r})") from None
        values = value if isinstance(value, list) else [value]
        numbers = [_number(v) for v in values]
        if any(n is None for n, v in zip(numbers, values, strict=True) if v is not None):
            raise MetricsError(f"{what}: {self.path!r} holds something that is not a number: {values[:5]}")
        return [n for n in numbers if n is not None]
