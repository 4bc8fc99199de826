"""The end-to-end tests' fixtures: the session's stack (``tests/e2e/session.py``), clients
as the demo users, the demo fleet and the release ledger."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import requests

from releasetrain.client import AirflowClient
from tests.e2e.session import STACK_FILE, _free_port, attach, session_stack, write_calendar  # noqa: F401 - shared


@pytest.fixture(scope="session")
def stack():
    """The session's stack: the one ``python -m tests.e2e.session`` started, or one of this process's."""
    if os.environ.get(STACK_FILE):
        yield attach(Path(os.environ[STACK_FILE]))
        return
    with session_stack() as started:
        yield started


@pytest.fixture(scope="session")
def author(stack) -> AirflowClient:
    return AirflowClient(stack.config.api_url, "author", "author")


@pytest.fixture(scope="session")
def approver(stack) -> AirflowClient:
    return AirflowClient(stack.config.api_url, "approver", "approver")


@pytest.fixture(scope="session")
def approver2_client(stack) -> AirflowClient:
    return AirflowClient(stack.config.api_url, "approver2", "approver2")


@pytest.fixture(scope="session")
def admin(stack) -> AirflowClient:
    return AirflowClient(stack.config.api_url, "admin", "admin")


@pytest.fixture(scope="session")
def fleet(stack):
    """``fleet(env)`` -> what the demo fleet says about an environment; ``fleet.post(path, json)``."""

    class Fleet:
        def __call__(self, environment: str) -> dict:
            response = requests.get(
                f"{stack.config.fleet_url}/environments/{environment}", auth=stack.fleet_auth(), timeout=10
            )
            response.raise_for_status()
            return response.json()

        def post(self, path: str, body: dict) -> dict:
            response = requests.post(f"{stack.config.fleet_url}{path}", json=body, auth=stack.fleet_auth(), timeout=10)
            response.raise_for_status()
            return response.json()

    return Fleet()


@pytest.fixture(scope="session")
def ledger(stack):
    """The stack's release ledger, read the way the CLI reads it (its Airflow connection)."""
    from releasetrain.hooks.ledger import SqliteLedgerStore, store_from_url

    conn = stack.config.ledger_conn
    if conn:
        url = f"postgresql://{conn['login']}@{conn['host']}:{conn['port']}/{conn['schema']}"
        store = store_from_url(url)
    else:
        store = SqliteLedgerStore(stack.config.home / "releasetrain-ledger.db")

    class Ledger:
        def events(self, release: str, run_id: str, dag_id: str | None = None) -> list:
            return list(store.events(release=release, run_id=run_id, dag_id=dag_id))

        def wait_for(self, release: str, run_id: str, kind: str, *, dag_id: str | None = None, timeout: float = 60):
            """The run's events once one of ``kind`` is there (the listener writes run states a little later)."""
            deadline = time.monotonic() + timeout
            while True:
                events = self.events(release, run_id, dag_id)
                if any(e.kind == kind for e in events):
                    return events
                assert time.monotonic() < deadline, (
                    f"no {kind} event for {release} {run_id}: {[e.kind for e in events]}"
                )
                time.sleep(1)

        def kinds(self, release: str, run_id: str) -> list[str]:
            return [e.kind for e in self.events(release, run_id)]

        def verify(self):
            return store.verify()

    yield Ledger()
    store.close()


# the longest modules first: pytest-xdist hands whole modules (--dist loadfile) to its
# workers in collection order (with --no-loadscope-reorder: by default it puts the modules
# with the most tests first), so the session ends soon after its longest module
MODULE_ORDER = [  # measured: the longest first (--durations; make test's and make test-extended's)
    "test_environments_e2e",
    "test_packaging_e2e",
    "test_release_e2e",
    "test_migrations_e2e",
    "test_scope_e2e",
    "test_gates_e2e",
    "test_windows_e2e",
    "test_progressive_e2e",
    "test_identity_e2e",
    "test_trends_e2e",
    "test_governance_e2e",
    "test_incidents_e2e",
    "test_cockpit_e2e",
    "test_data_e2e",
]


def pytest_collection_modifyitems(config, items):
    def rank(item):
        name = item.module.__name__.rsplit(".", 1)[-1]
        return MODULE_ORDER.index(name) if name in MODULE_ORDER else len(MODULE_ORDER)

    items.sort(key=rank)  # stable: each module's own order is kept
