"""A component's database: its migration journal, the lock migrations take, and running a step
with its journal row in one transaction (PostgreSQL)."""

from __future__ import annotations

import re
from typing import Any

from airflow.sdk import BaseHook, Connection

from releasetrain.core.migration import (
    APPLIED,
    FAILED,
    RECONCILE_APPLIED,
    RECONCILE_FAILED,
    RECONCILED,
    JournalRow,
    MigrationError,
    MigrationStep,
)

JOURNAL_TABLE = "releasetrain_schema_journal"
_LOCK_SPACE = 0x52454C  # "REL": the advisory lock space migrations use (one key per component)

_CREATE = f"""
CREATE TABLE IF NOT EXISTS {JOURNAL_TABLE} (
    id bigserial PRIMARY KEY,
    component text NOT NULL,
    step integer NOT NULL,
    name text NOT NULL,
    phase text NOT NULL,
    status text NOT NULL,
    sha256 text NOT NULL,
    run_id text NOT NULL DEFAULT '',
    release text NOT NULL DEFAULT '',
    release_version text NOT NULL DEFAULT '',
    detail text NOT NULL DEFAULT '',
    at timestamptz NOT NULL DEFAULT now()
)
"""


def error_detail(exc: Exception, sql: str = "") -> str:
    """What a failed step reports to the journal, the ledger and the people asked: the error's
    class and SQLSTATE, and its message only for class 42 (syntax and names: an undefined table
    or column) when every name it quotes is written in the step itself (signed code, not data
    a dynamic statement could have put there); never a message that may quote a row's values."""
    code = getattr(exc, "pgcode", None) or "?"
    text = f"{type(exc).__name__} (SQLSTATE {code})"
    diag = getattr(exc, "diag", None)
    primary = getattr(diag, "message_primary", None) if diag is not None else None
    if code.startswith("42") and primary and all(name in sql for name in re.findall(r'"([^"]*)"', primary)):
        text += f": {primary}"
    return text[:300]


class StepFailed(Exception):
    """A step (or a reconcile step) failed; its transaction was rolled back, the failure journaled."""

    def __init__(self, step: MigrationStep, detail: str) -> None:
        super().__init__(detail)
        self.step = step
        self.detail = detail


class SchemaDatabaseHook(BaseHook):
    """One database (an Airflow connection of type ``postgres``), held open while a migrate or
    reconcile step works on it: the advisory lock is the session's.

    :param conn_id: the connection
    :param who: ``{run_id, release, release_version}`` written with each journal row
    """

    conn_name_attr = "conn_id"
    hook_name = "releasetrain schema database"

    def __init__(self, conn_id: str, **who: str) -> None:
        super().__init__()
        self.conn_id = conn_id
        self.who = {"run_id": "", "release": "", "release_version": "", **who}
        self._conn: Any = None

    @property
    def conn(self) -> Any:
        if self._conn is None:
            try:
                connection = Connection.get(self.conn_id)
            except Exception as exc:
                raise MigrationError(f"database connection {self.conn_id!r}: {exc}") from None
            if connection.conn_type not in ("postgres", "postgresql"):
                raise MigrationError(
                    f"database connection {self.conn_id!r} is of type {connection.conn_type!r}: migrations run on "
                    "PostgreSQL (type postgres)"
                )
            import psycopg2

            try:
                self._conn = psycopg2.connect(
                    host=connection.host or "localhost",
                    port=connection.port or 5432,
                    user=connection.login or None,
                    password=connection.password or None,
                    dbname=connection.schema or None,
                    connect_timeout=10,
                    application_name="releasetrain-migrate",
                )
            except psycopg2.Error as exc:
                raise ConnectionError(f"database {self.conn_id!r} cannot be reached: {exc}".strip()) from None
            self._conn.autocommit = False
            with self._conn.cursor() as cursor:
                cursor.execute(_CREATE)
            self._conn.commit()
        return self._conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()  # the session's advisory locks go with it
            self._conn = None

    def __enter__(self) -> SchemaDatabaseHook:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def try_lock(self, component: str) -> bool:
        """The component's migration lock on this database (held until :meth:`close`)."""
        with self.conn.cursor() as cursor:
            cursor.execute("SELECT pg_try_advisory_lock(%s, hashtext(%s))", (_LOCK_SPACE, component))
            (got,) = cursor.fetchone()
        self.conn.commit()
        return bool(got)

    def journal(self, component: str) -> list[JournalRow]:
        with self.conn.cursor() as cursor:
            cursor.execute(
                f"SELECT component, step, name, phase, status, sha256, run_id, release_version, id, "
                f"to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), detail "
                f"FROM {JOURNAL_TABLE} WHERE component = %s ORDER BY id",
                (component,),
            )
            rows = cursor.fetchall()
        self.conn.commit()
        return [
            JournalRow(
                component=r[0],
                version=r[1],
                name=r[2],
                phase=r[3],
                status=r[4],
                sha256=r[5],
                run_id=r[6],
                release_version=r[7],
                row_id=r[8],
                at=r[9],
                detail=r[10],
            )
            for r in rows
        ]

    def _row(self, cursor: Any, component: str, step: MigrationStep, phase: str, status: str, sha: str, detail: str):
        cursor.execute(
            f"INSERT INTO {JOURNAL_TABLE} (component, step, name, phase, status, sha256, run_id, release, "
            "release_version, detail) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (
                component,
                step.version,
                step.name,
                phase,
                status,
                sha,
                self.who["run_id"],
                self.who["release"],
                self.who["release_version"],
                detail,
            ),
        )

    def _run(self, component: str, step: MigrationStep, sql: str, phase: str, sha: str, ok: str, bad: str) -> None:
        """``sql`` and its journal row in one transaction; a failure is rolled back and journaled."""
        import psycopg2
        from psycopg2.extensions import TRANSACTION_STATUS_INTRANS

        conn = self.conn
        try:
            with conn.cursor() as cursor:
                cursor.execute(sql)
                if conn.info.transaction_status != TRANSACTION_STATUS_INTRANS:  # it ended its own transaction
                    detail = "the step ended its own transaction (COMMIT or ROLLBACK): it cannot be journaled with it"
                    self._row(cursor, component, step, phase, bad, sha, detail)
                    conn.commit()
                    raise StepFailed(step, detail)
                self._row(cursor, component, step, phase, ok, sha, "")
            conn.commit()
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            self._lost()
            raise ConnectionError(
                f"database {self.conn_id!r}: the connection was lost during step {step.label}; its transaction "
                "did not commit (the journal says whether it did)"
            ) from None
        except psycopg2.Error as exc:
            detail = error_detail(exc, sql)
            try:
                conn.rollback()
                with conn.cursor() as cursor:
                    self._row(cursor, component, step, phase, bad, sha, detail)
                conn.commit()
            except psycopg2.Error:
                self._lost()
                raise ConnectionError(
                    f"database {self.conn_id!r}: step {step.label} failed ({detail}) and the "
                    "failure could not be journaled"
                ) from None
            raise StepFailed(step, detail) from None

    def _lost(self) -> None:
        try:
            self._conn.close()
        except Exception:  # noqa: S110 - already broken
            pass
        self._conn = None

    def apply(self, component: str, step: MigrationStep) -> None:
        self._run(component, step, step.sql, step.phase, step.sha256, APPLIED, FAILED)

    def reconcile(self, component: str, step: MigrationStep) -> None:
        assert step.reconcile is not None and step.reconcile_sha256 is not None
        self._run(
            component, step, step.reconcile, "reconcile", step.reconcile_sha256, RECONCILE_APPLIED, RECONCILE_FAILED
        )

    def note(self, component: str, row: JournalRow, status: str, detail: str) -> None:
        """A row about an earlier one (a failure resolved by a person, a migration that never
        ended marked failed), written by this run."""
        step = MigrationStep(row.version, row.name, row.phase, "", row.sha256)
        with self.conn.cursor() as cursor:
            self._row(cursor, component, step, row.phase, status, row.sha256, detail)
        self.conn.commit()

    def mark_reconciled(self, component: str, failure: JournalRow, by: str) -> None:
        """A person said the data is consistent again: ``failure`` is resolved."""
        self.note(component, failure, RECONCILED, f"confirmed by {by} (row {failure.row_id})")
