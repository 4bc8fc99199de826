"""Every benchmark runs once here at a tiny size, so none can rot unnoticed (the real sizes
run with `make bench`; results are ratios to a baseline measured in the same run)."""

from __future__ import annotations

import importlib
import sys

from tests.conftest import PROJECT_ROOT


def _load(name: str, monkeypatch):
    # importable by name: the ledger benchmark's writers run in spawned child processes
    monkeypatch.syspath_prepend(str(PROJECT_ROOT / "benchmarks"))
    monkeypatch.setenv("PYTHONPATH", str(PROJECT_ROOT / "benchmarks"))
    sys.modules.pop(name, None)
    return importlib.import_module(name)


def test_the_ledger_benchmark_runs_at_a_tiny_size(tmp_path, monkeypatch):
    bench = _load("bench_ledger", monkeypatch)
    monkeypatch.setattr(bench, "WRITERS", 2)
    monkeypatch.setattr(bench, "PER_WRITER", 10)
    monkeypatch.setattr(bench, "VERIFY_N", 100)
    row = bench.bench(f"sqlite:///{tmp_path / 'bench.db'}", "sqlite")
    assert row["append_events"] == 20 and row["verify_ratio_vs_read"] > 0


def test_the_windows_benchmark_runs_at_a_tiny_size(tmp_path, monkeypatch):
    bench = _load("bench_windows", monkeypatch)
    monkeypatch.setattr(bench, "N", 2)
    monkeypatch.setattr(bench, "best_of", lambda fn, repeat=3: _once(fn))
    year = bench.bench_year_of_windows()
    parse = bench.bench_parse(tmp_path)
    assert parse["specs"] == 2 and parse["ratio"] > 0 and year


def _once(fn) -> float:
    import time

    started = time.perf_counter()
    fn()
    return max(time.perf_counter() - started, 1e-6)


def test_the_waiting_benchmark_runs_at_a_tiny_size(monkeypatch):
    bench = _load("bench_waiting", monkeypatch)
    for name, value in (("N", 20), ("INTERVAL", 0.1), ("WAIT_TICKS", 3), ("SINGLES", 2)):
        monkeypatch.setattr(bench, name, value)
    report = bench.bench()
    # batched, 20 waiting rollouts ask at most about as often as one does alone
    assert report["request_ratio_batched_vs_per_rollout"] < 0.2, report
    assert report["batched"]["resume_p95_ratio"] > 0
