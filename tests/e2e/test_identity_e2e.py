"""Identity by user id on an auth manager whose ids are not names (FAB: numeric ids).

A stack of its own, on Airflow's FAB auth manager (``apache-airflow-providers-fab``): the
demo users get numeric ids, the people directory (``users:`` of the groups file) links
them to names. The author is in the approver pool by id and must never approve.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import pytest

from releasetrain.client import AirflowAPIError, AirflowClient
from releasetrain.devstack import DevStack, StackConfig
from tests.conftest import PROJECT_ROOT
from tests.e2e.conftest import _free_port

pytestmark = pytest.mark.e2e

DAG = "release_identity"


@pytest.fixture(scope="module")
def fab_stack():
    home = Path(tempfile.mkdtemp(prefix="releasetrain-e2e-fab-"))
    config = StackConfig(
        project_root=PROJECT_ROOT,
        home=home,
        api_port=_free_port(),
        fleet_port=_free_port(),
        spec_dirs=[PROJECT_ROOT / "tests" / "fixtures" / "identity"],
        fleet_environments=["id-prod"],
        fleet_seed={"id-prod": "1.0.0"},
        fleet_deploy_seconds=0.5,
        parallelism=4,
        auth_manager="fab",
    )
    stack = DevStack(config)
    try:
        stack.prepare()
        stack.start()
        admin = AirflowClient(config.api_url, "admin", "admin")
        deadline = time.monotonic() + 180
        while DAG not in admin.dag_ids():
            assert time.monotonic() < deadline, f"{DAG} not parsed: {admin.import_errors()}"
            time.sleep(2)
        yield stack
    finally:
        stack.stop()


def test_an_author_with_a_numeric_id_never_approves_their_own_release(fab_stack):
    ids = fab_stack.fab_ids
    assert (ids["author"], ids["approver"]) == ("1", "2"), "the fixture's approvers are these ids"
    url = fab_stack.config.api_url
    author, approver = AirflowClient(url, "author", "author"), AirflowClient(url, "approver", "approver")
    run_id = author.trigger(DAG, {"version": "2.0.0", "change_summary": "identity by id"})["dag_run_id"]
    assert author.run(DAG, run_id)["triggering_user_name"] == "author"  # the run knows the name only
    detail = author.wait_for_approval(DAG, run_id, "id-prod.approve")
    assert detail["assigned_users"] == [{"id": "2", "name": "approver"}], "the author (id 1) is never assigned"
    with pytest.raises(AirflowAPIError) as refused:
        author.respond(DAG, run_id, "id-prod.approve", "Approve")
    assert refused.value.status_code == 403
    assert approver.answer(DAG, run_id, "id-prod.approve", "Approve") == "success"
    run = author.wait_for_run(DAG, run_id, timeout=300)
    assert run["state"] == "success", author.task_states(DAG, run_id)
    from releasetrain.hooks.ledger import SqliteLedgerStore

    store = SqliteLedgerStore(fab_stack.config.home / "releasetrain-ledger.db")
    try:
        events = list(store.events(release="identity", run_id=run_id))
    finally:
        store.close()
    # one approval, or two when Airflow 3.3's fast-trigger race retried the answered task and
    # the approver answered again (client.answer): every one of them by the approver's id
    given = [e.actor for e in events if e.kind == "approval_given"]
    assert given and set(given) == {"2"}, given
    triggered = next(e for e in events if e.kind == "triggered")
    assert triggered.details["triggered_by"] == "author" and triggered.details["triggered_by_id"] == "1"
