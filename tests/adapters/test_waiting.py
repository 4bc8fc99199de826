"""Issue 12: waiting costs close to nothing. Rollouts waiting in one triggerer ask Airflow
for task states together: one request per DAG per tick, not one per rollout every 5 s."""

from __future__ import annotations

import asyncio

import pytest

from releasetrain.triggers import phase
from releasetrain.triggers.phase import PhaseEndTrigger, until_tick


def test_watchers_wake_on_shared_wall_clock_ticks():
    assert until_tick(5.0, now=100.0) == 5.0
    assert until_tick(5.0, now=103.5) == pytest.approx(1.5)
    assert until_tick(5.0, now=104.999) == pytest.approx(0.001)


def test_a_thousand_waiting_rollouts_cost_one_request_per_tick(monkeypatch):
    finished: set[str] = set()
    calls: list[tuple[str, int]] = []

    async def fake_fetch(dag_id, run_ids, task_ids):
        calls.append((dag_id, len(run_ids)))
        await asyncio.sleep(0.002)
        return {r: {t: ("success" if r in finished else "running") for t in task_ids} for r in run_ids}

    monkeypatch.setattr(phase, "_fetch_states", fake_fetch)
    runs = [f"run{i}" for i in range(1000)]

    async def scenario():
        async def wait(run_id):
            trigger = PhaseEndTrigger(dag_id="release_x", run_id=run_id, task_ids=["a", "b"], poll_interval=0.2)
            async for event in trigger.run():
                return run_id, event.payload

        tasks = [asyncio.create_task(wait(r)) for r in runs]
        await asyncio.sleep(0.9)
        assert not any(t.done() for t in tasks), "nothing fires before its tasks finish"
        finished.update(runs[:500])  # half the rollouts end; the rest keep waiting
        await asyncio.sleep(0.5)
        done = [t.result()[0] for t in tasks if t.done()]
        assert sorted(done) == sorted(runs[:500])
        finished.update(runs[500:])
        results = await asyncio.wait_for(asyncio.gather(*tasks), 5)
        assert all(payload["phase_over"] for _, payload in results)

    asyncio.run(scenario())
    ticks = 2.2 / 0.2
    assert len(calls) <= ticks + 3, f"{len(calls)} requests for 1000 watchers over ~{ticks:.0f} ticks"
    assert max(n for _, n in calls) == 1000, "one request asks for every waiting run"


def test_a_failed_request_reaches_every_watcher_of_the_batch(monkeypatch):
    calls = []

    async def broken(dag_id, run_ids, task_ids):
        calls.append(run_ids)
        raise RuntimeError("supervisor unreachable")

    monkeypatch.setattr(phase, "_fetch_states", broken)

    async def scenario():
        results = await asyncio.gather(
            *(phase.task_states("release_x", f"r{i}", ["a"]) for i in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, RuntimeError) for r in results)

    asyncio.run(scenario())
    assert calls == [[f"r{i}" for i in range(5)]], "one request for the five watchers"
    assert not phase._batches, "nothing left behind"
