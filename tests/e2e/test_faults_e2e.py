"""Issue 12: faults survived on the distributed stack, nothing lost or doubled.

One stack (PostgreSQL, CeleryExecutor on Redis, two workers, two schedulers, two triggerers;
a task without a heartbeat for 20 s is failed by the scheduler, as a worker's crash would be
noticed) and one release, ``faults``: fault-dev -> fault-prod, no approval. Each test drives
a run over REST as the demo author while a process of the stack is killed (SIGKILL on its
whole session: no clean shutdown) or the deploy target misbehaves (the demo fleet's fault
injection). After each: the run ends in the right state, the ledger verifies with no gap,
and the fleet's history shows no double deploy.

Run with ``make test-faults`` (`.ci/run` runs it after ``make test``).
"""

from __future__ import annotations

import time

import pytest

from releasetrain.client import AirflowClient
from tests.conftest import PROJECT_ROOT
from tests.e2e import distributed
from tests.e2e.distributed import (
    fleet_fault,
    fleet_history,
    fleet_status,
    ledger_events,
    ledger_verify,
    redis_answers,
    running_jobs,
    task_log,
)
from tests.pg import postgres_answers, restart_postgres

pytestmark = [pytest.mark.e2e, pytest.mark.faults]

DAG = "release_faults"
DEV, PROD, CANARY = "fault-dev", "fault-prod", "fault-canary"
CANARY_DAG = "release_faultcanary"
ERROR, SLOW = "fault-error", "fault-slow"  # releases faulterror and faultslow, one environment each
ERROR_DAG, SLOW_DAG = "release_faulterror", "release_faultslow"


@pytest.fixture(scope="module")
def stack():
    if not postgres_answers() or not redis_answers():
        pytest.fail("the distributed stack needs PostgreSQL (5432) and Redis (6379): `.ci/run` starts both")
    config = {
        # a killed worker's task is noticed after 20 s without a heartbeat (default 300 s)
        "airflow_config": {
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": "20",
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        },
        "fleet_traffic": 10.0,  # synthetic users: the canary analysis has metrics to judge
    }
    folder = PROJECT_ROOT / "tests" / "fixtures" / "faults"
    with distributed.celery_stack(folder, DAG, [DEV, PROD, CANARY, ERROR, SLOW], **config) as s:
        yield s


@pytest.fixture
def author(stack):
    return AirflowClient(stack.config.api_url, "author", "author")


def _wait_until(what: str, check, timeout: float = 240, every: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(every)


def _deploys(stack, environment: str, version: str) -> list[dict]:
    return [h for h in fleet_history(stack, environment) if h["version"] == version and h.get("kind") != "rollback"]


def _assert_whole(stack) -> None:
    """The ledger verifies and is anchored; no listener gap; nothing of the stack died."""
    verify = ledger_verify(stack)
    assert verify.returncode == 0 and "anchored" in verify.stdout, verify.stdout + verify.stderr
    assert "listener_gap" not in verify.stdout


def test_a_worker_killed_mid_deploy_re_attaches_and_the_target_sees_one_deployment(stack, author):
    """The deploy's POST has reached the target (which started the deployment) when both
    workers die; the target answers only later. The scheduler fails the silent try, the retry
    finds this run's deployment in progress and re-attaches instead of deploying again."""
    fleet_fault(stack, DEV, "3.0.0", accept_delay_seconds=15, deploy_seconds=3)
    run_id = author.trigger(DAG, {"version": "3.0.0", "change_summary": "worker killed"})["dag_run_id"]
    _wait_until(
        "the dev deployment to start",
        lambda: (fleet_status(stack, DEV).get("in_progress") or {}).get("version") == "3.0.0",
    )
    assert author.task_states(DAG, run_id)[f"{DEV}.deploy"] == "running"
    for worker in ("worker-1", "worker-2"):
        stack.kill(worker)
    time.sleep(2)
    for worker in ("worker-1", "worker-2"):
        stack.restart(worker)
    run = author.wait_for_run(DAG, run_id, timeout=480)
    states = author.task_states(DAG, run_id)
    assert run["state"] == "success", states
    assert author.task_instance(DAG, run_id, f"{DEV}.deploy")["try_number"] >= 2, "the killed try was retried"
    assert len(_deploys(stack, DEV, "3.0.0")) == 1, fleet_history(stack, DEV)
    assert len(_deploys(stack, PROD, "3.0.0")) == 1, fleet_history(stack, PROD)
    _assert_whole(stack)


def test_schedulers_killed_and_restarted_mid_run_lose_nothing(stack, author):
    """Both schedulers die while the dev deployment is under way (waiting in a trigger); the
    run goes on once they are back, and nothing is deployed twice."""
    fleet_fault(stack, DEV, "3.1.0", deploy_seconds=8)
    run_id = author.trigger(DAG, {"version": "3.1.0", "change_summary": "schedulers killed"})["dag_run_id"]
    _wait_until(
        "the dev deployment to start",
        lambda: (fleet_status(stack, DEV).get("in_progress") or {}).get("version") == "3.1.0",
    )
    for scheduler in ("scheduler", "scheduler-2"):
        stack.kill(scheduler)
    time.sleep(5)
    for scheduler in ("scheduler", "scheduler-2"):
        stack.restart(scheduler)
    run = author.wait_for_run(DAG, run_id, timeout=480)
    assert run["state"] == "success", author.task_states(DAG, run_id)
    live = lambda: running_jobs(stack, fresh_seconds=15).get("SchedulerJob") == 2  # noqa: E731
    _wait_until("two live schedulers", live, timeout=60, every=2)
    for environment in (DEV, PROD):
        assert len(_deploys(stack, environment, "3.1.0")) == 1, fleet_history(stack, environment)
    _assert_whole(stack)


def test_postgresql_restarted_mid_run_loses_and_doubles_nothing(stack, author):
    """The PostgreSQL server (metadata database and ledger) restarts while the dev deployment is
    under way. Airflow processes that exit over it are started again (a process supervisor's
    job); ledger appends cut off by the restart reconnect and are written exactly once (their
    token), and the run ends successful with one deployment per environment."""
    fleet_fault(stack, DEV, "6.0.0", deploy_seconds=10)
    run_id = author.trigger(DAG, {"version": "6.0.0", "change_summary": "database restarted"})["dag_run_id"]
    in_progress = lambda: (fleet_status(stack, DEV).get("in_progress") or {}).get("version") == "6.0.0"  # noqa: E731
    try:
        _wait_until("the dev deployment to start", in_progress)
    except AssertionError as exc:
        raise AssertionError(f"{exc}: {author.task_states(DAG, run_id)} {fleet_status(stack, DEV)}") from None
    restart_postgres()
    restarted: set[str] = set()
    deadline = time.monotonic() + 600
    while True:  # the supervisor: whatever died is started again
        for name in stack.exited():
            restarted.add(name)
            stack.restart(name)
        try:
            state = author.run(DAG, run_id)["state"]
        except Exception:  # the API server may be starting again
            state = "unknown"
        if state in ("success", "failed"):
            break
        assert time.monotonic() < deadline, f"the run did not end ({state}); restarted: {sorted(restarted)}"
        time.sleep(2)
    assert state == "success", (author.task_states(DAG, run_id), sorted(restarted))
    for environment in (DEV, PROD):
        assert len(_deploys(stack, environment, "6.0.0")) == 1, fleet_history(stack, environment)
    events = ledger_events(stack, DAG, run_id)
    assert [e.details["state"] for e in events if e.kind == "run_state"] == ["success"]
    _assert_whole(stack)


# The target-error tests use releases of their own: the rollbacks they end with raise the
# risk of the release's next run, which the assessment then refuses (no approval declared).
def test_a_target_answering_500_fails_clearly_and_the_run_rolls_back_recorded(stack, author):
    """The target answers every deploy of 3.2.0 with HTTP 500: the deploy fails after its
    retries, naming the target and the status; the target never changed and its rollback
    records a no-op; the ledger has it all."""
    fleet_fault(stack, ERROR, "3.2.0", deploy_status=500)
    before = fleet_status(stack, ERROR)["version"]
    run_id = author.trigger(ERROR_DAG, {"version": "3.2.0", "change_summary": "target errors"})["dag_run_id"]
    run = author.wait_for_run(ERROR_DAG, run_id, timeout=480)
    states = author.task_states(ERROR_DAG, run_id)
    assert run["state"] == "failed", states
    assert states[f"{ERROR}.deploy"] == "failed" and states[f"{ERROR}.rollback"] in ("success", "skipped"), states
    assert fleet_status(stack, ERROR)["version"] == before, "the target never ran 3.2.0"
    assert _deploys(stack, ERROR, "3.2.0") == []
    assert "answered HTTP 500" in task_log(stack, ERROR_DAG, run_id, f"{ERROR}.deploy")
    events = ledger_events(stack, ERROR_DAG, run_id)
    kinds = [(e.kind, e.environment) for e in events]
    assert ("deploy_started", ERROR) in kinds, kinds
    [rollback] = [e for e in events if e.kind == "rollback" and e.environment == ERROR]
    assert rollback.details.get("noop") is True, rollback.details  # the target never changed
    assert [e.details["state"] for e in events if e.kind == "run_state"] == ["failed"]
    _assert_whole(stack)


def test_a_deployment_that_times_out_fails_and_is_rolled_back(stack, author):
    """The deployment of 3.3.0 never finishes within the deploy timeout (30 s): the deploy fails
    as timed out, the rollback waits for the target's deployment to end and restores the
    version before; both are recorded."""
    fleet_fault(stack, SLOW, "3.3.0", deploy_seconds=45)
    before = fleet_status(stack, SLOW)["version"]
    run_id = author.trigger(SLOW_DAG, {"version": "3.3.0", "change_summary": "target too slow"})["dag_run_id"]
    run = author.wait_for_run(SLOW_DAG, run_id, timeout=600)
    states = author.task_states(SLOW_DAG, run_id)
    assert run["state"] == "failed", states
    assert states[f"{SLOW}.deploy"] == "failed" and states[f"{SLOW}.rollback"] == "success", states
    assert fleet_status(stack, SLOW)["version"] == before, fleet_status(stack, SLOW)
    assert len(_deploys(stack, SLOW, "3.3.0")) <= 1
    events = ledger_events(stack, SLOW_DAG, run_id)
    [failed] = [e for e in events if e.kind == "deploy_failed" and e.environment == SLOW]
    assert failed.details["version"] == "3.3.0" and failed.details["state"] != "succeeded", failed.details
    assert any(e.kind == "rollback_started" and e.environment == SLOW for e in events)
    _assert_whole(stack)


def test_triggerers_killed_mid_analysis_resume_from_the_recorded_measurements(stack, author):
    """Both triggerers die after the canary's first measurement. The trigger Airflow stored at
    deferral knows no measurement; started again, it reads the ledger's and takes only the
    rest: four intervals, each measured once, and the rollout goes on."""
    run_id = author.trigger(CANARY_DAG, {"version": "5.0.0", "change_summary": "triggerers killed"})["dag_run_id"]
    task = f"{CANARY}.canary_50"

    def measured() -> list:
        return [e for e in ledger_events(stack, CANARY_DAG, run_id) if e.kind == "analysis_measured"]

    _wait_until("the first measurement", measured, timeout=300, every=1)
    for triggerer in ("triggerer", "triggerer-2"):
        stack.kill(triggerer)
    time.sleep(3)
    for triggerer in ("triggerer", "triggerer-2"):
        stack.restart(triggerer)
    run = author.wait_for_run(CANARY_DAG, run_id, timeout=480)
    assert run["state"] == "success", author.task_states(CANARY_DAG, run_id)
    events = ledger_events(stack, CANARY_DAG, run_id)
    indexes = sorted(
        e.details["index"] for e in events if e.kind == "analysis_measured" and e.details["task_id"] == task
    )
    assert indexes == [1, 2, 3, 4], indexes  # no interval measured twice, none lost
    verdicts = [e for e in events if e.kind == "analysis" and e.details.get("task_id") == task]
    assert verdicts and verdicts[-1].details["outcome"] == "successful", [v.details for v in verdicts]
    assert len(verdicts[-1].details["measurements"]) == 4
    assert "resuming the analysis from" in task_log(stack, CANARY_DAG, run_id, task)
    _assert_whole(stack)
