"""What waiting rollouts cost a triggerer (run: `make bench`; tiny in `make test`).

N rollouts wait in one triggerer's event loop on the phase-end watch (the manual-abort
task's trigger; the canary analysis's abort watch asks the same way), against a stand-in
for Airflow's task-state endpoint that answers after a fixed latency. Measured for N = 1
and N = 1,000, each against the same code asking once per watcher (before issue 12):

- task-state requests per second per waiting rollout;
- CPU seconds and memory (tracemalloc) per waiting rollout;
- resume time: from a rollout's tasks finishing to its trigger firing, p50/p95/max,
  at 1,000 against 1 (goal: within 2x).

Ratios only; the wall-clock poll interval is shortened (INTERVAL) so a run takes seconds.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

N, INTERVAL, WAIT_TICKS, LATENCY, SINGLES = 1000, 0.5, 4, 0.005, 20


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50": at(0.5), "p95": at(0.95), "max": ordered[-1]}


async def _scenario(n: int, batched: bool, seed: int) -> dict:
    from releasetrain.triggers import phase

    rng = random.Random(seed)
    finished_at: dict[str, float] = {}
    requests = [0]

    async def airflow(dag_id, run_ids, task_ids):  # the task-state endpoint
        requests[0] += 1
        await asyncio.sleep(LATENCY)
        now = time.monotonic()
        return {
            r: {t: ("success" if finished_at.get(r, now + 1) <= now else "running") for t in task_ids} for r in run_ids
        }

    phase._fetch_states = airflow
    if not batched:  # before: every watcher asks alone, on its own clock

        async def alone(dag_id, run_id, task_ids):
            found = (await airflow(dag_id, [run_id], task_ids)).get(run_id) or {}
            return {t: found.get(t) for t in task_ids}

        phase.task_states, phase.until_tick = alone, lambda interval, now=None: interval
    runs = [f"run{i}" for i in range(n)]
    fired: dict[str, float] = {}

    async def wait(run_id: str) -> None:
        trigger = phase.PhaseEndTrigger(
            dag_id="release_bench", run_id=run_id, task_ids=["a", "b"], poll_interval=INTERVAL
        )
        async for _ in trigger.run():
            fired[run_id] = time.monotonic()
            return

    tracemalloc.start()
    base_memory = tracemalloc.get_traced_memory()[0]
    tasks = [asyncio.create_task(wait(r)) for r in runs]
    await asyncio.sleep(INTERVAL / 2)
    memory = tracemalloc.get_traced_memory()[0] - base_memory
    tracemalloc.stop()
    cpu0, requests0, t0 = time.process_time(), requests[0], time.monotonic()
    await asyncio.sleep(WAIT_TICKS * INTERVAL)  # everyone waits
    waited = time.monotonic() - t0
    cpu, asked = time.process_time() - cpu0, requests[0] - requests0
    now = time.monotonic()
    for run_id in runs:  # tasks finish at random moments of one interval
        finished_at[run_id] = now + rng.uniform(0, INTERVAL)
    await asyncio.wait_for(asyncio.gather(*tasks), 30 + 3 * INTERVAL)
    resume = [fired[r] - finished_at[r] for r in runs]
    return {
        "n": n,
        "requests_per_s_per_rollout": asked / waited / n,
        "cpu_s_per_rollout_per_s": cpu / waited / n,
        "memory_bytes_per_rollout": memory / n,
        "resume": resume,
    }


def _run(n: int, batched: bool, seed: int = 0) -> dict:
    import importlib

    from releasetrain.triggers import phase

    importlib.reload(phase)  # a clean module: _scenario patches it
    try:
        return asyncio.run(_scenario(n, batched, seed))
    finally:
        importlib.reload(phase)


def bench() -> dict:
    report = {}
    for batched in (False, True):
        singles = [r for seed in range(SINGLES) for r in _run(1, batched, seed)["resume"]]
        many = _run(N, batched)
        one = _run(1, batched)
        name = "batched" if batched else "per_rollout"
        report[name] = {
            "requests_per_s_per_rollout": {
                "1": one["requests_per_s_per_rollout"],
                str(N): many["requests_per_s_per_rollout"],
            },
            "cpu_s_per_rollout_per_s": many["cpu_s_per_rollout_per_s"],
            "memory_bytes_per_rollout": round(many["memory_bytes_per_rollout"]),
            "resume_single": _percentiles(singles),
            f"resume_{N}": _percentiles(many["resume"]),
        }
        report[name]["resume_p95_ratio"] = report[name][f"resume_{N}"]["p95"] / max(
            report[name]["resume_single"]["p95"], 1e-9
        )
    report["request_ratio_batched_vs_per_rollout"] = (
        report["batched"]["requests_per_s_per_rollout"][str(N)]
        / report["per_rollout"]["requests_per_s_per_rollout"][str(N)]
    )
    report["goal_resume_within_2x"] = report["batched"]["resume_p95_ratio"] <= 2.0
    return report


if __name__ == "__main__":
    print(json.dumps(bench(), indent=2, default=lambda v: round(v, 6)))
    print(f"(poll interval {INTERVAL}s, task-state latency {LATENCY * 1000:.0f} ms, one event loop)")
