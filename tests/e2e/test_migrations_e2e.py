"""Issue 14 (schema migrations): ``release_migrating`` migrates a PostgreSQL database per
environment in the target's lock before each deploy.

- Expand steps are applied before the deploy, journaled in the database and recorded in the
  ledger; the deploy follows them.
- A contract step is refused while an environment runs a version that needs the old shape;
  nothing is applied and nothing is deployed.
- A step failing half-way fails the stage: the reconcile steps of what the run touched run,
  and an owner is asked "data reconciled?" while the target stays locked. The migrate step
  cleared then resumes without applying anything twice. Marked successful by hand, the
  reconcile step resolves nothing: the next release's migration refuses to run on the
  database until someone answers.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.e2e.records import the_decision, the_refusal

# long scenarios: make test-extended (CI runs them after make test)
pytestmark = [pytest.mark.e2e, pytest.mark.extended]

DAG, RELEASE = "release_migrating", "migrating"
DEV, PROD = "mig-dev", "mig-prod"
ROOT = Path(__file__).resolve().parents[2]
COMPONENT = ROOT / "tests" / "fixtures" / "generated" / "orders-api"
APP = ROOT / "include" / "demo_fleet" / "artifacts" / "cart-api"

CREATE = "-- phase: expand\nCREATE TABLE orders (id integer PRIMARY KEY, legacy_note text);\n"
ADD_NOTE = "-- phase: expand\nALTER TABLE orders ADD COLUMN note text;\nUPDATE orders SET note = legacy_note;\n"
DROP_LEGACY = "-- phase: contract\nALTER TABLE orders DROP COLUMN legacy_note;\n"
ADD_STATUS = "-- phase: expand\nALTER TABLE orders ADD COLUMN status text;\n"
ADD_STATUS_RECONCILE = "UPDATE orders SET status = 'unknown' WHERE status IS NULL;\n"
# needs a table the DBA creates by hand: fails until it is there
ARCHIVE = "-- phase: expand\nINSERT INTO orders_archive (id) SELECT id FROM orders;\n"


def component(compatible: str, **steps: str) -> None:
    """The orders API as the next version ships it: its files, its steps, its schema range."""
    if COMPONENT.exists():
        shutil.rmtree(COMPONENT)
    shutil.copytree(APP, COMPONENT)
    folder = COMPONENT / "migrations"
    folder.mkdir()
    (folder / "schema.yaml").write_text(f"compatible: {compatible}\n")
    for name, text in steps.items():
        (folder / name.replace("__", ".")).write_text(text)


def sql(dsn: str, statement: str) -> list:
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cursor:
            cursor.execute(statement)
            return cursor.fetchall() if cursor.description else []
    finally:
        conn.close()


def journal(dsn: str) -> list[tuple]:
    return sql(dsn, "SELECT step, status, run_id FROM releasetrain_schema_journal ORDER BY id")


def events(ledger, run_id: str, kind: str, environment: str | None = None) -> list:
    return [
        e
        for e in ledger.events(RELEASE, run_id, DAG)
        if e.kind == kind and (environment is None or e.environment == environment)
    ]


@pytest.fixture(scope="module")
def databases(stack):
    if not getattr(stack, "migration_dsns", None):
        pytest.skip("schema migrations run on PostgreSQL")
    yield stack.migration_dsns
    shutil.rmtree(COMPONENT, ignore_errors=True)


def release(admin, version: str) -> str:
    return admin.trigger(DAG, {"version": version, "change_summary": f"orders {version}"})["dag_run_id"]


def test_expand_steps_run_before_the_deploy_and_a_contract_waits_for_every_environment(admin, ledger, fleet, databases):
    # 1.0.0 creates the table and adds a column; it still reads legacy_note (works with 1..2)
    component("{min: 1, max: 2}", **{"0001_create_orders.sql": CREATE, "0002_add_note.sql": ADD_NOTE})
    first = release(admin, "1.0.0")
    assert admin.wait_for_run(DAG, first)["state"] == "success", admin.task_states(DAG, first)
    for env in (DEV, PROD):
        assert journal(databases[env]) == [(1, "applied", first), (2, "applied", first)]
        assert sql(databases[env], "SELECT count(*) FROM information_schema.columns WHERE table_name = 'orders'") == [
            (3,)
        ]
        applied = events(ledger, first, "migration_applied", env)
        assert [(e.details["version"], e.details["phase"]) for e in applied] == [(1, "expand"), (2, "expand")]
        [migrated] = events(ledger, first, "migrated", env)
        assert migrated.details["components"]["orders-api"]["applied"] == ["0001_create_orders", "0002_add_note"]
        [started] = events(ledger, first, "deploy_started", env)
        assert migrated.seq < started.seq, "the deploy follows the migration"
        assert fleet(env)["version"] == "1.0.0"
    [packaged] = events(ledger, first, "packaged")
    assert packaged.details["migrations"]["orders-api"]["compatible"] == {"min": 1, "max": 2}

    # 1.1.0 drops legacy_note: every environment still runs 1.0.0, which needs it
    component(
        "{min: 2}",
        **{"0001_create_orders.sql": CREATE, "0002_add_note.sql": ADD_NOTE, "0003_drop_legacy.sql": DROP_LEGACY},
    )
    early = release(admin, "1.1.0")
    assert admin.wait_for_run(DAG, early)["state"] == "failed"
    assert admin.task_states(DAG, early)[f"{DEV}.migrate"] == "failed"
    assert admin.task_states(DAG, early)[f"{DEV}.deploy"] == "upstream_failed"
    reason = the_refusal(events(ledger, early, "gate_refused", DEV))
    for env in (DEV, PROD):
        assert (
            f"contract step 0003_drop_legacy of orders-api: {env} runs migrating 1.0.0, which works with schema "
            "1..2, not 3: it still needs the old shape"
        ) in reason
    assert journal(databases[DEV]) == [(1, "applied", first), (2, "applied", first)], "nothing applied"
    assert fleet(DEV)["version"] == "1.0.0"
    assert admin.task_states(DAG, early)[f"{DEV}.reconcile"] == "skipped", "nothing to reconcile"

    # 1.2.0 no longer reads legacy_note (2 or later) and ships no contract: it goes everywhere
    component("{min: 2}", **{"0001_create_orders.sql": CREATE, "0002_add_note.sql": ADD_NOTE})
    ready = release(admin, "1.2.0")
    assert admin.wait_for_run(DAG, ready)["state"] == "success", admin.task_states(DAG, ready)
    assert not events(ledger, ready, "migration_applied"), "a migrated database applies nothing again"


def test_a_half_failed_migration_is_reconciled_before_the_environment_is_released(
    admin, approver, ledger, fleet, databases, stack
):
    ops = type(admin)(stack.config.api_url, "ops", "ops")
    dsn = databases[DEV]
    before = journal(dsn)
    steps = {
        "0001_create_orders.sql": CREATE,
        "0002_add_note.sql": ADD_NOTE,
        "0003_drop_legacy.sql": DROP_LEGACY,
        "0004_add_status.sql": ADD_STATUS,
        "0004_add_status__reconcile.sql": ADD_STATUS_RECONCILE,
        "0005_archive.sql": ARCHIVE,
    }
    component("{min: 3}", **steps)
    broken = release(admin, "1.4.0")
    admin.wait_for_approval(DAG, broken, f"{DEV}.reconcile")
    states = admin.task_states(DAG, broken)
    assert (states[f"{DEV}.migrate"], states[f"{DEV}.deploy"]) == ("failed", "upstream_failed")
    assert states[f"{DEV}.unlock"] in (None, "none", "scheduled"), "the target stays locked until it is answered"
    assert admin.run(DAG, broken)["state"] == "running"
    # every environment runs 1.2.0 (schema 2 or later): the contract goes first, then 4; 5 fails
    assert [(s, st) for s, st, _ in journal(dsn)[len(before) :]] == [
        (3, "applied"),
        (4, "applied"),
        (5, "failed"),
        (4, "reconcile_applied"),
    ]
    [failed] = events(ledger, broken, "migration_failed", DEV)
    assert failed.details["version"] == 5 and 'relation "orders_archive" does not exist' in failed.details["error"]
    assert events(ledger, broken, "reconcile_applied", DEV)[0].details["version"] == 4
    [request] = [d for d in admin.pending_approvals(DAG, broken) if d["task_instance"]["task_id"] == f"{DEV}.reconcile"]
    body = request["body"].replace("\\", "")  # markdown escapes
    assert "reconcile step 0004_add_status: applied" in body and "0005_archive  expand  failed" in body
    assert request["assigned_users"] and {u["id"] for u in request["assigned_users"]} == {"ops"}

    # the DBA creates what step 5 needs; the migrate step cleared resumes: 4 is not applied again
    sql(dsn, "CREATE TABLE orders_archive (id integer PRIMARY KEY)")
    admin.clear_tasks(DAG, broken, [f"{DEV}.migrate"])
    assert admin.wait_for_task(DAG, broken, f"{DEV}.migrate", ("success", "failed")) == "success"
    rows = journal(dsn)[len(before) :]
    assert [(s, st) for s, st, _ in rows] == [
        (3, "applied"),
        (4, "applied"),
        (5, "failed"),
        (4, "reconcile_applied"),
        (5, "applied"),
    ]

    # the reconcile step marked successful by hand resolves nothing: the next migration refuses
    admin.set_task_state(DAG, broken, f"{DEV}.reconcile", "success")
    assert admin.wait_for_run(DAG, broken)["state"] == "failed", "a half-failed migration never ends green"
    blocked = release(admin, "1.5.0")
    assert admin.wait_for_run(DAG, blocked)["state"] == "failed"
    reason = the_refusal(events(ledger, blocked, "gate_refused", DEV))
    assert (
        f"step 0005_archive of orders-api failed in run {broken} and its data was never reported reconciled" in reason
    )
    assert fleet(DEV)["version"] == "1.2.0"

    # answered in the run that failed (cleared, it asks again): the journal resolves the failure
    admin.clear_tasks(DAG, broken, [f"{DEV}.reconcile"])
    assert ops.answer(DAG, broken, f"{DEV}.reconcile", "Data reconciled") == "success"
    decision = the_decision(events(ledger, broken, "reconciled", DEV), "reconciled")
    assert decision.actor == "ops" and decision.details["reconciled"] is True
    assert journal(dsn)[-1][:2] == (5, "reconciled")
    sql(databases[PROD], "CREATE TABLE orders_archive (id integer PRIMARY KEY)")
    fixed = release(admin, "1.5.1")
    assert admin.wait_for_run(DAG, fixed)["state"] == "success", admin.task_states(DAG, fixed)
    assert fleet(DEV)["version"] == "1.5.1"

    # an old version never comes back onto a schema it cannot use: 1.0.0 still reads legacy_note
    back = admin.trigger(
        "rollback_migrating", {"environment": DEV, "version": "1.0.0", "reason": "incident 12: try 1.0.0 again"}
    )
    assert admin.wait_for_run("rollback_migrating", back["dag_run_id"])["state"] == "failed"
    reason = the_refusal(ledger.events(RELEASE, back["dag_run_id"], "rollback_migrating"))
    assert (
        f"{DEV}: the live schema of orders-api is 5, outside the range 1..2 that migrating 1.0.0 works with" in reason
    )
    assert fleet(DEV)["version"] == "1.5.1"
