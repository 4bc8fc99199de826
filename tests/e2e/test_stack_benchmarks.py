"""The benchmarks that need a running stack, once at a tiny size (issue 12), so none can rot
unnoticed. They start stacks of their own (minutes each), so they run in `make test-faults`
(which `.ci/run` runs after `make test`) rather than in `make test`'s 20 minutes; the real
sizes run with `make bench`. Figures are ratios; only what must hold at any size is asserted
(every run succeeded, nothing waiting holds a worker slot, every waiting run resumed)."""

from __future__ import annotations

import importlib
import sys

import pytest

from tests.conftest import PROJECT_ROOT

pytestmark = [pytest.mark.e2e, pytest.mark.faults]


def _load(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "benchmarks"))
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def test_the_overhead_benchmark_runs_at_a_tiny_size_on_both_executors(monkeypatch):
    bench = _load("bench_overhead", monkeypatch)
    report = bench.bench(["local", "celery"], repeat=1)  # raises unless every run succeeded
    for executor in ("local", "celery"):
        row = report[executor]
        assert set(row["median_s"]) == {"baseline_empty", "baseline_python", "release_overhead"}, row
        assert row["ratio_vs_empty"] > 0 and row["ratio_vs_python"] > 0, row
        # the release's tasks really ran (the deploys among them), the empty baseline's never do
        assert row["in_tasks_last_run"]["release_overhead"]["task_seconds_sum"] > 0, row
    assert report["tasks"] > 10


def test_the_waiting_releases_benchmark_runs_at_a_tiny_size(monkeypatch):
    bench = _load("bench_distributed", monkeypatch)
    report = bench.bench(1, interval=5, ramp=90, steady=10, lead=120)
    assert report["all_waiting"], report
    # waiting in an approval, a window and an analysis holds no worker slot
    assert report["steady"]["held_max"] == 0, report["steady"]
    assert report["steady"]["triggers"] >= 3, report["steady"]
    for kind in bench.KINDS:
        assert report["alone"][kind] and report["alone"][kind]["n"] == 1, (kind, report["alone"])
        assert report["many"][kind] and report["many"][kind]["n"] == 1, (kind, report["many"])
