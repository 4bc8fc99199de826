"""Waits, on the triggerer, until an environment's release window is open."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from releasetrain.core.spec import CalendarLibrary, ReleaseSpecError
from releasetrain.core.windows import CalendarError, CalendarSpec, iso_z


class ReleaseWindowTrigger(BaseTrigger):
    """Fire when the calendar is open with ``min_duration_seconds`` left in the window.

    Sleeps until the next opening, but never longer than ``recheck_seconds``: shared
    calendars are read again at every check, so a blackout declared while a run waits
    is honoured. The event is ``{"open": True, "at": ..., "reason": ...}``.

    :param layers: the environment's calendars (``CalendarSpec`` dicts), general first
    :param calendar_dirs: where shared calendars live
    :param project_root: what ICS paths are relative to
    """

    def __init__(
        self,
        *,
        layers: list[dict[str, Any]],
        calendar_dirs: list[str],
        project_root: str,
        min_duration_seconds: float,
        recheck_seconds: float = 300.0,
    ) -> None:
        super().__init__()
        if recheck_seconds <= 0:
            raise ValueError("recheck_seconds must be positive")
        self.layers = [CalendarSpec.model_validate(layer).model_dump(mode="json") for layer in layers]
        self.calendar_dirs = list(calendar_dirs)
        self.project_root = project_root
        self.min_duration_seconds = float(min_duration_seconds)
        self.recheck_seconds = float(recheck_seconds)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "releasetrain.triggers.window.ReleaseWindowTrigger",
            {
                "layers": self.layers,
                "calendar_dirs": self.calendar_dirs,
                "project_root": self.project_root,
                "min_duration_seconds": self.min_duration_seconds,
                "recheck_seconds": self.recheck_seconds,
            },
        )

    def _decide(self, now: dt.datetime):
        library = CalendarLibrary(Path(self.project_root), [Path(d) for d in self.calendar_dirs])
        calendar = library.resolve([CalendarSpec.model_validate(layer) for layer in self.layers])
        return calendar.decide(now, dt.timedelta(seconds=self.min_duration_seconds))

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            now = dt.datetime.now(dt.UTC)
            try:
                decision = await asyncio.to_thread(self._decide, now)
            except (CalendarError, ReleaseSpecError) as exc:  # e.g. a shared calendar saved half-edited
                self.log.warning(
                    "release calendar cannot be read (%s); checking again in %.0f s", exc, self.recheck_seconds
                )
                await asyncio.sleep(self.recheck_seconds)
                continue
            if decision.open:
                yield TriggerEvent({"open": True, "at": iso_z(now), "reason": decision.reason})
                return
            wait = self.recheck_seconds
            if decision.next_opening is not None:
                wait = min(wait, max(1.0, (decision.next_opening - now).total_seconds()))
            self.log.info("release window closed: %s; checking again in %.0f s", decision.reason, wait)
            await asyncio.sleep(wait)
