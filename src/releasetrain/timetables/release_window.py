"""A timetable that starts a release train at each opening of its release windows."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pendulum
from airflow.timetables.base import DagRunInfo, DataInterval, TimeRestriction, Timetable

from releasetrain.core.windows import ReleaseCalendar


class ReleaseWindowTimetable(Timetable):
    """Schedule a run at the start of every effective window (allowed windows minus
    blackouts, each in its own time zone, DST-correct) that is long enough for
    ``min_duration_minutes``. The calendar is resolved when the DAG is parsed and carried
    in the serialized timetable, so the scheduler needs no access to calendar files.

    :param calendar: :meth:`ReleaseCalendar.to_dict` of the release's calendar
    """

    def __init__(self, calendar: dict[str, Any], min_duration_minutes: int = 0) -> None:
        self.calendar_data = calendar
        self.calendar = ReleaseCalendar.from_dict(calendar)
        self.min_duration_minutes = int(min_duration_minutes)

    @property
    def summary(self) -> str:
        windows = self.calendar.describe()
        first = windows[0].removeprefix("window: ")
        more = len(self.calendar.windows) - 1
        blackouts = len(self.calendar.blackouts)
        text = first + (f" (+{more} windows)" if more > 0 else "")
        return text + (f", minus {blackouts} blackout rules" if blackouts else "")

    @property
    def description(self) -> str:
        return "Starts at each opening of the release windows that is not blacked out: " + "; ".join(
            self.calendar.describe()
        )

    def serialize(self) -> dict[str, Any]:
        return {"calendar": self.calendar_data, "min_duration_minutes": self.min_duration_minutes}

    @classmethod
    def deserialize(cls, data: dict[str, Any]) -> ReleaseWindowTimetable:
        return cls(data["calendar"], data.get("min_duration_minutes", 0))

    def infer_manual_data_interval(self, *, run_after: pendulum.DateTime) -> DataInterval:
        return DataInterval.exact(run_after)

    def open_window_start(self, now: dt.datetime) -> dt.datetime | None:
        """The start of the effective window open at ``now`` with enough time left, if any."""
        duration = dt.timedelta(minutes=self.min_duration_minutes)
        for window in self.calendar.effective(now - dt.timedelta(days=2), now + duration + dt.timedelta(days=1)):
            if window.start <= now < window.end and window.end - now >= duration:
                return window.start
        return None

    def next_opening(self, after: dt.datetime) -> dt.datetime | None:
        """The first opening strictly after ``after`` (searched a year and a month ahead)."""
        duration = dt.timedelta(minutes=self.min_duration_minutes)
        cursor = after
        for _ in range(14):
            for opening in self.calendar.openings(cursor, cursor + dt.timedelta(days=31), duration):
                if opening > after:
                    return opening
            cursor += dt.timedelta(days=31)
        return None

    def next_dagrun_info(
        self, *, last_automated_data_interval: DataInterval | None, restriction: TimeRestriction
    ) -> DagRunInfo | None:
        now = dt.datetime.now(dt.UTC)
        if last_automated_data_interval is not None:
            after = last_automated_data_interval.end
        elif restriction.earliest is not None:
            after = restriction.earliest - dt.timedelta(microseconds=1)
        else:
            after = now
        if not restriction.catchup:
            # Without catch-up a window that is open now still gets its run, even when the
            # DAG was (re)parsed after the window started and before the scheduler created
            # the run: moving straight to the next opening would silently skip this window.
            current = self.open_window_start(now)
            last_end = last_automated_data_interval.end if last_automated_data_interval else None
            if (
                current is not None
                and (last_end is None or last_end < current)
                and (restriction.earliest is None or current >= restriction.earliest)
                and (restriction.latest is None or current <= restriction.latest)
            ):
                return DagRunInfo.exact(pendulum.instance(current))
            after = max(after, now)
        if restriction.earliest is not None:
            after = max(after, restriction.earliest - dt.timedelta(microseconds=1))
        opening = self.next_opening(after)
        if opening is None or (restriction.latest is not None and opening > restriction.latest):
            return None
        return DagRunInfo.exact(pendulum.instance(opening))
