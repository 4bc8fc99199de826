from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Unit and adapter tests never touch a shared Airflow home: one throw-away home per session,
# configured before anything imports airflow.
_home = tempfile.mkdtemp(prefix="releasetrain-unit-home-")
os.environ["AIRFLOW_HOME"] = _home
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ.pop("RELEASETRAIN_SPEC_DIRS", None)
os.environ.pop("AIRFLOW__RELEASETRAIN__SPEC_DIRS", None)


import json  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def fresh_ledger(request, tmp_path_factory, monkeypatch):
    """Every unit and adapter test gets a ledger of its own (gates read the ledger; nothing may
    leak between tests). End-to-end tests use their stack's ledger."""
    if request.node.get_closest_marker("e2e"):
        return None
    path = tmp_path_factory.mktemp("ledger") / "ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_RELEASETRAIN_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    init_ledger(path)
    return path


def init_ledger(path) -> None:
    """What `releasetrain ledger init` does (a missing ledger is never created implicitly)."""
    from releasetrain.hooks.ledger import SqliteLedgerStore

    store = SqliteLedgerStore(path)
    store.create = True
    store.head()
    store.close()


def pytest_collection_modifyitems(config, items):
    """A test marked ``extended`` is a long end-to-end scenario: without ``e2e`` it would run
    with the unit tests, outside the stack it needs."""
    stray = [i.nodeid for i in items if i.get_closest_marker("extended") and not i.get_closest_marker("e2e")]
    if stray:
        raise pytest.UsageError(f"marked extended but not e2e: {', '.join(stray)}")
