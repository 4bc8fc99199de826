"""A throw-away PostgreSQL database on the local server (the one `.ci/run` starts)."""

from __future__ import annotations

import os
import socket
import uuid
from contextlib import contextmanager
from urllib.parse import urlparse

PG_ADMIN_DSN = os.environ.get("RELEASETRAIN_E2E_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


def postgres_answers() -> bool:
    url = urlparse(PG_ADMIN_DSN)
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex((url.hostname or "127.0.0.1", url.port or 5432)) == 0


def admin(sql: str) -> None:
    import psycopg2

    conn = psycopg2.connect(PG_ADMIN_DSN, connect_timeout=5)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@contextmanager
def fresh_database(prefix: str = "releasetrain_t"):
    """Yields the DSN of a new, empty database; drops it afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin(f"CREATE DATABASE {name}")
    try:
        yield PG_ADMIN_DSN.rsplit("/", 1)[0] + "/" + name
    finally:
        admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def restart_postgres() -> None:
    """Restart the local PostgreSQL server (fast shutdown: every connection is cut)."""
    import subprocess
    import time
    from pathlib import Path

    versions = sorted(p.name for p in Path("/etc/postgresql").iterdir()) if Path("/etc/postgresql").is_dir() else []
    if not versions:
        raise RuntimeError("no Debian PostgreSQL cluster to restart (/etc/postgresql is empty)")
    subprocess.run(
        ["pg_ctlcluster", "--skip-systemctl-redirect", versions[-1], "main", "restart", "-m", "fast"],
        check=True,
        capture_output=True,
        timeout=120,
    )
    deadline = time.monotonic() + 60
    while not postgres_answers():
        if time.monotonic() > deadline:
            raise RuntimeError("PostgreSQL did not come back within 60 s")
        time.sleep(0.5)
