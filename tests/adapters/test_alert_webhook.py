"""The alert webhook (the plugin's FastAPI app) on a real ledger: auth, format, attachment."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from releasetrain.core.ledger import now_iso


@pytest.fixture
def ledger(monkeypatch, tmp_path):
    from releasetrain.hooks.ledger import LedgerHook
    from tests.conftest import init_ledger

    init_ledger(tmp_path / "ledger.db")
    conn = {"conn_type": "sqlite", "host": str(tmp_path / "ledger.db")}
    monkeypatch.setenv("AIRFLOW_CONN_RELEASETRAIN_LEDGER", json.dumps(conn))
    monkeypatch.setenv("AIRFLOW_CONN_RELEASETRAIN_ALERTS", json.dumps({"conn_type": "http", "password": "s3cret"}))
    from releasetrain import alerts_api

    alerts_api._cached.clear()  # the token is looked up at most once a minute
    hook = LedgerHook()
    yield hook
    hook.close()
    alerts_api._cached.clear()


def body(env: str, started: datetime) -> dict:
    return {
        "version": "4",
        "alerts": [
            {
                "status": "firing",
                "labels": {"alertname": "HighLatency", "environment": env},
                "annotations": {},
                "startsAt": started.isoformat(),
                "fingerprint": "abc",
            }
        ],
    }


def test_alerts_are_attached_to_the_deploy_they_follow_only_with_the_token(ledger):
    from fastapi.testclient import TestClient

    from releasetrain.alerts_api import PATH, create_app

    ledger.append("deployed", release="shop", run_id="r1", dag_id="release_shop", environment="prod",
                  details={"version": "1.2.0"})  # fmt: skip
    ledger.append("deployed", release="shop", run_id="r0", dag_id="release_shop", environment="staging",
                  details={"version": "1.2.0"})  # fmt: skip
    client = TestClient(create_app())
    now = datetime.now(UTC) + timedelta(seconds=5)
    assert client.post(PATH, json=body("prod", now)).status_code == 401
    assert client.post(PATH, json=body("prod", now), headers={"Authorization": "Bearer s3cre"}).status_code == 401
    auth = {"Authorization": "Bearer s3cret"}
    assert client.post(PATH, content=b"{" * 1_000_001, headers=auth).status_code == 413
    bad = client.post(PATH, json={"version": "4", "alerts": "x"}, headers=auth)
    assert bad.status_code == 400 and "alerts: a list is required" in bad.json()["detail"]
    answer = client.post(PATH, json=body("prod", now), headers=auth)
    assert answer.status_code == 200
    [attached] = answer.json()["attached"]
    assert (attached["run_id"], attached["deployed_version"], attached["alert"]) == ("r1", "1.2.0", "HighLatency")
    assert attached["releases_attached"] == 1
    assert client.post(PATH, json=body("prod", now), headers=auth).json()["attached"] == []  # once
    late = client.post(PATH, json=body("prod", now + timedelta(hours=2)), headers=auth)
    assert late.json()["attached"] == [], "outside the window (60 minutes by default)"
    [event] = [e for e in ledger.events(release="shop", run_id="r1") if e.kind == "alert_received"]
    assert event.environment == "prod" and event.actor == "alertmanager" and event.details["fingerprint"] == "abc"
    assert now_iso()  # the ledger's clock is the one the window is measured on


def test_without_a_token_connection_the_webhook_is_closed(monkeypatch, ledger):
    from fastapi.testclient import TestClient

    from releasetrain.alerts_api import PATH, create_app

    monkeypatch.delenv("AIRFLOW_CONN_RELEASETRAIN_ALERTS")
    too_big = TestClient(create_app()).post(PATH, content=b"x" * 1_000_001, headers={"Authorization": "Bearer x"})
    assert too_big.status_code in (413, 503)
    answer = TestClient(create_app()).post(PATH, json={}, headers={"Authorization": "Bearer anything"})
    assert answer.status_code == 503 and "releasetrain_alerts" in answer.json()["detail"]
