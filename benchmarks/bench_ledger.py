"""Ledger benchmark (run: `make bench`; not part of `make test`).

For SQLite (a file) and PostgreSQL (the local server, when it answers):

1. Append throughput: 8 concurrent writer processes appending hash-chained events,
   against a baseline measured in the same run on the same database: the same 8 writers
   doing plain INSERTs into an unchained table with one commit per row (what any audit
   log without a chain costs).
2. ``ledger verify`` over 100,000 events, against a baseline of reading the same rows
   without checking anything.

Reported as ratios to the baselines; machines here are shared and noisy.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
WRITERS, PER_WRITER, VERIFY_N = 8, 500, 100_000


def _chained_writer(url: str, writer: int, count: int) -> None:
    from releasetrain.hooks.ledger import store_from_url

    store = store_from_url(url)
    for i in range(count):
        store.append("task_state", release=f"bench{writer}", run_id="r", actor="w", details={"i": i})
    store.close()


def _plain_writer(url: str, writer: int, count: int) -> None:
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///") :], timeout=60, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        for i in range(count):
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(
                "INSERT INTO plain_log (release, details) VALUES (?, ?)", (f"bench{writer}", json.dumps({"i": i}))
            )
            conn.execute("COMMIT")
    else:
        import psycopg2

        conn = psycopg2.connect(url)
        with conn.cursor() as cur:
            for i in range(count):
                cur.execute(
                    "INSERT INTO plain_log (release, details) VALUES (%s, %s)", (f"bench{writer}", json.dumps({"i": i}))
                )
                conn.commit()
    conn.close()


def _run_writers(target, url: str) -> float:
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=target, args=(url, w, PER_WRITER)) for w in range(WRITERS)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    return time.perf_counter() - start


def _create_plain(url: str) -> None:
    if url.startswith("sqlite:///"):
        conn = sqlite3.connect(url[len("sqlite:///") :])
        conn.execute("CREATE TABLE IF NOT EXISTS plain_log (id INTEGER PRIMARY KEY, release TEXT, details TEXT)")
        conn.commit()
    else:
        import psycopg2

        conn = psycopg2.connect(url)
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS plain_log (id BIGSERIAL PRIMARY KEY, release TEXT, details TEXT)")
        conn.commit()
    conn.close()


def _bulk_fill(store, n: int) -> None:
    """Append n chained events in one transaction (setup speed only; same chain rules)."""
    from releasetrain.core.ledger import new_event
    from releasetrain.hooks.ledger import _COLUMNS, HEAD, TABLE, event_row

    seq, prev = store.head()
    p = store.placeholder
    rows = []
    for i in range(n):
        event = new_event(
            seq=seq + i + 1,
            prev_hash=prev,
            kind="deployed",
            release="bulk",
            run_id=f"r{i // 50}",
            environment="prod",
            actor="bench",
            details={"i": i, "digest": "sha256:" + "0" * 64},
        )
        prev = event.hash
        rows.append(event_row(event))
    cur = store.conn.cursor()
    if hasattr(store.conn, "raw"):
        cur.execute("BEGIN IMMEDIATE")
    cur.executemany(f"INSERT INTO {TABLE} ({_COLUMNS}) VALUES ({', '.join([p] * 11)})", rows)
    cur.execute(f"UPDATE {HEAD} SET seq = {p}, hash = {p} WHERE id = 1", (rows[-1][0], rows[-1][9]))
    store.conn.commit()


def bench(url: str, label: str) -> dict:
    from releasetrain.hooks.ledger import TABLE, store_from_url

    store = store_from_url(url)
    store.create = True  # what `releasetrain ledger init` does
    store.head()  # creates the tables
    _create_plain(url)
    chained = _run_writers(_chained_writer, url)
    plain = _run_writers(_plain_writer, url)
    total = WRITERS * PER_WRITER
    assert store.verify().count == total

    _bulk_fill(store, VERIFY_N - total)
    start = time.perf_counter()
    result = store.verify()
    verify_s = time.perf_counter() - start
    assert result.ok and result.count == VERIFY_N, result.message()

    def read_only() -> None:
        cur = store.conn.cursor()
        cur.execute(f"SELECT * FROM {TABLE} ORDER BY seq")
        for _ in cur.fetchall():
            pass
        store.conn.commit()

    start = time.perf_counter()
    read_only()
    read_s = time.perf_counter() - start
    store.close()
    return {
        "backend": label,
        "append_events": total,
        "append_writers": WRITERS,
        "chained_events_per_s": round(total / chained),
        "plain_inserts_per_s": round(total / plain),
        "append_ratio_vs_plain": round(chained / plain, 2),
        "verify_events": VERIFY_N,
        "verify_s": round(verify_s, 2),
        "read_only_s": round(read_s, 2),
        "verify_ratio_vs_read": round(verify_s / read_s, 2),
    }


def main() -> None:
    results = []
    with tempfile.TemporaryDirectory() as folder:
        results.append(bench(f"sqlite:///{Path(folder) / 'ledger.db'}", "sqlite"))
    from tests.pg import fresh_database, postgres_answers

    if postgres_answers():
        with fresh_database("releasetrain_bench") as dsn:
            results.append(bench(dsn, "postgres"))
    else:
        print("PostgreSQL does not answer: skipped", file=sys.stderr)
    for row in results:
        print(json.dumps(row))


if __name__ == "__main__":
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="releasetrain-bench-"))
    main()
