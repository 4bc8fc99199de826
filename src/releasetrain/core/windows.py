"""Release windows and blackout periods (pure: no Airflow).

A calendar has *allowed windows* (days of the week and a local time range in a named
IANA time zone) and *blackouts* of five kinds: one-off ranges, recurring rules (cron
start + duration), business-cycle rules (first/last N business days of each month),
public holidays (the ``holidays`` package) and external iCalendar files (``icalendar``
with ``recurring_ical_events`` for RRULE expansion). The *effective windows* are the
allowed windows minus every blackout. All computation is in UTC-aware datetimes.

Local times that do not exist (the hour skipped when DST starts) move forward by the
DST gap; ambiguous ones (the hour repeated when DST ends) take their first occurrence.
A calendar without windows is always allowed (only its blackouts close it).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, field_validator, model_validator

UTC = dt.UTC
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]


class CalendarError(ValueError):
    """A calendar that cannot be used (unknown zone, unparseable ICS, ...)."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise CalendarError(f"unknown time zone {name!r} (use an IANA name such as Europe/Berlin)") from None


def to_utc(local: dt.datetime, tz: ZoneInfo) -> dt.datetime:
    """A naive local wall time in ``tz`` as UTC (gaps move forward, folds take the first)."""
    return local.replace(tzinfo=tz, fold=0).astimezone(UTC)


def iso_z(moment: dt.datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, order=True)
class Interval:
    start: dt.datetime
    end: dt.datetime

    def to_dict(self) -> dict[str, str]:
        return {"start": iso_z(self.start), "end": iso_z(self.end)}


@dataclass(frozen=True, order=True)
class BlackoutPeriod:
    start: dt.datetime
    end: dt.datetime
    name: str

    def to_dict(self) -> dict[str, str]:
        return {"start": iso_z(self.start), "end": iso_z(self.end), "name": self.name}


def merge(intervals: Iterable[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for item in sorted(intervals):
        if item.end <= item.start:
            continue
        if merged and item.start <= merged[-1].end:
            if item.end > merged[-1].end:
                merged[-1] = Interval(merged[-1].start, item.end)
        else:
            merged.append(item)
    return merged


def subtract(base: Iterable[Interval], cuts: Iterable[Interval]) -> list[Interval]:
    result: list[Interval] = []
    cut_list = merge(cuts)
    for piece in merge(base):
        start = piece.start
        for cut in cut_list:
            if cut.end <= start or cut.start >= piece.end:
                continue
            if cut.start > start:
                result.append(Interval(start, cut.start))
            start = max(start, cut.end)
            if start >= piece.end:
                break
        if start < piece.end:
            result.append(Interval(start, piece.end))
    return result


def _local_days(start: dt.datetime, end: dt.datetime, tz: ZoneInfo) -> Iterable[dt.date]:
    day = start.astimezone(tz).date() - dt.timedelta(days=1)
    last = end.astimezone(tz).date() + dt.timedelta(days=1)
    while day <= last:
        yield day
        day += dt.timedelta(days=1)


def _full_day(day: dt.date, tz: ZoneInfo) -> Interval:
    return Interval(
        to_utc(dt.datetime.combine(day, dt.time()), tz),
        to_utc(dt.datetime.combine(day + dt.timedelta(days=1), dt.time()), tz),
    )


# --- rules --------------------------------------------------------------------------------


class _Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    timezone: str | None = Field(default=None, description="IANA time zone; default: the calendar's.")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str | None) -> str | None:
        if value is not None:
            zone(value)
        return value


class WindowRule(_Rule):
    """Allowed on ``days`` from ``start`` to ``end`` local time (``end`` <= ``start``: overnight)."""

    days: list[Day] = Field(default_factory=lambda: list(DAYS))
    start: dt.time
    end: dt.time

    @field_validator("start", "end", mode="before")
    @classmethod
    def _quoted(cls, value: Any) -> Any:
        if isinstance(value, int):  # YAML 1.1 reads an unquoted 10:00 as the number 600
            raise ValueError('write times in quotes, e.g. "10:00" (unquoted, YAML reads 10:00 as a number)')
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> WindowRule:
        if self.start == self.end:
            raise ValueError("start and end are equal: the window would be empty")
        if not self.days:
            raise ValueError("days is empty: the window would never open")
        return self

    def intervals(self, start: dt.datetime, end: dt.datetime, tz: ZoneInfo) -> list[Interval]:
        wanted = {DAYS.index(d) for d in self.days}
        found = []
        for day in _local_days(start, end, tz):
            if day.weekday() not in wanted:
                continue
            end_day = day if self.end > self.start else day + dt.timedelta(days=1)
            found.append(
                Interval(
                    to_utc(dt.datetime.combine(day, self.start), tz), to_utc(dt.datetime.combine(end_day, self.end), tz)
                )
            )
        return [i for i in found if i.end > start and i.start < end]

    def describe(self, tz: str) -> str:
        days = ",".join(d.capitalize() for d in self.days) if len(self.days) < 7 else "daily"
        return f"{days} {self.start:%H:%M}-{self.end:%H:%M} {tz}"


class OneOffBlackout(_Rule):
    name: str = Field(min_length=1)
    start: dt.datetime
    end: dt.datetime

    @model_validator(mode="after")
    def _ordered(self) -> OneOffBlackout:
        if (self.start.tzinfo is None) != (self.end.tzinfo is None):
            raise ValueError("start and end must both carry an offset, or neither")
        if self.end <= self.start:
            raise ValueError(f"end {self.end.isoformat()} is not after start {self.start.isoformat()}")
        return self

    def periods(self, start: dt.datetime, end: dt.datetime, tz: ZoneInfo) -> list[BlackoutPeriod]:
        s = self.start.astimezone(UTC) if self.start.tzinfo else to_utc(self.start, tz)
        e = self.end.astimezone(UTC) if self.end.tzinfo else to_utc(self.end, tz)
        return [BlackoutPeriod(s, e, self.name)] if e > start and s < end else []


@lru_cache(maxsize=1024)
def _cron_problem(value: str) -> str:
    """Why ``value`` is no usable cron expression ("" when it is); every spec of a company
    tends to repeat the same few, so the answer is remembered."""
    from croniter import croniter

    if not croniter.is_valid(value):
        return f"{value!r} is not a valid cron expression"
    try:
        croniter(value, dt.datetime(2026, 1, 1, tzinfo=UTC), max_years_between_matches=1).get_next(dt.datetime)
    except Exception:
        return f"{value!r} never fires within a year"
    return ""


class RecurringBlackout(_Rule):
    name: str = Field(min_length=1)
    cron: str = Field(description="Start times, cron syntax, local to the time zone.")
    duration_minutes: int = Field(gt=0, le=60 * 24 * 31)

    @field_validator("cron")
    @classmethod
    def _valid_cron(cls, value: str) -> str:
        problem = _cron_problem(value)
        if problem:
            raise ValueError(problem)
        return value

    def periods(self, start: dt.datetime, end: dt.datetime, tz: ZoneInfo) -> list[BlackoutPeriod]:
        from croniter import croniter

        length = dt.timedelta(minutes=self.duration_minutes)
        it = croniter(self.cron, (start - length).astimezone(tz), max_years_between_matches=1)
        found = []
        while True:
            try:
                begin = it.get_next(dt.datetime).astimezone(UTC)
            except Exception as exc:  # croniter gives up on rare schedules: say which rule
                raise CalendarError(f"blackout {self.name!r}: cron {self.cron!r} cannot be expanded: {exc}") from None
            if begin >= end:
                return found
            found.append(BlackoutPeriod(begin, begin + length, self.name))


class BusinessDaysBlackout(_Rule):
    """The first and/or last N business days of every month (e.g. month-end close).
    Business days are Monday to Friday, minus the public holidays of ``holidays_country``."""

    name: str = Field(min_length=1)
    last_business_days: int = Field(default=0, ge=0, le=10)
    first_business_days: int = Field(default=0, ge=0, le=10)
    holidays_country: str | None = None
    holidays_subdiv: str | None = None

    @model_validator(mode="after")
    def _some_days(self) -> BusinessDaysBlackout:
        if not (self.last_business_days or self.first_business_days):
            raise ValueError("set last_business_days and/or first_business_days")
        if self.holidays_country:
            holiday_dates(self.holidays_country, self.holidays_subdiv, 2026)
        return self

    def periods(self, start: dt.datetime, end: dt.datetime, tz: ZoneInfo) -> list[BlackoutPeriod]:
        months = sorted({(d.year, d.month) for d in _local_days(start, end, tz)})
        found = []
        for year, month in months:
            days = _business_days(year, month, self.holidays_country, self.holidays_subdiv)
            chosen = set(days[: self.first_business_days]) | set(
                days[len(days) - self.last_business_days :] if self.last_business_days else []
            )
            for day in sorted(chosen):
                interval = _full_day(day, tz)
                if interval.end > start and interval.start < end:
                    found.append(BlackoutPeriod(interval.start, interval.end, self.name))
        return found


class HolidaySource(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    country: str = Field(min_length=2)
    subdiv: str | None = None


class HolidayBlackout(_Rule):
    name: str = Field(min_length=1)
    holidays: HolidaySource

    @model_validator(mode="after")
    def _known_country(self) -> HolidayBlackout:
        holiday_dates(self.holidays.country, self.holidays.subdiv, 2026)
        return self

    def periods(self, start: dt.datetime, end: dt.datetime, tz: ZoneInfo) -> list[BlackoutPeriod]:
        found = []
        for year in range(start.astimezone(tz).year, end.astimezone(tz).year + 1):
            for day, title in holiday_dates(self.holidays.country, self.holidays.subdiv, year).items():
                interval = _full_day(day, tz)
                if interval.end > start and interval.start < end:
                    found.append(BlackoutPeriod(interval.start, interval.end, f"{self.name}: {title}"))
        return found


class IcsBlackout(_Rule):
    """Every event of an iCalendar file (recurring events expanded) is a blackout.
    ``ics`` is a path relative to the project root. Floating times use the time zone."""

    name: str = Field(min_length=1)
    ics: str = Field(min_length=1)

    def periods(self, start: dt.datetime, end: dt.datetime, tz: ZoneInfo, text: str) -> list[BlackoutPeriod]:
        import recurring_ical_events

        found = []
        for event in recurring_ical_events.of(parse_ics(text, self.ics)).between(start, end):
            status, transparency = str(event.get("STATUS", "")).upper(), str(event.get("TRANSP", "")).upper()
            if status == "CANCELLED" or transparency == "TRANSPARENT":
                continue  # cancelled, or marked as not blocking ("free")
            begin, finish = event.get("DTSTART").dt, (event.get("DTEND") or event.get("DTSTART")).dt
            summary = str(event.get("SUMMARY") or "event")
            if not isinstance(begin, dt.datetime):  # all-day event: whole local days
                begin_utc = _full_day(begin, tz).start
                end_utc = (
                    _full_day(finish - dt.timedelta(days=1), tz).end if finish > begin else _full_day(begin, tz).end
                )
            else:
                begin_utc = begin.astimezone(UTC) if begin.tzinfo else to_utc(begin, tz)
                end_utc = finish.astimezone(UTC) if finish.tzinfo else to_utc(finish, tz)
            if end_utc > start and begin_utc < end:
                found.append(BlackoutPeriod(begin_utc, end_utc, f"{self.name}: {summary}"))
        return found


def _blackout_kind(value: Any) -> str | None:
    if isinstance(value, BaseModel):
        return {
            OneOffBlackout: "range",
            RecurringBlackout: "cron",
            BusinessDaysBlackout: "business_days",
            HolidayBlackout: "holidays",
            IcsBlackout: "ics",
        }.get(type(value))
    if not isinstance(value, dict):
        return None
    for key, kind in (
        ("cron", "cron"),
        ("ics", "ics"),
        ("holidays", "holidays"),
        ("last_business_days", "business_days"),
        ("first_business_days", "business_days"),
    ):
        if key in value:
            return kind
    return "range"


Blackout = Annotated[
    Annotated[OneOffBlackout, Tag("range")]
    | Annotated[RecurringBlackout, Tag("cron")]
    | Annotated[BusinessDaysBlackout, Tag("business_days")]
    | Annotated[HolidayBlackout, Tag("holidays")]
    | Annotated[IcsBlackout, Tag("ics")],
    Discriminator(_blackout_kind),
]


class CalendarSpec(BaseModel):
    """Windows and blackouts, as written in a release spec or a shared calendar file."""

    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)

    use: list[str] = Field(default_factory=list, description="Shared calendars (include/calendars/<name>.yaml).")
    timezone: str = Field(default="UTC", description="Default IANA time zone of this calendar's rules.")
    windows: list[WindowRule] = Field(default_factory=list)
    blackouts: list[Blackout] = Field(default_factory=list)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        zone(value)
        return value


class SharedCalendar(CalendarSpec):
    """A calendar file in include/calendars/ that many releases reference by name."""

    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    description: str = ""
    use: list[str] = Field(default_factory=list, max_length=0, description="Shared calendars do not nest.")
    applies_to: Literal["named", "all"] = Field(
        default="named",
        description="named: binds the releases whose specs use it; all: binds every release (a company-wide "
        "freeze), whether its spec names it or not.",
    )


# --- holidays, business days, ICS ----------------------------------------------------------


@lru_cache(maxsize=512)
def holiday_dates(country: str, subdiv: str | None, year: int) -> dict[dt.date, str]:
    import holidays

    try:
        return dict(holidays.country_holidays(country, subdiv=subdiv, years=year))
    except NotImplementedError:
        raise CalendarError(f"unknown holiday country {country!r} (ISO 3166 code, e.g. DE, US)") from None
    except Exception as exc:  # unknown subdivision and friends
        raise CalendarError(f"holidays for {country!r}/{subdiv!r}: {exc}") from None


@lru_cache(maxsize=2048)
def _business_days(year: int, month: int, country: str | None, subdiv: str | None) -> list[dt.date]:
    day = dt.date(year, month, 1)
    off = holiday_dates(country, subdiv, year) if country else {}
    days = []
    while day.month == month:
        if day.weekday() < 5 and day not in off:
            days.append(day)
        day += dt.timedelta(days=1)
    return days


@lru_cache(maxsize=64)
def parse_ics(text: str, where: str = "calendar"):
    import icalendar

    try:
        calendar = icalendar.Calendar.from_ical(text)
    except Exception as exc:
        raise CalendarError(f"{where} is not a valid iCalendar file: {exc}") from None
    events = list(calendar.walk("VEVENT"))
    if not events and "BEGIN:VCALENDAR" not in text:
        raise CalendarError(f"{where} is not a valid iCalendar file")
    rdates = sum(len(_as_list(e.get("RDATE"))) for e in events if e.get("RDATE"))
    if len(events) + rdates > MAX_ICS_EVENTS:
        raise CalendarError(f"{where}: {len(events)} events, more than the {MAX_ICS_EVENTS} a calendar may hold")
    for event in events:
        for rule in event.get("RRULE") and _as_list(event.get("RRULE")) or []:
            freq = str((rule.get("FREQ") or [""])[0]).upper()
            many = [part for part in ("BYHOUR", "BYMINUTE", "BYSECOND", "BYSETPOS") if len(rule.get(part) or []) > 1]
            if many:
                summary = str(event.get("SUMMARY") or event.get("UID") or "an event")
                raise CalendarError(
                    f"{where}: {summary!r} repeats within a day ({', '.join(many)} with several values); a blackout "
                    "repeats at most daily (give its time with DTSTART and its length with DTEND)"
                )
            if freq not in ICS_FREQUENCIES:
                summary = str(event.get("SUMMARY") or event.get("UID") or "an event")
                raise CalendarError(
                    f"{where}: {summary!r} repeats {freq or 'without a frequency'}; blackouts may repeat "
                    f"{', '.join(sorted(ICS_FREQUENCIES))} only (finer rules cannot be expanded within "
                    "DAG parsing's time budget)"
                )
    return calendar


# Limits that keep expanding a calendar (at DAG-parse time, for the timetable) cheap: a
# blackout repeats at most daily, and a file holds a bounded number of events.
ICS_FREQUENCIES = frozenset({"DAILY", "WEEKLY", "MONTHLY", "YEARLY"})
MAX_ICS_EVENTS = 5000


def _as_list(value: Any) -> list:
    return value if isinstance(value, list) else [value]


# --- the resolved calendar ----------------------------------------------------------------


@dataclass(frozen=True)
class _Zoned:
    rule: Any
    tz: str


@dataclass
class GateDecision:
    open: bool
    reason: str
    next_opening: dt.datetime | None
    window_end: dt.datetime | None = None
    blocking: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "open": self.open,
            "reason": self.reason,
            "next_opening": iso_z(self.next_opening) if self.next_opening else None,
            "window_end": iso_z(self.window_end) if self.window_end else None,
            "blocking": list(self.blocking),
        }


@lru_cache(maxsize=64)
def _check_ics(text: str, name: str) -> None:
    """Raise when an ICS feed cannot be read (checked once per content: specs share feeds)."""
    parse_ics(text, name)


class ReleaseCalendar:
    """Windows and blackouts resolved to explicit time zones, ready to compute.

    :param ics_texts: contents of the ICS files the blackouts name
    """

    def __init__(self, windows: list[_Zoned], blackouts: list[_Zoned], ics_texts: dict[str, str] | None = None):
        self.windows = windows
        self.blackouts = blackouts
        self.ics_texts = ics_texts or {}

    @classmethod
    def resolve(
        cls,
        layers: list[CalendarSpec],
        shared: Callable[[str], CalendarSpec],
        read_text: Callable[[str], str],
    ) -> ReleaseCalendar:
        """Combine calendars, most general first (shared < release < environment).

        Windows: those of the most specific layer that declares any (shared calendars
        count as one layer, their windows joined). Blackouts: all of them, from every layer.
        """
        expanded: list[list[CalendarSpec]] = []
        for layer in layers:
            expanded.append([shared(name) for name in layer.use])
            expanded.append([layer])
        windows: list[_Zoned] = []
        blackouts: list[_Zoned] = []
        ics: dict[str, str] = {}
        for group in expanded:
            group_windows = [_Zoned(w, w.timezone or cal.timezone) for cal in group for w in cal.windows]
            if group_windows:
                windows = group_windows
            for cal in group:
                for rule in cal.blackouts:
                    blackouts.append(_Zoned(rule, rule.timezone or cal.timezone))
                    if isinstance(rule, IcsBlackout) and rule.ics not in ics:
                        ics[rule.ics] = read_text(rule.ics)
                        _check_ics(ics[rule.ics], rule.ics)
        return cls(windows, blackouts, ics)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form (for timetables and triggers): rules with explicit zones, ICS texts."""
        return {
            "windows": [{"rule": w.rule.model_dump(mode="json"), "tz": w.tz} for w in self.windows],
            "blackouts": [
                {"kind": _blackout_kind(b.rule), "rule": b.rule.model_dump(mode="json"), "tz": b.tz}
                for b in self.blackouts
            ],
            "ics": dict(self.ics_texts),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ReleaseCalendar:
        kinds = {
            "range": OneOffBlackout,
            "cron": RecurringBlackout,
            "business_days": BusinessDaysBlackout,
            "holidays": HolidayBlackout,
            "ics": IcsBlackout,
        }
        windows = [_Zoned(WindowRule.model_validate(w["rule"]), w["tz"]) for w in data.get("windows", [])]
        blackouts = [_Zoned(kinds[b["kind"]].model_validate(b["rule"]), b["tz"]) for b in data.get("blackouts", [])]
        return cls(windows, blackouts, dict(data.get("ics", {})))

    # --- computation ---------------------------------------------------------------------
    def allowed(self, start: dt.datetime, end: dt.datetime) -> list[Interval]:
        if not self.windows:
            return [Interval(start, end)]
        found = []
        for item in self.windows:
            found += item.rule.intervals(start, end, zone(item.tz))
        return [Interval(max(i.start, start), min(i.end, end)) for i in merge(found)]

    def blackout_periods(self, start: dt.datetime, end: dt.datetime) -> list[BlackoutPeriod]:
        found: list[BlackoutPeriod] = []
        for item in self.blackouts:
            if isinstance(item.rule, IcsBlackout):
                found += item.rule.periods(start, end, zone(item.tz), self.ics_texts[item.rule.ics])
            else:
                found += item.rule.periods(start, end, zone(item.tz))
        return sorted(found)

    def effective(
        self, start: dt.datetime, end: dt.datetime, blackouts: list[BlackoutPeriod] | None = None
    ) -> list[Interval]:
        """Allowed windows minus blackouts (pass ``blackouts`` already computed for the span to reuse them)."""
        periods = self.blackout_periods(start, end) if blackouts is None else blackouts
        return subtract(self.allowed(start, end), [Interval(b.start, b.end) for b in periods])

    def decide(self, at: dt.datetime, min_duration: dt.timedelta = dt.timedelta(0)) -> GateDecision:
        """May a deploy start at ``at`` and have ``min_duration`` inside an open window?"""
        around = self.effective(
            at - dt.timedelta(days=1), at + max(min_duration, dt.timedelta(0)) + dt.timedelta(days=2)
        )
        for window in around:
            if window.start <= at < window.end:
                if window.end - at >= min_duration:
                    return GateDecision(True, f"open until {iso_z(window.end)}", at, window.end)
                blockers = tuple(dict.fromkeys(b.name for b in self.blackout_periods(window.end, at + min_duration)))
                reason = (
                    f"only {_minutes(window.end - at)} min left in the window (until {iso_z(window.end)}"
                    + (f", then {', '.join(blockers)}" if blockers else "")
                    + f"), {_minutes(min_duration)} min needed"
                )
                return self._closed(at, min_duration, reason, blockers)
        span = at + max(min_duration, dt.timedelta(seconds=1))
        blocking = tuple(dict.fromkeys(b.name for b in self.blackout_periods(at, span)))
        if blocking:
            ends = max(b.end for b in self.blackout_periods(at, span))
            return self._closed(
                at, min_duration, f"blacked out by {', '.join(blocking)} (until {iso_z(ends)})", blocking
            )
        return self._closed(at, min_duration, "outside the allowed windows")

    def _closed(
        self, at: dt.datetime, min_duration: dt.timedelta, reason: str, blocking: tuple[str, ...] = ()
    ) -> GateDecision:
        nxt = self.next_opening(at, min_duration)
        suffix = f"; next opening {iso_z(nxt)}" if nxt else "; no opening within 400 days"
        return GateDecision(False, reason + suffix, nxt, None, blocking)

    def next_opening(
        self,
        at: dt.datetime,
        min_duration: dt.timedelta = dt.timedelta(0),
        horizon: dt.timedelta = dt.timedelta(days=400),
    ) -> dt.datetime | None:
        """The first moment >= ``at`` when a window is open with ``min_duration`` left."""
        chunk = dt.timedelta(days=31)
        overlap = max(min_duration, dt.timedelta(days=2))
        cursor = at
        while cursor < at + horizon:
            for window in self.effective(cursor, cursor + chunk + overlap):
                if window.start >= cursor + chunk:
                    break
                begin = max(window.start, at)
                if window.end - begin >= min_duration and window.end > begin:
                    return begin
            cursor += chunk
        return None

    def openings(
        self, start: dt.datetime, end: dt.datetime, min_duration: dt.timedelta = dt.timedelta(0)
    ) -> list[dt.datetime]:
        """Starts of the effective windows in [start, end) long enough for ``min_duration``.
        A window already open at ``start`` has no opening in the range."""
        span_end = end + max(min_duration, dt.timedelta(days=1))
        return [
            w.start
            for w in self.effective(start - dt.timedelta(days=2), span_end)
            if start <= w.start < end and w.end - w.start >= min_duration
        ]

    def describe(self) -> list[str]:
        lines = [f"window: {w.rule.describe(w.tz)}" for w in self.windows] or ["window: always (no windows declared)"]
        for b in self.blackouts:
            lines.append(f"blackout: {_describe_blackout(b.rule, b.tz)}")
        return lines


def _describe_blackout(rule: Any, tz: str) -> str:
    if isinstance(rule, OneOffBlackout):
        return f"{rule.name}: {rule.start.isoformat()} to {rule.end.isoformat()} ({tz})"
    if isinstance(rule, RecurringBlackout):
        return f"{rule.name}: cron '{rule.cron}' for {rule.duration_minutes} min ({tz})"
    if isinstance(rule, BusinessDaysBlackout):
        parts = []
        if rule.first_business_days:
            parts.append(f"first {rule.first_business_days}")
        if rule.last_business_days:
            parts.append(f"last {rule.last_business_days}")
        return f"{rule.name}: {' and '.join(parts)} business days of each month ({tz})"
    if isinstance(rule, HolidayBlackout):
        where = rule.holidays.country + (f"-{rule.holidays.subdiv}" if rule.holidays.subdiv else "")
        return f"{rule.name}: public holidays {where} ({tz})"
    return f"{rule.name}: events of {rule.ics} ({tz})"


def _minutes(delta: dt.timedelta) -> int:
    return int(delta.total_seconds() // 60)
