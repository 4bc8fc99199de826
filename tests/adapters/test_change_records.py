"""The ServiceNow change-record hook against a local ServiceNow Table API (tests/servers/servicenow.py)."""

from __future__ import annotations

import pytest
import requests

from releasetrain.core.change import ChangeRecordError, ChangeRef, ChangeState
from releasetrain.hooks.change_record import ServiceNowChangeHook, change_backend
from tests.helpers import http_connection
from tests.servers.servicenow import running_servicenow

USER, PASSWORD = "svc-release", "Sn0w-s3cret!"
TABLE = "/api/now/table/change_request"


@pytest.fixture
def snow(monkeypatch):
    with running_servicenow(USER, PASSWORD) as (instance, url):
        monkeypatch.setenv("AIRFLOW_CONN_SNOW_TEST", http_connection(url, (USER, PASSWORD)))
        monkeypatch.setenv("AIRFLOW_CONN_SNOW_BADPASS", http_connection(url, (USER, "wrong-password")))
        yield instance, url


def open_change(hook: ServiceNowChangeHook, change_type: str = "normal", correlation_id: str = "shop/run-1"):
    return hook.open(
        correlation_id=correlation_id,
        change_type=change_type,
        short_description="Release shop 2.0.0 to prod",
        description="releasetrain run manual__1: shop 2.0.0 (sha256:aaa) to prod",
        risk="moderate",
        planned_start="2026-07-01T09:00:00+02:00",
        planned_end="2026-07-01T10:30:00+02:00",
    )


def patches(instance) -> int:
    return sum(1 for method, _ in instance.requests if method == "PATCH")


def test_a_normal_change_walks_every_state(snow):
    instance, _ = snow
    hook = ServiceNowChangeHook("snow_test")
    ref = open_change(hook)
    assert ref.backend == "servicenow" and ref.state is ChangeState.NEW and ref.change_type == "normal"
    assert ref.number == "CHG0030001" and len(ref.id) == 32 and int(ref.id, 16) >= 0
    record = instance.records[ref.id]
    assert {k: record[k] for k in ("state", "type", "risk", "correlation_id", "correlation_display")} == {
        "state": "-5",
        "type": "normal",
        "risk": "3",
        "correlation_id": "shop/run-1",
        "correlation_display": "releasetrain",
    }
    assert (record["start_date"], record["end_date"]) == ("2026-07-01 07:00:00", "2026-07-01 08:30:00")

    ref = hook.move_to(ref, ChangeState.IMPLEMENT, note="deploying shop 2.0.0")
    assert ref.state is ChangeState.IMPLEMENT and patches(instance) == 4, "one PATCH per state"
    closed = hook.close(ref, outcome="success", notes="shop 2.0.0 is live in prod; verification passed")
    assert closed.state is ChangeState.CLOSED and closed.number == ref.number
    assert instance.walk(ref.id) == ["New", "Assess", "Authorize", "Scheduled", "Implement", "Review", "Closed"]
    assert [notes for _, notes in instance.history[ref.id]] == [""] + ["deploying shop 2.0.0"] * 4 + [
        "shop 2.0.0 is live in prod; verification passed"
    ] * 2
    record = instance.records[ref.id]
    assert (record["close_code"], record["close_notes"], record["active"]) == (
        "successful",
        "shop 2.0.0 is live in prod; verification passed",
        "false",
    )
    assert hook.get(ref) == closed
    assert hook.close(closed, outcome="success", notes="again") == closed, "closing twice is a no-op"
    assert patches(instance) == 6


def test_a_standard_change_skips_assess_and_authorize(snow):
    instance, _ = snow
    hook = ServiceNowChangeHook("snow_test")
    ref = hook.move_to(open_change(hook, "standard"), ChangeState.IMPLEMENT, note="deploying")
    closed = hook.close(ref, outcome="success_with_issues", notes="live; one smoke check was flaky")
    assert closed.state is ChangeState.CLOSED and closed.change_type == "standard"
    assert instance.walk(ref.id) == ["New", "Scheduled", "Implement", "Review", "Closed"]
    assert instance.records[ref.id]["close_code"] == "successful_issues"


def test_an_emergency_change_skips_assess(snow):
    instance, _ = snow
    hook = ServiceNowChangeHook("snow_test")
    ref = hook.move_to(open_change(hook, "emergency"), ChangeState.SCHEDULED, note="hotfix authorized")
    ref = hook.move_to(ref, ChangeState.IMPLEMENT, note="deploying hotfix")
    hook.close(ref, outcome="success", notes="hotfix live")
    assert instance.walk(ref.id) == ["New", "Authorize", "Scheduled", "Implement", "Review", "Closed"]
    assert [n for _, n in instance.history[ref.id]][1:] == ["hotfix authorized"] * 2 + ["deploying hotfix"] + [
        "hotfix live"
    ] * 2


@pytest.mark.parametrize("outcome", ["failed", "rolled_back"])
def test_a_failed_release_closes_unsuccessful(snow, outcome):
    instance, _ = snow
    hook = ServiceNowChangeHook("snow_test")
    ref = hook.move_to(open_change(hook), ChangeState.IMPLEMENT, note="deploying")
    closed = hook.close(ref, outcome=outcome, notes="health checks failed; rolled back to 1.0.0")
    assert closed.state is ChangeState.CLOSED
    assert instance.walk(ref.id)[-3:] == ["Implement", "Review", "Closed"]
    assert instance.records[ref.id]["close_code"] == "unsuccessful"


def test_a_failed_release_that_never_reached_implement_is_canceled(snow):
    instance, _ = snow
    hook = ServiceNowChangeHook("snow_test")
    ref = hook.move_to(open_change(hook), ChangeState.SCHEDULED, note="approved")
    canceled = hook.close(ref, outcome="failed", notes="the window closed before the deploy started")
    assert canceled.state is ChangeState.CANCELED
    assert instance.walk(ref.id) == ["New", "Assess", "Authorize", "Scheduled", "Canceled"]
    assert instance.records[ref.id]["close_code"] == "" and instance.records[ref.id]["active"] == "false"
    assert hook.close(canceled, outcome="failed", notes="retry") == canceled
    with pytest.raises(ChangeRecordError, match="was canceled: it cannot be closed as successful"):
        hook.close(canceled, outcome="success", notes="?")


def test_cancel_before_implement(snow):
    instance, _ = snow
    hook = ServiceNowChangeHook("snow_test")
    ref = hook.move_to(open_change(hook), ChangeState.AUTHORIZE, note="sent for approval")
    canceled = hook.cancel(ref, note="approval rejected by bob")
    assert canceled.state is ChangeState.CANCELED
    assert instance.history[ref.id][-1] == ("4", "approval rejected by bob")
    assert instance.walk(ref.id) == ["New", "Assess", "Authorize", "Canceled"]
    assert hook.cancel(canceled, note="again") == canceled and patches(instance) == 3
    with pytest.raises(ChangeRecordError, match="normal change in state 'canceled' cannot move to 'implement'"):
        hook.move_to(canceled, ChangeState.IMPLEMENT, note="no")


def test_open_is_idempotent_per_correlation_id(snow):
    instance, _ = snow
    hook = ServiceNowChangeHook("snow_test")
    first = open_change(hook)
    moved = hook.move_to(first, ChangeState.ASSESS, note="assessing")
    again = open_change(hook)
    assert again == moved and len(instance.records) == 1
    assert ("GET", TABLE) in instance.requests
    other = open_change(hook, correlation_id="shop/run-2")
    assert other.id != first.id and other.number == "CHG0030002" and len(instance.records) == 2
    with pytest.raises(ChangeRecordError, match="CHG0030001 for 'shop/run-1' is a normal change, not emergency"):
        open_change(hook, "emergency")


def test_moves_start_from_the_records_current_state(snow):
    instance, _ = snow
    hook = ServiceNowChangeHook("snow_test")
    stale = open_change(hook)
    hook.move_to(stale, ChangeState.IMPLEMENT, note="deploying")
    assert hook.move_to(stale, ChangeState.IMPLEMENT, note="retry").state is ChangeState.IMPLEMENT
    assert patches(instance) == 4, "already there: nothing to PATCH"
    with pytest.raises(ChangeRecordError, match="'scheduled' is behind 'implement'"):
        hook.move_to(stale, ChangeState.SCHEDULED, note="back")
    assert patches(instance) == 4


def test_the_local_instance_enforces_the_state_model(snow):
    """The test double refuses what ServiceNow's business rules refuse, so the walk above is meaningful."""
    instance, url = snow
    ref = open_change(ServiceNowChangeHook("snow_test"), "standard")
    endpoint = f"{url}{TABLE}/{ref.id}"
    jump = requests.patch(endpoint, json={"state": "-1", "work_notes": "jump"}, auth=(USER, PASSWORD), timeout=10)
    assert jump.status_code == 403 and jump.json()["status"] == "failure"
    assert "aborted by Business Rule 'State model - Can change state?" in jump.json()["error"]["message"]
    assert "cannot move from New to Implement; allowed: Scheduled, Canceled" in jump.json()["error"]["detail"]
    for state in ("-2", "-1", "0"):
        step = requests.patch(endpoint, json={"state": state}, auth=(USER, PASSWORD), timeout=10)
        assert step.status_code == 200 and step.json()["result"]["state"] == state
    close = requests.patch(endpoint, json={"state": "3"}, auth=(USER, PASSWORD), timeout=10)
    assert close.status_code == 403 and "mandatory: Close code, Close notes" in close.json()["error"]["detail"]
    missing = requests.get(f"{url}{TABLE}/{'0' * 32}", auth=(USER, PASSWORD), timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "No Record found"
    query = requests.get(
        f"{url}{TABLE}",
        params={"sysparm_query": "type=standard^state=0", "sysparm_limit": "5"},
        auth=(USER, PASSWORD),
        timeout=10,
    )
    assert [r["number"] for r in query.json()["result"]] == [ref.number]
    assert instance.walk(ref.id) == ["New", "Scheduled", "Implement", "Review"]


def test_server_errors_name_the_connection_and_endpoint(snow):
    instance, _ = snow
    hook = ServiceNowChangeHook("snow_test")
    ref = open_change(hook)
    instance.fail_next(1)
    with pytest.raises(ChangeRecordError) as info:
        hook.get(ref)
    message = str(info.value)
    assert f"ServiceNow 'snow_test': GET api/now/table/change_request/{ref.id} answered HTTP 500" in message
    assert "Internal server error (injected fault)" in message
    assert hook.get(ref) == ref, "the next request goes through"
    instance.fail_next(1, status=503, message="Service Unavailable", method="PATCH")
    with pytest.raises(ChangeRecordError, match=f"PATCH api/now/table/change_request/{ref.id} answered HTTP 503"):
        hook.move_to(ref, ChangeState.ASSESS, note="x")
    assert hook.move_to(ref, ChangeState.ASSESS, note="x").state is ChangeState.ASSESS


def test_a_refused_step_surfaces_servicenows_message(snow):
    instance, url = snow
    hook = ServiceNowChangeHook("snow_test")
    ref = open_change(hook)
    # someone canceled it in ServiceNow after our last read: the business rule refuses the step
    requests.patch(f"{url}{TABLE}/{ref.id}", json={"state": "4"}, auth=(USER, PASSWORD), timeout=10)
    with pytest.raises(ChangeRecordError, match="already canceled"):
        hook.move_to(ref, ChangeState.ASSESS, note="x")


def test_bad_credentials_are_named_without_the_password(snow):
    instance, _ = snow
    with pytest.raises(ChangeRecordError) as info:
        open_change(ServiceNowChangeHook("snow_badpass"))
    message = str(info.value)
    assert "ServiceNow 'snow_badpass': GET api/now/table/change_request?sysparm_query=correlation_id=" in message
    assert "HTTP 401: User Not Authenticated" in message
    assert "wrong-password" not in message and PASSWORD not in message
    assert not instance.records


def test_unreachable_instance_is_named(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SNOW_GONE", http_connection("http://127.0.0.1:9", (USER, PASSWORD)))
    ref = ChangeRef("servicenow", "f" * 32, "CHG0030001", ChangeState.NEW, "normal")
    with pytest.raises(
        ChangeRecordError, match=f"ServiceNow 'snow_gone': GET api/now/table/change_request/{'f' * 32} failed"
    ):
        ServiceNowChangeHook("snow_gone").get(ref)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"change_type": "rapid"}, "unknown change type 'rapid'"),
        ({"risk": "critical"}, "unknown risk 'critical': expected one of low, moderate, high"),
        ({"correlation_id": "a^b"}, "without '\\^'"),
        ({"planned_start": "next tuesday"}, "planned_start 'next tuesday' is not an ISO 8601 date-time"),
    ],
)
def test_open_refuses_bad_arguments_before_calling(overrides, message):
    args = dict(
        correlation_id="c",
        change_type="normal",
        short_description="s",
        description="d",
        risk="low",
        planned_start=None,
        planned_end=None,
    )
    with pytest.raises(ChangeRecordError, match=message):
        ServiceNowChangeHook("snow_unused").open(**{**args, **overrides})


def test_other_backends_refs_and_kinds_are_refused(snow):
    hook = change_backend("servicenow", "snow_test")
    assert isinstance(hook, ServiceNowChangeHook) and hook.servicenow_conn_id == "snow_test"
    assert change_backend("servicenow", None).servicenow_conn_id == "servicenow_default"
    with pytest.raises(ChangeRecordError, match="unknown change record backend 'remedy'"):
        change_backend("remedy", None)
    with pytest.raises(ChangeRecordError, match="is a 'builtin' change record, not a ServiceNow one"):
        hook.get(ChangeRef("builtin", "1", "CHG-1", ChangeState.NEW, "normal"))
    with pytest.raises(ValueError, match="unknown release outcome 'done'"):
        hook.close(ChangeRef("servicenow", "1", "CHG1", ChangeState.NEW, "normal"), outcome="done", notes="n")
