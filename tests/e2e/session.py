"""The end-to-end session's stack: the demo fleet, and Airflow's API server, scheduler,
dag-processor and triggerer on a fresh PostgreSQL database (SQLite where no PostgreSQL
answers, or with ``RELEASETRAIN_E2E_DB=sqlite``), a real Prometheus, a local ServiceNow
and a webhook receiver.

One stack serves the whole session. ``python -m tests.e2e.session PYTEST-ARGS`` starts it
once, runs pytest (with pytest-xdist, the test modules in parallel workers: the stack has
room for many releases at once), and stops it; the workers attach to it through the file
named by ``RELEASETRAIN_E2E_STACK``. Without that variable, the ``stack`` fixture starts
one in the test process (``pytest -m e2e tests/e2e/test_x.py``).
"""

from __future__ import annotations

import datetime
import os
import pickle
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import requests

from releasetrain.client import AirflowClient
from releasetrain.devstack import DevStack, StackConfig
from tests.conftest import PROJECT_ROOT
from tests.pg import PG_ADMIN_DSN, admin, postgres_answers
from tests.servers.grafana import TOKEN as GRAFANA_TOKEN
from tests.servers.grafana import running_grafana
from tests.servers.jira import running_jira
from tests.servers.prometheus import running_prometheus
from tests.servers.servicenow import WALK_PATH, running_servicenow
from tests.servers.webhook import running_receiver

STACK_FILE = "RELEASETRAIN_E2E_STACK"

SNOW_CREDENTIALS = ("svc-release", "e2e-Sn0w-pass")
JIRA_CREDENTIALS = ("svc-release", "e2e-j1ra-token")
ALERT_TOKEN = "e2e-alertmanager-token"

E2E_DAGS = {
    "release_storefront",
    "release_billing",
    "release_tampered",
    "release_gated",
    "release_twin-a",
    "release_twin-b",
    "release_windowed",
    "release_governed",
    "release_canary",
    "release_canary-bad",
    "release_canary-unsure",
    "release_canary-abort",
    "release_bluegreen",
    "rollback_canary",
    # issue 10: the gates attacked over REST
    "release_guarded",
    "rollback_guarded",
    "release_canary-hand",
    "rollback_canary-hand",
    "release_locked-a",
    "release_locked-b",
    "release_locked-c",
    # issue 13: one component version, the same bytes in every release
    "release_rebuild-a",
    "release_rebuild-b",
    "release_svc",
    "release_consumer",
    # issue 13: a bundle carrying an environment's configuration is refused
    "release_leaky",
    # issue 13: configuration drift stops a promotion until an owner accepts it
    "release_drifty",
    # issue 13: a configuration profile is deployed only once the change advisory board approved it
    "release_baselined",
    # issue 13: test suites beside the next environment, blocking production
    "release_suited",
    # issue 13: after the scope freeze, other contents need an exception
    "release_frozen",
    # issue 13: conflicting library versions across components need a waiver
    "release_conflicted",
    # issue 13: a hotfix goes only within its release's hotfix policy
    "release_hotfixed",
    # issue 13: a hotfix never queues behind a normal run waiting in a gate
    "release_trained",
    # issue 13: modular bundles, each unit deployed and rolled back on its own
    "release_modular",
    "rollback_modular",
    # issue 14: rollback communications, by audience
    "release_comms",
    # issue 14: schema migrations before the deploy, reconciled when one half-fails
    "release_migrating",
    "rollback_migrating",
    # issue 14: a blameless postmortem review after a rollback, in the evidence
    "release_postmortem",
    # issue 14: an alert during the watch after a deploy rolls it back; every change is marked
    "release_alerted",
    # issue 14: a session outcome (checkout) watched after a plain deploy
    "release_conversion",
    # issue 14: a recent rollback adds a soak and a production approval
    "release_trendy",
    # issue 15: the release cockpit, in a real browser
    "release_cockpit",
}
REFRESH_DAG = "refresh_test_data_refresh-env"  # issue 13: test data, masked first (PostgreSQL only)
PROGRESSIVE_ENVIRONMENTS = ["cn-ok", "cn-bad", "cn-unsure", "cn-abort", "bg", "cn-hand"]
GATE_ENVIRONMENTS = ["guard-staging", "guard-prod", "shared"]


def write_calendar(folder: Path, name: str, **body) -> None:
    """A shared calendar of the e2e session (the gate reads it again at every check)."""
    import yaml

    (folder / f"{name}.yaml").write_text(yaml.safe_dump({"name": name, "timezone": "UTC", **body}))


def _hms(moment) -> str:
    return moment.strftime("%H:%M:%S")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _postgres_answers() -> bool:
    """PostgreSQL is used where it runs; elsewhere the stack falls back to SQLite (and says so)."""
    if postgres_answers():
        return True
    warnings.warn(f"PostgreSQL at {PG_ADMIN_DSN} does not answer: end-to-end tests run on SQLite", stacklevel=2)
    return False


REFRESH_SCHEMA = """
CREATE TABLE customers (id integer PRIMARY KEY, name text, email text, card text);
CREATE TABLE orders (id integer PRIMARY KEY, customer_id integer REFERENCES customers (id), total numeric);
"""


def _test_data_refresh(home: Path, db_name: str | None) -> tuple[dict, dict, tuple[str, str] | None]:
    """A source and a target database for ``refresh_test_data_refresh-env`` (PostgreSQL only):
    the refresh file, the connections, and the two DSNs the test changes data through."""
    if not db_name:
        return {}, {}, None
    import psycopg2
    import yaml

    pg = urlparse(PG_ADMIN_DSN)
    dsns, connections = [], {}
    for suffix in ("src", "tgt"):
        admin(f"CREATE DATABASE {db_name}_{suffix}")
        dsn = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{db_name}_{suffix}"
        conn = psycopg2.connect(dsn)
        with conn, conn.cursor() as cur:
            cur.execute(REFRESH_SCHEMA)
        conn.close()
        dsns.append(dsn)
        connections[f"refresh_{suffix}_e2e"] = {
            "conn_type": "postgres",
            "host": pg.hostname or "127.0.0.1",
            "port": pg.port or 5432,
            "login": pg.username or "postgres",
            "password": pg.password or "",
            "schema": f"{db_name}_{suffix}",
        }
    refresh = {
        "environment": "refresh-env",
        "source": {"conn_id": "refresh_src_e2e"},
        "target": {"conn_id": "refresh_tgt_e2e"},
        "tables": ["customers", "orders"],
        "rules": [
            {"table": "customers", "column": "id", "kind": "keep"},
            {"table": "customers", "column": "name", "kind": "pattern", "pattern": r"Customer \d+"},
            {"table": "customers", "column": "email", "kind": "email"},
            {"table": "customers", "column": "card", "kind": "card"},
            {"table": "orders", "column": "id", "kind": "keep"},
            {"table": "orders", "column": "customer_id", "kind": "keep"},
            {"table": "orders", "column": "total", "kind": "keep"},
        ],
    }
    path = home / "data_refresh.yaml"
    path.write_text(yaml.safe_dump({"refreshes": [refresh]}))
    return {"AIRFLOW__RELEASETRAIN__DATA_REFRESH_FILE": str(path)}, connections, (dsns[0], dsns[1])


MIGRATING_ENVIRONMENTS = ("mig-dev", "mig-prod")


def _migration_databases(db_name: str | None) -> tuple[dict, dict[str, str]]:
    """An empty database per environment of ``release_migrating`` (PostgreSQL only): the
    connections its spec names (``migrate_<env>_e2e``) and each environment's DSN."""
    if not db_name:
        return {}, {}
    pg = urlparse(PG_ADMIN_DSN)
    connections, dsns = {}, {}
    for env in MIGRATING_ENVIRONMENTS:
        name = f"{db_name}_{env.replace('-', '_')}"
        admin(f"CREATE DATABASE {name}")
        dsns[env] = PG_ADMIN_DSN.rsplit("/", 1)[0] + f"/{name}"
        connections[f"migrate_{env.split('-')[1]}_e2e"] = {
            "conn_type": "postgres",
            "host": pg.hostname or "127.0.0.1",
            "port": pg.port or 5432,
            "login": pg.username or "postgres",
            "password": pg.password or "",
            "schema": name,
        }
    return connections, dsns


@contextmanager
def session_stack() -> Iterator[DevStack]:
    """The session's stack, its local servers, and what the window tests need to know."""
    home = Path(tempfile.mkdtemp(prefix="releasetrain-e2e-"))
    calendars = home / "calendars"
    calendars.mkdir()
    write_calendar(calendars, "e2e-gate", blackouts=[])
    # A window a minute ahead that is blacked out, and one three minutes ahead that is not:
    # the scheduler must start the release at the second one only.
    t0 = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    w1 = (t0 + datetime.timedelta(seconds=150), t0 + datetime.timedelta(seconds=210))
    w2 = (t0 + datetime.timedelta(seconds=270), t0 + datetime.timedelta(minutes=25))
    write_calendar(
        calendars,
        "e2e-windows",
        windows=[{"start": _hms(w1[0]), "end": _hms(w1[1])}, {"start": _hms(w2[0]), "end": _hms(w2[1])}],
        blackouts=[
            {
                "name": "covers the first window",
                "start": (w1[0] - datetime.timedelta(seconds=10)).isoformat(),
                "end": (w1[1] + datetime.timedelta(seconds=10)).isoformat(),
            }
        ],
    )
    db_url, db_name, ledger_conn = None, None, None
    if os.environ.get("RELEASETRAIN_E2E_DB", "postgres") != "sqlite" and _postgres_answers():
        db_name = f"releasetrain_e2e_{uuid.uuid4().hex[:8]}"
        admin(f"CREATE DATABASE {db_name}")
        admin(f"CREATE DATABASE {db_name}_ledger")
        base = PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg2://")
        db_url = f"{base}/{db_name}"
        pg = urlparse(PG_ADMIN_DSN)
        ledger_conn = {
            "conn_type": "postgres",
            "host": pg.hostname or "127.0.0.1",
            "port": pg.port or 5432,
            "login": pg.username or "postgres",
            "password": pg.password or "",
            "schema": f"{db_name}_ledger",
        }
    refresh_config, refresh_connections, refresh_dsns = _test_data_refresh(home, db_name)
    migration_connections, migration_dsns = _migration_databases(db_name)
    snow_context = running_servicenow(*SNOW_CREDENTIALS)
    snow, snow_url = snow_context.__enter__()
    jira_context = running_jira(*JIRA_CREDENTIALS)
    _, jira_url = jira_context.__enter__()
    fleet_port = _free_port()
    # a real Prometheus scraping the demo fleet every second, for the canary analyses
    prometheus_context = running_prometheus([f"http://127.0.0.1:{fleet_port}/metrics"], scrape_interval="1s")
    prometheus_url = prometheus_context.__enter__()
    receiver_context = running_receiver()
    receiver, receiver_url = receiver_context.__enter__()
    grafana_context = running_grafana()
    grafana, grafana_url = grafana_context.__enter__()
    config = StackConfig(
        project_root=PROJECT_ROOT,
        home=home,
        api_port=_free_port(),
        fleet_port=fleet_port,
        db_url=db_url,
        ledger_conn=ledger_conn,
        connections={
            "servicenow_e2e": {
                "conn_type": "http",
                "host": snow_url,
                "login": SNOW_CREDENTIALS[0],
                "password": SNOW_CREDENTIALS[1],
            },
            # change records as issues of the local Jira's CHG project (the Atlassian Jira provider)
            "jira_e2e": {
                "conn_type": "jira",
                "host": jira_url,
                "login": JIRA_CREDENTIALS[0],
                "password": JIRA_CREDENTIALS[1],
                "extra": {"project": "CHG"},
            },
            "prometheus_e2e": {"conn_type": "http", "host": prometheus_url},
            "webhook_e2e": {"conn_type": "http", "host": receiver_url},
            **refresh_connections,
            **migration_connections,
            # deploy markers go to the local Grafana; Alertmanager's webhook authenticates with this token
            "grafana_e2e": {"conn_type": "http", "host": grafana_url, "password": GRAFANA_TOKEN},
            "releasetrain_alerts": {"conn_type": "http", "password": ALERT_TOKEN},
        },
        airflow_config={**refresh_config, "AIRFLOW__RELEASETRAIN__ANNOTATIONS_CONN_ID": "grafana_e2e"},
        spec_dirs=[
            PROJECT_ROOT / "include" / "releases",
            PROJECT_ROOT / "tests" / "fixtures" / "releases",
            PROJECT_ROOT / "tests" / "fixtures" / "broken",
        ],
        calendar_dirs=[calendars, PROJECT_ROOT / "include" / "calendars"],
        fleet_environments=[
            "dev",
            "staging",
            "prod",
            "billing-staging",
            "billing-prod",
            "tamper-dev",
            "tamper-prod",
            "gated-dev",
            "gated-prod",
            "twin",
            "rebuild",
            "svc-env",
            "consumer",
            "drift-env",
            "cab-env",
            "suite-dev",
            "suite-staging",
            "suite-prod",
            "frozen-dev",
            "frozen-prod",
            "conflict-env",
            "hot-prod",
            "train-stg",
            "train-prod",
            "mod-dev",
            "mod-prod",
            "comms-env",
            "pm-env",
            "alert-env",
            "sess-env",
            "trend-stg",
            "trend-prod",
            "cockpit-stg",
            "cockpit-prod",
            *MIGRATING_ENVIRONMENTS,
            "windowed-dev",
            "payments-staging",
            "payments-prod",
            "gov-staging",
            "gov-prod",
            *PROGRESSIVE_ENVIRONMENTS,
            *GATE_ENVIRONMENTS,
        ],
        fleet_seed={
            "dev": "1.0.0",
            "staging": "1.0.0",
            "prod": "1.0.0",
            "comms-env": "1.0.0",
            "pm-env": "1.0.0",
            "alert-env": "1.0.0",
            "sess-env": "1.0.0",
            "trend-stg": "1.0.0",
            "trend-prod": "1.0.0",
            "cockpit-stg": "1.0.0",
            "cockpit-prod": "1.0.0",
            **dict.fromkeys(PROGRESSIVE_ENVIRONMENTS, "1.0.0"),
            **dict.fromkeys(GATE_ENVIRONMENTS, "1.0.0"),
        },
        fleet_deploy_seconds=1.0,
        fleet_traffic=20.0,
        # bundles, evidence and checkpoints are signed on a SoftHSM2 token: no Airflow
        # process holds a private key (the demo keeps them in connections)
        signing="pkcs11",
    )
    dev_stack = DevStack(config)
    dev_stack.calendars = calendars
    dev_stack.servicenow = snow
    dev_stack.servicenow_url = snow_url
    dev_stack.jira_url = jira_url
    dev_stack.prometheus_url = prometheus_url
    dev_stack.receiver = receiver
    dev_stack.receiver_url = receiver_url
    dev_stack.scheduled_windows = (w1, w2)
    dev_stack.refresh_dsns = refresh_dsns
    dev_stack.migration_dsns = migration_dsns
    dev_stack.grafana_url = grafana_url
    try:
        dev_stack.prepare()
        dev_stack.start()
        client = AirflowClient(config.api_url, "admin", "admin")
        deadline = time.monotonic() + 180
        expected = E2E_DAGS | ({REFRESH_DAG} if refresh_dsns else set())
        while not expected <= set(client.dag_ids()):
            assert time.monotonic() < deadline, f"DAGs not parsed: {client.dag_ids()} {client.import_errors()}"
            time.sleep(2)
        # what the scheduler planned for the windowed release, seen before its first window
        dag = client.request("GET", "/dags/release_windowed")
        dev_stack.windowed_plan = (datetime.datetime.now(datetime.UTC), dag.get("next_dagrun_run_after"))
        yield dev_stack
    finally:
        dev_stack.stop()
        snow_context.__exit__(None, None, None)
        jira_context.__exit__(None, None, None)
        prometheus_context.__exit__(None, None, None)
        receiver_context.__exit__(None, None, None)
        grafana_context.__exit__(None, None, None)
        if db_name:
            for suffix in ("", "_ledger", "_src", "_tgt", *(f"_{e.replace('-', '_')}" for e in MIGRATING_ENVIRONMENTS)):
                admin(f"DROP DATABASE IF EXISTS {db_name}{suffix} WITH (FORCE)")


class RemoteServiceNow:
    """The session's ServiceNow instance seen from another process: its Table API."""

    def __init__(self, url: str, auth: tuple[str, str]):
        self.url, self.auth = url, auth
        self.records = _Records(self)

    def get(self, path: str):
        response = requests.get(f"{self.url}{path}", auth=self.auth, timeout=10)
        response.raise_for_status()
        return response.json()["result"]

    def walk(self, sys_id: str) -> list[str]:
        return self.get(f"{WALK_PATH}{sys_id}")


class _Records:
    def __init__(self, instance: RemoteServiceNow):
        self.instance = instance

    def __getitem__(self, sys_id: str) -> dict:
        return self.instance.get(f"/api/now/table/change_request/{sys_id}")


class RemoteReceiver:
    """The session's webhook receiver seen from another process."""

    def __init__(self, url: str):
        self.url = url

    def bodies(self, **match) -> list[dict]:
        received = requests.get(self.url, timeout=10).json()
        return [r["body"] for r in received if all(r["body"].get(k) == v for k, v in match.items())]


def describe(stack: DevStack, path: Path) -> None:
    """What a worker needs to attach: plain data (the stack's own config, its servers' URLs)."""
    view = {
        "config": stack.config,
        "calendars": stack.calendars,
        "prometheus_url": stack.prometheus_url,
        "scheduled_windows": stack.scheduled_windows,
        "windowed_plan": stack.windowed_plan,
        "servicenow": (stack.servicenow_url, SNOW_CREDENTIALS),
        "receiver": stack.receiver_url,
        "refresh_dsns": stack.refresh_dsns,
        "migration_dsns": stack.migration_dsns,
        "grafana_url": stack.grafana_url,
        "jira_url": stack.jira_url,
    }
    path.write_bytes(pickle.dumps(view))


def attach(path: Path) -> DevStack:
    view = pickle.loads(path.read_bytes())  # noqa: S301 - written by this session's own host process
    stack = DevStack(view.pop("config"))
    url, credentials = view.pop("servicenow")
    stack.servicenow = RemoteServiceNow(url, credentials)
    stack.receiver = RemoteReceiver(view.pop("receiver"))
    for name, value in view.items():
        setattr(stack, name, value)
    return stack


def main(argv: list[str]) -> int:
    """Start the session's stack, run pytest with ``argv`` against it, stop it."""
    with session_stack() as stack, tempfile.TemporaryDirectory(prefix="releasetrain-e2e-host-") as folder:
        path = Path(folder) / "stack.pickle"
        describe(stack, path)
        print(f"e2e stack up: {stack.config.api_url} (Airflow home {stack.config.home})", flush=True)
        return subprocess.call([sys.executable, "-m", "pytest", *argv], env={**os.environ, STACK_FILE: str(path)})


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
