"""The distributed stack for end-to-end tests: PostgreSQL, CeleryExecutor on Redis, two
workers, two schedulers, two triggerers (issue 12). Each stack has databases of its own."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests

from releasetrain.client import AirflowClient
from releasetrain.devstack import DevStack, StackConfig
from tests.conftest import PROJECT_ROOT
from tests.pg import admin, postgres_answers


def redis_answers() -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", 6379)) == 0


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def celery_stack(spec_dir: Path, dag_id: str, environments: list[str], **config: Any):
    """A started distributed stack serving the specs of ``spec_dir``, once ``dag_id`` is parsed."""
    if not postgres_answers() or not redis_answers():
        raise RuntimeError("the distributed stack needs PostgreSQL (5432) and Redis (6379): `.ci/run` starts both")
    home = Path(tempfile.mkdtemp(prefix="releasetrain-e2e-celery-"))
    name = f"releasetrain_celery_{int(time.time() * 1000) % 10**10}"
    admin(f"CREATE DATABASE {name}")
    admin(f"CREATE DATABASE {name}_ledger")
    settings: dict[str, Any] = {
        "executor": "celery",
        "schedulers": 2,
        "triggerers": 2,
        "workers": 2,
        "worker_concurrency": 2,
        "fleet_deploy_seconds": 1.0,
        **config,
    }
    cfg = StackConfig(
        project_root=PROJECT_ROOT,
        home=home,
        api_port=_free_port(),
        fleet_port=_free_port(),
        db_url=f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}",
        ledger_conn={"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres",
                     "schema": f"{name}_ledger"},
        spec_dirs=[spec_dir],
        fleet_environments=environments,
        fleet_seed=dict.fromkeys(environments, "1.0.0"),
        **settings,
    )  # fmt: skip
    stack = DevStack(cfg)
    try:
        stack.prepare()
        stack.start()
        admin_client = AirflowClient(cfg.api_url, "admin", "admin")
        deadline = time.monotonic() + 180
        while dag_id not in admin_client.dag_ids():
            assert time.monotonic() < deadline, f"{dag_id} not parsed: {admin_client.import_errors()}"
            time.sleep(2)
        stack.db_name = name
        yield stack
    finally:
        stack.stop()
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin(f"DROP DATABASE IF EXISTS {name}_ledger WITH (FORCE)")


def running_jobs(stack: DevStack, *, fresh_seconds: int | None = None) -> dict[str, int]:
    """Running jobs per type; with ``fresh_seconds``, only those that heartbeat that recently
    (a killed process's row stays 'running' until another one notices)."""
    import psycopg2

    conn = psycopg2.connect(f"postgresql://postgres@127.0.0.1:5432/{stack.db_name}")
    fresh = f" AND latest_heartbeat > now() - interval '{int(fresh_seconds)} seconds'" if fresh_seconds else ""
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT job_type, count(*) FROM job WHERE state = 'running'{fresh} GROUP BY job_type")
            return dict(cur.fetchall())
    finally:
        conn.close()


def fleet_history(stack: DevStack, environment: str) -> list[dict]:
    user, password = stack.fleet_auth()
    url = f"{stack.config.fleet_url}/environments/{environment}/status"
    return requests.get(url, auth=(user, password), timeout=10).json()["history"]


def fleet_status(stack: DevStack, environment: str) -> dict:
    user, password = stack.fleet_auth()
    url = f"{stack.config.fleet_url}/environments/{environment}/status"
    return requests.get(url, auth=(user, password), timeout=10).json()


def fleet_fault(stack: DevStack, environment: str, version: str, **fault: Any) -> None:
    user, password = stack.fleet_auth()
    body = {"environment": environment, "version": version, "error_rate": 0.0, **fault}
    requests.post(f"{stack.config.fleet_url}/faults", json=body, auth=(user, password), timeout=10).raise_for_status()


def ledger_verify(stack: DevStack) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "releasetrain", "ledger", "verify"],
        env=stack.env(), cwd=stack.config.home, capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def ledger_events(stack: DevStack, dag_id: str, run_id: str) -> list[Any]:
    """The run's ledger events, read straight from the stack's ledger database."""
    from releasetrain.hooks.ledger import PostgresLedgerStore

    store = PostgresLedgerStore(host="127.0.0.1", port=5432, user="postgres", dbname=f"{stack.db_name}_ledger")
    try:
        return [e for e in store.events(run_id=run_id) if e.dag_id == dag_id]
    finally:
        store.close()


def task_log(stack: DevStack, dag_id: str, run_id: str, task_id: str) -> str:
    """Every try's log of a task, as the workers wrote them in the stack's home."""
    folder = stack.config.home / "logs" / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
    return "\n".join(p.read_text(errors="replace") for p in sorted(folder.glob("**/*.log")))
