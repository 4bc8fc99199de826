"""Orchestration overhead of a release with no waits (issue 12; run: `make bench`, tiny in `make test`).

A release of three environments with no approval, no window, no checks, and deploys the
target finishes at once, against DAGs of exactly the same shape (task ids, edges, trigger
rules) measured in the same run on the same stack:

- ``baseline_empty``: every task an ``EmptyOperator`` (the issue's baseline; Airflow's
  scheduler marks those done itself, no worker runs them);
- ``baseline_python``: every task a ``PythonOperator`` doing nothing (what Airflow costs
  per task that runs on a worker: a process, the task SDK's API calls).

Measured on both executors: LocalExecutor on SQLite (the demo's shape) and CeleryExecutor
on Redis with PostgreSQL (two workers, two schedulers). Each run's duration is its
``end_date - start_date``; runs alternate between the three DAGs, medians are reported,
ratios to the baselines only (goal: at most 1.3x the EmptyOperator DAG).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

RELEASE = "overhead"
ENVS = ["ova", "ovb", "ovc"]
DAGS = ("baseline_empty", "baseline_python", f"release_{RELEASE}")

RELEASE_DAG_FILE = """\
# written by benchmarks/bench_overhead.py: the release DAGs (Airflow DAG discovery needs
# both words in the file) of the bench's specs
from pathlib import Path
from releasetrain.factory import load_release_dags, spec_dirs

ROOT = Path({root!r})
globals().update(load_release_dags(spec_dirs(ROOT), project_root=ROOT))
"""

BASELINE_DAG_FILE = """\
# written by benchmarks/bench_overhead.py: DAGs of the release's shape, doing nothing
import datetime as dt
import json
from pathlib import Path

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.providers.standard.operators.python import PythonOperator
from airflow.sdk import DAG

SHAPE = json.loads(Path(__file__).with_name("shape.json").read_text())


def _nothing():
    return None


for kind in ("empty", "python"):
    with DAG(f"baseline_{{kind}}", schedule=None, start_date=dt.datetime(2024, 1, 1), catchup=False) as dag:
        tasks = {{}}
        for row in SHAPE:
            if kind == "empty":
                tasks[row["task_id"]] = EmptyOperator(task_id=row["task_id"], trigger_rule=row["trigger_rule"])
            else:
                tasks[row["task_id"]] = PythonOperator(
                    task_id=row["task_id"], trigger_rule=row["trigger_rule"], python_callable=_nothing
                )
        for row in SHAPE:
            for upstream in row["upstream"]:
                tasks[upstream] >> tasks[row["task_id"]]
    globals()[dag.dag_id] = dag
"""


def release_spec() -> dict[str, Any]:
    return {
        "name": RELEASE,
        "owner_team": "bench",
        "components": [{"name": "web", "source": "include/demo_fleet/artifacts/storefront-web"}],
        "environments": [{"name": e, "deploy_target": f"fleet_{e}", "poll_interval_seconds": 0.5} for e in ENVS],
        "rollback_plan": "Redeploy the previous version through the rollback task",
        "backout_minutes": 5,
        "closure": False,
    }


def shape(spec_path: Path) -> list[dict[str, Any]]:
    """Task ids, upstream ids and trigger rules of the release DAG, as the factory builds it."""
    from releasetrain.core.spec import load_spec
    from releasetrain.factory import build_release_dag

    dag = build_release_dag(load_spec(spec_path), project_root=ROOT, auto_register=False)
    return [
        {
            "task_id": t.task_id,
            "upstream": sorted(t.upstream_task_ids),
            "trigger_rule": getattr(t.trigger_rule, "value", t.trigger_rule),
        }
        for t in dag.topological_sort()
    ]


def write_project(home: Path) -> tuple[Path, Path]:
    specs, dags = home / "releases", home / "dags"
    specs.mkdir(parents=True)
    dags.mkdir()
    spec_path = specs / f"{RELEASE}.yaml"
    spec_path.write_text(yaml.safe_dump(release_spec(), sort_keys=False))
    (dags / "shape.json").write_text(json.dumps(shape(spec_path), indent=1))
    (dags / "releases.py").write_text(RELEASE_DAG_FILE.format(root=str(ROOT)))
    (dags / "baselines.py").write_text(BASELINE_DAG_FILE.format())
    return specs, dags


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def local_stack(home: Path, specs: Path, dags: Path):
    from releasetrain.client import AirflowClient
    from releasetrain.devstack import DevStack, StackConfig

    config = StackConfig(
        project_root=ROOT,
        home=home / "airflow",
        api_port=_free_port(),
        fleet_port=_free_port(),
        spec_dirs=[specs],
        dags_folder=dags,
        fleet_environments=ENVS,
        fleet_seed=dict.fromkeys(ENVS, "1.0.0"),
        fleet_deploy_seconds=0.0,
    )
    stack = DevStack(config)
    try:
        stack.prepare()
        stack.start()
        _parsed(AirflowClient(config.api_url, "admin", "admin"))
        yield stack
    finally:
        stack.stop()


@contextmanager
def distributed_stack(specs: Path, dags: Path):
    from tests.e2e.distributed import celery_stack

    with celery_stack(specs, DAGS[-1], ENVS, dags_folder=dags, fleet_deploy_seconds=0.0) as stack:
        from releasetrain.client import AirflowClient

        _parsed(AirflowClient(stack.config.api_url, "admin", "admin"))
        yield stack


def _parsed(client: Any, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not set(DAGS) <= set(client.dag_ids()):
        if time.monotonic() > deadline:
            raise TimeoutError(f"DAGs not parsed: {client.dag_ids()} {client.import_errors()}")
        time.sleep(2)


def _seconds(run: dict[str, Any]) -> float:
    import datetime as dt

    start, end = (dt.datetime.fromisoformat(run[k].replace("Z", "+00:00")) for k in ("start_date", "end_date"))
    return (end - start).total_seconds()


def measure(stack: Any, repeat: int) -> dict[str, Any]:
    from releasetrain.client import AirflowClient

    author = AirflowClient(stack.config.api_url, "author", "author")
    durations: dict[str, list[float]] = {d: [] for d in DAGS}
    spent: dict[str, Any] = {}
    for i in range(repeat):
        for dag_id in DAGS:
            conf = {"version": f"2.0.{i}", "change_summary": "overhead"} if dag_id.startswith("release_") else {}
            run_id = author.trigger(dag_id, conf)["dag_run_id"]
            run = author.wait_for_run(dag_id, run_id, timeout=600, poll=0.5)
            if run["state"] != "success":
                raise RuntimeError(f"{dag_id} {run_id} ended {run['state']}: {author.task_states(dag_id, run_id)}")
            durations[dag_id].append(_seconds(run))
            if i == repeat - 1:
                tasks = author.request("GET", f"/dags/{dag_id}/dagRuns/{run_id}/taskInstances", params={"limit": 100})
                ran = [t for t in tasks["task_instances"] if t.get("duration") is not None and t["state"] == "success"]
                spent[dag_id] = {
                    "task_seconds_sum": round(sum(t["duration"] for t in ran), 2),
                    "slowest": {
                        t["task_id"]: round(t["duration"], 2) for t in sorted(ran, key=lambda t: -t["duration"])[:6]
                    },
                }
    medians = {d: statistics.median(v) for d, v in durations.items()}
    release = medians[DAGS[-1]]
    return {
        "runs": {d: [round(x, 2) for x in v] for d, v in durations.items()},
        "median_s": {d: round(m, 2) for d, m in medians.items()},
        "ratio_vs_empty": round(release / medians["baseline_empty"], 2),
        "ratio_vs_python": round(release / medians["baseline_python"], 2),
        "python_vs_empty": round(medians["baseline_python"] / medians["baseline_empty"], 2),
        "in_tasks_last_run": spent,
    }


def bench(executors: list[str], repeat: int, keep: bool = False) -> dict[str, Any]:
    home = Path(tempfile.mkdtemp(prefix="releasetrain-bench-overhead-"))
    report: dict[str, Any] = {}
    try:
        specs, dags = write_project(home)
        report["tasks"] = len(json.loads((dags / "shape.json").read_text()))
        for executor in executors:
            print(f"{executor}: starting the stack ...", file=sys.stderr, flush=True)
            stack_cm = local_stack(home, specs, dags) if executor == "local" else distributed_stack(specs, dags)
            with stack_cm as stack:
                report[executor] = measure(stack, repeat)
            print(f"  {executor}: {report[executor]['median_s']}", file=sys.stderr, flush=True)
    finally:
        if keep:
            print(f"kept {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--executors", nargs="+", default=["local", "celery"], choices=["local", "celery"])
    parser.add_argument("--repeat", type=int, default=5, help="runs of each DAG per executor")
    parser.add_argument("--keep", action="store_true", help="keep the stacks' homes (logs) for inspection")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="releasetrain-bench-client-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped benchmark stops its stack too
    report = bench(args.executors, args.repeat, args.keep)
    report["setup"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "fleet_deploy_seconds": 0}
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
