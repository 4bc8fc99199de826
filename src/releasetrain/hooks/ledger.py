"""The release ledger's storage: an append-only, hash-chained event table.

Reached through an Airflow connection (default id ``releasetrain_ledger``):

- ``conn_type: sqlite``, ``host`` = the database file (the embedded default; when the
  connection does not exist the ledger is ``$AIRFLOW_HOME/releasetrain-ledger.db``);
- ``conn_type: postgres``, ``host``/``port``/``login``/``password``/``schema`` (database).

Appends are serialised by the database (``BEGIN IMMEDIATE`` on SQLite, a row lock on the
head record on PostgreSQL), so any number of tasks may write at once without forking the
chain; ``seq`` and ``prev_hash`` are also unique columns, so a fork cannot be stored even
by a writer that bypasses this code.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from releasetrain.core.ledger import GENESIS, LedgerError, LedgerEvent, VerifyResult, new_event, verify_chain

log = logging.getLogger(__name__)


class LedgerConnectError(LedgerError):
    """The ledger's database cannot be reached (it may be restarting)."""


DEFAULT_CONN_ID = "releasetrain_ledger"
TABLE = "releasetrain_ledger"
HEAD = "releasetrain_ledger_head"
LOCKS = "releasetrain_target_locks"
LOCK_QUEUE = "releasetrain_lock_queue"
_COLUMNS = "seq, at, release, run_id, environment, kind, actor, details, prev_hash, hash, dag_id"

_SCHEMA = [
    f"""CREATE TABLE IF NOT EXISTS {TABLE} (
        seq BIGINT PRIMARY KEY,
        at TEXT NOT NULL,
        release TEXT NOT NULL,
        run_id TEXT NOT NULL,
        environment TEXT NOT NULL,
        kind TEXT NOT NULL,
        actor TEXT NOT NULL,
        details TEXT NOT NULL,
        prev_hash TEXT NOT NULL UNIQUE,
        hash TEXT NOT NULL UNIQUE,
        dag_id TEXT NOT NULL DEFAULT '')""",
    f"CREATE INDEX IF NOT EXISTS {TABLE}_run ON {TABLE} (release, run_id)",
    f"CREATE TABLE IF NOT EXISTS {HEAD} (id INTEGER PRIMARY KEY, seq BIGINT NOT NULL, hash TEXT NOT NULL)",
    # Which run holds each deploy target, from its deploy to its last check (see operators/lock.py).
    f"CREATE TABLE IF NOT EXISTS {LOCKS} (target TEXT PRIMARY KEY, holder TEXT NOT NULL, acquired_at TEXT NOT NULL)",
    # Who waits for each target, at which priority, since when; a waiter that stops asking
    # (its run ended or was deleted) expires and never blocks the others.
    f"""CREATE TABLE IF NOT EXISTS {LOCK_QUEUE} (
        target TEXT NOT NULL,
        holder TEXT NOT NULL,
        priority INTEGER NOT NULL,
        since TEXT NOT NULL,
        expires TEXT NOT NULL,
        PRIMARY KEY (target, holder))""",
]


# On PostgreSQL the events table is append-only for everyone, its owner included: a trigger
# refuses UPDATE, DELETE and TRUNCATE (the head row and the lock table change, the events never).
_PG_APPEND_ONLY = [
    f"""CREATE OR REPLACE FUNCTION {TABLE}_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{TABLE} is append-only: % refused', TG_OP USING ERRCODE = 'insufficient_privilege';
    END $$""",
    f"DROP TRIGGER IF EXISTS {TABLE}_no_change ON {TABLE}",
    f"CREATE TRIGGER {TABLE}_no_change BEFORE UPDATE OR DELETE ON {TABLE} "
    f"FOR EACH ROW EXECUTE FUNCTION {TABLE}_append_only()",
    f"DROP TRIGGER IF EXISTS {TABLE}_no_truncate ON {TABLE}",
    f"CREATE TRIGGER {TABLE}_no_truncate BEFORE TRUNCATE ON {TABLE} "
    f"FOR EACH STATEMENT EXECUTE FUNCTION {TABLE}_append_only()",
]
# The role release tasks (and the listener) connect as: INSERT and SELECT on the events.
_PG_WRITER_GRANTS = [
    f"REVOKE ALL ON {TABLE} FROM {{role}}",
    f"GRANT SELECT, INSERT ON {TABLE} TO {{role}}",
    f"GRANT SELECT, INSERT, UPDATE ON {HEAD} TO {{role}}",
    f"GRANT SELECT, INSERT, UPDATE, DELETE ON {LOCKS} TO {{role}}",
    f"GRANT SELECT, INSERT, UPDATE, DELETE ON {LOCK_QUEUE} TO {{role}}",
]

# Ledgers created before runs were keyed by DAG id get the column (their events keep dag_id '').
_ADD_DAG_ID = f"ALTER TABLE {TABLE} ADD COLUMN dag_id TEXT NOT NULL DEFAULT ''"
# Each append's own token (not part of the hash: it says nothing about the event), so an
# append whose commit was lost with its connection is found, not written twice.
_ADD_TOKEN = f"ALTER TABLE {TABLE} ADD COLUMN token TEXT"
_TOKEN_INDEX = f"CREATE UNIQUE INDEX IF NOT EXISTS {TABLE}_token ON {TABLE} (token)"


def event_row(event: LedgerEvent) -> tuple:
    """An event as a row of the events table, in ``_COLUMNS`` order."""
    return (
        event.seq,
        event.at,
        event.release,
        event.run_id,
        event.environment,
        event.kind,
        event.actor,
        json.dumps(event.details, sort_keys=True),
        event.prev_hash,
        event.hash,
        event.dag_id,
    )


def _row_to_event(row: tuple) -> LedgerEvent:
    seq, at, release, run_id, environment, kind, actor, details, prev_hash, hash_, dag_id = row
    return LedgerEvent(
        int(seq), at, release, run_id, environment, kind, actor, json.loads(details), prev_hash, hash_, dag_id or ""
    )


class LedgerStore:
    """Common logic; subclasses provide the connection and the locking statement."""

    placeholder = "?"
    description = "ledger"

    def _connect(self) -> Any:
        raise NotImplementedError

    def _begin(self, cursor: Any) -> None:
        raise NotImplementedError

    def _lock_head(self, cursor: Any) -> None:
        cursor.execute(f"SELECT seq, hash FROM {HEAD} WHERE id = 1")

    def __init__(self) -> None:
        self._conn: Any = None
        self.create = False  # set by `releasetrain ledger init`: a missing ledger is never silently new

    @property
    def conn(self) -> Any:
        if self._conn is None or getattr(self._conn, "closed", False):  # closed: the server went away
            self._conn = self._connect()
            self._create()
            self.tokens = self._has_tokens()
        return self._conn

    def missing(self) -> LedgerError:
        return LedgerError(
            f"{self.description} does not exist: a missing ledger is an error, never a new chain "
            "(create one explicitly with `releasetrain ledger init`)"
        )

    def hash_at(self, seq: int) -> str | None:
        cursor = self.conn.cursor()
        cursor.execute(f"SELECT hash FROM {TABLE} WHERE seq = {self.placeholder}", (int(seq),))
        row = cursor.fetchone()
        cursor.close()
        self.conn.commit()
        return row[0] if row else None

    def _create(self) -> None:
        raise NotImplementedError

    def _has_tokens(self) -> bool:
        return False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def append(
        self,
        kind: str,
        *,
        release: str,
        run_id: str = "",
        environment: str = "",
        actor: str = "",
        details: dict[str, Any] | None = None,
        dag_id: str = "",
    ) -> LedgerEvent:
        """Append one event at the head of the chain (atomic; safe with concurrent writers).

        Exactly once, even when the database goes away mid-append (a restart): the append
        carries a token of its own, and after reconnecting an append whose outcome was lost
        looks for its token before trying again (``RECONNECT_SECONDS`` at most)."""
        fields = {
            "kind": kind,
            "release": release,
            "run_id": run_id,
            "environment": environment,
            "actor": actor,
            "details": details,
            "dag_id": dag_id,
        }
        token = uuid.uuid4().hex
        deadline = time.monotonic() + self.RECONNECT_SECONDS
        attempt = 0
        while True:
            attempt += 1
            try:
                if attempt > 1 and self._conn is None:
                    found = self._find_token(token)
                    if found is not None:
                        return found
                return self._append_once(fields, token)
            except LedgerConnectError as exc:  # the server is not back yet
                if time.monotonic() >= deadline:
                    raise
                log.warning("%s: %s; trying again", self.description, exc)
                self._drop_connection()
                time.sleep(min(5.0, 0.5 * attempt))
                continue
            except LedgerError:
                raise
            except Exception as exc:
                if self._token_taken(exc):  # an earlier attempt committed after all
                    self._drop_connection()
                    found = self._find_token(token)
                    if found is not None:
                        return found
                if self._disconnected(exc) and time.monotonic() < deadline:
                    log.warning("%s: connection lost while appending (%s); reconnecting", self.description, exc)
                    self._drop_connection()
                    time.sleep(min(5.0, 0.5 * attempt))
                    continue
                if attempt < 20 and self._is_transient(exc):
                    time.sleep(0.05 * attempt)
                    continue
                raise LedgerError(f"{self.description}: could not append a {kind!r} event: {exc}") from exc

    RECONNECT_SECONDS = 90.0

    def _disconnected(self, exc: Exception) -> bool:
        """The connection is gone (the server restarted or dropped it), not a refused statement."""
        return False

    @staticmethod
    def _token_taken(exc: Exception) -> bool:
        text = str(exc).lower()
        return ("unique" in text or "duplicate" in text) and "token" in text

    def _drop_connection(self) -> None:
        try:
            if self._conn is not None:
                self._conn.close()
        except Exception:
            pass
        self._conn = None

    def _find_token(self, token: str) -> LedgerEvent | None:
        """The event an earlier attempt of this append committed, if it did."""
        if not self.tokens:
            return None
        cursor = self.conn.cursor()
        try:
            cursor.execute(f"SELECT {_COLUMNS} FROM {TABLE} WHERE token = {self.placeholder}", (token,))
            row = cursor.fetchone()
            self.conn.commit()
        finally:
            cursor.close()
        return _row_to_event(row) if row else None

    tokens = False  # whether the events table has the append-token column (set on connect)

    @staticmethod
    def _event_after(head: tuple[Any, str], fields: dict[str, Any]) -> tuple[LedgerEvent, tuple]:
        """The event that follows ``head``, and its row."""
        seq, prev_hash = head
        event = new_event(seq=int(seq) + 1, prev_hash=prev_hash, **fields)
        return event, event_row(event)

    def _append_once(self, fields: dict[str, Any], token: str | None = None) -> LedgerEvent:
        p = self.placeholder
        cursor = self.conn.cursor()
        try:
            self._begin(cursor)
            self._lock_head(cursor)
            event, row = self._event_after(cursor.fetchone(), fields)
            columns, row = self._with_token(row, token)
            cursor.execute(f"INSERT INTO {TABLE} ({columns}) VALUES ({', '.join([p] * len(row))})", row)
            cursor.execute(f"UPDATE {HEAD} SET seq = {p}, hash = {p} WHERE id = 1", (event.seq, event.hash))
            self.conn.commit()
            return event
        except BaseException:
            self.conn.rollback()
            raise
        finally:
            cursor.close()

    def _with_token(self, row: tuple, token: str | None) -> tuple[str, tuple]:
        if token and self.tokens:
            return f"{_COLUMNS}, token", (*row, token)
        return _COLUMNS, row

    @staticmethod
    def _is_transient(exc: Exception) -> bool:
        text = str(exc).lower()
        return "locked" in text or "busy" in text or "deadlock" in text or "could not serialize" in text

    def head(self) -> tuple[int, str]:
        cursor = self.conn.cursor()
        cursor.execute(f"SELECT seq, hash FROM {HEAD} WHERE id = 1")
        seq, hash_ = cursor.fetchone()
        self.conn.commit()
        return int(seq), hash_

    def events(
        self,
        *,
        release: str | None = None,
        run_id: str | None = None,
        dag_id: str | None = None,
        kind: str | None = None,
        batch: int = 5000,
    ) -> Iterator[LedgerEvent]:
        """Events in chain order, optionally of one release / one run (``dag_id`` + ``run_id``) / one kind."""
        p = self.placeholder
        where, args = [], []
        if dag_id is not None:
            where.append(f"dag_id = {p}")
            args.append(dag_id)
        if kind is not None:
            where.append(f"kind = {p}")
            args.append(kind)
        if release is not None:
            where.append(f"release = {p}")
            args.append(release)
        if run_id is not None:
            where.append(f"run_id = {p}")
            args.append(run_id)
        clause = f" WHERE {' AND '.join(where)}" if where else ""
        last = 0
        while True:
            cursor = self.conn.cursor()
            cursor.execute(
                f"SELECT {_COLUMNS} FROM {TABLE}{clause}{' AND' if where else ' WHERE'} seq > {p} "
                f"ORDER BY seq LIMIT {int(batch)}",
                (*args, last),
            )
            rows = cursor.fetchall()
            cursor.close()
            self.conn.commit()
            for row in rows:
                yield _row_to_event(row)
            if len(rows) < batch:
                return
            last = int(rows[-1][0])

    # --- deploy-target locks --------------------------------------------------------------------
    def try_lock(self, target: str, holder: str, priority: int = 0, wait_seconds: float = 60.0) -> str:
        """Take ``target`` for ``holder`` unless someone holds it, or another waiter goes first;
        returns who holds it now ("" when nobody does).

        Waiters queue by priority (the release's business impact), then by when they began
        to wait. Each try renews the waiter's place for ``wait_seconds``: a waiter that stops
        asking expires, so a run that ended or was deleted never blocks the queue."""
        from releasetrain.core.ledger import now_iso

        p = self.placeholder
        now = now_iso()
        expires = (datetime.now(UTC) + timedelta(seconds=wait_seconds)).isoformat(timespec="microseconds")
        expires = expires.replace("+00:00", "Z")
        cursor = self.conn.cursor()
        try:
            cursor.execute(
                f"INSERT INTO {LOCK_QUEUE} (target, holder, priority, since, expires) VALUES ({p}, {p}, {p}, {p}, {p}) "
                "ON CONFLICT (target, holder) DO UPDATE SET priority = excluded.priority, expires = excluded.expires",
                (target, holder, int(priority), now, expires),
            )
            cursor.execute(
                f"SELECT holder FROM {LOCK_QUEUE} WHERE target = {p} AND expires > {p} "
                "ORDER BY priority DESC, since ASC, holder ASC LIMIT 1",
                (target, now),
            )
            first = cursor.fetchone()
            if first and first[0] == holder:
                cursor.execute(
                    f"INSERT INTO {LOCKS} (target, holder, acquired_at) VALUES ({p}, {p}, {p}) "
                    "ON CONFLICT (target) DO NOTHING",
                    (target, holder, now),
                )
            cursor.execute(f"SELECT holder FROM {LOCKS} WHERE target = {p}", (target,))
            row = cursor.fetchone()
            if row and row[0] == holder:
                cursor.execute(f"DELETE FROM {LOCK_QUEUE} WHERE target = {p} AND holder = {p}", (target, holder))
            self.conn.commit()
        except Exception as exc:
            self.conn.rollback()
            raise LedgerError(f"{self.description}: could not lock {target!r}: {exc}") from exc
        finally:
            cursor.close()
        return row[0] if row else ""

    def lock_queue(self, target: str) -> list[tuple[str, int]]:
        """Who waits for ``target`` (and has not expired), in the order they will get it."""
        from releasetrain.core.ledger import now_iso

        p = self.placeholder
        cursor = self.conn.cursor()
        cursor.execute(
            f"SELECT holder, priority FROM {LOCK_QUEUE} WHERE target = {p} AND expires > {p} "
            "ORDER BY priority DESC, since ASC, holder ASC",
            (target, now_iso()),
        )
        rows = [(row[0], int(row[1])) for row in cursor.fetchall()]
        cursor.close()
        self.conn.commit()
        return rows

    def lock_holder(self, target: str) -> str | None:
        cursor = self.conn.cursor()
        cursor.execute(f"SELECT holder FROM {LOCKS} WHERE target = {self.placeholder}", (target,))
        row = cursor.fetchone()
        cursor.close()
        self.conn.commit()
        return row[0] if row else None

    def unlock(self, holder: str, target: str | None = None) -> list[str]:
        """Release what ``holder`` holds (one target, or all of them); returns the targets released."""
        p = self.placeholder
        where, args = f"holder = {p}", [holder]
        if target is not None:
            where, args = f"{where} AND target = {p}", [holder, target]
        cursor = self.conn.cursor()
        try:
            cursor.execute(f"SELECT target FROM {LOCKS} WHERE {where}", args)
            targets = [row[0] for row in cursor.fetchall()]
            cursor.execute(f"DELETE FROM {LOCKS} WHERE {where}", args)
            self.conn.commit()
        except Exception as exc:
            self.conn.rollback()
            raise LedgerError(f"{self.description}: could not unlock for {holder!r}: {exc}") from exc
        finally:
            cursor.close()
        return targets

    def unlock_run(self, run: str, incarnation: str = "") -> list[str]:
        """Release what a run holds (``run`` is ``<dag_id>/<run_id>``): as ``run@incarnation``
        (or plain ``run``) when the incarnation is given, under any incarnation otherwise."""
        p = self.placeholder
        cursor = self.conn.cursor()

        def held_by_run(holder: str) -> bool:
            if holder == run:
                return True
            return holder == f"{run}@{incarnation}" if incarnation else holder.startswith(run + "@")

        try:
            cursor.execute(f"SELECT target, holder FROM {LOCKS}")
            held = [(t, h) for t, h in cursor.fetchall() if held_by_run(h)]
            for target, holder in held:
                cursor.execute(f"DELETE FROM {LOCKS} WHERE target = {p} AND holder = {p}", (target, holder))
            cursor.execute(f"SELECT target, holder FROM {LOCK_QUEUE}")
            for target, holder in [(t, h) for t, h in cursor.fetchall() if held_by_run(h)]:
                cursor.execute(f"DELETE FROM {LOCK_QUEUE} WHERE target = {p} AND holder = {p}", (target, holder))
            self.conn.commit()
        except Exception as exc:
            self.conn.rollback()
            raise LedgerError(f"{self.description}: could not unlock for {run!r}: {exc}") from exc
        finally:
            cursor.close()
        return [target for target, _ in held]

    def take_over(self, target: str, stale: str, holder: str) -> bool:
        """Give ``target`` to ``holder`` if ``stale`` still holds it (a run that ended or was deleted)."""
        from releasetrain.core.ledger import now_iso

        p = self.placeholder
        cursor = self.conn.cursor()
        try:
            cursor.execute(
                f"UPDATE {LOCKS} SET holder = {p}, acquired_at = {p} WHERE target = {p} AND holder = {p}",
                (holder, now_iso(), target, stale),
            )
            taken = cursor.rowcount == 1
            self.conn.commit()
        except Exception as exc:
            self.conn.rollback()
            raise LedgerError(f"{self.description}: could not take {target!r} over from {stale!r}: {exc}") from exc
        finally:
            cursor.close()
        return taken

    def verify(self) -> VerifyResult:
        # Read the head first: events appended meanwhile extend the chain past it, which is fine,
        # but only if the head catches up: rows past a head that stays behind were hidden by
        # moving the head back (the gates would still read them).
        head = self.head()
        events = list(self.events())
        if events and events[-1].seq > head[0]:
            head = self.head()
            if events[-1].seq > head[0]:
                beyond = [e.seq for e in events if e.seq > head[0]]
                return VerifyResult(
                    False,
                    0,
                    head[0],
                    head[1],
                    beyond[0],
                    f"events {beyond[0]}..{beyond[-1]} lie past the head record (event {head[0]}): the head was "
                    "moved back to hide them",
                )
        return verify_chain((event for event in events if event.seq <= head[0]), head=head)


class SqliteLedgerStore(LedgerStore):
    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.description = f"ledger {self.path}"

    def _connect(self) -> Any:
        if not self.path.exists() and not self.create:
            raise self.missing()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA busy_timeout=60000")
        return _SqliteTx(conn)

    def _create(self) -> None:
        raw = self._conn.raw
        raw.execute("BEGIN IMMEDIATE")
        for statement in _SCHEMA:
            raw.execute(statement)
        columns = {row[1] for row in raw.execute(f"PRAGMA table_info({TABLE})")}
        if "dag_id" not in columns:
            raw.execute(_ADD_DAG_ID)
        if "token" not in columns:
            raw.execute(_ADD_TOKEN)
        raw.execute(_TOKEN_INDEX)
        raw.execute(f"INSERT OR IGNORE INTO {HEAD} (id, seq, hash) VALUES (1, 0, ?)", (GENESIS,))
        raw.execute("COMMIT")

    def _begin(self, cursor: Any) -> None:
        cursor.execute("BEGIN IMMEDIATE")  # take the write lock before reading the head

    def _has_tokens(self) -> bool:
        return True  # _create adds the column to every SQLite ledger


class _SqliteTx:
    """sqlite3 in autocommit mode with explicit BEGIN/COMMIT (Python's implicit ones get in the way)."""

    def __init__(self, raw: sqlite3.Connection) -> None:
        self.raw = raw

    def cursor(self) -> sqlite3.Cursor:
        return self.raw.cursor()

    def commit(self) -> None:
        if self.raw.in_transaction:
            self.raw.execute("COMMIT")

    def rollback(self) -> None:
        if self.raw.in_transaction:
            self.raw.execute("ROLLBACK")

    def close(self) -> None:
        self.raw.close()


class PostgresLedgerStore(LedgerStore):
    placeholder = "%s"

    def __init__(self, dsn: str | None = None, **params: Any) -> None:
        super().__init__()
        self.dsn = dsn
        self.params = {k: v for k, v in params.items() if v not in (None, "")}
        where = f"{self.params.get('host', '')}:{self.params.get('port', '')}/{self.params.get('dbname', '')}"
        self.description = f"ledger postgres {where if self.params else 'dsn'}"

    def _connect(self) -> Any:
        try:
            import psycopg2
        except ImportError as exc:  # pragma: no cover - psycopg2-binary is a dependency
            raise LedgerError("a PostgreSQL ledger needs psycopg2 (pip install psycopg2-binary)") from exc
        try:
            return psycopg2.connect(self.dsn, **self.params) if self.dsn else psycopg2.connect(**self.params)
        except psycopg2.Error as exc:
            raise LedgerConnectError(f"{self.description}: cannot connect: {str(exc).strip()}") from exc

    writer_role: str | None = None  # `ledger init --writer-role`: the role tasks connect as

    def _create(self) -> None:
        cursor = self._conn.cursor()
        cursor.execute("SELECT to_regclass(%s)", (TABLE,))
        if cursor.fetchone()[0] is None and not self.create:
            self._conn.rollback()
            cursor.close()
            self._conn.close()
            self._conn = None
            raise self.missing()
        if not self.create:  # a writer needs no DDL (and the writer role may not run any)
            self._conn.commit()
            cursor.close()
            return
        cursor.execute("SELECT pg_advisory_xact_lock(4242001)")  # concurrent first writers create once
        for statement in _SCHEMA:
            cursor.execute(statement)
        cursor.execute(_ADD_DAG_ID.replace("ADD COLUMN", "ADD COLUMN IF NOT EXISTS"))
        cursor.execute(_ADD_TOKEN.replace("ADD COLUMN", "ADD COLUMN IF NOT EXISTS"))
        cursor.execute(_TOKEN_INDEX)
        cursor.execute(f"INSERT INTO {HEAD} (id, seq, hash) VALUES (1, 0, %s) ON CONFLICT (id) DO NOTHING", (GENESIS,))
        for statement in _PG_APPEND_ONLY:
            cursor.execute(statement)
        if self.writer_role:
            from psycopg2 import sql

            role = sql.Identifier(self.writer_role)
            for statement in _PG_WRITER_GRANTS:
                cursor.execute(sql.SQL(statement).format(role=role))
        self._conn.commit()
        cursor.close()

    def _begin(self, cursor: Any) -> None:
        pass  # psycopg2 opens a transaction on the first statement

    def _lock_head(self, cursor: Any) -> None:
        cursor.execute(f"SELECT seq, hash FROM {HEAD} WHERE id = 1 FOR UPDATE")

    def _has_tokens(self) -> bool:
        """A ledger made before append tokens has no column for them until `ledger init` runs
        again; its writers append as before (an append lost to a restart may then be retried
        by its task, which can record it twice)."""
        cursor = self._conn.cursor()
        try:
            cursor.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = current_schema() "
                "AND table_name = %s AND column_name = 'token'",
                (TABLE,),
            )
            found = cursor.fetchone() is not None
            self._conn.commit()
        finally:
            cursor.close()
        return found

    def _disconnected(self, exc: Exception) -> bool:
        import psycopg2

        # the connection itself is gone (a statement or lock timeout leaves it open)
        return (
            isinstance(exc, psycopg2.InterfaceError)
            or bool(getattr(self._conn, "closed", 0))
            or (
                isinstance(exc, psycopg2.OperationalError)
                and any(w in str(exc).lower() for w in ("closed", "terminat", "connect", "server", "shutdown"))
            )
        )

    def _append_once(self, fields: dict[str, Any], token: str | None = None) -> LedgerEvent:
        """Two round trips while the head is locked: ``BEGIN`` with the locking read, then the
        insert, the head's update and ``COMMIT`` in one message. Appends are serialized on the
        head row, so the time it stays locked is the ledger's throughput (3 trips and a commit
        before: 723 events/s with 8 writers)."""
        conn = self.conn
        conn.commit()  # nothing of ours is open: the explicit transaction below is all there is
        conn.autocommit = True
        cursor = conn.cursor()
        try:
            cursor.execute(f"BEGIN; SELECT seq, hash FROM {HEAD} WHERE id = 1 FOR UPDATE")
            event, row = self._event_after(cursor.fetchone(), fields)
            columns, row = self._with_token(row, token)
            cursor.execute(
                f"INSERT INTO {TABLE} ({columns}) VALUES ({', '.join(['%s'] * len(row))}); "
                f"UPDATE {HEAD} SET seq = %s, hash = %s WHERE id = 1; COMMIT",
                (*row, event.seq, event.hash),
            )
            return event
        except BaseException:
            self._abort(conn)
            raise
        finally:
            cursor.close()
            if not conn.closed:
                conn.autocommit = False

    @staticmethod
    def _abort(conn: Any) -> None:
        """Roll back what an append left open (nothing, when the error came from the server
        after COMMIT or the connection is gone)."""
        import psycopg2.extensions as ext

        if conn.closed:
            return
        try:
            if conn.info.transaction_status != ext.TRANSACTION_STATUS_IDLE:
                with conn.cursor() as cursor:
                    cursor.execute("ROLLBACK")
        except Exception:  # a broken connection: the server rolls back when it goes
            log.warning("ledger: could not roll back an append; closing the connection", exc_info=True)
            conn.close()


def default_sqlite_path() -> Path:
    home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
    return Path(home) / "releasetrain-ledger.db"


def store_from_connection(conn: Any) -> LedgerStore:
    """A store for an Airflow connection (anything with conn_type/host/port/login/password/schema)."""
    conn_type = (conn.conn_type or "").lower()
    if conn_type == "sqlite":
        if not conn.host:
            raise LedgerError(f"connection {conn.conn_id!r}: a sqlite ledger needs the database file as host")
        return SqliteLedgerStore(conn.host)
    if conn_type in ("postgres", "postgresql"):
        return PostgresLedgerStore(
            host=conn.host,
            port=conn.port,
            user=conn.login,
            password=conn.password,
            dbname=conn.schema or "postgres",
        )
    raise LedgerError(
        f"connection {conn.conn_id!r}: conn_type {conn.conn_type!r} cannot hold the ledger (use sqlite or postgres)"
    )


def store_from_url(url: str) -> LedgerStore:
    """``sqlite:///path`` (or a plain file path) or ``postgresql://user@host:port/db``."""
    if url.startswith("sqlite:///"):
        return SqliteLedgerStore(url[len("sqlite:///") :])  # sqlite:////abs/path keeps its leading slash
    if url.startswith(("postgres://", "postgresql://")):
        return PostgresLedgerStore(url.replace("postgres://", "postgresql://", 1))
    if "://" in url:
        raise LedgerError(f"ledger URL {url!r}: use sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    return SqliteLedgerStore(url)


def _get_connection(conn_id: str) -> Any | None:
    """The Airflow connection, or None when it is not defined.

    Inside a task the Task SDK asks the API server; elsewhere (the CLI, the listener in
    the scheduler and API server) Airflow's secrets backends are asked directly,
    metastore included, as ``airflow connections get`` would.
    """
    import sys

    from airflow.exceptions import AirflowNotFoundException

    try:
        if hasattr(sys.modules.get("airflow.sdk.execution_time.task_runner"), "SUPERVISOR_COMMS"):
            from airflow.sdk import BaseHook

            return BaseHook.get_connection(conn_id)
        from airflow.models.connection import Connection

        return Connection.get_connection_from_secrets(conn_id)
    except AirflowNotFoundException:
        return None
    except Exception as exc:  # e.g. a metadata database that is not reachable from here
        raise LedgerError(f"ledger connection {conn_id!r} cannot be looked up: {exc}") from exc


async def astore(conn_id: str = DEFAULT_CONN_ID) -> LedgerStore:
    """The ledger store, for triggers: the connection is looked up the async way (triggerer)."""
    from airflow.exceptions import AirflowNotFoundException
    from airflow.sdk import BaseHook

    try:
        conn = await BaseHook.aget_connection(conn_id)
    except AirflowNotFoundException:
        if conn_id != DEFAULT_CONN_ID:
            raise LedgerError(f"ledger connection {conn_id!r} does not exist") from None
        return SqliteLedgerStore(default_sqlite_path())
    return store_from_connection(conn)


class LedgerHook:
    """The release ledger behind an Airflow connection (see the module docstring).

    Not a subclass of ``BaseHook`` on purpose: it is also used by the CLI and the listener,
    outside tasks; the connection is looked up through Airflow's ``BaseHook`` all the same.
    """

    conn_name_attr = "ledger_conn_id"
    default_conn_name = DEFAULT_CONN_ID
    hook_name = "Release ledger"

    def __init__(self, ledger_conn_id: str = DEFAULT_CONN_ID) -> None:
        self.ledger_conn_id = ledger_conn_id
        self._store: LedgerStore | None = None

    @property
    def store(self) -> LedgerStore:
        if self._store is None:
            conn = _get_connection(self.ledger_conn_id)
            if conn is None:
                if self.ledger_conn_id != DEFAULT_CONN_ID:
                    raise LedgerError(f"ledger connection {self.ledger_conn_id!r} does not exist")
                self._store = SqliteLedgerStore(default_sqlite_path())
            else:
                self._store = store_from_connection(conn)
        return self._store

    def append(self, kind: str, **fields: Any) -> LedgerEvent:
        return self.store.append(kind, **fields)

    def events(self, **filters: Any) -> Iterator[LedgerEvent]:
        return self.store.events(**filters)

    def verify(self) -> VerifyResult:
        return self.store.verify()

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


class BuiltinChangeBackend:
    """Change records kept in the release ledger itself (the default backend).

    The record is the run's ``change_opened`` / ``change_transition`` / ``change_closed``
    events; its id is the correlation id ``<release>/<dag_id>/<run_id>`` (``<release>/<run_id>``
    for records opened before runs were keyed by DAG id), its number ``RTC-<seq>``
    (the ledger sequence of the opening event). It follows the same state model as
    ServiceNow (:mod:`releasetrain.core.change`), one event per state.
    """

    name = "builtin"

    def __init__(self, conn_id: str | None = None) -> None:
        self.ledger = LedgerHook(conn_id or DEFAULT_CONN_ID)

    @staticmethod
    def _split(correlation_id: str) -> tuple[str, str, str]:
        """``(release, dag_id, run_id)``; release names and DAG ids never contain ``/``."""
        parts = correlation_id.split("/", 2)
        if len(parts) == 3:
            return parts[0], parts[1], parts[2]
        return parts[0], "", parts[1] if len(parts) > 1 else ""

    def _find(self, correlation_id: str):
        from releasetrain.core.change import ChangeRef

        release, dag_id, run_id = self._split(correlation_id)
        ref = None
        for event in self.ledger.events(release=release, run_id=run_id, dag_id=dag_id):
            details = event.details
            if not event.kind.startswith("change_") or details.get("id") != correlation_id:
                continue
            if event.kind == "change_opened":
                ref = ChangeRef(self.name, correlation_id, details["number"], details["state"], details["change_type"])
            elif ref is not None:
                ref = ChangeRef(self.name, ref.id, ref.number, details["state"], ref.change_type)
        return ref

    def open(
        self,
        *,
        correlation_id: str,
        change_type: str,
        short_description: str,
        description: str,
        risk: str,
        planned_start: str | None,
        planned_end: str | None,
    ):
        from releasetrain.core.change import CHANGE_TYPES, ChangeRecordError, ChangeRef, ChangeState

        if change_type not in CHANGE_TYPES:
            raise ChangeRecordError(f"unknown change type {change_type!r}: expected {', '.join(CHANGE_TYPES)}")
        existing = self._find(correlation_id)
        if existing is not None:
            return existing
        release, dag_id, run_id = self._split(correlation_id)
        seq = self.ledger.store.head()[0] + 1
        event = self.ledger.append(
            "change_opened",
            release=release,
            run_id=run_id,
            dag_id=dag_id,
            details={
                "backend": self.name,
                "id": correlation_id,
                "number": f"RTC-{seq:07d}",
                "change_type": change_type,
                "state": ChangeState.NEW.value,
                "risk": risk,
                "short_description": short_description,
                "description": description,
                "planned_start": planned_start,
                "planned_end": planned_end,
            },
        )
        return ChangeRef(self.name, correlation_id, event.details["number"], ChangeState.NEW, change_type)

    def get(self, ref):
        from releasetrain.core.change import ChangeRecordError

        current = self._find(ref.id)
        if current is None:
            raise ChangeRecordError(f"change record {ref.number} ({ref.id}) is not in the ledger")
        return current

    def _step(self, current, state, note: str, kind: str = "change_transition", **extra: Any):
        from releasetrain.core.change import ChangeRef

        release, dag_id, run_id = self._split(current.id)
        self.ledger.append(
            kind,
            release=release,
            run_id=run_id,
            dag_id=dag_id,
            details={
                "backend": self.name,
                "id": current.id,
                "number": current.number,
                "state": state.value,
                "note": note,
                **extra,
            },
        )
        return ChangeRef(self.name, current.id, current.number, state, current.change_type)

    def move_to(self, ref, target, *, note: str):
        from releasetrain.core.change import path_to

        current = self.get(ref)
        for state in path_to(current.change_type, current.state, target):
            current = self._step(current, state, note)
        return current

    def close(self, ref, *, outcome: str, notes: str):
        from releasetrain.core.change import ChangeRecordError, ChangeState, close_code, closing

        code = close_code(outcome)  # an unknown outcome is refused before any request
        if not notes.strip():
            raise ChangeRecordError(f"closing {ref.number} needs close notes")
        current = self.get(ref)
        step = closing(current.change_type, current.state, outcome, current.number)
        if step == "done":
            return current
        if step == "cancel":
            return self._step(current, ChangeState.CANCELED, notes, kind="change_closed", close_code="canceled")
        current = self.move_to(current, ChangeState.REVIEW, note=notes)
        return self._step(current, ChangeState.CLOSED, notes, kind="change_closed", close_code=code)

    def cancel(self, ref, *, note: str):
        from releasetrain.core.change import ChangeState, path_to

        current = self.get(ref)
        if current.state == ChangeState.CANCELED:
            return current
        path_to(current.change_type, current.state, ChangeState.CANCELED)  # refuses a closed change
        return self._step(current, ChangeState.CANCELED, note, kind="change_closed", close_code="canceled")


# --- checkpoints: the chain's head, signed with the ledger key, kept outside the database -----


class CheckpointStore:
    """Signed checkpoints as files ``<seq>.json`` under a folder the ledger database's writer
    cannot rewrite: by default ``$AIRFLOW_HOME/artifacts/_ledger/checkpoints`` (in production
    an object store with a retention lock, e.g. S3 Object Lock: ``s3://.../checkpoints``)."""

    def __init__(self, url: str | None = None) -> None:
        from airflow.sdk import ObjectStoragePath

        from releasetrain.core.settings import setting

        url = url or setting("LEDGER_CHECKPOINTS") or None
        if not url:
            home = os.environ.get("AIRFLOW_HOME") or str(Path.home() / "airflow")
            url = f"file://{Path(home) / 'artifacts' / '_ledger' / 'checkpoints'}"
        self.url = url
        self.base = ObjectStoragePath(url)

    def write(self, checkpoint: dict[str, Any]) -> str:
        self.base.mkdir(parents=True, exist_ok=True)
        path = self.base / f"{int(checkpoint['seq']):012d}.json"
        if path.exists():  # never overwritten: the first word on an event stands
            return str(path)
        path.write_text(json.dumps(checkpoint, indent=2, sort_keys=True))
        return str(path)

    def names(self) -> list[str]:
        """Checkpoint files, oldest first (``<12 digits>.json`` regular files only)."""
        import re

        if not self.base.exists():
            return []
        return sorted(p.name for p in self.base.iterdir() if re.fullmatch(r"\d{12}\.json", p.name) and p.is_file())

    def read(self, name: str) -> dict[str, Any]:
        try:
            return json.loads((self.base / name).read_text())
        except (OSError, ValueError) as exc:
            raise LedgerError(f"checkpoint {self.base / name} cannot be read: {exc}") from None

    def all(self) -> list[dict[str, Any]]:
        return [self.read(name) for name in self.names()]

    def latest(self) -> dict[str, Any] | None:
        names = self.names()
        return self.read(names[-1]) if names else None


def signing_key_connection(conn_id: str) -> Any | None:
    """A key connection looked up outside a task (listener, CLI), or None when not defined."""
    return _get_connection(conn_id)


def write_checkpoint(store: LedgerStore, key_conn_id: str = "releasetrain_ledger_signing", url: str | None = None):
    """Sign the ledger's head with the ledger key and keep it in the checkpoint store."""
    from releasetrain.core.bundle import BundleError
    from releasetrain.core.ledger import anchor_problems, checkpoint_problems, sign_checkpoint
    from releasetrain.hooks.signing import signer_from

    try:
        key = signer_from(signing_key_connection(key_conn_id), key_conn_id)
    except BundleError as exc:
        raise LedgerError(f"no ledger key: {exc}") from None
    # never anchor a rewritten history: the chain must hold, and still hold every checkpoint
    result = store.verify()
    if not result.ok:
        raise LedgerError(f"no checkpoint of a broken chain: {result.message()}")
    checkpoints = CheckpointStore(url)
    public = key.public_key()  # once: on a token every call is a login
    for earlier in checkpoints.all():
        problems = checkpoint_problems(earlier, public) or anchor_problems(
            result, earlier, store.hash_at(int(earlier["seq"]))
        )
        if problems:
            raise LedgerError("no checkpoint: the ledger no longer matches an earlier one: " + "; ".join(problems))
    if not result.head_seq:
        return None
    checkpoint = sign_checkpoint(result.head_seq, result.head_hash, key)
    return checkpoints.write(checkpoint), checkpoint
