"""Issue 11, finding 1: a ledger anchored outside its database, append-only on PostgreSQL.

Before: rewriting events and recomputing every hash and the head passed `ledger verify`,
and a deleted ledger file silently became a new, empty chain. Each attack below runs on a
real SQLite file and a real PostgreSQL server.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import replace

import pytest

from releasetrain.cli import main as cli
from releasetrain.core.bundle import generate_private_key_pem
from releasetrain.core.ledger import GENESIS, LedgerError, compute_hash
from releasetrain.devstack import signing_connection
from releasetrain.hooks.ledger import HEAD, TABLE, LedgerHook, store_from_url
from tests.pg import fresh_database, postgres_answers


@pytest.fixture(params=["sqlite", "postgres"])
def ledger(request, tmp_path, monkeypatch):
    """An initialised ledger with 10 events, a ledger key and a checkpoint folder."""
    monkeypatch.setenv("AIRFLOW_CONN_RELEASETRAIN_LEDGER_SIGNING", signing_connection(generate_private_key_pem()))
    monkeypatch.setenv("AIRFLOW__RELEASETRAIN__LEDGER_CHECKPOINTS", f"file://{tmp_path / 'checkpoints'}")
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        _ready(url)
        yield url
        return
    if not postgres_answers():
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432 (.ci/run starts it)")
    with fresh_database("releasetrain_anchor") as dsn:
        _ready(dsn)
        yield dsn


def _ready(url: str) -> None:
    assert cli(["ledger", "init", "--url", url]) == 0
    store = store_from_url(url)
    for i in range(10):
        store.append("triggered", release="storefront", run_id=f"r{i // 5}", actor="author", details={"i": i})
    store.close()


def verify(url: str, capsys) -> tuple[int, str]:
    code = cli(["ledger", "verify", "--url", url])
    out = capsys.readouterr()
    return code, out.out + out.err


def checkpoint(url: str, capsys) -> None:
    assert cli(["ledger", "checkpoint", "--url", url]) == 0
    assert "checkpoint of event" in capsys.readouterr().out


def _rows(url: str):
    store = store_from_url(url)
    try:
        return list(store.events())
    finally:
        store.close()


def _tamper(url: str, statements: list[tuple[str, tuple]]) -> None:
    """What someone with write access to the database does (PostgreSQL: switching the
    append-only trigger off first, as the table's owner can)."""
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///") :])
        for sql, args in statements:
            conn.execute(sql, args)
        conn.commit()
        conn.close()
        return
    import psycopg2

    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        cur.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER USER")
        for sql, args in statements:
            cur.execute(sql.replace("?", "%s"), args)
        cur.execute(f"ALTER TABLE {TABLE} ENABLE TRIGGER USER")
    conn.commit()
    conn.close()


def rewrite_and_rehash(url: str, seq: int, actor: str) -> None:
    """Change one event and recompute every hash after it and the head: the chain is intact."""
    events, statements, prev = _rows(url), [], GENESIS
    for event in events:
        if event.seq >= seq:
            event = replace(event, actor=actor if event.seq == seq else event.actor, prev_hash=prev)
            event = replace(event, hash=compute_hash(event))
            statements.append(
                (f"UPDATE {TABLE} SET actor = ?, prev_hash = ?, hash = ? WHERE seq = ?",
                 (event.actor, event.prev_hash, event.hash, event.seq))
            )  # fmt: skip
        prev = event.hash
    statements.append((f"UPDATE {HEAD} SET seq = ?, hash = ? WHERE id = 1", (events[-1].seq, prev)))
    # unique hashes: clear them first so the updates do not collide midway
    _tamper(url, [(f"UPDATE {TABLE} SET prev_hash = 'x' || seq, hash = 'y' || seq WHERE seq >= ?", (seq,))])
    _tamper(url, statements)


def test_an_anchored_ledger_verifies_and_says_how_far(ledger, capsys):
    code, out = verify(ledger, capsys)  # e.g. the auditor looks for checkpoints in the wrong place
    assert code == 1 and "not anchored: no checkpoint" in out and "--allow-unanchored" in out
    assert cli(["ledger", "verify", "--url", ledger, "--allow-unanchored"]) == 0
    capsys.readouterr()
    checkpoint(ledger, capsys)
    store = store_from_url(ledger)
    store.append("triggered", release="storefront", run_id="r9", actor="author")
    store.close()
    code, out = verify(ledger, capsys)
    assert code == 0 and "anchored up to event 10" in out and "the 1 events after it are not anchored yet" in out


def test_a_rewritten_and_rehashed_ledger_is_caught_by_the_checkpoint(ledger, capsys):
    checkpoint(ledger, capsys)
    rewrite_and_rehash(ledger, 3, "mallory")
    assert store_from_url(ledger).verify().ok, "the rewritten chain is self-consistent"
    code, out = verify(ledger, capsys)
    assert code == 1 and "event 10 has hash" in out and "the chain up to it was rewritten" in out


def test_a_truncated_ledger_is_caught_by_the_checkpoint(ledger, capsys):
    checkpoint(ledger, capsys)
    events = _rows(ledger)
    _tamper(
        ledger,
        [
            (f"DELETE FROM {TABLE} WHERE seq > ?", (7,)),
            (f"UPDATE {HEAD} SET seq = ?, hash = ? WHERE id = 1", (7, events[6].hash)),
        ],
    )
    code, out = verify(ledger, capsys)
    assert code == 1 and "the ledger ends at event 7" in out and "anchored event 10" in out


def test_a_checkpoint_signed_with_another_key_proves_nothing(ledger, capsys, tmp_path, monkeypatch):
    checkpoint(ledger, capsys)
    monkeypatch.setenv("AIRFLOW_CONN_RELEASETRAIN_LEDGER_SIGNING", signing_connection(generate_private_key_pem()))
    code, out = verify(ledger, capsys)
    assert code == 1 and "not signed with the pinned ledger key" in out


def test_a_deleted_ledger_is_an_error_never_a_new_chain(tmp_path, monkeypatch, capsys):
    path = tmp_path / "ledger.db"
    monkeypatch.setenv("AIRFLOW_CONN_RELEASETRAIN_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    assert cli(["ledger", "init"]) == 0
    LedgerHook().append("triggered", release="storefront", run_id="r1", actor="author")
    path.unlink()
    for leftover in tmp_path.glob("ledger.db-*"):
        leftover.unlink()
    with pytest.raises(LedgerError, match="does not exist: a missing ledger is an error, never a new chain"):
        LedgerHook().append("triggered", release="storefront", run_id="r2", actor="author")
    assert not path.exists()
    assert cli(["ledger", "verify"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_the_listener_checkpoints_the_ledger_when_a_run_ends(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from releasetrain import listener
    from releasetrain.hooks.ledger import CheckpointStore

    monkeypatch.setenv("AIRFLOW_CONN_RELEASETRAIN_LEDGER_SIGNING", signing_connection(generate_private_key_pem()))
    monkeypatch.setenv("AIRFLOW__RELEASETRAIN__LEDGER_CHECKPOINTS", f"file://{tmp_path / 'cp'}")
    listener.on_dag_run_success(SimpleNamespace(dag_id="release_storefront", run_id="r1"), "")
    listener.flush()
    [event] = list(LedgerHook().events(run_id="r1"))
    latest = CheckpointStore().latest()
    assert latest["seq"] == event.seq and latest["hash"] == event.hash


# --- PostgreSQL: append-only for everyone, INSERT and SELECT for the writer ----------------------
@pytest.fixture
def pg_ledger():
    if not postgres_answers():
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432 (.ci/run starts it)")
    import uuid

    from tests.pg import admin

    role = f"rt_writer_{uuid.uuid4().hex[:8]}"
    admin(f"CREATE ROLE {role} LOGIN")
    try:
        with fresh_database("releasetrain_append") as dsn:
            assert cli(["ledger", "init", "--url", dsn, "--writer-role", role]) == 0
            yield dsn, role
    finally:
        admin(f"DROP ROLE IF EXISTS {role}")


def test_postgres_events_are_append_only_even_for_the_owner(pg_ledger):
    import psycopg2

    dsn, _ = pg_ledger
    store = store_from_url(dsn)
    store.append("triggered", release="storefront", run_id="r1", actor="author")
    store.close()
    for statement in (
        f"UPDATE {TABLE} SET actor = 'mallory'",
        f"DELETE FROM {TABLE}",
        f"TRUNCATE {TABLE}",
    ):
        conn = psycopg2.connect(dsn)
        with pytest.raises(psycopg2.Error, match="append-only"), conn.cursor() as cur:
            cur.execute(statement)
        conn.close()
    assert [e.actor for e in _rows(dsn)] == ["author"]


def test_the_writer_role_inserts_and_reads_only(pg_ledger):
    import psycopg2

    dsn, role = pg_ledger
    as_writer = dsn.replace("postgresql://postgres@", f"postgresql://{role}@")
    store = store_from_url(as_writer)
    store.append("triggered", release="storefront", run_id="r1", actor="author")
    assert store.verify().ok and store.try_lock("t", "me") == "me"
    store.close()
    for statement in (f"UPDATE {TABLE} SET actor = 'mallory'", f"ALTER TABLE {TABLE} DISABLE TRIGGER USER"):
        conn = psycopg2.connect(as_writer)
        with pytest.raises(psycopg2.Error, match="permission denied|must be owner"), conn.cursor() as cur:
            cur.execute(statement)
        conn.close()


def test_a_rewrite_is_never_anchored_by_a_later_checkpoint(ledger, capsys):
    """Attacker review: rewrite, then let the next run's checkpoint sign the rewritten head."""
    checkpoint(ledger, capsys)
    rewrite_and_rehash(ledger, 3, "mallory")
    store = store_from_url(ledger)
    store.append("triggered", release="storefront", run_id="r9", actor="author")
    store.close()
    assert cli(["ledger", "checkpoint", "--url", ledger]) == 2
    assert "no longer matches an earlier one" in capsys.readouterr().err
    code, out = verify(ledger, capsys)
    assert code == 1 and "the chain up to it was rewritten" in out


def test_events_hidden_past_a_head_moved_back_are_caught(ledger, capsys):
    events = _rows(ledger)
    _tamper(ledger, [(f"UPDATE {HEAD} SET seq = ?, hash = ? WHERE id = 1", (8, events[7].hash))])
    code, out = verify(ledger, capsys)
    assert code == 1 and "lie past the head record" in out
    assert cli(["ledger", "checkpoint", "--url", ledger]) == 2, "never checkpoints a broken chain"
