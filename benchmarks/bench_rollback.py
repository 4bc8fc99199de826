"""Rollback latency benchmark for issue 5 (run: `make bench`; not part of `make test`).

Issue 5's goal: from the moment a canary starts failing to the moment its rollback deploy
starts takes at most one analysis interval plus 5 s. Measured on real processes: the demo
fleet (synthetic traffic), a real Prometheus scraping it every second, and Airflow's API
server, scheduler, dag-processor and triggerer on SQLite (:class:`DevStack`).

Two releases are written at run time, one per analysis interval (5 s and 30 s): one
canary environment, steps 10 and 100, an analysis of the fleet's error rate (the query of
the end-to-end fixtures, ``max 0.05``, ``failure_limit 0``; ``inconclusive_limit`` = count,
so a first measurement without data does not park the run on a human) long enough to still
be running when the fault comes. Per run: trigger a new version over REST, wait until
``canary_10`` is deferred and its first (healthy) measurement is behind it, then at ``t0``
make the new version fail (``POST /faults``, error rate 1.0). The latency is the fleet's
first ``abort`` entry after ``t0`` (the rollback's traffic change, i.e. the rollback
deploy starting) minus ``t0``. Runs place ``t0`` at different phases of the measurement
cycle (the first measurement is due ``interval`` s after the trigger was created), since
the goal is a bound, not an average.

Baselines measured in the same run, at the same moments:

- the interval itself (the goal is stated in intervals);
- the detection floor: from ``t0`` until Prometheus' instant query of the analysis'
  expression exceeds 0.05 (polled every 0.2 s); and the *window* floor: until the
  measurement the analysis would take at that instant (the same range query: the last
  interval, step ``max(1, interval / 10)``, judged like the spec's ``aggregate: last``:
  the newest sample) exceeds 0.05. No
  analysis on these metrics can see the fault earlier.

Decomposition from the trigger's log (when readable): the wait for the measurement that
saw the fault, and Airflow's share (trigger event -> task fails -> rollback task ->
traffic change). Speed goals are reported, never asserted: ratios to the baselines and
PASS/MISS against the goal. Machines here are shared and noisy.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import requests  # noqa: E402
import yaml  # noqa: E402

THRESHOLD = 0.05
GOAL_SLACK_S = 5.0
OLD = "1.0.0"
# the end-to-end fixtures' error-rate query (tests/fixtures/releases/canary-abort.yaml)
QUERY = (
    '(sum(increase(fleet_requests_total{environment="${environment}",version="${version}",route="${route}",'
    'code=~"5.."}[10s])) or vector(0)) / sum(increase(fleet_requests_total{environment="${environment}",'
    'version="${version}",route="${route}"}[10s]))'
)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _epoch(iso: str | None) -> float | None:
    if not iso:
        return None
    return dt.datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def environment(interval: int) -> str:
    return f"bench-{interval}s"


def release_spec(interval: int, count: int) -> dict[str, Any]:
    env = environment(interval)
    return {
        "name": f"bench{interval}",
        "owner_team": "bench",
        "components": [{"name": "web", "source": "include/demo_fleet/artifacts/storefront-web"}],
        "environments": [
            {
                "name": env,
                "deploy_target": "fleet_" + env.replace("-", "_"),
                "deploy_timeout_seconds": 120,
                "poll_interval_seconds": 0.5,
                "strategy": {
                    "kind": "canary",
                    "steps": [10, 100],
                    "abort": False,
                    "analysis": {
                        "provider": {"kind": "prometheus", "conn_id": "prometheus_bench"},
                        "interval_seconds": interval,
                        "count": count,
                        "failure_limit": 0,
                        # a measurement without data yet (a new version's first seconds) must not park
                        # the run on a human decision: only the fault is measured here
                        "inconclusive_limit": count,
                        "metrics": [
                            {
                                "name": "error_rate",
                                "query": QUERY,
                                "absolute": {"max": THRESHOLD},
                                "aggregate": "last",
                                "no_data": "inconclusive",
                            }
                        ],
                    },
                },
            }
        ],
        "rollback_plan": "The rollout rolls itself back (the canary is aborted)",
        "backout_minutes": 5,
        "closure": False,
    }


def rendered_query(env: str, version: str) -> str:
    return QUERY.replace("${environment}", env).replace("${version}", version).replace("${route}", "app")


# --- Prometheus: the detection floors ----------------------------------------------------
def _instant(prom: str, query: str) -> float | None:
    data = requests.get(f"{prom}/api/v1/query", params={"query": query}, timeout=5).json()["data"]["result"]
    values = [float(r["value"][1]) for r in data]
    values = [v for v in values if v == v]  # NaN: no traffic counted yet
    return max(values) if values else None


def _window(prom: str, query: str, interval: int) -> float | None:
    """What the analysis would measure right now (CanaryAnalysisTrigger._measure + judge_metric)."""
    end = time.time()
    params = {"query": query, "start": end - interval, "end": end, "step": max(1.0, interval / 10)}
    data = requests.get(f"{prom}/api/v1/query_range", params=params, timeout=5).json()["data"]["result"]
    samples = [float(v) for r in data for _, v in r["values"]]
    samples = [v for v in samples if v == v and abs(v) != float("inf")]
    return samples[-1] if samples else None  # aggregate: last, as the benchmark's spec says


class DetectionFloor(threading.Thread):
    """From t0, poll Prometheus every 0.2 s until both floors are crossed (or the deadline)."""

    def __init__(self, prom: str, query: str, interval: int, t0: float, limit_s: float):
        super().__init__(daemon=True)
        self.prom, self.query, self.interval, self.t0, self.limit_s = prom, query, interval, t0, limit_s
        self.instant_s: float | None = None
        self.window_s: float | None = None
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set() and time.time() - self.t0 < self.limit_s:
            try:
                if self.instant_s is None and (_instant(self.prom, self.query) or 0) > THRESHOLD:
                    self.instant_s = time.time() - self.t0
                if self.window_s is None and (_window(self.prom, self.query, self.interval) or 0) > THRESHOLD:
                    self.window_s = time.time() - self.t0
            except (requests.RequestException, KeyError, ValueError):
                self.errors += 1
            if self.instant_s is not None and self.window_s is not None:
                return
            self.stop.wait(0.2)


# --- the fleet ---------------------------------------------------------------------------
class Fleet:
    def __init__(self, url: str, auth: tuple[str, str]):
        self.url, self.auth = url, auth

    def status(self, env: str) -> dict[str, Any]:
        response = requests.get(f"{self.url}/environments/{env}", auth=self.auth, timeout=10)
        response.raise_for_status()
        return response.json()

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        response = requests.post(f"{self.url}{path}", json=body, auth=self.auth, timeout=10)
        response.raise_for_status()
        return response.json()

    def clear_faults(self) -> None:
        requests.delete(f"{self.url}/faults", auth=self.auth, timeout=10).raise_for_status()

    def wait_old_version(self, env: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            status = self.status(env)
            if status["version"] == OLD and status["idle"] is None and status["state"] == "idle":
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"{env} does not run {OLD} alone again: {status}")
            time.sleep(0.5)


def measurement_times(home: Path, dag_id: str, run_id: str, task_id: str) -> list[tuple[float, str]]:
    """(when, message) of each measurement, from the trigger's log file (empty if unreadable)."""
    found = []
    for path in (home / "logs" / f"dag_id={dag_id}").glob(f"run_id=*/task_id={task_id}/*.trigger.*.log"):
        if run_id not in path.parent.parent.name:
            continue
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            event = str(entry.get("event", ""))
            if event.startswith("canary analysis") and entry.get("timestamp"):
                found.append((_epoch(entry["timestamp"]), event))
    return sorted(found)


def task_log_notes(home: Path, dag_id: str, run_id: str, task_id: str) -> dict[str, Any]:
    """How often the task ran ``execute`` and deferred, its tries, and its errors (from its log files).

    A run is *disturbed* when the analysis task deferred more than once: a retry or a
    reschedule re-runs ``execute``, which starts the analysis over (a re-parse of plugins/
    that failed while someone edited them did this once); it is reported, not timed.
    """
    deferrals, attempts, errors = 0, 0, []
    for path in (home / "logs" / f"dag_id={dag_id}").glob(f"run_id=*/task_id={task_id}/attempt=*.log"):
        if run_id not in path.parent.parent.name or ".trigger." in path.name:
            continue
        attempts += 1
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            event = str(entry.get("event", ""))
            deferrals += event.startswith("Pausing task as DEFERRED")
            if entry.get("level") in ("error", "critical") or event.startswith("Rescheduling task"):
                errors.append(event[:200])
    return {"deferrals": deferrals, "attempts": attempts, "errors": errors[:4]}


# --- one run -----------------------------------------------------------------------------
def one_run(ctx: dict[str, Any], interval: int, version: str, phase: float) -> dict[str, Any]:
    """Trigger ``version``, fault it at ``phase`` of a measurement cycle, time the rollback."""
    client, fleet, prom = ctx["client"], ctx["fleet"], ctx["prometheus"]
    env, dag_id = environment(interval), f"release_bench{interval}"
    canary = f"{env}.canary_10"
    fleet.wait_old_version(env)
    run_id = client.trigger(dag_id, {"version": version, "change_summary": "rollback latency benchmark"})["dag_run_id"]
    row: dict[str, Any] = {"interval_s": interval, "version": version, "run_id": run_id, "phase": phase}
    deadline = time.monotonic() + 600
    while True:
        ti = client.task_instance(dag_id, run_id, canary)
        if ti["state"] == "deferred" and ti.get("trigger"):
            break
        if client.run(dag_id, run_id)["state"] in ("success", "failed") or time.monotonic() > deadline:
            raise RuntimeError(f"{canary} never deferred: {client.task_states(dag_id, run_id)}")
        time.sleep(0.5)
    # the trigger's first measurement is due `interval` s after it was created (next_at)
    created = _epoch(ti["trigger"]["created_date"])
    planned = created + interval * (1 + phase)
    while (wait := planned - time.time()) > 0:
        time.sleep(min(wait, 0.5))
    floor = DetectionFloor(prom, rendered_query(env, version), interval, time.time(), limit_s=3 * interval + 60)
    t0 = floor.t0
    floor.start()
    fleet.post("/faults", {"environment": env, "version": version, "error_rate": 1.0})
    row["fault_posted_s"] = round(time.time() - t0, 3)
    try:
        run = client.wait_for_run(dag_id, run_id, timeout=4 * interval + 300, poll=1.0)
    except TimeoutError as exc:  # e.g. parked on a decision: end it, take the canary out, report
        client.request("PATCH", f"/dags/{dag_id}/dagRuns/{run_id}", json={"state": "failed"})
        fleet.post(f"/environments/{env}/abort", {})
        row["error"] = str(exc)[:500]
        run = {"state": "timeout"}
    floor.join(timeout=3 * interval + 60)
    floor.stop.set()
    fleet.clear_faults()
    states = client.task_states(dag_id, run_id)
    row.update(run_state=run["state"], canary_state=states.get(canary), rollback_state=states.get(f"{env}.rollback"))
    history = fleet.status(env)["history"]
    aborts = [h["at"] for h in history if h["kind"] == "abort" and h.get("version") == version and h["at"] >= t0]
    row["latency_s"] = round(aborts[0] - t0, 3) if aborts else None
    row["floor_instant_s"] = None if floor.instant_s is None else round(floor.instant_s, 3)
    row["floor_window_s"] = None if floor.window_s is None else round(floor.window_s, 3)
    # when the task failed and the rollback task started (Airflow's own timestamps)
    canary_ti = client.task_instance(dag_id, run_id, canary)
    rollback_ti = client.task_instance(dag_id, run_id, f"{env}.rollback")
    for key, value in (
        ("canary_failed_s", _epoch(canary_ti.get("end_date"))),
        ("rollback_started_s", _epoch(rollback_ti.get("start_date"))),
    ):
        row[key] = None if value is None else round(value - t0, 3)
    notes = task_log_notes(ctx["home"], dag_id, run_id, canary)
    row["canary_deferrals"], row["canary_attempts"] = notes["deferrals"], notes["attempts"]
    if notes["deferrals"] > 1 or notes["attempts"] > 1:
        tries = f"{notes['deferrals']} deferrals in {notes['attempts']} tries"
        row["disturbed"] = f"{canary} started its analysis over ({tries}): {notes['errors']}"
    measurements = measurement_times(ctx["home"], dag_id, run_id, canary)
    before = [at for at, _ in measurements if at < t0]
    after = [(at, message) for at, message in measurements if at >= t0]
    row["measurements"] = len(measurements)
    row["since_last_measurement_s"] = round(t0 - before[-1], 3) if before else None
    detected = next((at for at, message in after if "(fail;" in message or "critical metric failed" in message), None)
    row["measurements_after_fault"] = [round(at - t0, 3) for at, _ in after]
    row["detected_s"] = None if detected is None else round(detected - t0, 3)
    row["airflow_s"] = round(aborts[0] - detected, 3) if aborts and detected else None
    started = row["rollback_started_s"]
    row["rollback_task_to_abort_s"] = (
        round(row["latency_s"] - started, 3) if started is not None and row["latency_s"] is not None else None
    )
    fleet.wait_old_version(env)
    return row


def timed(row: dict[str, Any]) -> bool:
    return row.get("latency_s") is not None and not row.get("error") and not row.get("disturbed")


def summarize(interval: int, all_rows: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [r for r in all_rows if timed(r)]
    latencies = [r["latency_s"] for r in rows]
    if not latencies:
        return {"interval_s": interval, "runs": len(all_rows), "timed": 0}
    worst = max(latencies)

    def median(key: str) -> float | None:
        values = [r[key] for r in rows if r.get(key) is not None]
        return round(statistics.median(values), 2) if values else None

    med = statistics.median(latencies)
    windows = [r["floor_window_s"] for r in rows if r.get("floor_window_s") is not None]
    shares = [r["airflow_s"] for r in rows if r.get("airflow_s") is not None]
    derived = round(interval + max(windows) + max(shares), 2) if windows and shares else None
    floor_instant, floor_window = median("floor_instant_s"), median("floor_window_s")
    return {
        "interval_s": interval,
        "runs": len(all_rows),
        "timed": len(latencies),
        "disturbed_or_failed": len(all_rows) - len(latencies),
        "latency_median_s": round(med, 2),
        "latency_max_s": round(worst, 2),
        "latency_min_s": round(min(latencies), 2),
        "ratio_median_to_interval": round(med / interval, 2),
        "median_minus_interval_s": round(med - interval, 2),
        "worst_minus_interval_s": round(worst - interval, 2),
        "goal": f"latency <= interval + {GOAL_SLACK_S:g} s",
        "goal_met_by_every_run": worst - interval <= GOAL_SLACK_S,
        "floor_instant_median_s": floor_instant,
        "floor_window_median_s": floor_window,
        "median_minus_floor_instant_s": None if floor_instant is None else round(med - floor_instant, 2),
        "median_minus_floor_window_s": None if floor_window is None else round(med - floor_window, 2),
        "detected_median_s": median("detected_s"),
        "airflow_median_s": median("airflow_s"),
        "rollback_task_to_abort_median_s": median("rollback_task_to_abort_s"),
        # A fault that comes just too late for a measurement (less than the window floor
        # before it) waits for the next one: the worst phase costs interval + window floor +
        # Airflow's share. Derived from this run's worst components, whatever phases were drawn.
        "worst_case_derived_s": derived,
        "worst_case_derived_minus_interval_s": None if derived is None else round(derived - interval, 2),
        "goal_met_by_derived_worst_case": None if derived is None else derived - interval <= GOAL_SLACK_S,
        "ratio_airflow_to_interval": (
            None if median("airflow_s") is None else round(median("airflow_s") / interval, 2)
        ),
    }


def table(rows: list[dict[str, Any]], summaries: list[dict[str, Any]]) -> str:
    def f(value: Any) -> str:
        return "-" if value is None else f"{value:.2f}" if isinstance(value, float) else str(value)

    cols = [
        ("interval", "interval_s"),
        ("version", "version"),
        ("phase", "phase"),
        ("since meas.", "since_last_measurement_s"),
        ("floor inst", "floor_instant_s"),
        ("floor win", "floor_window_s"),
        ("detected", "detected_s"),
        ("task failed", "canary_failed_s"),
        ("rb started", "rollback_started_s"),
        ("LATENCY", "latency_s"),
        ("airflow", "airflow_s"),
        ("run", "run_state"),
    ]
    cols = [(h, k) for h, k in cols if k != "run_state"]
    lines = ["Per run (seconds after t0 = fault posted):", "  ".join(f"{h:>11}" for h, _ in cols)]
    for row in rows:
        line = "  ".join(f"{f(row.get(k)):>11}" for _, k in cols)
        problem = row.get("error") or row.get("disturbed")
        lines.append(line + (f"  NOT TIMED: {problem[:160]}" if problem else f"  {row.get('run_state')}"))
    lines += ["", "Per interval (medians; goal: latency <= interval + 5 s, checked on the worst run):"]
    for s in summaries:
        if not s.get("timed"):
            lines.append(f"  {s['interval_s']:>3} s: no run was timed")
            continue
        verdict = "PASS" if s["goal_met_by_every_run"] else "MISS"
        lines.append(
            f"  {s['interval_s']:>3} s: latency median {s['latency_median_s']:.2f} s (max {s['latency_max_s']:.2f}), "
            f"{s['ratio_median_to_interval']:.2f}x the interval; worst - interval = "
            f"{s['worst_minus_interval_s']:+.2f} s vs +{GOAL_SLACK_S:g} s: {verdict}; "
            f"median - floor: {f(s['median_minus_floor_instant_s'])} s (instant), "
            f"{f(s['median_minus_floor_window_s'])} s (window); Airflow's share {f(s['airflow_median_s'])} s"
        )
        if s["worst_case_derived_s"] is not None:
            derived = "PASS" if s["goal_met_by_derived_worst_case"] else "MISS"
            lines.append(
                f"         worst phase (interval + max window floor + max Airflow share, derived): "
                f"{s['worst_case_derived_s']:.2f} s = interval {s['worst_case_derived_minus_interval_s']:+.2f} s "
                f"vs +{GOAL_SLACK_S:g} s: {derived}"
            )
    return "\n".join(lines)


def _distributed_settings() -> dict[str, Any]:
    """The distributed shape (as the end-to-end tests run it), on databases of its own."""
    from tests.pg import admin

    name = f"releasetrain_bench_{int(time.time() * 1000) % 10**10}"
    admin(f"CREATE DATABASE {name}")
    admin(f"CREATE DATABASE {name}_ledger")
    return {
        "name": name,
        "db_url": f"postgresql+psycopg2://postgres@127.0.0.1:5432/{name}",
        "ledger_conn": {"conn_type": "postgres", "host": "127.0.0.1", "port": 5432, "login": "postgres",
                        "schema": f"{name}_ledger"},
        "executor": "celery",
        "schedulers": 2,
        "triggerers": 2,
        "workers": 2,
        "worker_concurrency": 4,
    }  # fmt: skip


def _drop(name: str) -> None:
    from tests.pg import admin

    admin(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin(f"DROP DATABASE IF EXISTS {name}_ledger WITH (FORCE)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--intervals", type=int, nargs="+", default=[5, 30], help="analysis intervals (s)")
    parser.add_argument(
        "--repeat", type=int, nargs="+", default=[3, 2], help="runs per interval (one value for all, or one each)"
    )
    parser.add_argument("--count", type=int, default=40, help="measurements of each analysis (long enough)")
    parser.add_argument("--traffic", type=float, default=20.0, help="synthetic requests/s per environment")
    parser.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    parser.add_argument("--keep", action="store_true", help="keep the stack's home (logs) for inspection")
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="on the distributed stack: PostgreSQL, CeleryExecutor on Redis, 2 workers, 2 schedulers, 2 triggerers",
    )
    args = parser.parse_args(argv)
    repeats = args.repeat * len(args.intervals) if len(args.repeat) == 1 else args.repeat
    if len(repeats) != len(args.intervals):
        parser.error("--repeat takes one value, or one per interval")

    home = Path(tempfile.mkdtemp(prefix="releasetrain-bench-rollback-"))
    # importing Airflow here must not create ~/airflow (as in the other benchmarks)
    os.environ.setdefault("AIRFLOW_HOME", str(home / "client"))
    from tests.servers.prometheus import running_prometheus

    from releasetrain.client import AirflowClient
    from releasetrain.devstack import DevStack, StackConfig

    specs = home / "releases"
    specs.mkdir()
    for interval in args.intervals:
        (specs / f"bench{interval}.yaml").write_text(yaml.safe_dump(release_spec(interval, args.count)))
    fleet_port = _free_port()
    stack = None
    database = _distributed_settings() if args.distributed else {}
    rows: list[dict[str, Any]] = []
    started = time.time()
    try:
        with running_prometheus([f"http://127.0.0.1:{fleet_port}/metrics"], scrape_interval="1s") as prom:
            config = StackConfig(
                project_root=ROOT,
                home=home / "airflow",
                api_port=_free_port(),
                fleet_port=fleet_port,
                spec_dirs=[specs],
                fleet_environments=[environment(i) for i in args.intervals],
                fleet_seed={environment(i): OLD for i in args.intervals},
                fleet_deploy_seconds=1.0,
                fleet_traffic=args.traffic,
                connections={"prometheus_bench": {"conn_type": "http", "host": prom}},
                **{k: v for k, v in database.items() if k != "name"},
            )
            stack = DevStack(config)
            print(f"starting the stack in {config.home} ...", file=sys.stderr, flush=True)
            stack.prepare()
            stack.start()
            client = AirflowClient(config.api_url, "author", "author")
            dags = {f"release_bench{i}" for i in args.intervals}
            deadline = time.monotonic() + 240
            while not dags <= set(client.dag_ids()):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"DAGs not parsed: {client.dag_ids()} {client.import_errors()}")
                time.sleep(2)
            ctx = {
                "client": client,
                "fleet": Fleet(config.fleet_url, stack.fleet_auth()),
                "prometheus": prom,
                "home": config.home,
            }
            patch = 0
            for interval, repeat in zip(args.intervals, repeats, strict=True):
                phases = [round((i + 0.5) / repeat, 3) for i in range(repeat)]  # spread over the cycle
                extra = 0
                while phases:
                    phase, version = phases[0], f"2.0.{patch}"
                    patch += 1
                    print(f"interval {interval} s: {version}, phase {phase}", file=sys.stderr)
                    try:
                        row = one_run(ctx, interval, version, phase)
                    except Exception as exc:  # one bad run must not lose the others
                        row = {"interval_s": interval, "version": version, "phase": phase, "error": repr(exc)[:500]}
                    print(f"  {json.dumps(row)}", file=sys.stderr, flush=True)
                    rows.append(row)
                    if timed(row) or extra >= 2:  # a disturbed or failed run is repeated (twice at most)
                        phases.pop(0)
                    else:
                        extra += 1
    finally:
        if stack is not None:
            stack.stop()
        if database:
            _drop(database["name"])
        if args.keep:
            print(f"kept {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)
    summaries = [summarize(i, [r for r in rows if r["interval_s"] == i]) for i in args.intervals]
    results = {
        "rollback_latency": summaries,
        "runs": rows,
        "setup": {
            "database": "postgresql" if args.distributed else "sqlite",
            "executor": "celery (2 workers, 2 schedulers, 2 triggerers)" if args.distributed else "local",
            "traffic_rps": args.traffic,
            "canary_weight": 10,
            "prometheus_scrape_s": 1,
            "threshold": THRESHOLD,
            "cpus": os.cpu_count(),
            "wall_s": round(time.time() - started),
        },
        "python": sys.version.split()[0],
        "note": "latency = first fleet 'abort' (rollback traffic change) after t0 (fault posted); "
        "baselines measured in the same run: the interval, and the detection floors from Prometheus",
    }
    print(table(rows, summaries))
    print(json.dumps(results, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
