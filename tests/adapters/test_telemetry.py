"""Metrics out through Airflow's own Stats, to a real StatsD listener (a UDP socket): a
ledger record of a deploy, a rollback and an answered approval emit their metrics."""

from __future__ import annotations

import socket

import pytest

from releasetrain.core.vocabulary import Event
from releasetrain.operators._common import record
from tests.helpers import FakeTI, context, seed


@pytest.fixture
def statsd(monkeypatch):
    from airflow.sdk.observability import stats
    from airflow.sdk.observability.metrics import stats_utils

    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    listener.settimeout(0.2)
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "True")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_HOST", "127.0.0.1")
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PORT", str(listener.getsockname()[1]))
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_PREFIX", "airflow")
    stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=True)

    def received() -> list[str]:
        lines = []
        while True:
            try:
                lines += listener.recv(65535).decode().splitlines()
            except TimeoutError:
                return lines

    yield received
    monkeypatch.setenv("AIRFLOW__METRICS__STATSD_ON", "False")
    stats.initialize(factory=stats_utils.get_stats_factory(), export_legacy_names=True)
    listener.close()


def names(lines: list[str]) -> set[str]:
    """``airflow.releasetrain.deploys.storefront.prod:1|c`` -> name and type."""
    return {f"{line.split(':')[0]}|{line.split('|')[1]}" for line in lines}


def test_deploys_rollbacks_and_approval_waits_reach_statsd(statsd):
    seed(Event.RUN_STARTED, actor="author")
    seed(Event.APPROVAL_REQUESTED, environment="prod", task_id="prod.approve")
    ctx = context(FakeTI(), task_id="prod.approve")
    record(ctx, Event.APPROVAL_GIVEN, "storefront", environment="prod", actor="approver")
    ctx = context(FakeTI(), task_id="prod.deploy")
    record(ctx, Event.DEPLOYED, "storefront", environment="prod", details={"version": "2.0.0"})
    seed(Event.ROLLBACK_STARTED, environment="prod", task_id="prod.rollback")
    ctx = context(FakeTI(), task_id="prod.rollback")
    record(ctx, Event.ROLLBACK, "storefront", environment="prod", details={"restored_version": "1.0.0"})
    got = names(statsd())
    assert {
        "airflow.releasetrain.approval_wait|ms",
        "airflow.releasetrain.approval_wait.storefront.prod|ms",
        "airflow.releasetrain.deploys|c",
        "airflow.releasetrain.deploys.storefront.prod|c",
        "airflow.releasetrain.lead_time.storefront.prod|ms",
        "airflow.releasetrain.rollbacks.storefront.prod|c",
        "airflow.releasetrain.time_to_restore.storefront.prod|ms",
    } <= got, got


def test_a_metric_that_cannot_go_out_never_fails_the_step(monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("no route to StatsD")

    monkeypatch.setattr("airflow.sdk.observability.stats.incr", broken)
    record(context(FakeTI(), task_id="prod.deploy"), Event.DEPLOYED, "storefront", environment="prod",
           details={"version": "2.0.0"})  # fmt: skip
