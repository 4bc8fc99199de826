"""Metrics providers: a real Prometheus scraping the demo fleet, and a generic JSON endpoint."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from releasetrain.hooks.metrics import JsonMetricsHook, MetricsError, PrometheusHook
from tests.helpers import running_fleet
from tests.servers.prometheus import running_prometheus

AUTH = ("deployer", "s3cret-pass")


@pytest.fixture(scope="module")
def fleet_and_prometheus():
    with running_fleet(seed={"prod": "1.0.0"}) as (fleet, url):
        with running_prometheus([f"{url}/metrics"], scrape_interval="1s") as prom:
            yield fleet, url, prom


def _traffic(url: str, count: int) -> None:
    for _ in range(count):
        requests.get(f"{url}/environments/prod/app/version", auth=AUTH, timeout=5)


def test_prometheus_answers_instant_and_range_queries_about_the_fleet(fleet_and_prometheus, monkeypatch):
    _, url, prom = fleet_and_prometheus
    monkeypatch.setenv("AIRFLOW_CONN_PROM_T", json.dumps({"conn_type": "http", "host": prom}))
    hook = PrometheusHook("prom_t")
    start = time.time()
    _traffic(url, 20)
    query = 'sum(fleet_requests_total{environment="prod",version="1.0.0"})'
    deadline = time.monotonic() + 30
    while True:
        values = [r["value"] for r in hook.query(query)]
        if values and values[0] and values[0] >= 20:
            break
        assert time.monotonic() < deadline, f"Prometheus never saw the fleet's requests: {values}"
        time.sleep(1)
    _traffic(url, 10)
    time.sleep(2.5)
    samples = hook.samples(query, start, time.time(), 1)
    assert samples and max(samples) >= 30 and min(samples) <= max(samples)
    deployed = hook.query('fleet_deployed_info{environment="prod"}')
    assert [(r["metric"]["version"], r["value"]) for r in deployed] == [("1.0.0", 1.0)]


def test_prometheus_errors_name_the_connection_query_and_reason(fleet_and_prometheus, monkeypatch):
    _, _, prom = fleet_and_prometheus
    monkeypatch.setenv("AIRFLOW_CONN_PROM_T", json.dumps({"conn_type": "http", "host": prom}))
    with pytest.raises(
        MetricsError, match=r"Prometheus 'prom_t' \('sum\(\(\('\): api/v1/query answered HTTP 400 \(bad_data\)"
    ):
        PrometheusHook("prom_t").query("sum(((")
    monkeypatch.setenv("AIRFLOW_CONN_PROM_DOWN", json.dumps({"conn_type": "http", "host": "http://127.0.0.1:9"}))
    with pytest.raises(MetricsError, match="Prometheus 'prom_down' .* failed"):
        PrometheusHook("prom_down", timeout=2).query("up")


class _JsonHandler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server API
        body = {"data": {"values": [0.5, "0.25", None]}, "bad": ["x"]}
        if "broken" in self.path:
            self.send_response(500)
            self.end_headers()
            self.wfile.write(b"oops")
            return
        payload = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def json_endpoint(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _JsonHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv(
        "AIRFLOW_CONN_JSON_T", json.dumps({"conn_type": "http", "host": f"http://127.0.0.1:{server.server_address[1]}"})
    )
    yield
    server.shutdown()


def test_json_endpoint_samples_and_errors(json_endpoint):
    assert JsonMetricsHook("json_t", endpoint="metrics", path="data.values").samples("q", 0, 1, 1) == [0.5, 0.25]
    assert JsonMetricsHook("json_t", endpoint="metrics", path="data.values.0").samples("q", 0, 1, 1) == [0.5]
    with pytest.raises(MetricsError, match="has no 'data.nope'"):
        JsonMetricsHook("json_t", endpoint="metrics", path="data.nope").samples("q", 0, 1, 1)
    with pytest.raises(MetricsError, match="not a number"):
        JsonMetricsHook("json_t", endpoint="metrics", path="bad").samples("q", 0, 1, 1)
    with pytest.raises(MetricsError, match="GET broken answered HTTP 500"):
        JsonMetricsHook("json_t", endpoint="broken", path="data").samples("q", 0, 1, 1)
