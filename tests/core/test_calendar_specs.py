"""Calendars in specs and shared calendar files: clear errors naming file and field;
the central calendar's conflicts; the calendar CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import icalendar
import pytest
import yaml

from releasetrain.core.planning import find_conflicts
from releasetrain.core.spec import CalendarLibrary, ReleaseSpecError, load_spec
from tests.conftest import PROJECT_ROOT

BASE = {
    "name": "shop",
    "owner_team": "t",
    "components": [{"name": "web", "source": "include/web"}],
    "environments": [{"name": "prod", "deploy_target": "fleet_prod"}],
    "reviewers": ["ops"],
}


def write_spec(tmp_path: Path, calendar: dict, name: str = "shop", **extra) -> Path:
    (tmp_path / "releases").mkdir(exist_ok=True)
    path = tmp_path / "releases" / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**BASE, "name": name, "calendar": calendar, **extra}))
    return path


def load(tmp_path: Path, path: Path):
    return load_spec(path, display_root=tmp_path, calendars=CalendarLibrary(tmp_path, [tmp_path / "calendars"]))


@pytest.mark.parametrize(
    "calendar, expected",
    [
        pytest.param({"timezone": "Europe/Berln"}, "calendar.timezone: unknown time zone 'Europe/Berln'", id="zone"),
        pytest.param(
            {"windows": [{"start": "09:00", "end": "10:00", "timezone": "Mars/Olympus"}]},
            "calendar.windows[0].timezone: unknown time zone 'Mars/Olympus'",
            id="window-zone",
        ),
        pytest.param(
            {"blackouts": [{"name": "x", "start": "2026-12-02T00:00", "end": "2026-12-01T00:00"}]},
            "calendar.blackouts[0].range: end 2026-12-01T00:00:00 is not after start",
            id="end-before-start",
        ),
        pytest.param(
            {"blackouts": [{"name": "x", "holidays": {"country": "XX"}}]},
            "calendar.blackouts[0].holidays: unknown holiday country 'XX'",
            id="country",
        ),
        pytest.param(
            {"blackouts": [{"name": "x", "cron": "every day", "duration_minutes": 5}]},
            "calendar.blackouts[0].cron.cron: 'every day' is not a valid cron expression",
            id="cron",
        ),
        pytest.param(
            {"blackouts": [{"name": "x", "ics": "broken.ics"}]},
            "calendar.blackouts[0].ics: broken.ics is not a valid iCalendar file",
            id="ics",
        ),
        pytest.param(
            {"blackouts": [{"name": "x", "ics": "missing.ics"}]},
            "calendar.blackouts[0].ics: missing.ics cannot be read",
            id="ics-missing",
        ),
        pytest.param({"use": ["nowhere"]}, "calendar.use[0]: no shared calendar 'nowhere'", id="shared-missing"),
        pytest.param(
            {"windows": [{"start": "09:00", "end": "09:00"}]},
            "calendar.windows[0]: start and end are equal",
            id="empty-window",
        ),
        pytest.param(
            {"windows": [{"start": 600, "end": "12:00"}]},
            'calendar.windows[0].start: write times in quotes, e.g. "10:00"',
            id="unquoted-time",
        ),
        pytest.param(
            {"blackouts": [{"name": "x", "cron": "0 0 30 2 *", "duration_minutes": 5}]},
            "calendar.blackouts[0].cron.cron: '0 0 30 2 *' never fires within a year",
            id="cron-never",
        ),
    ],
)
def test_bad_calendars_name_file_and_field(tmp_path, calendar, expected):
    (tmp_path / "broken.ics").write_text("this is not BEGIN:VCALENDAR at all")
    with pytest.raises(ReleaseSpecError) as info:
        load(tmp_path, write_spec(tmp_path, calendar))
    assert f"releases/shop.yaml: {expected}" in str(info.value)


def test_errors_in_a_shared_calendar_name_that_file(tmp_path):
    (tmp_path / "calendars").mkdir()
    (tmp_path / "calendars" / "freeze.yaml").write_text("name: freeze\ntimezone: Nowhere/City\n")
    with pytest.raises(ReleaseSpecError) as info:
        load(tmp_path, write_spec(tmp_path, {"use": ["freeze"]}))
    assert "calendar.use[0]: calendars/freeze.yaml: timezone: unknown time zone 'Nowhere/City'" in str(info.value)


def test_example_calendars_are_valid():
    library = CalendarLibrary(PROJECT_ROOT)
    spec = load_spec(
        PROJECT_ROOT / "include" / "releases" / "payments.yaml", display_root=PROJECT_ROOT, calendars=library
    )
    assert spec.schedule == "windows" and spec.has_calendar
    assert len(library.resolve(spec.calendar_layers("payments-prod")).blackouts) == 6


def test_conflicts_between_planned_releases(tmp_path):
    (tmp_path / "calendars").mkdir()
    freeze = {"blackouts": [{"name": "freeze", "start": "2026-12-21T00:00", "end": "2027-01-04T00:00"}]}
    a = load(tmp_path, write_spec(tmp_path, freeze, "a", planned_start="2026-12-01T10:00:00Z"))
    b = load(tmp_path, write_spec(tmp_path, freeze, "b", planned_start="2026-12-01T10:30:00Z"))
    c = load(tmp_path, write_spec(tmp_path, freeze, "c", planned_start="2026-12-22T10:00:00Z"))
    other_env = {**BASE["environments"][0], "deploy_target": "fleet_other"}
    d = load(
        tmp_path,
        write_spec(
            tmp_path, freeze, "d", planned_start="2026-12-01T10:15:00Z", depends_on=["a"], environments=[other_env]
        ),
    )
    e = load(
        tmp_path, write_spec(tmp_path, freeze, "e", planned_start="2026-12-01T10:15:00Z", environments=[other_env])
    )
    conflicts = find_conflicts([a, b, c, d, e], CalendarLibrary(tmp_path, [tmp_path / "calendars"]))
    kinds = sorted((c["kind"], tuple(c.get("releases", [c.get("release")]))) for c in conflicts)
    assert ("blackout", ("c",)) in kinds
    assert ("overlap", ("a", "b")) in kinds, "shared deploy target"
    assert ("overlap", ("a", "d")) in kinds, "declared dependency"
    assert ("overlap", ("d", "e")) in kinds and ("overlap", ("a", "e")) not in kinds


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "releasetrain", *args], capture_output=True, text=True, cwd=PROJECT_ROOT
    )


def test_calendar_cli_json():
    done = cli(
        "calendar",
        "include/releases/payments.yaml",
        "--environment",
        "payments-prod",
        "--from",
        "2026-12-01T00:00:00Z",
        "--days",
        "10",
        "--json",
    )
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert set(data) == {"windows", "blackouts", "conflicts", "queues"}
    assert data["windows"][0] == {"start": "2026-12-01T09:00:00Z", "end": "2026-12-01T11:00:00Z"}
    starts = [w["start"] for w in data["windows"]]
    assert starts == sorted(starts) and all(s.endswith("Z") for s in starts)
    assert any(b["name"] == "gateway vendor maintenance: Payment gateway maintenance" for b in data["blackouts"])


def test_calendar_cli_table_and_ics(tmp_path):
    table = cli("calendar", "include/releases/payments.yaml", "--from", "2026-12-20T00:00:00Z", "--days", "3")
    assert table.returncode == 0 and "year-end freeze 2026" in table.stdout
    out = tmp_path / "cal.ics"
    done = cli(
        "calendar",
        "include/releases/payments.yaml",
        "-e",
        "payments-prod",
        "--from",
        "2026-12-01",
        "--days",
        "10",
        "--ics",
        str(out),
    )
    assert done.returncode == 0, done.stderr
    events = list(icalendar.Calendar.from_ical(out.read_bytes()).walk("VEVENT"))
    assert any(str(e["SUMMARY"]).startswith("Release window") for e in events)
    assert any(str(e["SUMMARY"]).startswith("Blackout: ") for e in events)


def test_calendar_cli_bad_input():
    assert cli("calendar", "include/releases/payments.yaml", "-e", "nowhere").returncode == 1
    bad = cli("calendar", "include/releases/payments.yaml", "--from", "yesterday")
    assert bad.returncode != 0 and "--from: 'yesterday' is not an ISO 8601" in bad.stderr


def test_validate_shared_calendars():
    done = cli("validate", "include/calendars/finance-close.yaml", "include/releases/payments.yaml")
    assert done.returncode == 0, done.stderr


def test_pools_cover_every_deploy_target():
    pools = json.loads(cli("pools").stdout)
    assert pools["releasetrain_target_fleet_prod"]["slots"] == 1
    assert pools["releasetrain_target_fleet_prod"]["include_deferred"] is True


def test_a_scheduled_release_needs_windows(tmp_path):
    (tmp_path / "calendars").mkdir()
    (tmp_path / "calendars" / "freeze.yaml").write_text(
        "name: freeze\nblackouts: [{name: f, start: '2026-12-21T00:00', end: '2027-01-04T00:00'}]\n"
    )
    with pytest.raises(ReleaseSpecError, match="schedule: 'windows' needs allowed windows"):
        load(tmp_path, write_spec(tmp_path, {"use": ["freeze"]}, schedule="windows", version="1.0.0"))


def test_a_release_with_calendars_needs_reviewers(tmp_path):
    data = {k: v for k, v in BASE.items() if k != "reviewers"}
    (tmp_path / "releases").mkdir()
    path = tmp_path / "releases" / "shop.yaml"
    path.write_text(yaml.safe_dump({**data, "calendar": {"timezone": "UTC"}}))
    with pytest.raises(ReleaseSpecError, match="needs someone to review emergency changes"):
        load(tmp_path, path)


def test_shared_calendars_do_not_nest(tmp_path):
    (tmp_path / "calendars").mkdir()
    (tmp_path / "calendars" / "outer.yaml").write_text("name: outer\nuse: [inner]\n")
    with pytest.raises(ReleaseSpecError, match="calendars/outer.yaml: use: List should have at most 0 items"):
        load(tmp_path, write_spec(tmp_path, {"use": ["outer"]}))


def test_calendar_view_ignores_releases_without_calendars(tmp_path):
    import datetime as dt

    from releasetrain.core.planning import calendar_view

    (tmp_path / "calendars").mkdir()
    gated = load(tmp_path, write_spec(tmp_path, {"windows": [{"start": "09:00", "end": "10:00"}]}, "gated"))
    (tmp_path / "releases" / "free.yaml").write_text(yaml.safe_dump({**BASE, "name": "free"}))
    free = load(tmp_path, tmp_path / "releases" / "free.yaml")
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    view = calendar_view(
        [gated, free], CalendarLibrary(tmp_path, [tmp_path / "calendars"]), start, start + dt.timedelta(days=2), "prod"
    )
    assert [w.to_dict()["start"] for w in view.windows] == ["2026-01-01T09:00:00Z", "2026-01-02T09:00:00Z"]
