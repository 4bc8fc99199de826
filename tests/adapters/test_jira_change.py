"""The Jira change backend (the Atlassian Jira provider's client) against a local Jira
implementing the REST API subset it uses (tests/servers/jira.py)."""

from __future__ import annotations

import json

import pytest

from releasetrain.core.change import ChangeRecordError, ChangeState
from releasetrain.hooks.change_record import change_backend
from releasetrain.hooks.jira_change import JiraChangeBackend, correlation_label
from tests.servers.jira import running_jira

USER, TOKEN = "svc-release", "j1ra-t0ken"


def jira_conn(url: str, password: str = TOKEN, **extra) -> str:
    return json.dumps(
        {"conn_type": "jira", "host": url, "login": USER, "password": password, "extra": {"project": "CHG", **extra}}
    )


@pytest.fixture
def jira(monkeypatch):
    with running_jira(USER, TOKEN) as (instance, url):
        monkeypatch.setenv("AIRFLOW_CONN_JIRA_TEST", jira_conn(url))
        monkeypatch.setenv("AIRFLOW_CONN_JIRA_BADPASS", jira_conn(url, "wrong-token"))
        monkeypatch.setenv("AIRFLOW_CONN_JIRA_RENAMED", jira_conn(url, statuses={"authorize": "Awaiting CAB"}))
        monkeypatch.setenv("AIRFLOW_CONN_JIRA_NOPROJECT", jira_conn(url, project=""))
        monkeypatch.setenv("AIRFLOW_CONN_JIRA_ODD", jira_conn(url, resolutions={"unsuccessful": "Botched"}))
        yield instance, url


def open_change(backend, change_type="normal", correlation_id="shop/release_shop/manual__1", risk="moderate"):
    return backend.open(
        correlation_id=correlation_id,
        change_type=change_type,
        short_description="Release shop 2.0.0",
        description="releasetrain run manual__1: shop 2.0.0 to staging, prod",
        risk=risk,
        planned_start="2026-07-01T09:00:00+02:00",
        planned_end="2026-07-01T10:30:00+02:00",
    )


def test_a_normal_change_walks_the_issue_workflow_and_closes_with_a_resolution(jira):
    instance, _ = jira
    backend = change_backend("jira", "jira_test")
    ref = open_change(backend)
    assert (ref.backend, ref.number, ref.id, ref.state, ref.change_type) == (
        "jira", "CHG-1", "CHG-1", ChangeState.NEW, "normal",
    )  # fmt: skip
    fields = instance.issues["CHG-1"]["fields"]
    assert fields["issuetype"]["name"] == "Change" and fields["summary"] == "Release shop 2.0.0"
    assert sorted(fields["labels"]) == sorted(
        ["releasetrain", correlation_label("shop/release_shop/manual__1"), "change-normal", "risk-moderate"]
    )
    assert "Planned start: 2026-07-01T09:00:00+02:00" in fields["description"]

    ref = backend.move_to(ref, ChangeState.IMPLEMENT, note="deploying shop 2.0.0")
    assert ref.state is ChangeState.IMPLEMENT
    closed = backend.close(ref, outcome="success", notes="shop 2.0.0 is live; verification passed")
    assert closed.state is ChangeState.CLOSED
    assert instance.walk("CHG-1") == ["New", "Assess", "Authorize", "Scheduled", "Implement", "Review", "Closed"]
    assert fields["resolution"] == {"name": "Done"}
    comments = [c["body"] for c in fields["comment"]["comments"]]
    assert comments[:4] == ["deploying shop 2.0.0"] * 4
    assert comments[-1] == "shop 2.0.0 is live; verification passed (close code: successful)"
    assert backend.get(ref) == closed
    posts = sum(1 for method, path in instance.requests if method == "POST" and path.endswith("/transitions"))
    assert backend.close(closed, outcome="success", notes="again") == closed, "closing twice is a no-op"
    assert sum(1 for m, p in instance.requests if m == "POST" and p.endswith("/transitions")) == posts


@pytest.mark.parametrize(
    ("change_type", "walk"),
    [
        ("standard", ["New", "Scheduled", "Implement", "Review", "Closed"]),
        ("emergency", ["New", "Authorize", "Scheduled", "Implement", "Review", "Closed"]),
    ],
)
def test_each_change_type_takes_its_own_way_through_the_workflow(jira, change_type, walk):
    instance, _ = jira
    backend = JiraChangeBackend("jira_test")
    ref = open_change(backend, change_type)
    closed = backend.close(backend.move_to(ref, ChangeState.IMPLEMENT, note="go"), outcome="rolled_back", notes="bad")
    assert closed.state is ChangeState.CLOSED and instance.walk(ref.id) == walk
    assert instance.issues[ref.id]["fields"]["resolution"] == {"name": "Failed"}


def test_a_release_that_never_reached_implement_is_canceled_and_open_is_idempotent(jira):
    instance, _ = jira
    backend = JiraChangeBackend("jira_test")
    ref = open_change(backend)
    assert open_change(backend) == ref, "a retried open finds the run's issue (its label)"
    assert len(instance.issues) == 1
    with pytest.raises(ChangeRecordError, match="CHG-1 for .* is a normal change, not emergency"):
        open_change(backend, "emergency")
    ref = backend.move_to(ref, ChangeState.AUTHORIZE, note="sent for approval")
    canceled = backend.close(ref, outcome="failed", notes="rejected by the CAB")
    assert canceled.state is ChangeState.CANCELED
    assert instance.walk(ref.id) == ["New", "Assess", "Authorize", "Canceled"]
    assert instance.issues[ref.id]["fields"]["resolution"] == {"name": "Won't Do"}
    assert backend.cancel(canceled, note="again") == canceled
    with pytest.raises(ChangeRecordError, match="cannot move to 'implement'"):
        backend.move_to(canceled, ChangeState.IMPLEMENT, note="no")


def test_a_workflow_with_other_status_names_is_mapped_by_the_connection(jira):
    instance, _ = jira
    # the local workflow says "Authorize": a connection that maps authorize elsewhere finds no way there
    backend = JiraChangeBackend("jira_renamed")
    ref = open_change(backend)
    with pytest.raises(ChangeRecordError, match="CHG-1 in 'Assess' has no transition to 'Awaiting CAB'"):
        backend.move_to(ref, ChangeState.AUTHORIZE, note="x")
    instance.issues["CHG-1"]["fields"]["status"] = {"name": "Limbo"}
    with pytest.raises(ChangeRecordError, match="CHG-1 is in status 'Limbo', which is no change state"):
        backend.get(ref)


def test_errors_name_the_connection_and_never_the_token(jira):
    instance, url = jira
    with pytest.raises(ChangeRecordError) as refused:
        open_change(JiraChangeBackend("jira_badpass"))
    assert "Jira 'jira_badpass'" in str(refused.value) and "401" in str(refused.value)
    assert "wrong-token" not in str(refused.value)
    instance.fail_next(1, 500)
    with pytest.raises(ChangeRecordError, match=r"Jira 'jira_test': cannot search issues: HTTP 500"):
        open_change(JiraChangeBackend("jira_test"))
    with pytest.raises(ChangeRecordError, match="must name the project key"):
        JiraChangeBackend("jira_noproject")
    with pytest.raises(ChangeRecordError, match="unknown change type 'urgent'"):
        open_change(JiraChangeBackend("jira_test"), "urgent")


def test_the_local_jira_enforces_its_workflow_and_resolution(jira):
    import requests

    instance, url = jira
    auth = (USER, TOKEN)
    ref = open_change(JiraChangeBackend("jira_test"))
    api = f"{url}/rest/api/2/issue/{ref.id}/transitions"
    skip = requests.post(api, json={"transition": {"id": "61"}}, auth=auth, timeout=5)
    assert skip.status_code == 400 and "not valid for this issue" in skip.json()["errorMessages"][0]
    cancel = requests.post(api, json={"transition": {"id": "91"}}, auth=auth, timeout=5)
    assert cancel.status_code == 400 and "Resolution is required" in cancel.json()["errors"]["resolution"]
    jql = requests.get(f"{url}/rest/api/2/search", params={"jql": "summary ~ shop"}, auth=auth, timeout=5)
    assert jql.status_code == 400 and "Error in the JQL Query" in jql.json()["errorMessages"][0]
    assert requests.get(api, timeout=5).status_code == 401


def test_a_resolution_the_workflow_does_not_allow_and_a_duplicate_issue_are_named(jira):
    instance, _ = jira
    odd = JiraChangeBackend("jira_odd")
    ref = odd.move_to(open_change(odd), ChangeState.IMPLEMENT, note="go")
    with pytest.raises(
        ChangeRecordError, match=r"'Close' allows the resolutions \['Done', 'Failed', \"Won't Do\"\], not 'Botched'"
    ):
        odd.close(ref, outcome="rolled_back", notes="bad")
    assert instance.walk(ref.id)[-1] == "Review", "nothing closed with a resolution Jira does not have"
    # two issues carry the run's label (someone copied it): never pick one silently
    backend = JiraChangeBackend("jira_test")
    second = open_change(backend, correlation_id="shop/release_shop/manual__2")
    instance.issues[second.id]["fields"]["labels"] = list(instance.issues[ref.id]["fields"]["labels"])
    with pytest.raises(ChangeRecordError, match="CHG-1, CHG-2 all carry the run's label"):
        open_change(backend)
