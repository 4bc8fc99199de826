"""Canary analysis, measured without a worker: one measurement per interval until the verdict."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from releasetrain.core.canary import (
    AnalysisPolicy,
    assess,
    judge_metric,
    judge_sessions,
    measurement_from_dict,
    render_query,
    score_measurement,
    session_queries,
)
from releasetrain.triggers.phase import until_tick


def metrics_provider(provider: dict[str, Any]) -> Any:
    """``{"kind": "prometheus", "conn_id": ...}`` or ``{"kind": "json", "conn_id", "endpoint", "path"}``."""
    from releasetrain.hooks.metrics import JsonMetricsHook, MetricsError, PrometheusHook

    kind = provider.get("kind")
    if kind == "prometheus":
        return PrometheusHook(provider["conn_id"])
    if kind == "json":
        return JsonMetricsHook(
            provider["conn_id"], endpoint=provider.get("endpoint", ""), path=provider.get("path", "")
        )
    raise MetricsError(f"unknown metrics provider kind {kind!r}: expected prometheus or json")


# how often a running analysis looks whether a human aborted the rollout (one small
# request to the API server each time, per waiting analysis)
ABORT_POLL_SECONDS = 5.0


class CanaryAnalysisTrigger(BaseTrigger):
    """Measure every ``interval_seconds``; fire once the analysis is no longer running.

    The event is :meth:`AnalysisState.to_dict` (outcome, reason, every measurement with
    its metric values). ``measurements`` and ``next_at`` can be given to continue an
    analysis. Airflow stores a trigger's arguments once, when the task defers; so with a
    ``journal`` every measurement is also written to the release ledger
    (``analysis_measured``) as it is taken, and a trigger started again (a triggerer killed
    or restarted, the trigger moved to another triggerer) resumes from the recorded
    measurements: it never measures a finished interval again, and never forgets a failing
    measurement it already took.

    :param policy: ``AnalysisPolicy`` as a dict
    :param provider: see :func:`metrics_provider`
    :param values: query placeholders (``version``, ``baseline_version``, ``environment``, ...)
    :param abort: ``{"dag_id", "run_id", "task_id"}`` of the run's manual-abort task: when it
        has failed (a human aborted the rollout), the analysis stops with outcome ``aborted``
    """

    def __init__(
        self,
        *,
        policy: dict[str, Any],
        provider: dict[str, Any],
        values: dict[str, str],
        measurements: list[dict[str, Any]] | None = None,
        next_at: float | None = None,
        abort: dict[str, str] | None = None,
        journey: dict[str, Any] | None = None,
        journal: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.journal = dict(journal) if journal else None
        self.policy = AnalysisPolicy.model_validate(policy).model_dump(mode="json")
        self.provider = dict(provider)
        self.values = dict(values)
        self.measurements = list(measurements or [])
        self.abort = dict(abort) if abort else None
        self.journey = dict(journey) if journey else None
        self.next_at = float(next_at if next_at is not None else time.time() + self.policy["interval_seconds"])

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "releasetrain.triggers.analysis.CanaryAnalysisTrigger",
            {
                "policy": self.policy,
                "provider": self.provider,
                "values": self.values,
                "measurements": self.measurements,
                "next_at": self.next_at,
                "abort": self.abort,
                "journey": self.journey,
                "journal": self.journal,
            },
        )

    def _measure(self, policy: AnalysisPolicy, end: float) -> dict[str, Any]:
        """One interval: every metric's canary and baseline samples, judged and scored."""
        from releasetrain.hooks.metrics import MetricsError

        interval = policy.interval_seconds
        start, step = end - interval, max(1.0, interval / 10)
        try:
            provider = metrics_provider(self.provider)
            results = []
            for check in policy.metrics:
                if check.journey:
                    results.append(self._journey_metric(check))
                    continue
                if check.sessions:
                    results.append(self._session_metric(provider, check, end, interval))
                    continue
                canary = provider.samples(render_query(check, self.values, baseline=False), start, end, step)
                needs_baseline = check.relative is not None or check.compare is not None
                baseline = (
                    provider.samples(render_query(check, self.values, baseline=True), start, end, step)
                    if needs_baseline
                    else []
                )
                results.append(judge_metric(check, canary, baseline))
        except MetricsError as exc:
            return score_measurement(policy, [], error=str(exc)).to_dict()
        return score_measurement(policy, results).to_dict()

    def _session_metric(self, provider: Any, check: Any, end: float, interval: int) -> Any:
        """A session outcome: (reached, started) counts of the new and the old version."""
        from releasetrain.hooks.metrics import MetricsError

        rule = check.sessions
        window = rule.window_seconds or interval
        values = {**self.values, "window": f"{window}s"}
        old_end = end
        if rule.baseline == "before_deploy":
            try:
                old_end = float(self.values["deployed_at"])
            except (KeyError, TypeError, ValueError):
                raise MetricsError(
                    f"{check.name}: baseline before_deploy, but no deploy of this release is recorded"
                ) from None

        def count(query: str, at: float) -> float | None:
            if hasattr(provider, "query_range"):  # Prometheus: one series, or which pod's count is it?
                series = provider.query_range(query, at - window, at, window)
                if len(series) > 1:
                    raise MetricsError(
                        f"{check.name}: {query!r} returns {len(series)} series; a session count is one number "
                        "(aggregate it, e.g. sum(...))"
                    )
                samples = series[0]["values"] if series else []
            else:
                samples = provider.samples(query, at - window, at, window)
            return samples[-1] if samples else None

        def counts(queries: tuple[str, str], at: float) -> tuple[float, float] | None:
            reached, started = (count(query, at) for query in queries)
            return None if started is None else (reached or 0.0, started)

        new = counts(session_queries(check, values, baseline=False), end)
        old = counts(session_queries(check, values, baseline=True), old_end)
        return judge_sessions(check, new, old)

    def _journey_metric(self, check: Any) -> Any:
        """A synthetic journey run ``runs`` times against the environment: the share that failed."""
        from releasetrain.core.journey import load_journey
        from releasetrain.hooks.journey import JourneyHook

        spec = self.journey or {}
        journey = load_journey(spec["files"][check.journey])
        hook = JourneyHook(spec["conn_id"])
        results = [hook.run(journey, values=self.values) for _ in range(check.runs)]
        failed = [r for r in results if not r.ok]
        metric = judge_metric(check, [len(failed) / len(results)])
        if failed:
            step = failed[-1]
            reason = f"journey {journey.name}: {len(failed)}/{len(results)} failed (last at {step.failed_step})"
            metric = dataclasses.replace(metric, reasons=[*metric.reasons, reason])
        return metric

    async def _aborted(self) -> bool:
        if not self.abort:
            return False
        from releasetrain.triggers.phase import task_states  # batched with every other watcher

        try:
            states = await task_states(self.abort["dag_id"], self.abort["run_id"], [self.abort["task_id"]])
        except Exception as exc:  # the supervisor is not reachable: keep measuring
            self.log.warning("could not read the abort task's state: %s", exc)
            return False
        return states.get(self.abort["task_id"]) == "failed"

    # --- the journal: measurements in the ledger, so a restarted trigger resumes -------------
    def _is_mine(self, event: Any) -> bool:
        j = self.journal or {}
        d = event.details
        return (
            event.dag_id == j.get("dag_id")
            and d.get("task_id") == j.get("task_id")
            and d.get("try_number") == j.get("try_number")
            and (d.get("ti_id") or "") == (j.get("ti_id") or "")
        )

    async def _store(self) -> Any:
        """The ledger store (the connection looked up the triggerer's async way), kept open."""
        from releasetrain.hooks.ledger import astore

        if getattr(self, "_ledger", None) is None:
            self._ledger = await astore((self.journal or {}).get("ledger_conn_id") or "releasetrain_ledger")
        return self._ledger

    def _recorded(self, store: Any) -> list[dict[str, Any]]:
        """This analysis's recorded measurements, in order (one per index: two triggerers
        briefly running the same trigger write the same index twice; the first counts)."""
        from releasetrain.core.vocabulary import Event

        j = self.journal or {}
        found: dict[int, dict[str, Any]] = {}
        for event in store.events(release=j["release"], run_id=j["run_id"], kind=Event.ANALYSIS_MEASURED):
            if self._is_mine(event):
                found.setdefault(int(event.details["index"]), event.details)
        ordered = []
        for i in range(1, len(found) + 1):  # contiguous from 1: a gap ends what can be trusted
            if i not in found:
                break
            ordered.append(found[i])
        return ordered

    def _record(self, store: Any, index: int, measured_at: float, measurement: dict[str, Any]) -> None:
        from releasetrain.core.vocabulary import Event

        j = self.journal or {}
        details = {
            "task_id": j.get("task_id"),
            "try_number": j.get("try_number"),
            "ti_id": j.get("ti_id") or "",
            "index": index,
            "measured_at": measured_at,
            "measurement": measurement,
        }
        store.append(
            Event.ANALYSIS_MEASURED.value,
            release=j["release"],
            run_id=j["run_id"],
            dag_id=j.get("dag_id", ""),
            environment=j.get("environment", ""),
            actor="triggerer",
            details=details,
        )

    async def _resume(self, policy: AnalysisPolicy) -> None:
        try:
            recorded = await asyncio.to_thread(self._recorded, await self._store())
        except Exception as exc:  # the ledger cannot be read: go on from the trigger's arguments
            self.log.warning("could not read the recorded measurements: %s", exc)
            return
        if len(recorded) > len(self.measurements):
            self.log.info("resuming the analysis from %d recorded measurements (a triggerer restarted)", len(recorded))
            self.measurements = [r["measurement"] for r in recorded]
            self.next_at = float(recorded[-1]["measured_at"]) + policy.interval_seconds

    async def _journal(self, measured_at: float, measurement: dict[str, Any]) -> None:
        for attempt in range(3):
            try:
                await asyncio.to_thread(
                    self._record, await self._store(), len(self.measurements), measured_at, measurement
                )
                return
            except Exception as exc:
                self.log.warning(
                    "could not record measurement %d (try %d): %s", len(self.measurements), attempt + 1, exc
                )
                await asyncio.sleep(1 + attempt)
        self.log.error("measurement %d is not recorded: a restart now would take it again", len(self.measurements))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        try:
            async for event in self._analyse():
                yield event
        finally:
            ledger, self._ledger = getattr(self, "_ledger", None), None
            if ledger is not None:
                await asyncio.to_thread(ledger.close)

    async def _analyse(self) -> AsyncIterator[TriggerEvent]:
        policy = AnalysisPolicy.model_validate(self.policy)
        if self.journal:
            await self._resume(policy)
        while True:
            state = assess(policy, [measurement_from_dict(m) for m in self.measurements])
            if state.finished:
                yield TriggerEvent(state.to_dict())
                return
            while (wait := self.next_at - time.time()) > 0:
                if await self._aborted():
                    payload = state.to_dict()
                    yield TriggerEvent({**payload, "outcome": "aborted", "reason": "the rollout was aborted by hand"})
                    return
                await asyncio.sleep(min(wait, until_tick(ABORT_POLL_SECONDS)))
            measured_at = time.time()
            measurement = await asyncio.to_thread(self._measure, policy, measured_at)
            self.measurements.append(measurement)
            self.next_at = measured_at + policy.interval_seconds
            if self.journal:
                await self._journal(measured_at, measurement)
            self.log.info(
                "canary analysis %d/%d: %s", len(self.measurements), policy.count, measurement.get("reason", "")
            )
