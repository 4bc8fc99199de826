"""The built-in change-record backend: change records as ledger events."""

from __future__ import annotations

import json

import pytest

from releasetrain.core.change import ChangeRecordError, ChangeState
from releasetrain.hooks.change_record import change_backend
from releasetrain.hooks.ledger import LedgerHook
from tests.conftest import init_ledger


@pytest.fixture
def backend(tmp_path, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_LEDGER_T", json.dumps({"conn_type": "sqlite", "host": str(tmp_path / "l.db")}))
    init_ledger(tmp_path / "l.db")
    return change_backend("builtin", "ledger_t")


def _open(backend, change_type="normal", run="manual__1"):
    return backend.open(
        correlation_id=f"storefront/{run}",
        change_type=change_type,
        short_description="storefront 1.2.0",
        description="release run",
        risk="low",
        planned_start=None,
        planned_end=None,
    )


@pytest.mark.parametrize(
    ("change_type", "walk"),
    [
        ("normal", ["new", "assess", "authorize", "scheduled", "implement", "review", "closed"]),
        ("standard", ["new", "scheduled", "implement", "review", "closed"]),
        ("emergency", ["new", "authorize", "scheduled", "implement", "review", "closed"]),
    ],
)
def test_full_state_model_is_recorded_in_the_ledger(backend, change_type, walk):
    ref = _open(backend, change_type)
    assert _open(backend, change_type) == ref  # idempotent per run
    ref = backend.move_to(ref, ChangeState.IMPLEMENT, note="deploying to prod")
    closed = backend.close(ref, outcome="success", notes="live and healthy")
    assert closed.state is ChangeState.CLOSED
    events = list(LedgerHook("ledger_t").events(release="storefront", run_id="manual__1"))
    assert [e.details["state"] for e in events] == walk
    assert events[-1].kind == "change_closed" and events[-1].details["close_code"] == "successful"
    assert LedgerHook("ledger_t").verify().ok


def test_failed_release_before_implement_is_canceled_after_it_closed_unsuccessful(backend):
    early = _open(backend, run="manual__early")
    assert backend.close(early, outcome="failed", notes="rejected at approval").state is ChangeState.CANCELED
    late = backend.move_to(_open(backend, run="manual__late"), ChangeState.IMPLEMENT, note="deploying")
    closed = backend.close(late, outcome="rolled_back", notes="health failed; rolled back")
    assert closed.state is ChangeState.CLOSED
    last = list(LedgerHook("ledger_t").events(run_id="manual__late"))[-1]
    assert last.details["close_code"] == "unsuccessful"
    with pytest.raises(ChangeRecordError):
        backend.move_to(closed, ChangeState.IMPLEMENT, note="again")
