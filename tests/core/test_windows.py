"""Effective windows: time zones, DST days, year ends, business-day rules, holidays, ICS."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from releasetrain.core.windows import (
    DAYS,
    CalendarSpec,
    Interval,
    ReleaseCalendar,
    merge,
    subtract,
)
from tests.conftest import PROJECT_ROOT

UTC = dt.UTC


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def calendar(**spec) -> ReleaseCalendar:
    ics = {}
    for b in spec.get("blackouts", []):
        if "ics" in b:
            ics[b["ics"]] = (
                (PROJECT_ROOT / b["ics"]).read_text() if not b["ics"].startswith("inline:") else b.pop("_text")
            )
    return ReleaseCalendar.resolve([CalendarSpec.model_validate(spec)], lambda n: None, lambda p: ics[p])


def pairs(intervals) -> list[tuple[str, str]]:
    return [(i.start.strftime("%m-%d %H:%M"), i.end.strftime("%m-%d %H:%M")) for i in intervals]


@pytest.mark.parametrize(
    "tz, day, expected",
    [
        pytest.param("Europe/Berlin", utc(2026, 1, 14), ("01-14 08:00", "01-14 15:00"), id="berlin-winter"),
        pytest.param("Europe/Berlin", utc(2026, 7, 15), ("07-15 07:00", "07-15 14:00"), id="berlin-summer"),
        pytest.param("America/New_York", utc(2026, 1, 14), ("01-14 14:00", "01-14 21:00"), id="ny-winter"),
        pytest.param("America/New_York", utc(2026, 7, 15), ("07-15 13:00", "07-15 20:00"), id="ny-summer"),
        pytest.param("Asia/Tokyo", utc(2026, 7, 15), ("07-15 00:00", "07-15 07:00"), id="tokyo-no-dst"),
        pytest.param("Asia/Kolkata", utc(2026, 7, 15), ("07-15 03:30", "07-15 10:30"), id="kolkata-half-hour"),
    ],
)
def test_windows_in_their_time_zone(tz, day, expected):
    cal = calendar(timezone=tz, windows=[{"days": ["wed"], "start": "09:00", "end": "16:00"}])
    assert pairs(cal.effective(day - dt.timedelta(days=1), day + dt.timedelta(days=2))) == [expected]


@pytest.mark.parametrize(
    "tz, day, window, expected",
    [
        # Berlin: 2026-03-29 02:00 -> 03:00 (CET -> CEST); 2026-10-25 03:00 -> 02:00
        pytest.param(
            "Europe/Berlin",
            utc(2026, 3, 29),
            ("01:00", "04:00"),
            ("03-29 00:00", "03-29 02:00"),
            id="berlin-spring-forward-2h",
        ),
        pytest.param(
            "Europe/Berlin",
            utc(2026, 3, 29),
            ("02:30", "05:00"),
            ("03-29 01:30", "03-29 03:00"),
            id="berlin-nonexistent-start-moves-forward",
        ),
        pytest.param(
            "Europe/Berlin",
            utc(2026, 10, 25),
            ("01:00", "04:00"),
            ("10-24 23:00", "10-25 03:00"),
            id="berlin-fall-back-4h",
        ),
        # New York: 2026-03-08 02:00 -> 03:00; 2026-11-01 02:00 -> 01:00
        pytest.param(
            "America/New_York",
            utc(2026, 3, 8),
            ("00:00", "06:00"),
            ("03-08 05:00", "03-08 10:00"),
            id="ny-spring-forward-5h",
        ),
        pytest.param(
            "America/New_York",
            utc(2026, 11, 1),
            ("00:00", "06:00"),
            ("11-01 04:00", "11-01 11:00"),
            id="ny-fall-back-7h",
        ),
    ],
)
def test_dst_change_days(tz, day, window, expected):
    cal = calendar(timezone=tz, windows=[{"start": window[0], "end": window[1]}])
    found = cal.effective(day - dt.timedelta(hours=12), day + dt.timedelta(hours=30))
    assert expected in pairs(found)


def test_overnight_window():
    cal = calendar(timezone="UTC", windows=[{"days": ["fri"], "start": "22:00", "end": "02:00"}])
    assert pairs(cal.effective(utc(2026, 11, 27), utc(2026, 11, 30))) == [("11-27 22:00", "11-28 02:00")]


def test_blackout_crossing_the_year_end():
    cal = calendar(
        timezone="Europe/Berlin",
        windows=[{"days": ["mon", "tue", "wed", "thu", "fri"], "start": "09:00", "end": "17:00"}],
        blackouts=[{"name": "freeze", "start": "2026-12-21T00:00", "end": "2027-01-04T00:00"}],
    )
    found = cal.effective(utc(2026, 12, 17), utc(2027, 1, 6))
    assert pairs(found) == [
        ("12-17 08:00", "12-17 16:00"),
        ("12-18 08:00", "12-18 16:00"),
        ("01-04 08:00", "01-04 16:00"),
        ("01-05 08:00", "01-05 16:00"),
    ]
    [period] = cal.blackout_periods(utc(2026, 12, 30), utc(2027, 1, 2))
    assert (period.start, period.end) == (utc(2026, 12, 20, 23), utc(2027, 1, 3, 23))


@pytest.mark.parametrize(
    "rule, month_start, expected_days",
    [
        pytest.param({"last_business_days": 3}, utc(2026, 11, 1), [26, 27, 30], id="nov-2026-weekend-skipped"),
        pytest.param(
            {"last_business_days": 3, "holidays_country": "DE", "holidays_subdiv": "NI"},
            utc(2025, 10, 1),
            [28, 29, 30],
            id="oct-2025-reformation-day-is-no-business-day",
        ),
        pytest.param({"last_business_days": 3}, utc(2025, 10, 1), [29, 30, 31], id="oct-2025-without-holidays"),
        pytest.param(
            {"first_business_days": 2, "holidays_country": "DE"},
            utc(2026, 1, 1),
            [2, 5],
            id="jan-2026-new-year-and-weekend",
        ),
    ],
)
def test_business_day_rules(rule, month_start, expected_days):
    cal = calendar(timezone="Europe/Berlin", blackouts=[{"name": "close", **rule}])
    periods = cal.blackout_periods(month_start, month_start + dt.timedelta(days=31))
    days = sorted(
        {
            (p.start + dt.timedelta(hours=2)).day
            for p in periods
            if p.start.month == month_start.month or (p.start + dt.timedelta(hours=2)).month == month_start.month
        }
    )
    assert days == expected_days
    assert all(
        p.end - p.start in (dt.timedelta(hours=24), dt.timedelta(hours=23), dt.timedelta(hours=25)) for p in periods
    )


def test_public_holidays():
    cal = calendar(timezone="Europe/Berlin", blackouts=[{"name": "DE", "holidays": {"country": "DE", "subdiv": "BE"}}])
    names = {p.name: (p.start, p.end) for p in cal.blackout_periods(utc(2026, 12, 20), utc(2026, 12, 31))}
    assert names["DE: Christmas Day"] == (utc(2026, 12, 24, 23), utc(2026, 12, 25, 23))
    us = calendar(timezone="America/New_York", blackouts=[{"name": "US", "holidays": {"country": "US"}}])
    july = [(p.start, p.name) for p in us.blackout_periods(utc(2026, 7, 1), utc(2026, 7, 8))]
    # 2026-07-04 is a Saturday: the holiday and its observed Friday are both blacked out, in New York time
    assert (utc(2026, 7, 4, 4), "US: Independence Day") in july
    assert (utc(2026, 7, 3, 4), "US: Independence Day (observed)") in july


def test_ics_recurring_events_with_time_zones():
    cal = calendar(timezone="UTC", blackouts=[{"name": "vendor", "ics": "include/calendars/vendor-maintenance.ics"}])
    winter = cal.blackout_periods(utc(2026, 1, 1), utc(2026, 1, 29))
    assert [(p.start, p.end) for p in winter] == [(utc(2026, 1, d, 1), utc(2026, 1, d, 4)) for d in (7, 14, 21, 28)], (
        "Tuesdays 20:00-23:00 New York (EST) are Wednesdays 01:00-04:00 UTC"
    )
    summer = cal.blackout_periods(utc(2026, 7, 1), utc(2026, 7, 9))
    assert [(p.start, p.end) for p in summer] == [(utc(2026, 7, d, 0), utc(2026, 7, d, 3)) for d in (1, 8)], (
        "EDT: one hour earlier"
    )
    assert winter[0].name == "vendor: Payment gateway maintenance"


def test_ics_all_day_and_floating_events():
    text = (
        "BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:t\n"
        "BEGIN:VEVENT\nUID:a\nDTSTAMP:20260101T000000Z\nDTSTART;VALUE=DATE:20260310\nDTEND;VALUE=DATE:20260312\n"
        "SUMMARY:migration\nEND:VEVENT\n"
        "BEGIN:VEVENT\nUID:b\nDTSTAMP:20260101T000000Z\nDTSTART:20260315T100000\nDTEND:20260315T120000\n"
        "RRULE:FREQ=DAILY;COUNT=2\nSUMMARY:floating\nEND:VEVENT\nEND:VCALENDAR\n"
    )
    cal = calendar(timezone="Europe/Berlin", blackouts=[{"name": "ext", "ics": "inline:x", "_text": text}])
    periods = cal.blackout_periods(utc(2026, 3, 1), utc(2026, 3, 31))
    assert [(p.start, p.end) for p in periods] == [
        (utc(2026, 3, 9, 23), utc(2026, 3, 11, 23)),
        (utc(2026, 3, 15, 9), utc(2026, 3, 15, 11)),
        (utc(2026, 3, 16, 9), utc(2026, 3, 16, 11)),
    ]


def test_recurring_cron_blackout_keeps_local_time_across_dst():
    cal = calendar(timezone="Europe/Berlin", blackouts=[{"name": "batch", "cron": "0 1 * * *", "duration_minutes": 90}])
    periods = cal.blackout_periods(utc(2026, 3, 27), utc(2026, 3, 31))
    assert [p.start for p in periods] == [
        utc(2026, 3, 27, 0),
        utc(2026, 3, 28, 0),
        utc(2026, 3, 29, 0),
        utc(2026, 3, 29, 23),
        utc(2026, 3, 30, 23),
    ]


def test_gate_decisions():
    cal = calendar(
        timezone="UTC",
        windows=[{"start": "09:00", "end": "17:00"}],
        blackouts=[{"name": "lunch deploy freeze", "start": "2026-06-01T12:00", "end": "2026-06-01T13:00"}],
    )
    thirty = dt.timedelta(minutes=30)
    assert cal.decide(utc(2026, 6, 1, 10), thirty).open
    closed = cal.decide(utc(2026, 6, 1, 12, 15), thirty)
    assert not closed.open and "blacked out by lunch deploy freeze" in closed.reason
    assert closed.next_opening == utc(2026, 6, 1, 13) and closed.blocking == ("lunch deploy freeze",)
    late = cal.decide(utc(2026, 6, 1, 16, 45), thirty)
    assert not late.open and "only 15 min left" in late.reason and late.next_opening == utc(2026, 6, 2, 9)
    night = cal.decide(utc(2026, 6, 1, 20), thirty)
    assert "outside the allowed windows" in night.reason and night.next_opening == utc(2026, 6, 2, 9)
    tight = cal.decide(utc(2026, 6, 1, 11, 45), thirty)
    assert not tight.open and tight.next_opening == utc(2026, 6, 1, 13)


def test_calendar_round_trips_through_json():
    cal = calendar(
        timezone="Europe/Berlin",
        windows=[{"days": ["mon"], "start": "09:00", "end": "12:00"}],
        blackouts=[
            {"name": "h", "holidays": {"country": "DE"}},
            {"name": "c", "cron": "0 10 * * *", "duration_minutes": 5},
            {"name": "close", "last_business_days": 1},
            {"name": "r", "start": "2026-01-01T00:00", "end": "2026-01-02T00:00"},
        ],
    )
    again = ReleaseCalendar.from_dict(cal.to_dict())
    span = (utc(2026, 1, 1), utc(2026, 3, 1))
    assert again.effective(*span) == cal.effective(*span) and len(cal.effective(*span)) > 3


# --- properties -----------------------------------------------------------------------------
ZONES = ["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe", "Asia/Kathmandu"]
times = st.times().map(lambda t: t.replace(second=0, microsecond=0))


@st.composite
def calendars(draw):
    tz = draw(st.sampled_from(ZONES))
    windows = []
    for _ in range(draw(st.integers(0, 3))):
        start, end = draw(times), draw(times)
        if start == end:
            continue
        days = draw(st.lists(st.sampled_from(DAYS), min_size=1, max_size=7, unique=True))
        windows.append(
            {"days": days, "start": start.isoformat(), "end": end.isoformat(), "timezone": draw(st.sampled_from(ZONES))}
        )
    blackouts = []
    base = dt.datetime(2026, 3, 1)
    for i in range(draw(st.integers(0, 4))):
        begin = base + dt.timedelta(minutes=draw(st.integers(0, 60 * 24 * 60)))
        blackouts.append(
            {
                "name": f"b{i}",
                "start": begin.isoformat(),
                "end": (begin + dt.timedelta(minutes=draw(st.integers(1, 60 * 24 * 5)))).isoformat(),
            }
        )
    if draw(st.booleans()):
        blackouts.append(
            {
                "name": "cron",
                "cron": draw(st.sampled_from(["0 2 * * *", "30 12 * * 1-5", "0 */6 * * *"])),
                "duration_minutes": draw(st.integers(1, 300)),
            }
        )
    return calendar(timezone=tz, windows=windows, blackouts=blackouts)


@settings(max_examples=150, deadline=None)
@given(calendars(), st.integers(0, 60 * 24 * 30))
def test_effective_windows_never_touch_a_blackout_and_lie_in_an_allowed_window(cal, offset):
    start = utc(2026, 3, 1) + dt.timedelta(minutes=offset)
    end = start + dt.timedelta(days=10)
    effective = cal.effective(start, end)
    blackouts = cal.blackout_periods(start, end)
    allowed = cal.allowed(start, end)
    for window in effective:
        assert window.start < window.end
        assert not any(b.start < window.end and window.start < b.end for b in blackouts), window
        assert any(a.start <= window.start and window.end <= a.end for a in allowed), window
    assert effective == merge(effective), "sorted and disjoint"


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 500), st.integers(1, 100)), max_size=8),
    st.lists(st.tuples(st.integers(0, 500), st.integers(1, 100)), max_size=8),
)
def test_subtract_is_set_difference(base, cuts):
    t0 = utc(2026, 1, 1)
    iv = [Interval(t0 + dt.timedelta(minutes=s), t0 + dt.timedelta(minutes=s + n)) for s, n in base]
    cv = [Interval(t0 + dt.timedelta(minutes=s), t0 + dt.timedelta(minutes=s + n)) for s, n in cuts]
    result = subtract(iv, cv)

    def covered(minute, intervals):
        m = t0 + dt.timedelta(minutes=minute, seconds=30)
        return any(i.start <= m < i.end for i in intervals)

    for minute in range(0, 620):
        assert covered(minute, result) == (covered(minute, iv) and not covered(minute, cv))


def test_cancelled_and_free_ics_events_do_not_block():
    text = (
        "BEGIN:VCALENDAR\nVERSION:2.0\nPRODID:t\n"
        "BEGIN:VEVENT\nUID:a\nDTSTAMP:20260101T000000Z\nDTSTART:20260310T100000Z\nDTEND:20260310T110000Z\n"
        "STATUS:CANCELLED\nSUMMARY:called off\nEND:VEVENT\n"
        "BEGIN:VEVENT\nUID:b\nDTSTAMP:20260101T000000Z\nDTSTART:20260311T100000Z\nDTEND:20260311T110000Z\n"
        "TRANSP:TRANSPARENT\nSUMMARY:free\nEND:VEVENT\n"
        "BEGIN:VEVENT\nUID:c\nDTSTAMP:20260101T000000Z\nDTSTART:20260312T100000Z\nDTEND:20260312T110000Z\n"
        "SUMMARY:busy\nEND:VEVENT\nEND:VCALENDAR\n"
    )
    cal = calendar(timezone="UTC", blackouts=[{"name": "ext", "ics": "inline:y", "_text": text}])
    assert [p.name for p in cal.blackout_periods(utc(2026, 3, 1), utc(2026, 3, 31))] == ["ext: busy"]


def test_a_blackout_starting_within_the_expected_duration_is_named():
    cal = calendar(
        timezone="UTC", blackouts=[{"name": "db migration", "start": "2026-06-01T10:20", "end": "2026-06-01T11:00"}]
    )
    decision = cal.decide(utc(2026, 6, 1, 10), dt.timedelta(minutes=30))
    assert not decision.open and decision.blocking == ("db migration",)


def test_openings_do_not_count_windows_already_open():
    cal = calendar(timezone="UTC")  # always open
    assert cal.openings(utc(2026, 1, 1), utc(2026, 3, 1)) == []
