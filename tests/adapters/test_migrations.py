"""The schema database hook on a real PostgreSQL database: the journal, one transaction per
step, failures journaled, the advisory lock, reconciliation."""

from __future__ import annotations

import json
from urllib.parse import urlparse

import pytest

from releasetrain.core import migration as m
from tests.pg import fresh_database, postgres_answers

pytestmark = pytest.mark.skipif(not postgres_answers(), reason="needs the local PostgreSQL")

FOLDER = {
    "schema.yaml": b"compatible: {min: 1}\n",
    "0001_create_orders.sql": b"-- phase: expand\nCREATE TABLE orders (id integer PRIMARY KEY, note text);\n",
    "0002_fill.sql": b"-- phase: expand\nINSERT INTO orders VALUES (1, 'a');\nINSERT INTO orders VALUES (1, 'dup');\n",
    "0002_fill.reconcile.sql": b"DELETE FROM orders WHERE note = 'a';\n",
}


@pytest.fixture
def database(monkeypatch):
    import psycopg2

    with fresh_database("releasetrain_mig") as dsn:
        url = urlparse(dsn)
        connection = {
            "conn_type": "postgres",
            "host": url.hostname,
            "port": url.port,
            "login": url.username,
            "schema": url.path.lstrip("/"),
        }
        monkeypatch.setenv("AIRFLOW_CONN_ORDERS_DB", json.dumps(connection))

        def sql(statement: str) -> list:
            conn = psycopg2.connect(dsn)
            try:
                with conn, conn.cursor() as cursor:
                    cursor.execute(statement)
                    return cursor.fetchall() if cursor.description else []
            finally:
                conn.close()

        yield sql


def test_steps_apply_with_their_journal_row_and_a_failure_is_rolled_back_and_journaled(database) -> None:
    from releasetrain.hooks.schema import SchemaDatabaseHook, StepFailed

    steps, _ = m.read_folder(FOLDER, "api/migrations")
    with SchemaDatabaseHook("orders_db", run_id="r1", release="shop", release_version="1.0.0") as db:
        assert db.try_lock("api")
        db.apply("api", steps[0])
        with pytest.raises(StepFailed, match=r"^UniqueViolation \(SQLSTATE 23505\)$"):  # no row's values
            db.apply("api", steps[1])
        rows = db.journal("api")
    assert [(r.version, r.status, r.run_id) for r in rows] == [(1, "applied", "r1"), (2, "failed", "r1")]
    assert database("SELECT count(*) FROM orders") == [(0,)]  # the failed step's first insert is gone too
    assert m.schema_version(rows) == 1 and m.unresolved_failure(rows).version == 2
    with SchemaDatabaseHook("orders_db", run_id="r1") as db:
        [reconcile] = m.reconcile_steps(steps, db.journal("api"), "r1")
        db.reconcile("api", reconcile)
        db.mark_reconciled("api", m.unresolved_failure(db.journal("api")), "dba")
        rows = db.journal("api")
    assert [r.status for r in rows] == ["applied", "failed", "reconcile_applied", "reconciled"]
    assert rows[-1].detail == "confirmed by dba (row 2)" and m.unresolved_failure(rows) is None


def test_a_second_migration_on_the_database_waits_for_the_lock(database) -> None:
    from releasetrain.hooks.schema import SchemaDatabaseHook

    with SchemaDatabaseHook("orders_db") as first:
        assert first.try_lock("api")
        with SchemaDatabaseHook("orders_db") as second:
            assert not second.try_lock("api")
            assert second.try_lock("worker")  # one lock per component
    with SchemaDatabaseHook("orders_db") as again:
        assert again.try_lock("api")  # closing the session freed it


def test_a_connection_that_is_not_postgresql_is_refused_by_name(monkeypatch) -> None:
    from releasetrain.hooks.schema import SchemaDatabaseHook

    monkeypatch.setenv("AIRFLOW_CONN_ORDERS_SQLITE", json.dumps({"conn_type": "sqlite", "host": "/tmp/x.db"}))
    with pytest.raises(m.MigrationError, match="'orders_sqlite' is of type 'sqlite': migrations run on PostgreSQL"):
        SchemaDatabaseHook("orders_sqlite").journal("api")


def step(version: int, sql: str) -> m.MigrationStep:
    """A step as the hook gets it (read_steps refuses these at packaging; the hook checks again)."""
    return m.MigrationStep(version, f"s{version}", "expand", sql, f"sha256:{version}")


def test_a_step_that_commits_on_its_own_is_journaled_failed_and_a_data_name_never_leaks(database) -> None:
    from releasetrain.hooks.schema import SchemaDatabaseHook, StepFailed

    with SchemaDatabaseHook("orders_db", run_id="r1") as db:
        db.apply("api", step(1, "CREATE TABLE tenants (name text); INSERT INTO tenants VALUES ('hunter2')"))
        with pytest.raises(StepFailed, match="ended its own transaction"):
            db.apply("api", step(2, "CREATE TABLE x (a int); COMMIT"))
        dynamic = "DO $$ BEGIN EXECUTE format('SELECT * FROM %I', (SELECT name FROM tenants)); END $$"
        with pytest.raises(StepFailed) as leaked:
            db.apply("api", step(3, dynamic))
        with pytest.raises(StepFailed, match='relation "missing_table" does not exist'):
            db.apply("api", step(4, "SELECT * FROM missing_table"))  # a name the signed step itself wrote
    assert leaked.value.detail == "UndefinedTable (SQLSTATE 42P01)" and "hunter2" not in str(leaked.value)
    assert [r for r in database("SELECT step, status FROM releasetrain_schema_journal ORDER BY id")] == [
        (1, "applied"),
        (2, "failed"),
        (3, "failed"),
        (4, "failed"),
    ]


def test_a_connection_lost_during_a_step_is_an_infrastructure_error_and_nothing_is_journaled_applied(database) -> None:
    from releasetrain.hooks.schema import SchemaDatabaseHook

    with SchemaDatabaseHook("orders_db", run_id="r1") as db:
        db.journal("api")
        with pytest.raises(ConnectionError, match="the connection was lost during step 0001_s1"):
            db.apply("api", step(1, "SELECT pg_terminate_backend(pg_backend_pid())"))
    assert database("SELECT count(*) FROM releasetrain_schema_journal WHERE status = 'applied'") == [(0,)]
