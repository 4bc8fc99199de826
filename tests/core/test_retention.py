"""Issue 13 (packaging): which bundles the store keeps, and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from releasetrain.core.ledger import LedgerEvent
from releasetrain.core.retention import RetentionError, RetentionPolicy, load_policy, plan_retention


def event(seq: int, kind: str, environment: str, run_id: str = "r", **details) -> LedgerEvent:
    return LedgerEvent(
        seq=seq,
        at="2026-11-28T00:00:00Z",
        release="shop",
        run_id=run_id,
        environment=environment,
        kind=kind,
        actor="",
        details=details,
        prev_hash="",
        hash=f"h{seq}",
        dag_id="release_shop",
    )


STORED = {"shop": [f"1.{i}.0" for i in range(10)], "other": ["3.0.0"]}


def test_the_last_n_live_last_good_and_held_versions_stay_everything_else_may_go():
    events = {
        "shop": [
            event(1, "deployed", "prod", "r1", version="1.1.0"),
            event(2, "deployed", "prod", "r2", version="1.2.0"),
            event(3, "deployed", "staging", "r3", version="1.5.0"),
            event(4, "deployed", "prod", "r4", version="1.3.0"),
            event(5, "rollback", "prod", "r4", restored_version="1.2.0"),
        ]
    }
    policy = RetentionPolicy(keep_last=2, holds=(("shop", "1.0.0", "audit AUD-17"),))
    plan = plan_retention(STORED, events, policy)
    keep = plan.keep["shop"]
    assert keep["1.9.0"] == ["one of the last 2 packaged"] and keep["1.8.0"] == ["one of the last 2 packaged"]
    assert keep["1.2.0"] == ["one of the last 2 deployed to prod", "live in prod"], "restored by the rollback"
    assert keep["1.3.0"] == ["one of the last 2 deployed to prod"]
    assert keep["1.1.0"] == ["last good in prod"], "1.3.0 was rolled back: 1.1.0 is the last good before 1.2.0"
    assert keep["1.5.0"] == ["one of the last 2 deployed to staging", "live in staging"]
    assert keep["1.0.0"] == ["legal hold: audit AUD-17"]
    assert sorted(plan.delete) == [("shop", "1.4.0"), ("shop", "1.6.0"), ("shop", "1.7.0")]
    assert plan.keep["other"] == {"3.0.0": ["one of the last 2 packaged"]}


def test_a_hold_on_a_whole_release_keeps_every_version():
    plan = plan_retention(STORED, {}, RetentionPolicy(keep_last=1, holds=(("shop", None, "litigation"),)))
    assert plan.delete == [] and len(plan.keep["shop"]) == 10
    assert all("legal hold: litigation" in reasons for reasons in plan.keep["shop"].values())


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("keep_last: 0\n", "keep_last must be a whole number of at least 1"),
        ("keep_last: true\n", "keep_last must be a whole number"),
        ("legal_holds: [{release: shop}]\n", r"legal_holds\[0\] needs release and reason"),
        ("legal_holds: [{release: shop, version: latest, reason: x}]\n", "is not a semantic version"),
        ("delete_everything: true\n", "keep_last and legal_holds only"),
    ],
)
def test_a_bad_policy_file_is_refused_naming_the_problem(tmp_path: Path, text, error):
    path = tmp_path / "retention.yaml"
    path.write_text(text)
    with pytest.raises(RetentionError, match=error):
        load_policy(path)


def test_no_policy_file_means_the_defaults(tmp_path: Path):
    assert load_policy(tmp_path / "none.yaml") == RetentionPolicy()
    assert load_policy(Path(__file__).resolve().parents[2] / "include" / "retention.yaml").keep_last == 5


def test_recent_beats_high_and_a_run_still_open_keeps_what_it_packaged():
    """Attacker review: a hotfix on an old line (1.1.5 after 1.9.0) is the newest bundle, and a
    run that packaged it but has not deployed yet (waiting for approval) still needs it."""
    stored = {"shop": ["1.1.5", "1.8.0", "1.9.0", "1.7.0"]}
    events = {
        "shop": [
            event(1, "packaged", "", "r7", version="1.7.0"),
            event(2, "run_state", "", "r7", state="success"),
            event(3, "packaged", "", "r8", version="1.8.0"),
            event(4, "run_state", "", "r8", state="success"),
            event(5, "packaged", "", "r9", version="1.9.0"),
            event(6, "run_state", "", "r9", state="success"),
            event(7, "packaged", "", "hotfix", version="1.1.5"),
        ]
    }
    plan = plan_retention(stored, events, RetentionPolicy(keep_last=1))
    assert plan.keep["shop"]["1.1.5"] == ["one of the last 1 packaged", "packaged by hotfix, still running"]
    assert sorted(plan.delete) == [("shop", "1.7.0"), ("shop", "1.8.0"), ("shop", "1.9.0")]
    events["shop"].append(event(8, "run_state", "", "hotfix", state="failed"))
    assert plan_retention(stored, events, RetentionPolicy(keep_last=1)).keep["shop"]["1.1.5"] == [
        "one of the last 1 packaged"
    ]


def test_a_version_on_the_idle_colour_is_live_only_once_promoted():
    from releasetrain.core.incident import live_version

    history = [
        event(1, "deployed", "prod", "r1", version="1.0.0"),
        event(2, "deployed", "prod", "r2", version="2.0.0", slot="idle"),
    ]
    assert live_version(history, ["prod"]) == "1.0.0", "a canary at 0% traffic is not what runs"
    history.append(event(3, "promoted", "prod", "r2", version="2.0.0"))
    assert live_version(history, ["prod"]) == "2.0.0"
    history.append(event(4, "rollback", "prod", "r2", restored_version="1.0.0"))
    assert live_version(history, ["prod"]) == "1.0.0"
