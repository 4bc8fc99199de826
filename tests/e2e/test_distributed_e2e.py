"""Issue 12: releasetrain on Airflow's distributed shape.

A stack of its own: PostgreSQL metadata database and ledger, CeleryExecutor with a Redis
broker (Debian's redis-server; `.ci/run` starts it), two Celery workers, two schedulers and
two triggerers. A release goes dev -> approval -> prod over REST as the demo users; the
approval and the deploys wait without holding a worker slot; the ledger verifies; the
fleet saw exactly one deployment per environment.
"""

from __future__ import annotations

import re
import time

import pytest

from releasetrain.client import AirflowClient
from tests.conftest import PROJECT_ROOT
from tests.e2e import distributed
from tests.e2e.distributed import fleet_history, ledger_verify, redis_answers, running_jobs
from tests.pg import postgres_answers

pytestmark = [pytest.mark.e2e, pytest.mark.distributed]

DAG = "release_distributed"
ENVIRONMENTS = ["dist-dev", "dist-prod"]


@pytest.fixture(scope="module")
def celery_stack():
    if not postgres_answers() or not redis_answers():
        pytest.fail("the distributed stack needs PostgreSQL (5432) and Redis (6379): `.ci/run` starts both")
    with distributed.celery_stack(PROJECT_ROOT / "tests" / "fixtures" / "distributed", DAG, ENVIRONMENTS) as stack:
        yield stack


def test_a_release_runs_on_celery_workers_with_two_schedulers_and_triggerers(celery_stack):
    stack, url = celery_stack, celery_stack.config.api_url
    jobs = running_jobs(stack)
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
        deploys = [h for h in fleet_history(stack, environment) if h["version"] == "2.0.0"]
        assert len(deploys) == 1, (environment, deploys)
    verify = ledger_verify(stack)
    assert verify.returncode == 0 and "anchored" in verify.stdout, verify.stdout + verify.stderr
