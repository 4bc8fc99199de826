"""Benchmarks for release windows (run: `make bench`; not part of `make test`).

1. A year of effective windows for 100 releases (windows + six blackout rules each:
   holidays, business-day close, year-end freeze, cron batch, ICS feed), against a plain
   baseline measured in the same run: a CronTriggerTimetable with the same window start
   iterated over the same year for 100 DAGs.
2. DAG file parse time with 100 release specs, against a hand-written DAG file of the
   same shape (same task ids and dependencies, EmptyOperators), both parsed by Airflow's
   DagBag in this process.

Numbers are reported as ratios to their baseline; machines here are shared and noisy.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="releasetrain-bench-"))
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
N = 100


def best_of(fn, repeat: int = 3) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def bench_year_of_windows() -> dict:
    import pendulum
    import yaml
    from airflow.timetables.base import TimeRestriction
    from airflow.timetables.trigger import CronTriggerTimetable

    from releasetrain.core.spec import CalendarLibrary, parse_spec

    base = yaml.safe_load((ROOT / "include/releases/payments.yaml").read_text())
    specs = []
    for i in range(N):  # 100 distinct releases: own batch time, own one-off blackout
        data = {**base, "name": f"payments{i:03d}"}
        data["calendar"] = {
            **base["calendar"],
            "blackouts": [
                {"name": "batch", "cron": f"{i % 60} {13 + i % 5} * * *", "duration_minutes": 30 + i % 30},
                {
                    "name": "migration",
                    "start": f"2027-0{1 + i % 9}-1{i % 9}T08:00",
                    "end": f"2027-0{1 + i % 9}-1{i % 9}T18:00",
                },
                base["calendar"]["blackouts"][1],
            ],
        }
        specs.append(parse_spec(data, f"bench-{i}"))
    library = CalendarLibrary(ROOT)
    start = dt.datetime(2027, 1, 1, tzinfo=dt.UTC)
    end = start + dt.timedelta(days=365)

    def ours():
        from releasetrain.core import windows

        windows.holiday_dates.cache_clear()
        windows._business_days.cache_clear()
        for spec in specs:
            calendar = library.resolve(spec.calendar_layers("payments-prod"))
            calendar.effective(start, end)

    def baseline():
        for _ in range(N):
            table = CronTriggerTimetable("0 9 * * 1-4", timezone="Europe/Berlin")
            restriction = TimeRestriction(
                earliest=pendulum.instance(start), latest=pendulum.instance(end), catchup=True
            )
            last = None
            while True:
                info = table.next_dagrun_info(last_automated_data_interval=last, restriction=restriction)
                if info is None:
                    break
                last = info.data_interval

    t_ours, t_base = best_of(ours), best_of(baseline)
    return {
        "releases": N,
        "ours_s": round(t_ours, 3),
        "cron_baseline_s": round(t_base, 3),
        "ratio": round(t_ours / t_base, 2),
    }


def bench_parse(tmp: Path) -> dict:
    import yaml
    from airflow.dag_processing.dagbag import DagBag

    from releasetrain.core.spec import load_spec
    from releasetrain.factory import build_release_dag, build_rollback_dag

    specs = tmp / "releases"
    specs.mkdir()
    base = yaml.safe_load((ROOT / "include/releases/payments.yaml").read_text())
    for i in range(N):
        (specs / f"payments{i:03d}.yaml").write_text(yaml.safe_dump({**base, "name": f"payments{i:03d}"}))
    # the hand-written baseline: same DAG shape, EmptyOperators, one file
    spec = load_spec(specs / "payments000.yaml", display_root=ROOT)
    shape = build_release_dag(spec, project_root=ROOT)
    rollback = build_rollback_dag(spec, project_root=ROOT)  # each spec makes two DAGs: so does the baseline
    edges = [(t.task_id, d) for t in shape.tasks for d in sorted(t.downstream_task_ids)]
    rb_edges = [(t.task_id, d) for t in rollback.tasks for d in sorted(t.downstream_task_ids)]
    hand = tmp / "hand" / "hand_written_dags.py"
    hand.parent.mkdir()
    hand.write_text(
        "# airflow DAG file: hand-written baseline\n"
        "import pendulum\nfrom airflow.sdk import DAG\n"
        "from airflow.providers.standard.operators.empty import EmptyOperator\n"
        f"TASKS = {[t.task_id for t in shape.tasks]!r}\nEDGES = {edges!r}\n"
        f"for i in range({N}):\n"
        "    with DAG(dag_id=f'hand_{i:03d}', schedule=None, start_date=pendulum.datetime(2024, 1, 1)) as dag:\n"
        "        ops = {t: EmptyOperator(task_id=t) for t in TASKS}\n"
        "        for a, b in EDGES:\n"
        "            ops[a] >> ops[b]\n"
        "    globals()[dag.dag_id] = dag\n"
        f"RB_TASKS = {[t.task_id for t in rollback.tasks]!r}\nRB_EDGES = {rb_edges!r}\n"
        f"for i in range({N}):\n"
        "    with DAG(dag_id=f'hand_rb_{i:03d}', schedule=None, start_date=pendulum.datetime(2024, 1, 1)) as dag:\n"
        "        ops = {t: EmptyOperator(task_id=t) for t in RB_TASKS}\n"
        "        for a, b in RB_EDGES:\n"
        "            ops[a] >> ops[b]\n"
        "    globals()[dag.dag_id] = dag\n"
    )
    os.environ["RELEASETRAIN_SPEC_DIRS"] = str(specs)

    def ours():
        bag = DagBag(str(ROOT / "dags" / "releases.py"))
        assert len(bag.dags) == 2 * N and not bag.import_errors, bag.import_errors

    def baseline():
        bag = DagBag(str(hand))
        assert len(bag.dags) == 2 * N, bag.import_errors

    t_ours, t_base = best_of(ours), best_of(baseline)
    return {
        "specs": N,
        "tasks_per_dag": len(shape.tasks),
        "ours_s": round(t_ours, 3),
        "hand_written_baseline_s": round(t_base, 3),
        "ratio": round(t_ours / t_base, 2),
    }


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        results = {"year_of_effective_windows": bench_year_of_windows(), "dag_parse": bench_parse(Path(tmp))}
    results["python"] = sys.version.split()[0]
    results["note"] = "best of 3; ratio = ours / baseline measured in the same run"
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
