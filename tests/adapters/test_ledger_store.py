"""The ledger on a real SQLite file and a real PostgreSQL server: tampering, concurrency, CLI."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3

import pytest

from releasetrain.cli import main as cli
from releasetrain.core.ledger import LedgerError
from releasetrain.hooks.ledger import TABLE, LedgerHook, store_from_url
from tests.pg import fresh_database, postgres_answers

BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(params=BACKENDS)
def ledger_url(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'ledger.db'}"
        assert cli(["ledger", "init", "--url", url]) == 0
        yield url
        return
    if not postgres_answers():
        pytest.skip("PostgreSQL does not answer on 127.0.0.1:5432 (.ci/run starts it)")
    with fresh_database("releasetrain_ledger") as dsn:
        assert cli(["ledger", "init", "--url", dsn]) == 0
        yield dsn


def _fill(url: str, n: int = 10) -> None:
    store = store_from_url(url)
    for i in range(n):
        store.append(
            ["triggered", "approval_given", "deployed"][i % 3],
            release="storefront",
            run_id=f"manual__{i // 5}",
            environment="prod",
            actor="approver",
            details={"i": i},
        )
    store.close()


def _sql(url: str, *statements: str) -> None:
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///") :])
        for statement in statements:
            conn.execute(statement)
        conn.commit()
        conn.close()
        return
    import psycopg2

    conn = psycopg2.connect(url)
    with conn.cursor() as cur:
        # the events table refuses UPDATE and DELETE; an attacker with the owner's rights
        # (or a superuser) switches the trigger off first: the chain still tells
        cur.execute(f"ALTER TABLE {TABLE} DISABLE TRIGGER USER")
        for statement in statements:
            cur.execute(statement)
        cur.execute(f"ALTER TABLE {TABLE} ENABLE TRIGGER USER")
    conn.commit()
    conn.close()


def verify(url: str, capsys) -> tuple[int, str]:
    code = cli(["ledger", "verify", "--url", url, "--allow-unanchored"])  # the chain alone
    out = capsys.readouterr()
    return code, out.out + out.err


TAMPERING = {
    "edit": [f"UPDATE {TABLE} SET actor = 'mallory' WHERE seq = 4"],
    "edit_details": [f"""UPDATE {TABLE} SET details = '{{"i": 99}}' WHERE seq = 7"""],
    "delete": [f"DELETE FROM {TABLE} WHERE seq = 5"],
    "delete_last": [f"DELETE FROM {TABLE} WHERE seq = 10"],
    "reorder": [
        f"UPDATE {TABLE} SET seq = -1 WHERE seq = 3",
        f"UPDATE {TABLE} SET seq = 3 WHERE seq = 6",
        f"UPDATE {TABLE} SET seq = 6 WHERE seq = -1",
    ],
}
FIRST_BAD = {"edit": 4, "edit_details": 7, "delete": 5, "delete_last": 10, "reorder": 3}


def test_intact_ledger_verifies(ledger_url, capsys):
    _fill(ledger_url)
    code, output = verify(ledger_url, capsys)
    assert code == 0, output
    assert "ledger intact: 10 events" in output


@pytest.mark.parametrize("tamper", sorted(TAMPERING))
def test_ledger_verify_names_the_first_bad_event(ledger_url, tamper, capsys):
    _fill(ledger_url)
    _sql(ledger_url, *TAMPERING[tamper])
    code, output = verify(ledger_url, capsys)
    assert code == 1
    assert f"ledger broken at event {FIRST_BAD[tamper]}" in output, output


def test_a_fork_cannot_even_be_stored(ledger_url):
    _fill(ledger_url, 3)
    with pytest.raises(Exception, match="(?i)unique|duplicate"):
        _sql(
            ledger_url,
            f"INSERT INTO {TABLE} SELECT seq + 100, at, release, run_id, environment, kind, actor, details, "
            f"prev_hash, hash || 'x', dag_id, NULL FROM {TABLE} WHERE seq = 2",
        )


def _writer(url: str, writer: int, count: int) -> None:
    store = store_from_url(url)
    for i in range(count):
        store.append("task_state", release=f"rel{writer}", run_id="concurrent", actor=f"w{writer}", details={"i": i})
    store.close()


def test_eight_concurrent_writers_leave_one_intact_chain(ledger_url, capsys):
    ctx = multiprocessing.get_context("spawn")
    writers = [ctx.Process(target=_writer, args=(ledger_url, w, 1000)) for w in range(8)]
    for process in writers:
        process.start()
    for process in writers:
        process.join(600)
    assert [p.exitcode for p in writers] == [0] * 8
    store = store_from_url(ledger_url)
    result = store.verify()
    assert result.ok, result.message()
    assert result.count == 8000
    per_writer = {}
    for event in store.events():
        per_writer.setdefault(event.release, []).append(event.details["i"])
    assert {k: v == list(range(1000)) for k, v in per_writer.items()} == {f"rel{w}": True for w in range(8)}
    store.close()


def test_hook_reads_its_airflow_connection(tmp_path, monkeypatch, capsys):
    path = tmp_path / "via-conn.db"
    monkeypatch.setenv("AIRFLOW_CONN_AUDIT_LEDGER", json.dumps({"conn_type": "sqlite", "host": str(path)}))
    hook = LedgerHook("audit_ledger")
    with pytest.raises(LedgerError, match="does not exist: a missing ledger is an error, never a new chain"):
        hook.append("triggered", release="storefront", run_id="r1", actor="author")
    assert not path.exists()
    assert cli(["ledger", "init", "--conn", "audit_ledger"]) == 0
    hook.append("triggered", release="storefront", run_id="r1", actor="author")
    hook.close()
    assert path.exists()
    assert cli(["ledger", "verify", "--conn", "audit_ledger"]) == 1, "not anchored"
    capsys.readouterr()
    assert cli(["ledger", "verify", "--conn", "audit_ledger", "--allow-unanchored"]) == 0
    assert "1 events" in capsys.readouterr().out
    assert cli(["ledger", "verify", "--conn", "no_such_ledger"]) == 2
    assert "'no_such_ledger' does not exist" in capsys.readouterr().err


def test_head_record_is_kept_with_each_append(ledger_url):
    _fill(ledger_url, 4)
    store = store_from_url(ledger_url)
    last = list(store.events())[-1]
    assert store.head() == (4, last.hash)
    store.close()


def test_a_missing_ledger_is_an_error_not_an_empty_ledger(tmp_path, capsys):
    assert cli(["ledger", "verify", "--url", f"sqlite:///{tmp_path / 'nowhere.db'}"]) == 2
    assert "does not exist: a missing ledger is an error" in capsys.readouterr().err
    assert not (tmp_path / "nowhere.db").exists()


def test_a_failed_append_leaves_nothing_behind_and_the_store_usable(ledger_url, monkeypatch):
    """The PostgreSQL append sends its insert, head update and COMMIT in one message: a failure
    in it rolls the whole append back (no event without its head), and the store goes on."""
    _fill(ledger_url, 2)
    store = store_from_url(ledger_url)
    try:
        before = store.head()
        original = store._event_after

        def forked(*args, **kwargs):  # the insert fails on the server: a prev_hash already used
            event, row = original(*args, **kwargs)
            return event, (*row[:8], store.hash_at(1), *row[9:])

        monkeypatch.setattr(store, "_event_after", forked)
        with pytest.raises(LedgerError, match="could not append"):
            store.append("deployed", release="storefront", details={"bad": True})
        monkeypatch.undo()
        assert store.head() == before and store.verify().count == before[0]
        store.append("deployed", release="storefront", details={"ok": True})
        assert store.head()[0] == before[0] + 1 and store.verify().ok
        if ledger_url.startswith("postgres"):
            assert store.conn.autocommit is False, "the connection is left as the other methods expect"
            # the server drops the connection (a restart): the next use connects again
            pid = store.conn.get_backend_pid()
            _sql(ledger_url, f"SELECT pg_terminate_backend({pid})")
            event = store.append("deployed", release="storefront", details={"after": "restart"})
            assert event.seq == before[0] + 2 and store.verify().ok
    finally:
        store.close()


def test_an_append_whose_commit_was_lost_with_its_connection_is_written_once(ledger_url, monkeypatch):
    """PostgreSQL restarts after it committed an append but before the writer heard: the writer
    reconnects, finds its append's token and returns that event instead of writing it again."""
    if not ledger_url.startswith("postgres"):
        pytest.skip("a lost connection is a server's")
    import psycopg2

    _fill(ledger_url, 2)
    store = store_from_url(ledger_url)
    original, calls = store._append_once, []

    def commit_then_lose_the_connection(*args):
        calls.append(args[-1])  # the token
        event = original(*args)
        if len(calls) == 1:
            store._conn.close()
            raise psycopg2.OperationalError("server closed the connection unexpectedly")
        return event

    monkeypatch.setattr(store, "_append_once", commit_then_lose_the_connection)
    try:
        store.head()  # connected
        assert store.tokens
        event = store.append("deployed", release="storefront", details={"once": True})
        assert len(calls) == 1, "the committed append was found by its token, not tried again"
        assert event.seq == 3 and store.verify().ok and store.verify().count == 3
        assert [e.details for e in store.events() if e.details.get("once")] == [{"once": True}]
    finally:
        store.close()


def test_a_ledger_made_before_append_tokens_still_takes_appends(ledger_url):
    """Writers never run DDL: on a ledger whose events table has no token column yet they append
    as before; `ledger init` adds it."""
    if not ledger_url.startswith("postgres"):
        pytest.skip("SQLite ledgers get the column on connect")
    _sql(ledger_url, f"DROP INDEX IF EXISTS {TABLE}_token", f"ALTER TABLE {TABLE} DROP COLUMN token")
    store = store_from_url(ledger_url)
    try:
        store.append("deployed", release="storefront", details={})
        assert not store.tokens and store.verify().ok
    finally:
        store.close()
    assert cli(["ledger", "init", "--url", ledger_url]) == 0
    store = store_from_url(ledger_url)
    try:
        store.append("deployed", release="storefront", details={})
        assert store.tokens and store.verify().count == 2
    finally:
        store.close()


def test_an_append_waits_for_a_restarting_server_within_its_limit(ledger_url, monkeypatch):
    """While PostgreSQL restarts, connecting is refused: the append tries again (up to
    RECONNECT_SECONDS), then fails naming the ledger."""
    if not ledger_url.startswith("postgres"):
        pytest.skip("a server's restart")
    from releasetrain.hooks.ledger import LedgerConnectError

    store = store_from_url(ledger_url)
    original, refusals = store._connect, [2]

    def restarting():
        if refusals[0]:
            refusals[0] -= 1
            raise LedgerConnectError("ledger postgres: cannot connect: connection refused")
        return original()

    monkeypatch.setattr(store, "_connect", restarting)
    try:
        assert store.append("deployed", release="storefront", details={}).seq == 1 and refusals == [0]
        store._drop_connection()
        refusals[0] = 1000
        store.RECONNECT_SECONDS = 1.0
        with pytest.raises(LedgerConnectError, match="cannot connect"):
            store.append("deployed", release="storefront", details={})
    finally:
        monkeypatch.undo()
        store.close()


def test_a_freed_target_goes_to_the_waiter_of_the_highest_business_impact_then_the_earliest(ledger_url):
    """Issue 13 (prioritisation): runs of several releases wait for one deploy target; when
    it is freed, the critical release's run takes it before a medium one that waited longer;
    on a tie the earlier waiter goes first; a waiter that stopped asking blocks nobody."""
    import time

    store = store_from_url(ledger_url)
    try:
        assert store.try_lock("t", "holder/a", 10) == "holder/a"
        assert store.try_lock("t", "medium/early", 10) == "holder/a"
        assert store.try_lock("t", "medium/late", 10) == "holder/a"
        assert store.try_lock("t", "critical/late", 1000) == "holder/a"
        assert store.try_lock("t", "gone/critical", 5000, wait_seconds=0.2) == "holder/a"
        assert [w for w, _ in store.lock_queue("t")] == [
            "gone/critical",
            "critical/late",
            "medium/early",
            "medium/late",
        ]
        time.sleep(0.3)  # gone/critical stopped asking: its place expired
        assert [w for w, _ in store.lock_queue("t")] == ["critical/late", "medium/early", "medium/late"]
        assert store.unlock("holder/a", "t") == ["t"]
        assert store.try_lock("t", "medium/early", 10) == "", "free, but the critical waiter goes first"
        assert store.try_lock("t", "critical/late", 1000) == "critical/late"
        assert [w for w, _ in store.lock_queue("t")] == ["medium/early", "medium/late"]
        store.unlock("critical/late", "t")
        assert store.try_lock("t", "medium/late", 10) == "", "the earlier of equals goes first"
        assert store.try_lock("t", "medium/early", 10) == "medium/early"
        # a run that ends leaves the queue with its locks (the listener's unlock_run)
        assert store.try_lock("t", "medium/late@1", 10) == "medium/early"
        store.unlock_run("medium/late", "1")
        assert store.lock_queue("t") == []
    finally:
        store.close()
