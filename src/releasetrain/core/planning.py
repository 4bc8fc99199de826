"""The central release calendar: effective windows of an environment across releases,
and conflicts between planned releases (pure: no Airflow)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from releasetrain.core.spec import CalendarLibrary, ReleaseSpec
from releasetrain.core.windows import BlackoutPeriod, Interval, iso_z, merge


@dataclass
class CalendarView:
    windows: list[Interval]
    blackouts: list[BlackoutPeriod]
    conflicts: list[dict[str, Any]]
    queues: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "windows": [w.to_dict() for w in self.windows],
            "blackouts": [b.to_dict() for b in self.blackouts],
            "conflicts": self.conflicts,
            "queues": self.queues,
        }


def target_queues(specs: list[ReleaseSpec], environment: str | None = None) -> list[dict[str, Any]]:
    """For each deploy target that several of the releases deploy to: the order in which their
    waiting runs get it (higher business impact first; on a tie, whichever waited first:
    listed by name)."""
    by_target: dict[str, list[dict[str, Any]]] = {}
    for spec in specs:
        for env in spec.environments:
            if environment is None or env.name == environment:
                entry = {"release": spec.name, "environment": env.name, "business_impact": spec.business_impact}
                by_target.setdefault(env.deploy_target, []).append({**entry, "priority": spec.priority})
    return [
        {"target": target, "order": sorted(entries, key=lambda e: (-e["priority"], e["release"], e["environment"]))}
        for target, entries in sorted(by_target.items())
        if len({e["release"] for e in entries}) > 1
    ]


def _planned(spec: ReleaseSpec) -> Interval | None:
    if spec.planned_start is None:
        return None
    start = spec.planned_start.astimezone(dt.UTC)
    return Interval(start, start + dt.timedelta(minutes=spec.planned_duration_minutes))


def calendar_view(
    specs: list[ReleaseSpec],
    library: CalendarLibrary,
    start: dt.datetime,
    end: dt.datetime,
    environment: str | None = None,
) -> CalendarView:
    """Effective windows and blackouts of ``environment`` (None: the releases' own
    calendars) over the given releases, joined; and every conflict among them."""
    windows: list[Interval] = []
    blackouts: set[BlackoutPeriod] = set()
    for spec in specs:
        if environment is not None and environment not in {e.name for e in spec.environments}:
            continue
        layers = spec.calendar_layers(environment)
        if not layers:  # no calendar: it constrains nothing, and would show the whole span as a window
            continue
        calendar = library.resolve(layers)
        windows += calendar.effective(start, end)
        blackouts.update(calendar.blackout_periods(start, end))
    return CalendarView(
        merge(windows), sorted(blackouts), find_conflicts(specs, library), target_queues(specs, environment)
    )


def find_conflicts(specs: list[ReleaseSpec], library: CalendarLibrary) -> list[dict[str, Any]]:
    """Planned releases that fall into a blackout or outside their windows, and planned
    releases that overlap while sharing an environment (deploy target) or a dependency."""
    conflicts: list[dict[str, Any]] = []
    planned = [(spec, _planned(spec)) for spec in specs]
    for spec, slot in planned:
        if slot is None:
            continue
        for env in spec.environments:
            layers = spec.calendar_layers(env.name)
            if not layers:
                continue
            calendar = library.resolve(layers)
            for b in calendar.blackout_periods(slot.start, slot.end):
                conflicts.append(
                    {
                        "kind": "blackout",
                        "release": spec.name,
                        "environment": env.name,
                        "blackout": b.name,
                        "start": iso_z(slot.start),
                        "end": iso_z(slot.end),
                        "detail": f"planned {iso_z(slot.start)}-{iso_z(slot.end)} overlaps {b.name} "
                        f"({iso_z(b.start)}-{iso_z(b.end)})",
                    }
                )
            inside = any(w.start <= slot.start and slot.end <= w.end for w in calendar.effective(slot.start, slot.end))
            if not inside and not calendar.blackout_periods(slot.start, slot.end):
                conflicts.append(
                    {
                        "kind": "outside_window",
                        "release": spec.name,
                        "environment": env.name,
                        "start": iso_z(slot.start),
                        "end": iso_z(slot.end),
                        "detail": "planned time is outside the allowed windows",
                    }
                )
    for i, (a, slot_a) in enumerate(planned):
        for b, slot_b in planned[i + 1 :]:
            if slot_a is None or slot_b is None or slot_a.end <= slot_b.start or slot_b.end <= slot_a.start:
                continue
            targets_a = {e.deploy_target: e.name for e in a.environments}
            shared = sorted(targets_a[e.deploy_target] for e in b.environments if e.deploy_target in targets_a)
            dependent = b.name in a.dependency_names or a.name in b.dependency_names
            if shared or dependent:
                conflicts.append(
                    {
                        "kind": "overlap",
                        "releases": [a.name, b.name],
                        "environments": shared,
                        "dependency": dependent,
                        "start": iso_z(max(slot_a.start, slot_b.start)),
                        "end": iso_z(min(slot_a.end, slot_b.end)),
                        "detail": f"{a.name} and {b.name} are planned at overlapping times and share "
                        + (f"environments {', '.join(shared)}" if shared else "a dependency"),
                    }
                )
    return conflicts


def to_ics(view: CalendarView, title: str) -> bytes:
    """The view as an iCalendar file calendar applications import."""
    import icalendar

    cal = icalendar.Calendar()
    cal.add("prodid", "-//releasetrain//release calendar//EN")
    cal.add("version", "2.0")
    cal.add("x-wr-calname", title)
    for i, w in enumerate(view.windows):
        cal.add_component(_event(f"Release window ({title})", w.start, w.end, f"window-{i}-{iso_z(w.start)}"))
    for i, b in enumerate(view.blackouts):
        cal.add_component(_event(f"Blackout: {b.name}", b.start, b.end, f"blackout-{i}-{iso_z(b.start)}"))
    return cal.to_ical()


def _event(summary: str, start: dt.datetime, end: dt.datetime, uid: str):
    import icalendar

    event = icalendar.Event()
    event.add("uid", f"{uid}@releasetrain")
    event.add("summary", summary)
    event.add("dtstart", start.astimezone(dt.UTC))
    event.add("dtend", end.astimezone(dt.UTC))
    event.add("dtstamp", dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    return event
