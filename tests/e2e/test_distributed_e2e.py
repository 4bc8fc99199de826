"""Issue 12: releasetrain on Airflow's distributed shape.

A stack of its own: PostgreSQL metadata database and ledger, CeleryExecutor with a Redis
broker (Debian's redis-server; `.ci/run` starts it), two Celery workers, two schedulers and
two triggerers. A release goes dev -> approval -> prod over REST as the demo users; the
approval and the deploys wait without holding a worker slot; the ledger verifies; the
fleet saw exactly one deployment per environment.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

from releasetrain.client import AirflowClient
from releasetrain.devstack import DevStack, StackConfig
from tests.conftest import PROJECT_ROOT
from tests.e2e.conftest import _free_port
from tests.pg import admin, postgres_answers

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]

DAG = "release_distributed"
ENVIRONMENTS = ["dist-dev", "dist-prod"]


def _redis_answers() -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", 6379)) == 0


@pytest.fixture(scope="module")
def celery_stack():
    if not postgres_answers() or not _redis_answers():
        pytest.fail("the distributed stack needs PostgreSQL (5432) and Redis (6379): `.ci/run` starts both")
    home = Path(tempfile.mkdtemp(prefix="releasetrain-e2e-celery-"))
    name = f"releasetrain_celery_{int(time.time())}"
    admin(f"CREATE DATABASE {name}")
    admin(f"CREATE DATABASE {name}_ledger")
    config = StackConfig(
        project_root=PROJECT_ROOT,
        home=home,
        api_port=_free_port(),
        fleet_port=_free_port(),
        db_url=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}",
        ledger_conn={"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres",
                     "schema": f"{name}_ledger"},
        spec_dirs=[PROJECT_ROOT / "tests" / "fixtures" / "distributed"],
        fleet_environments=ENVIRONMENTS,
        fleet_seed=dict.fromkeys(ENVIRONMENTS, "1.0.0"),
        fleet_deploy_seconds=1.0,
        executor="celery",
        schedulers=2,
        triggerers=2,
        workers=2,
        worker_concurrency=2,
    )  # fmt: skip
    stack = DevStack(config)
    try:
        stack.prepare()
        stack.start()
        admin_client = AirflowClient(config.api_url, "admin", "admin")
        deadline = time.monotonic() + 180
        while DAG not in admin_client.dag_ids():
            assert time.monotonic() < deadline, f"{DAG} not parsed: {admin_client.import_errors()}"
            time.sleep(2)
        stack.db_name = name
        yield stack
    finally:
        stack.stop()
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin(f"DROP DATABASE IF EXISTS {name}_ledger WITH (FORCE)")


def _running_jobs(stack) -> dict[str, int]:
    import psycopg2

    conn = psycopg2.connect(f"postgresql://postgres@127.0.0.1:5432/{stack.db_name}")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT job_type, count(*) FROM job WHERE state = 'running' GROUP BY job_type")
            return dict(cur.fetchall())
    finally:
        conn.close()


def _fleet_history(stack, environment: str) -> list[dict]:
    user, password = stack.fleet_auth()
    url = f"{stack.config.fleet_url}/environments/{environment}/status"
    return requests.get(url, auth=(user, password), timeout=10).json()["history"]


def test_a_release_runs_on_celery_workers_with_two_schedulers_and_triggerers(celery_stack):
    stack, url = celery_stack, celery_stack.config.api_url
    jobs = _running_jobs(stack)
    assert jobs.get("SchedulerJob") == 2 and jobs.get("TriggererJob") == 2, jobs
    author, approver = AirflowClient(url, "author", "author"), AirflowClient(url, "approver", "approver")
    run_id = author.trigger(DAG, {"version": "2.0.0", "change_summary": "distributed"})["dag_run_id"]
    author.wait_for_approval(DAG, run_id, "dist-prod.approve", timeout=420)
    # waiting for a human holds no worker slot: once the steps beside it are done, nothing
    # of the run runs on a worker while the approval waits
    deadline = time.monotonic() + 120
    while True:
        states = author.task_states(DAG, run_id)
        assert states["dist-prod.approve"] in ("deferred", "awaiting_input"), states
        if "running" not in states.values():
            break
        assert time.monotonic() < deadline, f"a task keeps a worker slot while the approval waits: {states}"
        time.sleep(1)
    assert approver.answer(DAG, run_id, "dist-prod.approve", "Approve") == "success"
    run = author.wait_for_run(DAG, run_id, timeout=420)
    states = author.task_states(DAG, run_id)
    assert run["state"] == "success", states
    # the tasks ran on the Celery workers of this stack's queue, shared between the two
    pattern = re.compile(r"Task execute_workload\[[0-9a-f-]+\] received")
    received = {
        name: len(pattern.findall((stack.logs / f"{name}.log").read_text())) for name in ("worker-1", "worker-2")
    }
    executed = [s for s in states.values() if s == "success"]
    assert sum(received.values()) >= len(executed), (received, len(executed))
    for environment in ENVIRONMENTS:
        deploys = [h for h in _fleet_history(stack, environment) if h["version"] == "2.0.0"]
        assert len(deploys) == 1, (environment, deploys)
    verify = subprocess.run(
        [sys.executable, "-m", "releasetrain", "ledger", "verify"],
        env=stack.env(), cwd=stack.config.home, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert verify.returncode == 0 and "anchored" in verify.stdout, verify.stdout + verify.stderr
