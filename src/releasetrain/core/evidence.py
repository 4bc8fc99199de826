"""Signed evidence bundles: one release run's ledger events, summarised, signed, verifiable offline.

The document is JSON::

    {"format": "releasetrain.evidence/v1", "release", "run_id", "generated_at",
     "chain_head": {"seq", "hash"},            # the ledger head when exported
     "events": [...],                          # the run's ledger events, with their hashes
     "chain": [{"seq", "hash", "prev_hash", "of_run"}],  # links from its first event to its last
     "summary": {"approvals", "refusals", "checks", "exceptions", "change_record",
                 "closure", "deployments", "rollbacks", "outcome",
                 "postmortems" (only after a postmortem review was answered or overdue)},
     "public_key": PEM, "algorithm": "ed25519", "signature": base64}

The signature covers the canonical JSON of everything but ``signature``. Verification
recomputes every event hash and the summary from the events, checks that the events are
links of one unbroken chain (``chain``: sequence numbers and hashes of every ledger event
from the run's first to its last, none of the run's left out), and checks the signature
against a **pinned** public key only: without one, verification fails. The embedded
``public_key`` is for display.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from releasetrain.core.bundle import BundleError, load_public_key, public_key_pem
from releasetrain.core.ledger import LedgerEvent, canonical, compute_hash, now_iso

FORMAT = "releasetrain.evidence/v1"
# The outcome of a run Airflow ended "success" although no completion was recorded (no
# closure by release_complete, no review of a manual rollback): marked successful by hand.
UNPROVEN_SUCCESS = "success_not_recorded"


class EvidenceError(ValueError):
    """An evidence bundle that cannot be produced or does not verify."""


def _train(train: dict[str, Any], event: LedgerEvent) -> dict[str, Any]:
    """The run's place in the release train: its lane, the normal run a hotfix held, the
    hotfix that held or superseded this run (and where)."""
    d = event.details
    if event.kind == "run_admitted":
        train.update({"lane": d.get("lane"), "admitted_at": event.at, **({"why": d["why"]} if d.get("why") else {})})
    elif event.kind == "run_held" and d.get("held") != event.run_id:
        train.setdefault("holds", []).append(d.get("held"))
    elif event.kind == "run_held":
        train.setdefault("held_by", []).append({"run": d.get("by"), "why": d.get("why"), "at": event.at})
    else:
        train["superseded_by"] = {"run": d.get("by"), "why": d.get("why"), "environment": d.get("environment")}
    return train


def summarise(events: Iterable[LedgerEvent]) -> dict[str, Any]:
    """What an auditor asks first, derived only from the events."""
    summary: dict[str, Any] = {
        "approvals": [],
        "refusals": [],
        "checks": [],
        "exceptions": [],
        "change_record": None,
        "closure": None,
        "deployments": [],
        "rollbacks": [],
        "sbom": None,
        "units": None,  # packaging modular: each deploy unit's components and bundle digest
        "hotfix": None,
        "train": None,  # the run's lane; whom it held, who held or superseded it
        "waivers": [],
        "outcome": None,
    }
    completed = False
    asked: list[str] = []  # environments whose postmortem review was asked
    for event in events:
        d = event.details
        if event.kind == "approval_given":
            summary["approvals"].append(
                {
                    "environment": event.environment,
                    "approver": event.actor,
                    "digest": d.get("digest"),
                    "group": d.get("group"),
                    "at": event.at,
                }
            )
        elif event.kind in ("approval_refused", "approval_rejected", "approval_timed_out"):
            summary["refusals"].append(
                {"environment": event.environment, "actor": event.actor, "kind": event.kind, "reason": d.get("reason")}
            )
        elif event.kind in ("checks_passed", "checks_failed", "verified", "tests_passed", "tests_failed"):
            summary["checks"].append({"environment": event.environment, "kind": event.kind, **d})
        elif event.kind == "exception":
            summary["exceptions"].append({"environment": event.environment, "actor": event.actor, **d})
        elif event.kind in ("change_opened", "change_transition", "change_closed"):
            record = summary["change_record"] or {"transitions": []}
            record.update({k: d[k] for k in ("backend", "number", "id", "change_type") if k in d})
            record["state"] = d.get("state", record.get("state"))
            record["transitions"].append({"state": d.get("state"), "at": event.at, "note": d.get("note")})
            summary["change_record"] = record
        elif event.kind == "closure":
            summary["closure"] = {"actor": event.actor, **d}
            summary["outcome"] = d.get("outcome", summary["outcome"])
            completed = completed or d.get("outcome") == "success"
        elif event.kind == "hotfix_decided":
            summary["hotfix"] = dict(d)
        elif event.kind in ("run_admitted", "run_held", "run_superseded"):
            summary["train"] = _train(summary["train"] or {}, event)
        elif event.kind == "packaged":
            summary["sbom"] = d.get("sbom") or summary["sbom"]
            if d.get("units"):
                summary["units"] = [
                    {"unit": u["unit"], "components": u["components"], "digest": u["digest"]} for u in d["units"]
                ]
        elif event.kind == "baseline_checked":  # a profile approval given in an earlier run, reused
            summary["waivers"].append(
                {
                    "kind": event.kind,
                    "environment": event.environment,
                    "actor": d.get("approved_by"),
                    "at": event.at,
                    "reason": f"approved in run {d.get('approved_in')}",
                    "changes": [],
                }
            )
        elif event.kind in ("scope_exception", "conflicts_waived", "baseline_approved", "drift_accepted"):
            summary["waivers"].append(
                {
                    "kind": event.kind,
                    "environment": event.environment,
                    "actor": event.actor,
                    "at": event.at,
                    "reason": d.get("reason"),
                    "changes": d.get("changes") or d.get("conflicts") or d.get("drift") or [],
                }
            )
        elif event.kind == "deployed":
            summary["deployments"].append({"environment": event.environment, **d})
        elif event.kind == "rollback":
            summary["rollbacks"].append({"environment": event.environment, **d})
            summary["outcome"] = summary["outcome"] or "rolled_back"
        elif event.kind in ("postmortem_reviewed", "postmortem_overdue"):  # only when there are any: older
            summary.setdefault("postmortems", []).append(  # documents keep verifying
                {"environment": event.environment, "kind": event.kind, "actor": event.actor, "at": event.at, **d}
            )
        elif event.kind == "postmortem_requested":
            asked.append(event.environment)
        elif event.kind == "review" and d.get("of") == "manual rollback":
            completed = True
        elif event.kind == "run_state":
            state = d.get("state", summary["outcome"])
            if state == "success" and not completed:
                # Airflow says success, but the run's last task recorded no completion: the
                # run (or its last tasks) was marked successful by hand
                state = UNPROVEN_SUCCESS
            summary["outcome"] = state
    answered = {p["environment"] for p in summary.get("postmortems", [])}
    for environment in dict.fromkeys(e for e in asked if e not in answered):  # e.g. the step set done by hand
        summary.setdefault("postmortems", []).append({"environment": environment, "kind": "postmortem_unanswered"})
    return summary


def _statement(document: dict[str, Any]) -> bytes:
    return canonical({k: v for k, v in document.items() if k != "signature"}).encode("utf-8")


def build_evidence(
    release: str,
    run_id: str,
    events: list[LedgerEvent],
    chain_head: tuple[int, str],
    private_key: Ed25519PrivateKey,
    chain: Iterable[LedgerEvent] | None = None,
) -> dict[str, Any]:
    """The signed evidence of one run.

    ``chain`` is every ledger event (of any run) from the run's first event to its last: the
    document keeps each one's sequence number and hashes (not its content), so a verifier
    sees that the run's events are links of one unbroken chain and that none of the run's
    events between them was left out.
    """
    if not events:
        raise EvidenceError(f"the ledger holds no events for release {release!r} run {run_id!r}")
    first, last = events[0].seq, events[-1].seq
    runs = {(e.release, e.run_id, e.dag_id) for e in events}
    links = [e for e in (chain if chain is not None else events) if first <= e.seq <= last]
    ours = {e.seq for e in links if (e.release, e.run_id, e.dag_id) in runs}  # from the chain's own content
    document: dict[str, Any] = {
        "format": FORMAT,
        "release": release,
        "run_id": run_id,
        "generated_at": now_iso(),
        "chain_head": {"seq": chain_head[0], "hash": chain_head[1]},
        "events": [event.to_dict() for event in events],
        "chain": [{"seq": e.seq, "hash": e.hash, "prev_hash": e.prev_hash, "of_run": e.seq in ours} for e in links],
        "summary": summarise(events),
        "algorithm": "ed25519",
        "public_key": public_key_pem(private_key),  # for display: verification uses a pinned key
    }
    document["signature"] = base64.b64encode(private_key.sign(_statement(document))).decode()
    return document


NO_TRUSTED_KEY = (
    "no trusted public key: evidence is verified only against a pinned key (--public-key PEM_FILE, or "
    "the evidence signing connection's public_key), never against the key inside the file"
)


def _chain_problems(document: dict[str, Any], events: list[LedgerEvent]) -> list[str]:
    """The run's events are links of one unbroken chain, and none of them was left out."""
    chain = document.get("chain")
    if not isinstance(chain, list) or not chain:
        return ["no chain links: the document cannot show its events are part of one unbroken ledger chain"]
    problems = []
    try:
        seqs = [int(link["seq"]) for link in chain]
    except (KeyError, TypeError, ValueError):
        return ["chain links are malformed"]
    if seqs != list(range(seqs[0], seqs[0] + len(seqs))):
        problems.append("chain links have gaps or repeats in their sequence numbers")
    for before, after in zip(chain, chain[1:], strict=False):
        if after.get("prev_hash") != before.get("hash"):
            problems.append(
                f"chain broken at ledger event {after.get('seq')}: prev_hash is not event {before.get('seq')}'s hash"
            )
    by_seq = {int(link["seq"]): link for link in chain}
    for event in events:
        link = by_seq.get(event.seq)
        if link is None or (link.get("hash"), link.get("prev_hash")) != (event.hash, event.prev_hash):
            problems.append(f"ledger event {event.seq} is not the chain's link {event.seq}")
    present = {e.seq for e in events}
    missing = [link["seq"] for link in chain if link.get("of_run") and int(link["seq"]) not in present]
    if missing:
        problems.append(f"events of this run left out: ledger events {missing}")
    head = document.get("chain_head") or {}
    if seqs and int(head.get("seq") or 0) < seqs[-1]:
        problems.append("the chain head is older than the run's last event")
    return problems


def verify_evidence(document: dict[str, Any], trusted_key_pem: str | None = None) -> list[str]:
    """Problems found (empty: the bundle is intact, unbroken and signed by the trusted key)."""
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return [f"not a {FORMAT} document"]
    problems: list[str] = [] if trusted_key_pem else [NO_TRUSTED_KEY]
    events: list[LedgerEvent] = []
    for index, raw in enumerate(document.get("events") or []):
        try:
            event = LedgerEvent.from_dict(raw)
        except TypeError as exc:
            problems.append(f"events[{index}]: malformed: {exc}")
            continue
        if compute_hash(event) != event.hash:
            problems.append(
                f"events[{index}] (ledger event {event.seq}, {event.kind}): content does not match its hash"
            )
        if (event.release, event.run_id) != (document.get("release"), document.get("run_id")):
            problems.append(f"events[{index}] (ledger event {event.seq}): belongs to another release run")
        events.append(event)
    if [e.seq for e in events] != sorted({e.seq for e in events}):
        problems.append("events are not in ledger order or repeat an event")
    problems += _chain_problems(document, events)
    if canonical(summarise(events)) != canonical(document.get("summary")):
        problems.append("summary does not match the events")
    if trusted_key_pem:
        try:
            key: Ed25519PublicKey = load_public_key(trusted_key_pem)
            key.verify(base64.b64decode(document.get("signature", "")), _statement(document))
        except BundleError as exc:
            problems.append(str(exc))
        except (InvalidSignature, ValueError):
            problems.append("signature does not match the document (altered, or not signed with the trusted key)")
    return problems
