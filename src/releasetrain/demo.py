"""``make demo``: the demo fleet and Airflow (SQLite, local processes), a storefront
release triggered as ``author`` through the REST API, followed in the terminal.

Local demo only: the users ``author``, ``approver`` and ``admin`` have passwords equal to
their names. Environment: ``DEMO_API_PORT`` (8080), ``DEMO_FLEET_PORT`` (8799),
``DEMO_AUTO_APPROVE=1`` answers the prod approval as ``approver`` (for unattended runs),
``DEMO_EXIT=1`` stops everything once the run has ended, ``DEMO_SIGNING=pkcs11`` keeps the
three signing keys on a SoftHSM2 token (Debian's softhsm2) instead of in connections,
``DEMO_EXECUTOR=celery`` runs Airflow's distributed shape instead: PostgreSQL
(``DEMO_PG``, default ``postgresql://postgres@127.0.0.1:5432``; databases
``releasetrain_demo`` and ``releasetrain_demo_ledger`` are created when missing),
CeleryExecutor on Redis (``DEMO_BROKER``, default ``redis://127.0.0.1:6379/0``), two
Celery workers, two schedulers and two triggerers, in ``.airflow-celery``.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit

import requests

from releasetrain.client import AirflowClient
from releasetrain.core.versioning import Version
from releasetrain.devstack import DevStack, StackConfig

DAG_ID = "release_storefront"
CANARY_DAG_ID = "release_checkout"  # a canary in production, judged at each traffic step
CHECKOUT = ["checkout-staging", "checkout-prod"]
SEED = {
    "checkout-staging": "1.0.0",
    "checkout-prod": "1.0.0",
    "dev": "1.0.0",
    "staging": "1.0.0",
    "prod": "1.0.0",
    "billing-staging": "1.0.0",
    "billing-prod": "1.0.0",
    "payments-staging": "3.1.0",
    "payments-prod": "3.1.0",
}


def _say(text: str = "") -> None:
    print(text, flush=True)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def _next_version(artifacts: Path) -> str:
    """The first 1.N.0 not yet packaged: released versions are immutable."""
    taken = set()
    if artifacts.is_dir():
        for path in artifacts.iterdir():
            try:
                taken.add(Version.parse(path.name))
            except ValueError:
                continue
    minor = 1
    while Version(1, minor, 0) in taken:
        minor += 1
    return f"1.{minor}.0"


def _wait_for_dag(client: AirflowClient, dag_id: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while dag_id not in client.dag_ids():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{dag_id} was not parsed within {timeout}s; import errors: {client.import_errors()}")
        time.sleep(2)


def _ledger_url(cfg: StackConfig) -> str:
    conn = cfg.ledger_conn
    if not conn:
        return f"sqlite:///{cfg.home.name}/releasetrain-ledger.db"
    return f"postgresql://{conn['login']}@{conn['host']}:{conn['port']}/{conn['schema']}"


def _distributed(config: StackConfig) -> None:
    """Point the demo at PostgreSQL and Redis, creating its two databases when missing."""
    import psycopg2
    import redis

    base = os.environ.get("DEMO_PG", "postgresql://postgres@127.0.0.1:5432").rstrip("/")
    broker = os.environ.get("DEMO_BROKER", "redis://127.0.0.1:6379/0")
    redis.Redis.from_url(broker, socket_connect_timeout=3).ping()
    conn = psycopg2.connect(f"{base}/postgres", connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            for name in ("releasetrain_demo", "releasetrain_demo_ledger"):
                cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
                if not cur.fetchone():
                    cur.execute(f"CREATE DATABASE {name}")
    finally:
        conn.close()
    url = urlsplit(base)
    config.db_url = base.replace("postgresql://", "postgresql+psycopg2://", 1) + "/releasetrain_demo"
    config.ledger_conn = {
        "conn_type": "postgres",
        "host": url.hostname or "127.0.0.1",
        "port": url.port or 5432,
        "login": url.username or "postgres",
        "password": url.password or "",
        "schema": "releasetrain_demo_ledger",
    }
    config.executor, config.broker_url = "celery", broker
    config.schedulers = config.triggerers = config.workers = 2


def demo_config(root: Path, *, celery: bool = False, api_port: int = 8080, fleet_port: int = 8799) -> StackConfig:
    """The demo stack's configuration (its home: ``.airflow`` in the project)."""
    return StackConfig(
        project_root=root,
        home=root / (".airflow-celery" if celery else ".airflow"),
        api_port=api_port,
        fleet_port=fleet_port,
        fleet_seed=SEED,
        fleet_environments=[*StackConfig.__dataclass_fields__["fleet_environments"].default_factory(), *CHECKOUT],
        fleet_traffic=10.0,  # synthetic users: metrics for the canary analysis
        signing=os.environ.get("DEMO_SIGNING", "connection"),
    )


def shell_connections(root: Path) -> dict[str, str]:
    """The demo's connections (its ledger, its keys, its targets), as a shell needs them to
    reach the demo the way its processes do: {} when ``make demo`` left no home with its
    secrets in ``root``. Only ``AIRFLOW_CONN_*`` values (data, built here from the home's
    secrets): nothing of the home's configuration or code is taken."""
    config = demo_config(root, api_port=int(os.environ.get("DEMO_API_PORT", "8080")),
                         fleet_port=int(os.environ.get("DEMO_FLEET_PORT", "8799")))  # fmt: skip
    if not (config.home / "secrets.json").is_file():
        return {}
    import json

    env = DevStack(config).env()
    wanted = ("SOFTHSM2_CONF", "AIRFLOW__CORE__FERNET_KEY")
    found = {k: v for k, v in env.items() if k.startswith("AIRFLOW_CONN_") or k in wanted}
    ledger = config.home.resolve() / "releasetrain-ledger.db"
    found.setdefault("AIRFLOW_CONN_RELEASETRAIN_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(ledger)}))
    return found


def main() -> int:
    root = Path.cwd()
    if not (root / "include" / "releases").is_dir():
        _say("Run `make demo` from the project's root folder.")
        return 2
    api_port = int(os.environ.get("DEMO_API_PORT", "8080"))
    fleet_port = int(os.environ.get("DEMO_FLEET_PORT", "8799"))
    for name, port in (("Airflow API server", api_port), ("demo fleet", fleet_port)):
        if not _port_free(port):
            _say(
                f"Port {port} (for the {name}) is already in use. Stop what runs there, or set "
                f"{'DEMO_API_PORT' if port == api_port else 'DEMO_FLEET_PORT'} to another port."
            )
            return 1
    celery = os.environ.get("DEMO_EXECUTOR", "local") == "celery"
    config = demo_config(root, celery=celery, api_port=api_port, fleet_port=fleet_port)
    home = config.home
    if celery:
        try:
            _distributed(config)
        except Exception as exc:  # noqa: BLE001 - said plainly, the demo cannot go on
            _say(f"DEMO_EXECUTOR=celery needs PostgreSQL and Redis: {exc}")
            return 1
    stack = DevStack(config)
    # Ctrl-C and SIGTERM both end the demo through the same clean-up path, also when the
    # demo was started in the background (where SIGINT starts out ignored).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        _say(f"Preparing Airflow in {home} ({'PostgreSQL, Celery' if celery else 'SQLite'}) ...")
        stack.prepare()
        _say(
            "Starting the demo fleet, API server, two schedulers, dag-processor, two triggerers and two "
            "Celery workers ..."
            if celery
            else "Starting the demo fleet, API server, scheduler, dag-processor and triggerer ..."
        )
        stack.start()
        return _run_demo(stack, home)
    except KeyboardInterrupt:
        _say("\nStopping ...")
        return 0
    except Exception as exc:  # show the reason and where the logs are, then clean up
        _say(f"\nThe demo failed: {exc}\nProcess logs: {stack.logs}")
        return 1
    finally:
        stack.stop()


def _retrying(call, attempts: int = 5):
    """A first start on SQLite: the DAG processor's first writes can hold the database a few
    seconds, and the API server answers 500 ("database is locked") meanwhile."""
    from releasetrain.client import AirflowAPIError

    for attempt in range(attempts):
        try:
            return call()
        except AirflowAPIError as exc:
            if attempt == attempts - 1 or "500" not in str(exc):
                raise
            time.sleep(3)
    return None


def _run_demo(stack: DevStack, home: Path) -> int:
    cfg = stack.config
    author = AirflowClient(cfg.api_url, "author", "author")
    _wait_for_dag(author, DAG_ID)
    _wait_for_dag(author, CANARY_DAG_ID)
    admin = AirflowClient(cfg.api_url, "admin", "admin")
    for dag_id in admin.dag_ids():
        if dag_id.startswith("release_"):
            _retrying(lambda dag_id=dag_id: admin.set_paused(dag_id, False))
    version = _next_version(home / "artifacts" / "storefront")
    run = author.trigger(
        DAG_ID,
        {"version": version, "requested_by": "author", "change_summary": "Demo: new checkout page"},
        note="Triggered by make demo",
    )
    run_id = run["dag_run_id"]
    canary_version = _next_version(home / "artifacts" / "checkout")
    canary_run_id = author.trigger(
        CANARY_DAG_ID,
        {"version": canary_version, "requested_by": "author", "change_summary": "Demo: faster cart"},
        note="Triggered by make demo",
    )["dag_run_id"]
    _say(f"""
================================================================================
 releasetrain demo is up
   Airflow UI      {cfg.api_url}          (local demo logins: user = password)
                   author/author   - triggered this release, can NOT approve it
                   approver/approver - approves production deploys
                   admin/admin     - administrator, also an approver
   Release cockpit {cfg.api_url}/plugin/releasetrain-cockpit   ("Releases" on the UI's navigation bar)
   Demo fleet      {cfg.fleet_url}/environments
   Release         {DAG_ID}, version {version}, run {run_id}
   Canary release  {CANARY_DAG_ID}, version {canary_version}: production takes 25% then 100%
                   of the traffic, the error rate judged after each step (checkout-prod.canary_*)

 Next: log in as approver, open "Required Actions" (or the run's prod.approve task)
 and approve. Or from a shell:
   TOKEN=$(curl -s -X POST {cfg.api_url}/auth/token -H 'Content-Type: application/json' \\
       -d '{{"username":"approver","password":"approver"}}' | python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')
   curl -X PATCH -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \\
       '{cfg.api_url}/api/v2/dags/{DAG_ID}/dagRuns/{run_id}/taskInstances/prod.approve/-1/hitlDetails' \\
       -d '{{"chosen_options": ["Approve"], "params_input": {{}}}}'
 After the release reaches prod, it waits at "closure": log in as author and record the
 runbook update (a link, or "not needed: <why>") on Required Actions.
 Audit: .venv/bin/releasetrain ledger verify --url {_ledger_url(cfg)} \\
          --public-key {home.name}/ledger-public-key.pem --checkpoints file://$PWD/{home.name}/artifacts/_ledger/checkpoints
 Ctrl-C stops everything.
================================================================================
""")
    auto = os.environ.get("DEMO_AUTO_APPROVE") == "1"
    states = _follow(author, {DAG_ID: run_id, CANARY_DAG_ID: canary_run_id}, auto_approve=auto, cfg=cfg)
    for dag_id, environment in ((DAG_ID, "prod"), (CANARY_DAG_ID, "checkout-prod")):
        live = requests.get(f"{cfg.fleet_url}/environments/{environment}", auth=stack.fleet_auth(), timeout=10).json()
        _say(
            f"\n{dag_id} ended {states[dag_id].upper()}. The fleet's {environment} runs {live.get('version')} "
            f"(previous {live.get('previous_version')})."
        )
    if os.environ.get("DEMO_EXIT") == "1":
        return 0 if set(states.values()) == {"success"} else 1
    _say("The stack stays up: trigger more releases from the UI. Ctrl-C stops everything.")
    while True:
        for name, proc in stack.processes.items():
            if proc.poll() is not None:
                _say(f"{name} stopped unexpectedly (exit {proc.returncode}); see {stack.logs}")
                return 1
        time.sleep(5)


def _follow(client: AirflowClient, runs: dict[str, str], *, auto_approve: bool, cfg: StackConfig) -> dict[str, str]:
    """Print every task state change of the runs (dag id -> run id); answer for the demo when asked."""
    seen: dict[tuple[str, str], str | None] = {}
    asked: set[tuple[str, str]] = set()
    ended: dict[str, str] = {}
    approver = AirflowClient(cfg.api_url, "approver", "approver")
    while len(ended) < len(runs):
        for dag_id, run_id in runs.items():
            if dag_id in ended:
                continue
            release = dag_id.removeprefix("release_")
            states = client.task_states(dag_id, run_id)
            for task_id, state in states.items():
                if state and seen.get((dag_id, task_id)) != state:
                    _say(f"  {time.strftime('%H:%M:%S')}  {release:<11} {task_id:<26} {state}")
                    seen[(dag_id, task_id)] = state
            for task_id, state in states.items():
                if state != "awaiting_input" or (dag_id, task_id) in asked:
                    continue
                asked.add((dag_id, task_id))
                if task_id == "closure":
                    _say(f"  -> {release}: record the runbook update (log in as author, Required Actions)")
                    if auto_approve:
                        time.sleep(5)
                        client.answer(
                            dag_id, run_id, task_id, "OK", params_input={"runbook_update": "not needed: demo release"}
                        )
                        _say(f"  -> {release}: runbook update recorded as author (DEMO_AUTO_APPROVE=1)")
                elif task_id.endswith(".approve"):
                    _say(f"  -> {release}: waiting for approval of {task_id}: log in as approver at {cfg.api_url}")
                    if auto_approve:
                        time.sleep(5)
                        approver.answer(dag_id, run_id, task_id, "Approve")
                        _say(f"  -> {release}: approved as approver (DEMO_AUTO_APPROVE=1)")
                else:
                    _say(f"  -> {release}: {task_id} asks a human (Required Actions)")
            run = client.run(dag_id, run_id)
            if run["state"] in ("success", "failed"):
                ended[dag_id] = run["state"]
        time.sleep(2)
    return ended


if __name__ == "__main__":
    sys.exit(main())
