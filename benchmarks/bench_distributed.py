"""Waiting releases on the distributed stack (issue 12; run: `make bench`, tiny in `make test`).

Real processes: PostgreSQL (metadata database and ledger), CeleryExecutor on Redis, two
Celery workers, two schedulers, two triggerers, the demo fleet. ``3 x K`` release runs
wait at once, a third each in

- an **approval** (Airflow's HITL: ``<env>.approve``; a security review may wait beside it),
- a **closed window** (``<env>.window``, a deferrable sensor; the window opens at a
  minute ``T`` fixed when the specs are written),
- a **running canary analysis** (``<env>.canary_50``, a trigger measuring every
  ``--interval`` s; its abort watch and the manual-abort task wait beside it).

Reported (ratios and counts; never asserted as times, machines here are shared):

- worker slots held while they all wait: task instances ``running`` or ``queued``,
  sampled through the steady period (goal 0);
- triggerer CPU seconds per second and memory (RSS, both triggerers with their
  children) per waiting trigger, against the idle stack measured first;
- task-state requests per second from the project's own watches (the API server's
  access log, ``/execution/task-instances/states``);
- resume time, p50/p95/max, from the event to the next task of the run starting (the
  waiting task's own resumption excluded): the approval's HITL answer; the window
  opening; the analysis' last measurement (its ledger journal); against the same measured
  on one release of each kind alone, earlier in the same run (goal: within 2x).

The full size (K = 333) does not fit a two-core machine in reasonable time: every run
starts 4 to 8 tasks before it waits, each a process on a worker. The default K and the
measured sizes are in the README; the figures say what was measured, at what size.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import yaml  # noqa: E402

KINDS = ("approval", "window", "canary")
PREFIX = {"approval": "ba", "window": "bw", "canary": "bc"}
ALONE = {"approval": "sa", "window": "sw", "canary": "sc"}
WAITING = {"approval": ("approve",), "window": ("window",), "canary": ("canary_50",)}
STATES_PATH = "/execution/task-instances/states"
UTC = dt.UTC


def spec(name: str, kind: str, *, opens_at: dt.datetime | None = None, interval: int = 10, count: int = 3) -> dict:
    env: dict[str, Any] = {"name": name, "deploy_target": f"fleet_{name}", "deploy_timeout_seconds": 120,
                           "poll_interval_seconds": 1}  # fmt: skip
    data: dict[str, Any] = {
        "name": name,
        "owner_team": "bench",
        "components": [{"name": "web", "source": "include/demo_fleet/artifacts/storefront-web"}],
        "environments": [env],
        "rollback_plan": "Redeploy the previous version through the rollback task",
        "backout_minutes": 5,
        "closure": False,
    }
    if kind == "approval":
        env["approval"] = {"required": True, "approvers": ["approver"]}
    elif kind == "window":
        assert opens_at is not None
        data["reviewers"] = ["approver"]
        env["expected_duration_minutes"] = 1
        closes = opens_at + dt.timedelta(hours=3)
        env["calendar"] = {"windows": [{"start": opens_at.strftime("%H:%M"), "end": closes.strftime("%H:%M")}]}
    else:
        env["strategy"] = {
            "kind": "canary",
            "steps": [50, 100],
            "analysis": {
                "provider": {"kind": "json", "conn_id": "fleet_metrics", "endpoint": "stats", "path": "values"},
                "interval_seconds": interval,
                "count": count,
                "metrics": [{
                    "name": "error_rate",
                    "query": "error_rate environment=${environment} version=${version} route=${route}",
                    "absolute": {"max": 0.02}, "aggregate": "last", "critical": True,
                }],
            },
        }  # fmt: skip
    return data


def _minute_after(moment: dt.datetime) -> dt.datetime:
    return (moment + dt.timedelta(minutes=1)).replace(second=0, microsecond=0)


def _percentiles(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"n": len(ordered), "p50": round(at(0.5), 2), "p95": round(at(0.95), 2), "max": round(ordered[-1], 2)}


class Probe:
    """Reads the stack's metadata database, ledger, processes and logs."""

    def __init__(self, stack: Any):
        import psycopg2

        self.stack = stack
        self.db = psycopg2.connect(f"postgresql://postgres@127.0.0.1:5432/{stack.db_name}")
        self.db.autocommit = True
        self.ledger = psycopg2.connect(f"postgresql://postgres@127.0.0.1:5432/{stack.db_name}_ledger")
        self.ledger.autocommit = True

    def close(self) -> None:
        self.db.close()
        self.ledger.close()

    def rows(self, sql: str, *args: Any) -> list[tuple]:
        with self.db.cursor() as cur:
            cur.execute(sql, args)
            return cur.fetchall()

    def held(self) -> int:
        return self.rows("SELECT count(*) FROM task_instance WHERE state IN ('running', 'queued')")[0][0]

    def triggers(self) -> int:
        return self.rows("SELECT count(*) FROM trigger")[0][0]

    def states(self, dag_ids: list[str]) -> dict[tuple[str, str], str]:
        rows = self.rows("SELECT dag_id, task_id, state FROM task_instance WHERE dag_id = ANY(%s)", dag_ids)
        return {(d, t): s for d, t, s in rows}

    def next_start(self, dag_id: str, waiting_task: str, after: float) -> float | None:
        """When the run's first task other than the waiting one started after ``after``."""
        found = self.rows(
            "SELECT min(start_date) FROM task_instance WHERE dag_id = %s AND task_id <> %s "
            "AND start_date > to_timestamp(%s)",
            dag_id, waiting_task, after,
        )  # fmt: skip
        return found[0][0].timestamp() if found and found[0][0] else None

    def answered(self, dag_id: str, task_id: str) -> float | None:
        found = self.rows(
            "SELECT h.responded_at FROM hitl_detail h JOIN task_instance t ON t.id = h.ti_id "
            "WHERE t.dag_id = %s AND t.task_id = %s AND h.responded_at IS NOT NULL",
            dag_id, task_id,
        )  # fmt: skip
        return min(r[0].timestamp() for r in found) if found else None

    def last_measured(self, dag_id: str, task_id: str) -> float | None:
        """When the analysis task's trigger took its last measurement (its ledger journal)."""
        with self.ledger.cursor() as cur:
            cur.execute(
                "SELECT max((details::jsonb->>'measured_at')::float) FROM releasetrain_ledger "
                "WHERE dag_id = %s AND kind = 'analysis_measured' AND details::jsonb->>'task_id' = %s",
                (dag_id, task_id),
            )
            return cur.fetchone()[0]

    def triggerer_usage(self) -> tuple[float, int]:
        """CPU seconds so far and RSS bytes of both triggerers with their children."""
        import psutil

        cpu, rss = 0.0, 0
        for name, proc in self.stack.processes.items():
            if not name.startswith("triggerer"):
                continue
            try:
                root = psutil.Process(proc.pid)
                for p in [root, *root.children(recursive=True)]:
                    times = p.cpu_times()
                    cpu += times.user + times.system
                    rss += p.memory_info().rss
            except psutil.NoSuchProcess:
                continue
        return cpu, rss

    def api_log_size(self) -> int:
        log = self.stack.logs / "api-server.log"
        return log.stat().st_size if log.exists() else 0

    def api_requests_since(self, offset: int) -> dict[str, int]:
        """Requests to Airflow's API server since ``offset`` of its access log, per path
        (ids folded), e.g. the task-state asks of our watches and HITL's own polling."""
        import re

        log = self.stack.logs / "api-server.log"
        if not log.exists():
            return {}
        with log.open("rb") as fh:
            fh.seek(offset)
            text = fh.read().decode(errors="replace")
        counts: dict[str, int] = {}
        for path in re.findall(r"path=(\S+)", text):
            key = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "{id}", path.split("?")[0])
            key = re.sub(r"/(release_|manual__)[^/]+", "/{run}", key)
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:8])


def _usage_over(probe: Probe, seconds: float, sample: float = 2.0) -> dict[str, Any]:
    cpu0, _ = probe.triggerer_usage()
    offset, t0 = probe.api_log_size(), time.monotonic()
    held, rss = [], []
    while time.monotonic() - t0 < seconds:
        held.append(probe.held())
        rss.append(probe.triggerer_usage()[1])
        time.sleep(sample)
    cpu1, _ = probe.triggerer_usage()
    span = time.monotonic() - t0
    requests = probe.api_requests_since(offset)
    return {
        "seconds": round(span, 1),
        "held_max": max(held),
        "held_samples": len(held),
        "triggers": probe.triggers(),
        "cpu_s_per_s": (cpu1 - cpu0) / span,
        "rss_bytes": sum(rss) / len(rss),
        "api_requests_per_s": {k: round(n / span, 3) for k, n in requests.items()},
        "state_requests_per_s": requests.get(STATES_PATH, 0) / span,
    }


def _trigger(client: Any, dag_id: str) -> str:
    return client.trigger(dag_id, {"version": "2.0.0", "change_summary": "bench"})["dag_run_id"]


def _all_waiting(probe: Probe, names: dict[str, str]) -> bool:
    """Every run waits where it should, and the steps that ran beside its way there (the
    bundle's verification, the admission's short waits) are over: only then is it steady."""
    states = probe.states([f"release_{n}" for n in names])
    for name, kind in names.items():
        for task in WAITING[kind]:
            if states.get((f"release_{name}", f"{name}.{task}")) not in ("deferred", "awaiting_input"):
                return False
    return probe.held() == 0


def _wait(what: str, until: float, check) -> bool:
    while not check():
        if time.time() > until:
            print(f"  {what}: not reached in time", file=sys.stderr, flush=True)
            return False
        time.sleep(2)
    return True


def _answer_all(url: str, names: list[str]) -> None:
    from releasetrain.client import AirflowClient

    def answer(chunk: list[str]) -> None:
        approver = AirflowClient(url, "approver", "approver")
        for name in chunk:
            approver.respond(f"release_{name}", RUNS[name], f"{name}.approve", "Approve")

    threads = [threading.Thread(target=answer, args=(names[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


RUNS: dict[str, str] = {}


def _resumes(probe: Probe, names: dict[str, str], opens: dict[str, float], until: float) -> dict[str, list[float]]:
    """Per kind, seconds from each run's event to its next task's start (waits until all started)."""
    pending, found = dict(names), {k: [] for k in KINDS}
    while pending and time.time() < until:
        for name, kind in list(pending.items()):
            dag_id, waiting = f"release_{name}", f"{name}.{WAITING[kind][0]}"
            if kind == "approval":
                event = probe.answered(dag_id, waiting)
            elif kind == "window":
                event = opens[name]
            else:
                event = probe.last_measured(dag_id, waiting)
            start = probe.next_start(dag_id, waiting, event) if event is not None else None
            if start is not None:
                found[kind].append(start - event)
                pending.pop(name)
        time.sleep(2)
    if pending:
        print(f"  {len(pending)} runs did not resume in time: {sorted(pending)[:10]}", file=sys.stderr, flush=True)
    return found


def bench(
    per_kind: int, *, interval: int = 10, ramp: float | None = None, steady: float = 60.0, lead: float = 200.0
) -> dict[str, Any]:
    from tests.e2e.distributed import celery_stack

    from releasetrain.client import AirflowClient

    ramp = ramp if ramp is not None else 60 + 12 * per_kind  # observed: ~4 s of two cores per run
    home = Path(tempfile.mkdtemp(prefix="releasetrain-bench-distributed-"))
    specs = home / "releases"
    specs.mkdir()
    started = dt.datetime.now(UTC)
    alone_opens = _minute_after(started + dt.timedelta(seconds=lead))  # stack up (~1 min), runs at the sensor
    batch_opens = _minute_after(alone_opens + dt.timedelta(seconds=45 + ramp + steady))
    batch_verdict = batch_opens + dt.timedelta(seconds=90)
    # the many are triggered just after the lone window opened: their analyses end after the
    # batch's window opened and its approvals were given (later for runs that start later)
    count = math.ceil((batch_verdict - alone_opens).total_seconds() / interval)
    alone_count = max(3, math.ceil((lead - 60) / interval))  # its verdict near the lone window's opening
    names: dict[str, str] = {}
    for kind in KINDS:
        names[ALONE[kind]] = kind
        for i in range(per_kind):
            names[f"{PREFIX[kind]}{i}"] = kind
    alone = {ALONE[k]: k for k in KINDS}
    batch = {n: k for n, k in names.items() if n not in alone}
    opens = {n: (alone_opens if n in alone else batch_opens).timestamp() for n in names}
    for name, kind in names.items():
        data = spec(
            name, kind, opens_at=alone_opens if name in alone else batch_opens,
            interval=interval, count=alone_count if name in alone else count,
        )  # fmt: skip
        (specs / f"{name}.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    config = {"worker_concurrency": 8, "fleet_traffic": 2.0, "parallelism": 32, "fleet_deploy_seconds": 0.5,
              "airflow_config": {"AIRFLOW__SCHEDULER__MAX_TIS_PER_QUERY": "64",
                                 "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": "16"}}  # fmt: skip
    report: dict[str, Any] = {
        "per_kind": per_kind,
        "waiting_runs": 3 * per_kind,
        "interval_s": interval,
        "alone_window_opens": alone_opens.isoformat(),
        "batch_window_opens": batch_opens.isoformat(),
    }
    print(f"{3 * per_kind} waiting runs; windows open at {alone_opens:%H:%M} and {batch_opens:%H:%M} UTC",
          file=sys.stderr, flush=True)  # fmt: skip
    try:
        with celery_stack(specs, f"release_{PREFIX['canary']}{per_kind - 1}", list(names), **config) as stack:
            probe = Probe(stack)
            url = stack.config.api_url
            author = AirflowClient(url, "author", "author")
            report["stack_ready_s"] = round(time.time() - started.timestamp())
            report["idle"] = _usage_over(probe, 20)
            # one release of each kind, alone
            for name in alone:
                RUNS[name] = _trigger(author, f"release_{name}")
            if _wait("the lone runs waiting", alone_opens.timestamp() - 5, lambda: _all_waiting(probe, alone)):
                report["alone_waiting"] = _usage_over(probe, min(20, max(2, alone_opens.timestamp() - time.time() - 5)))
            time.sleep(max(0, alone_opens.timestamp() + 20 - time.time()))
            _answer_all(url, ["sa"])
            report["alone"] = {k: _percentiles(v) for k, v in _resumes(probe, alone, opens, time.time() + 240).items()}
            print(f"  alone: {report['alone']}", file=sys.stderr, flush=True)
            admin = AirflowClient(url, "admin", "admin")
            for name in alone:  # measured: they hold nothing while the many wait
                admin.request("PATCH", f"/dags/release_{name}/dagRuns/{RUNS[name]}", json={"state": "failed"})
            # then the many, at once
            t0 = time.time()
            for name in batch:
                RUNS[name] = _trigger(author, f"release_{name}")
            reached = _wait("all runs waiting", batch_opens.timestamp() - 15, lambda: _all_waiting(probe, batch))
            report["ramp_s"] = round(time.time() - t0) if reached else None
            report["all_waiting"] = reached
            report["steady"] = _usage_over(probe, max(5, min(steady, batch_opens.timestamp() - time.time() - 10)))
            time.sleep(max(0, batch_opens.timestamp() + 20 - time.time()))
            _answer_all(url, [n for n, k in batch.items() if k == "approval"])
            found = _resumes(probe, batch, opens, time.time() + 600 + 2 * count * interval)
            report["many"] = {k: _percentiles(v) for k, v in found.items()}
            print(f"  many: {report['many']} (ramp {report['ramp_s']} s)", file=sys.stderr, flush=True)
            probe.close()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    idle, steady_row = report["idle"], report["steady"]
    report["per_waiting_trigger"] = {
        "triggers": steady_row["triggers"],
        "cpu_s_per_s": (steady_row["cpu_s_per_s"] - idle["cpu_s_per_s"]) / max(1, steady_row["triggers"]),
        "rss_kb": (steady_row["rss_bytes"] - idle["rss_bytes"]) / 1024 / max(1, steady_row["triggers"]),
    }
    report["state_requests_per_s_per_waiting_rollout"] = steady_row["state_requests_per_s"] / max(1, per_kind)
    report["resume_p95_ratio_many_vs_alone"] = {
        k: (round(report["many"][k]["p95"] / max(0.01, report["alone"][k]["p95"]), 2)
            if report["many"].get(k) and report["alone"].get(k) else None)
        for k in KINDS
    }  # fmt: skip
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-kind", type=int, default=30, help="waiting runs of each kind (the goal: 333)")
    parser.add_argument("--interval", type=int, default=10, help="the canary analysis interval (s)")
    parser.add_argument("--ramp", type=float, default=None, help="seconds allowed for all runs to start waiting")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    args = parser.parse_args(argv)
    os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="releasetrain-bench-client-"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a stopped benchmark stops its stack too
    report = bench(args.per_kind, interval=args.interval, ramp=args.ramp)
    report["setup"] = {"cpus": os.cpu_count(), "python": sys.version.split()[0], "executor": "celery",
                       "workers": 2, "worker_concurrency": 8, "schedulers": 2, "triggerers": 2}  # fmt: skip
    text = json.dumps(report, indent=2, default=str)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
