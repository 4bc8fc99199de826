"""Canary analysis trigger against a real Prometheus scraping the demo fleet.

The fleet runs the baseline (1.0.0) in ``prod`` and the canary (2.0.0) in ``canary``; a
thread sends traffic to both, so Prometheus holds request metrics per version.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time

import pytest
import requests

from releasetrain.triggers.analysis import CanaryAnalysisTrigger
from tests.helpers import running_fleet
from tests.servers.prometheus import running_prometheus

AUTH = ("deployer", "s3cret-pass")
ERROR_RATE = (
    '(sum(increase(fleet_requests_total{version="${version}",code=~"5.."}[10s])) or vector(0))'
    ' / sum(increase(fleet_requests_total{version="${version}"}[10s]))'
)


@pytest.fixture(scope="module")
def world():
    with running_fleet(seed={"prod": "1.0.0", "canary": "2.0.0"}) as (fleet, url):
        stop = threading.Event()

        def traffic():
            while not stop.is_set():
                for env in ("prod", "canary"):
                    requests.get(f"{url}/environments/{env}/app/checkout", auth=AUTH, timeout=5)
                stop.wait(0.05)

        thread = threading.Thread(target=traffic, daemon=True)
        thread.start()
        with running_prometheus([f"{url}/metrics"], scrape_interval="1s") as prom:
            # a canary is analysed while traffic flows: wait until Prometheus has a window of it
            deadline = time.monotonic() + 60
            query = 'sum(increase(fleet_requests_total{version="2.0.0"}[10s]))'
            while not requests.get(f"{prom}/api/v1/query", params={"query": query}, timeout=5).json()["data"]["result"]:
                assert time.monotonic() < deadline, "Prometheus never scraped the fleet"
                time.sleep(1)
            time.sleep(3)
            yield fleet, url, prom
        stop.set()


def run_trigger(trigger: CanaryAnalysisTrigger) -> dict:
    async def first_event():
        async for event in trigger.run():
            return event.payload

    return asyncio.run(asyncio.wait_for(first_event(), 120))


def policy(**metric) -> dict:
    check = {"name": "error_rate", "query": ERROR_RATE, "absolute": {"max": 0.01}, **metric}
    return {"interval_seconds": 3, "count": 2, "metrics": [check]}


@pytest.fixture
def prometheus_conn(world, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PROM_A", json.dumps({"conn_type": "http", "host": world[2]}))
    requests.delete(f"{world[1]}/faults", auth=AUTH, timeout=5)
    return {"kind": "prometheus", "conn_id": "prom_a"}


VALUES = {"version": "2.0.0", "baseline_version": "1.0.0", "environment": "canary"}


def test_a_healthy_canary_passes_every_measurement(world, prometheus_conn):
    result = run_trigger(CanaryAnalysisTrigger(policy=policy(), provider=prometheus_conn, values=VALUES))
    assert result["outcome"] == "successful", result["reason"]
    assert result["counts"]["pass"] == 2
    assert result["measurements"][0]["metrics"][0]["canary"] == 0.0


def test_a_failing_canary_fails_at_the_first_measurement(world, prometheus_conn):
    requests.post(
        f"{world[1]}/faults",
        json={"environment": "canary", "version": "2.0.0", "error_rate": 1.0},
        auth=AUTH,
        timeout=5,
    )
    result = run_trigger(CanaryAnalysisTrigger(policy=policy(), provider=prometheus_conn, values=VALUES))
    assert result["outcome"] == "failed", result["reason"]
    assert len(result["measurements"]) == 1
    assert "error_rate" in result["reason"] and "> 0.01" in result["reason"]


def test_relative_to_the_baseline_and_no_data(world, prometheus_conn):
    relative = policy(absolute=None, relative={"max_ratio": 1.5})
    relative["metrics"][0]["query"] = 'sum(rate(fleet_requests_total{version="${version}"}[10s]))'
    result = run_trigger(CanaryAnalysisTrigger(policy=relative, provider=prometheus_conn, values=VALUES))
    assert result["outcome"] == "successful", result["reason"]  # same traffic for both versions
    assert result["measurements"][0]["metrics"][0]["ratio"] == pytest.approx(1.0, abs=0.3)
    unknown = {**VALUES, "version": "9.9.9"}
    result = run_trigger(CanaryAnalysisTrigger(policy=relative, provider=prometheus_conn, values=unknown))
    assert result["outcome"] == "inconclusive" and "no data for the canary" in result["reason"]


SESSIONS = 'sum(increase(fleet_sessions_total{version="${version}",outcome="%s"}[${window}]))'


def sessions(**rule) -> dict:
    outcome = {"reached": SESSIONS % "checkout", "started": SESSIONS % "started", "window_seconds": 10, **rule}
    return {"interval_seconds": 2, "count": 2, "metrics": [{"name": "checkout", "sessions": outcome}]}


def test_a_session_outcome_is_compared_between_the_versions(world, prometheus_conn):
    healthy = run_trigger(
        CanaryAnalysisTrigger(policy=sessions(max_change=0.3, min_sessions=50), provider=prometheus_conn, values=VALUES)
    )
    assert healthy["outcome"] == "successful", healthy["reason"]
    metric = healthy["measurements"][0]["metrics"][0]
    assert metric["canary"] == pytest.approx(0.5, abs=0.15) and metric["baseline"] == pytest.approx(0.5, abs=0.15)
    assert min(metric["samples"]) >= 50  # session counts, both versions

    requests.post(
        f"{world[1]}/faults",
        json={"environment": "canary", "version": "2.0.0", "error_rate": 0, "conversion": 0.1},
        auth=AUTH,
        timeout=5,
    )
    time.sleep(10)  # a window of the converting-worse version
    worse = run_trigger(
        CanaryAnalysisTrigger(policy=sessions(min_sessions=50), provider=prometheus_conn, values=VALUES)
    )
    assert worse["outcome"] == "failed", worse["reason"]
    assert "checkout" in worse["reason"] and "significant at 0.05" in worse["reason"]
    assert worse["measurements"][0]["metrics"][0]["canary"] < 0.25

    # too few sessions to say: inconclusive, never a pass
    unsure = run_trigger(
        CanaryAnalysisTrigger(policy=sessions(min_sessions=100000), provider=prometheus_conn, values=VALUES)
    )
    assert unsure["outcome"] == "inconclusive" and "fewer than 100000 sessions" in unsure["reason"]


def test_a_session_baseline_before_the_deploy(world, prometheus_conn):
    requests.post(
        f"{world[1]}/faults",
        json={"environment": "canary", "version": "2.0.0", "error_rate": 0, "conversion": 0.1},
        auth=AUTH,
        timeout=5,
    )
    time.sleep(10)
    # the old version (1.0.0) is read in the window that ended when the deploy started
    before = {**VALUES, "deployed_at": str(time.time() - 3)}
    policy_ = sessions(baseline="before_deploy", min_sessions=50)
    result = run_trigger(CanaryAnalysisTrigger(policy=policy_, provider=prometheus_conn, values=before))
    assert result["outcome"] == "failed", result["reason"]
    assert result["measurements"][0]["metrics"][0]["baseline"] == pytest.approx(0.5, abs=0.15)
    # a count that is several series (one per outcome here): an error naming it, never one series' count
    split = sessions(min_sessions=50)
    split["metrics"][0]["sessions"]["started"] = 'increase(fleet_sessions_total{version="${version}"}[${window}])'
    split["consecutive_error_limit"] = 0
    result = run_trigger(CanaryAnalysisTrigger(policy=split, provider=prometheus_conn, values=VALUES))
    assert result["outcome"] == "error" and "returns 2 series; a session count is one number" in result["reason"]
    # no deploy recorded: an error, never a comparison against nothing
    policy_ = {**policy_, "consecutive_error_limit": 0}
    result = run_trigger(CanaryAnalysisTrigger(policy=policy_, provider=prometheus_conn, values=VALUES))
    assert result["outcome"] == "error" and "no deploy of this release is recorded" in result["reason"]


def test_provider_errors_are_error_measurements(world, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PROM_DOWN", json.dumps({"conn_type": "http", "host": "http://127.0.0.1:9"}))
    limited = {**policy(), "interval_seconds": 1, "consecutive_error_limit": 1}
    trigger = CanaryAnalysisTrigger(
        policy=limited, provider={"kind": "prometheus", "conn_id": "prom_down"}, values=VALUES
    )
    result = run_trigger(trigger)
    assert result["outcome"] == "error" and result["counts"]["error"] == 2
    assert "prom_down" in result["reason"]


def test_the_trigger_resumes_from_its_serialized_measurements(world, prometheus_conn):
    first = CanaryAnalysisTrigger(policy=policy(), provider=prometheus_conn, values=VALUES)
    result = run_trigger(first)
    path, kwargs = first.serialize()
    assert path == "releasetrain.triggers.analysis.CanaryAnalysisTrigger"
    resumed = CanaryAnalysisTrigger(**json.loads(json.dumps(kwargs)))
    assert run_trigger(resumed)["counts"] == result["counts"]  # nothing measured again


# --- a triggerer restart (issue 12): the analysis resumes from its ledger journal ---------------
@pytest.fixture
def journal(tmp_path, monkeypatch):
    from tests.conftest import init_ledger

    init_ledger(tmp_path / "ledger.db")
    monkeypatch.setenv(
        "AIRFLOW_CONN_RELEASETRAIN_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "ledger.db")})
    )
    return {
        "ledger_conn_id": "releasetrain_ledger",
        "release": "shop",
        "environment": "canary",
        "dag_id": "release_shop",
        "run_id": "r1",
        "task_id": "canary.canary_10",
        "try_number": 1,
        "ti_id": "0193-ti-a",
    }


def recorded(journal) -> list:
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    try:
        return [e.details for e in hook.events(release="shop", run_id="r1", kind="analysis_measured")]
    finally:
        hook.close()


def test_a_restarted_trigger_resumes_from_the_recorded_measurements(world, prometheus_conn, journal):
    """Airflow keeps a trigger's arguments as they were at deferral; a triggerer killed after the
    first measurement must not start over: the new trigger reads the journal and takes the rest."""
    analysis = {**policy(), "count": 3, "interval_seconds": 2}
    first = CanaryAnalysisTrigger(policy=analysis, provider=prometheus_conn, values=VALUES, journal=journal)
    stored = json.loads(json.dumps(first.serialize()[1]))  # what Airflow stored when the task deferred

    async def killed_after_one():
        task = asyncio.ensure_future(anext(first.run()))
        while not await asyncio.to_thread(recorded, journal):
            assert not task.done(), task
            await asyncio.sleep(0.1)
        task.cancel()  # the triggerer dies

    asyncio.run(asyncio.wait_for(killed_after_one(), 60))
    [taken] = recorded(journal)
    resumed = CanaryAnalysisTrigger(**json.loads(json.dumps(stored)))
    result = run_trigger(resumed)
    assert result["outcome"] == "successful" and result["counts"]["pass"] == 3, result["reason"]
    assert result["measurements"][0] == taken["measurement"], "the first interval was not measured again"
    assert [d["index"] for d in recorded(journal)] == [1, 2, 3]


def test_a_restarted_trigger_never_passes_a_fault_it_already_saw(world, prometheus_conn, journal):
    """The canary failed its first measurement; the triggerer restarts before the task hears
    of it, and the canary is healthy again: the verdict stays failed, from the journal."""
    requests.post(
        f"{world[1]}/faults",
        json={"environment": "canary", "version": "2.0.0", "error_rate": 1.0},
        auth=AUTH,
        timeout=5,
    ).raise_for_status()
    analysis = {**policy(), "count": 3, "interval_seconds": 2}
    trigger = CanaryAnalysisTrigger(policy=analysis, provider=prometheus_conn, values=VALUES, journal=journal)
    stored = json.loads(json.dumps(trigger.serialize()[1]))  # stored at deferral
    assert run_trigger(trigger)["outcome"] == "failed"
    requests.delete(f"{world[1]}/faults", auth=AUTH, timeout=5).raise_for_status()
    again = run_trigger(CanaryAnalysisTrigger(**json.loads(json.dumps(stored))))
    assert again["outcome"] == "failed" and len(again["measurements"]) == 1, again
    assert len(recorded(journal)) == 1, "nothing measured after the verdict"
    # another try of the task (cleared by hand) is an analysis of its own: it measures afresh
    second = {**journal, "try_number": 2, "ti_id": "0193-ti-b"}
    run_trigger(CanaryAnalysisTrigger(**{**json.loads(json.dumps(stored)), "journal": second}))
    assert [d["index"] for d in recorded(journal) if d["ti_id"] == "0193-ti-b"][:1] == [1]
    # a run deleted and triggered again under the same run id: try 1 again, but a new task
    # instance; it never inherits the deleted run's measurements
    again_row = {**journal, "ti_id": "0193-ti-c"}
    run_trigger(CanaryAnalysisTrigger(**{**json.loads(json.dumps(stored)), "journal": again_row}))
    assert [d["index"] for d in recorded(journal) if d["ti_id"] == "0193-ti-c"][:1] == [1]
