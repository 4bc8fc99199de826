"""The cockpit's API as the API server serves it (the plugin's FastAPI app, in process):
Airflow's own user resolution (401 without a token), only the DAGs the auth manager lets
the user read, the run story from the ledger, and the signed evidence download."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from releasetrain import cockpit_api
from releasetrain.core.bundle import generate_private_key_pem
from releasetrain.core.vocabulary import Event
from tests.conftest import PROJECT_ROOT


def append(kind, *, release, run_id, environment="", actor="", **details):
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    try:
        hook.append(
            kind,
            release=release,
            run_id=run_id,
            dag_id=f"release_{release}",
            environment=environment,
            actor=actor,
            details=details,
        )
    finally:
        hook.close()


@pytest.fixture
def client():
    from releasetrain.plugin import ReleaseTrainPlugin

    return TestClient(ReleaseTrainPlugin._app)


@pytest.fixture
def signed_in(monkeypatch):
    """A user the auth manager lets read release_storefront's runs only."""

    class User:
        def get_name(self):
            return "approver"

    async def user(request):
        return User()

    monkeypatch.setattr(cockpit_api, "current_user", user)
    monkeypatch.setattr(cockpit_api, "readable_dags", lambda u, entity="RUN": {"release_storefront"})
    monkeypatch.setattr(cockpit_api, "may_read_run", lambda u, dag_id: dag_id == "release_storefront")
    monkeypatch.setattr(cockpit_api, "pending_requests", lambda dags: [])
    monkeypatch.setattr(cockpit_api, "project_root", lambda: PROJECT_ROOT)


@pytest.mark.parametrize(
    "path", ["/cockpit/", "/cockpit/api/overview", "/cockpit/api/runs/release_storefront/r1", "/cockpit/runs/d/r"]
)
def test_without_a_token_every_cockpit_route_answers_401(client, path):
    response = client.get(path)
    assert response.status_code == 401, response.text


def test_the_overview_shows_only_the_releases_the_user_may_read(client, signed_in):
    append(Event.RUN_STARTED, release="storefront", run_id="r1", actor="author")
    append(Event.DEPLOYED, release="storefront", run_id="r1", environment="prod", version="2.0.0", digest="d2")
    append(Event.RUN_STATE, release="storefront", run_id="r1", state="success")
    append(Event.DEPLOYED, release="secret", run_id="s1", environment="prod", version="6.6.6", digest="d6")
    response = client.get("/cockpit/api/overview", params={"days": 30})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [(r["release"], r["environment"], r["version"], r["last_good"]) for r in body["live"]] == [
        ("storefront", "prod", "2.0.0", True)
    ]
    assert [(m["release"], m["deployments"]) for m in body["trends"]["measures"]] == [("storefront", 1)]
    assert {e["environment"] for e in body["calendar"]["environments"]} >= {"prod"}
    assert all("storefront" in e["releases"] for e in body["calendar"]["environments"])
    assert client.get("/cockpit/api/overview", params={"days": 7}).status_code == 400


def test_a_run_story_is_the_ledgers_and_another_dags_runs_are_refused(client, signed_in):
    append(Event.RUN_STARTED, release="storefront", run_id="r1", actor="author")
    change = {"backend": "builtin", "id": "r1", "number": "RT-1", "state": "new", "change_type": "normal"}
    append(Event.RISK_ASSESSED, release="storefront", run_id="r1", change=change)
    append(Event.CHANGE_TRANSITION, release="storefront", run_id="r1", state="implement")
    append(Event.APPROVAL_GIVEN, release="storefront", run_id="r1", environment="prod", actor="approver")
    story = client.get("/cockpit/api/runs/release_storefront/r1").json()
    assert [(e["kind"], e["actor"]) for e in story["timeline"]] == [
        ("run_started", "author"),
        ("risk_assessed", ""),
        ("change_transition", ""),
        ("approval_given", "approver"),
    ]
    assert (story["change"]["number"], story["change"]["state"]) == ("RT-1", "implement")
    assert story["ledger"]["ok"] is True
    assert client.get("/cockpit/api/runs/release_secret/s1").status_code == 403
    assert client.get("/cockpit/runs/release_secret/s1").status_code == 403


def test_the_evidence_download_is_a_signed_bundle_that_verifies(client, signed_in, monkeypatch):
    from releasetrain.core.bundle import load_private_key, public_key_pem
    from releasetrain.core.evidence import verify_evidence
    from releasetrain.devstack import signing_connection

    key = generate_private_key_pem()
    monkeypatch.setenv("AIRFLOW_CONN_RELEASETRAIN_EVIDENCE_SIGNING", signing_connection(key))
    append(Event.RUN_STARTED, release="storefront", run_id="r1", actor="author")
    append(Event.DEPLOYED, release="storefront", run_id="r1", environment="prod", version="2.0.0", digest="d2")
    response = client.get("/cockpit/api/runs/release_storefront/r1/evidence")
    assert response.status_code == 200, response.text
    assert "attachment" in response.headers["content-disposition"]
    document = response.json()
    assert len(document["events"]) == 2 and verify_evidence(document, public_key_pem(load_private_key(key))) == []


def test_without_an_evidence_key_the_download_says_why(client, signed_in):
    append(Event.RUN_STARTED, release="storefront", run_id="r1", actor="author")
    response = client.get("/cockpit/api/runs/release_storefront/r1/evidence")
    assert response.status_code == 503 and "releasetrain_evidence_signing" in response.json()["detail"]


def test_readable_dags_asks_the_auth_manager(monkeypatch):
    """What a user sees is what the configured auth manager allows: the DAG, and its runs (or
    its human requests) too."""
    asked = []

    class Manager:
        def get_authorized_dag_ids(self, *, user, method="GET", session=None):
            asked.append(("dags", user, method))
            return {"release_a", "release_b"}

        def is_authorized_dag(self, *, method, user, access_entity=None, details=None):
            asked.append((access_entity.value, details.id))
            return details.id == "release_a" or access_entity.value == "HITL_DETAIL"

    monkeypatch.setattr("airflow.api_fastapi.app.get_auth_manager", lambda: Manager())
    assert cockpit_api.readable_dags("someone") == {"release_a"}
    assert ("dags", "someone", "GET") in asked and ("RUN", "release_b") in asked
    assert cockpit_api.readable_dags("someone", "HITL_DETAIL") == {"release_a", "release_b"}
