"""The ledger's hash chain and the evidence bundle, without any database."""

from __future__ import annotations

import copy
import json
from dataclasses import replace

import pytest

from releasetrain.core.bundle import generate_private_key_pem, load_private_key, public_key_pem
from releasetrain.core.evidence import NO_TRUSTED_KEY, build_evidence, summarise, verify_evidence
from releasetrain.core.ledger import GENESIS, LedgerError, compute_hash, new_event, verify_chain


def chain(n: int = 6, release: str = "storefront", run_id: str = "manual__1"):
    events, prev = [], GENESIS
    kinds = ["triggered", "packaged", "approval_given", "deployed", "change_transition", "closure"]
    for i in range(n):
        event = new_event(
            seq=i + 1,
            prev_hash=prev,
            kind=kinds[i % len(kinds)],
            release=release,
            run_id=run_id,
            environment="prod",
            actor="approver" if i % len(kinds) == 2 else "author",
            details={"i": i, "digest": "sha256:" + "ab" * 32},
        )
        events.append(event)
        prev = event.hash
    return events


def test_intact_chain_verifies_with_its_head():
    events = chain()
    result = verify_chain(events, head=(6, events[-1].hash))
    assert result.ok and result.count == 6 and result.head_hash == events[-1].hash


def test_every_hash_depends_on_content_and_on_the_previous_event():
    a, b = chain(2)
    assert b.prev_hash == a.hash
    assert compute_hash(replace(b, actor="mallory")) != b.hash
    assert compute_hash(replace(b, prev_hash=GENESIS)) != b.hash


@pytest.mark.parametrize(
    ("tamper", "first_bad"),
    [
        ("edit_details", 3),
        ("edit_actor_and_rehash", 4),  # a re-hashed edit breaks the next link
        ("delete_middle", 3),
        ("swap", 3),
        ("duplicate", 3),
        ("delete_last", 6),  # only the head record notices
        ("delete_first", 1),
    ],
)
def test_any_edit_deletion_or_reordering_is_detected(tamper, first_bad):
    events = chain()
    head = (6, events[-1].hash)
    if tamper == "edit_details":
        events[2] = replace(events[2], details={"i": 99})
    elif tamper == "edit_actor_and_rehash":
        edited = replace(events[2], actor="mallory")
        events[2] = replace(edited, hash=compute_hash(edited))
    elif tamper == "delete_middle":
        del events[2]
    elif tamper == "swap":
        events[2], events[3] = events[3], events[2]
    elif tamper == "duplicate":
        events.insert(3, events[2])
    elif tamper == "delete_last":
        events.pop()
    elif tamper == "delete_first":
        events.pop(0)
    result = verify_chain(events, head=head)
    assert not result.ok
    assert result.first_bad_seq == first_bad, result.reason
    assert f"event {first_bad}" in result.message()


def test_unknown_kinds_and_missing_release_are_refused():
    with pytest.raises(LedgerError, match="unknown ledger event kind 'oops'"):
        new_event(seq=1, prev_hash=GENESIS, kind="oops", release="x")
    with pytest.raises(LedgerError, match="needs the release"):
        new_event(seq=1, prev_hash=GENESIS, kind="triggered", release="")


def test_evidence_bundle_verifies_offline_and_fails_when_altered():
    key_pem = generate_private_key_pem()
    key = load_private_key(key_pem)
    events = chain()
    document = json.loads(json.dumps(build_evidence("storefront", "manual__1", events, (6, events[-1].hash), key)))
    trusted = public_key_pem(key)
    assert verify_evidence(document, trusted) == []
    assert document["summary"]["approvals"][0]["approver"] == "approver"
    assert document["summary"]["approvals"][0]["digest"] == "sha256:" + "ab" * 32

    altered = copy.deepcopy(document)
    altered["events"][2]["actor"] = "mallory"
    problems = verify_evidence(altered, trusted)
    assert any("events[2]" in p and "does not match its hash" in p for p in problems)
    assert any("signature" in p for p in problems)

    resigned_summary = copy.deepcopy(document)
    resigned_summary["summary"]["approvals"][0]["approver"] = "mallory"
    assert "summary does not match the events" in verify_evidence(resigned_summary, trusted)

    dropped = copy.deepcopy(document)
    del dropped["events"][1]
    assert verify_evidence(dropped, trusted)

    # issue 11 finding 2: a file built with a fresh key and invented approvals verified with
    # the key inside it; now only a pinned key verifies, and without one nothing does
    other_key = load_private_key(generate_private_key_pem())
    invented = chain()
    forged = build_evidence("storefront", "manual__1", invented, (6, invented[-1].hash), other_key)
    assert NO_TRUSTED_KEY in verify_evidence(forged)
    assert NO_TRUSTED_KEY in verify_evidence(document), "not even a genuine file verifies without a pinned key"
    assert any("signature" in p for p in verify_evidence(forged, trusted))  # not from the trusted key


def test_evidence_shows_one_unbroken_chain_with_none_of_the_runs_events_left_out():
    key = load_private_key(generate_private_key_pem())
    trusted = public_key_pem(key)
    everything, prev = [], GENESIS
    for i in range(8):  # ledger event 4 belongs to another run
        event = new_event(
            seq=i + 1,
            prev_hash=prev,
            kind="approval_given" if i == 2 else "triggered",
            release="storefront",
            run_id="manual__2" if i == 3 else "manual__1",
            environment="prod",
            actor="approver",
            details={"i": i, "digest": "sha256:" + "ab" * 32},
        )
        everything.append(event)
        prev = event.hash
    ours = [e for e in everything if e.seq != 4]
    document = build_evidence("storefront", "manual__1", ours, (8, everything[-1].hash), key, everything)
    assert [link["of_run"] for link in document["chain"]][2:5] == [True, False, True]
    assert verify_evidence(document, trusted) == []

    # an exporter that leaves out one of the run's events (say, a rejection) is caught
    partial = build_evidence(
        "storefront", "manual__1", [e for e in ours if e.seq != 3], (8, everything[-1].hash), key, everything
    )
    assert "events of this run left out: ledger events [3]" in verify_evidence(partial, trusted)
    # links with a gap (a deleted event), or not matching the events, are caught
    gapped = build_evidence(
        "storefront", "manual__1", ours, (8, everything[-1].hash), key, [e for e in everything if e.seq != 4]
    )
    problems = verify_evidence(gapped, trusted)
    assert "chain links have gaps or repeats in their sequence numbers" in problems
    assert any("chain broken at ledger event 5" in p for p in problems)


def test_summary_follows_the_events():
    events = chain()
    summary = summarise(events)
    assert summary["closure"]["i"] == 5
    assert summary["deployments"] == [{"environment": "prod", "i": 3, "digest": "sha256:" + "ab" * 32}]


def test_the_evidence_carries_the_sbom_and_every_waiver_with_who_and_why():
    from releasetrain.core.ledger import LedgerEvent

    def event(kind, actor="", **details):
        return LedgerEvent(
            seq=1,
            at="2026-11-29T10:00:00Z",
            release="shop",
            run_id="r",
            environment="",
            kind=kind,
            actor=actor,
            details=details,
        )

    sbom = {"format": "CycloneDX 1.6", "sha256": "ab", "libraries": [{"name": "requests"}], "conflicts": ["c"]}
    summary = summarise(
        [
            event("packaged", sbom=sbom),
            event("conflicts_waived", "approver", reason="aligned in 1.1", conflicts=["c"]),
            event("scope_exception", "approver", reason="late fix", changes=["web: 2, frozen at 1"]),
        ]
    )
    assert summary["sbom"] == sbom
    assert summary["units"] is None, "a monolithic bundle has no units"
    units = [{"unit": "api", "components": ["api", "worker"], "digest": "sha256:u", "location": "file:///x"}]
    modular = summarise([event("packaged", units=units)])["units"]
    assert modular == [{"unit": "api", "components": ["api", "worker"], "digest": "sha256:u"}]
    assert [(w["kind"], w["actor"], w["reason"], w["changes"]) for w in summary["waivers"]] == [
        ("conflicts_waived", "approver", "aligned in 1.1", ["c"]),
        ("scope_exception", "approver", "late fix", ["web: 2, frozen at 1"]),
    ]


def test_the_evidence_lists_test_suites_and_reused_profile_approvals():
    from releasetrain.core.ledger import LedgerEvent

    def event(kind, **details):
        return LedgerEvent(
            seq=1,
            at="2026-11-29T10:00:00Z",
            release="shop",
            run_id="r",
            environment="dev",
            kind=kind,
            actor="",
            details=details,
        )

    summary = summarise(
        [event("tests_passed", suite="api"), event("baseline_checked", approved_by="cab", approved_in="manual__1")]
    )
    assert [c["kind"] for c in summary["checks"]] == ["tests_passed"]
    assert summary["waivers"][0]["actor"] == "cab" and "manual__1" in summary["waivers"][0]["reason"]


def test_the_evidence_shows_the_runs_place_in_the_release_train():
    from releasetrain.core.ledger import LedgerEvent

    def event(kind, run_id, **details):
        at = "2026-11-29T10:00:00Z"
        return LedgerEvent(
            seq=1, at=at, release="shop", run_id=run_id, environment="", kind=kind, actor="", details=details
        )

    why = "hotfix for INC-1 (sev1)"
    hotfix = summarise(
        [event("run_admitted", "h", lane="hotfix", why=why, holds="n"), event("run_held", "h", held="n", by="h")]
    )
    assert hotfix["train"] == {"lane": "hotfix", "admitted_at": "2026-11-29T10:00:00Z", "why": why, "holds": ["n"]}
    normal = summarise(
        [
            event("run_admitted", "n", lane="normal"),
            event("run_held", "n", held="n", by="h", why=why),
            event("run_superseded", "n", by="h", why=why, environment="prod"),
        ]
    )
    train = normal["train"]
    assert train["lane"] == "normal" and [h["run"] for h in train["held_by"]] == ["h"]
    assert train["superseded_by"] == {"run": "h", "why": why, "environment": "prod"}
    assert summarise([])["train"] is None
