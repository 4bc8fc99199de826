"""The release ledger's hash chain: every event commits to the one before it.

An event's hash is ``sha256(prev_hash + canonical_json(content))`` where the content is
everything but the hash itself: ``seq``, ``at``, ``release``, ``run_id``, ``environment``,
``kind``, ``actor``, ``details``, ``prev_hash`` and ``dag_id`` (when set). The first event's ``prev_hash`` is
:data:`GENESIS`. Editing an event changes its hash; deleting or reordering events breaks
``seq`` or ``prev_hash``; deleting the newest events is caught by the store's head record
(sequence and hash of the last event, written in the same transaction as each append).

Storage lives in :mod:`releasetrain.hooks.ledger`; this module only computes and checks.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

from releasetrain.core.vocabulary import EVENT_KINDS, Event  # noqa: F401  (Event re-exported)

GENESIS = "0" * 64


class LedgerError(RuntimeError):
    """The ledger refused an event or could not be read."""


@dataclass(frozen=True)
class LedgerEvent:
    seq: int
    at: str
    release: str
    run_id: str
    environment: str
    kind: str
    actor: str
    details: dict[str, Any] = field(default_factory=dict)
    prev_hash: str = GENESIS
    hash: str = ""
    dag_id: str = ""  # with run_id, the run's key (a release DAG and its rollback DAG can share run ids)

    def content(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("hash")
        if not data["dag_id"]:
            data.pop("dag_id")  # events written before runs were keyed by DAG keep their hashes
        return data

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LedgerEvent:
        return cls(**{name: data[name] for name in cls.__dataclass_fields__ if name in data})


def canonical(data: Any) -> str:
    """The one serialisation hashes and signatures are computed over."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def compute_hash(event: LedgerEvent) -> str:
    return hashlib.sha256((event.prev_hash + canonical(event.content())).encode("utf-8")).hexdigest()


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def new_event(
    *,
    seq: int,
    prev_hash: str,
    kind: str,
    release: str,
    run_id: str = "",
    environment: str = "",
    actor: str = "",
    details: dict[str, Any] | None = None,
    at: str | None = None,
    dag_id: str = "",
) -> LedgerEvent:
    """The next event of the chain, hashed. ``details`` must be JSON-safe."""
    if kind not in EVENT_KINDS:
        raise LedgerError(f"unknown ledger event kind {kind!r}; known: {', '.join(sorted(EVENT_KINDS))}")
    if not release:
        raise LedgerError(f"a {kind!r} ledger event needs the release it belongs to")
    # Round-trip the details so the stored event hashes exactly like the one we return.
    clean = json.loads(canonical(details or {}))
    event = LedgerEvent(
        seq=seq,
        at=at or now_iso(),
        release=release,
        run_id=run_id or "",
        environment=environment or "",
        kind=kind,
        actor=actor or "",
        details=clean,
        prev_hash=prev_hash,
        dag_id=dag_id or "",
    )
    return LedgerEvent(**{**event.to_dict(), "hash": compute_hash(event)})


@dataclass(frozen=True)
class VerifyResult:
    ok: bool
    count: int
    head_seq: int
    head_hash: str
    first_bad_seq: int | None = None
    reason: str = ""

    def message(self) -> str:
        if self.ok:
            return f"ledger intact: {self.count} events, head {self.head_seq} {self.head_hash[:16]}"
        return f"ledger broken at event {self.first_bad_seq}: {self.reason}"


def verify_chain(events: Iterable[LedgerEvent], head: tuple[int, str] | None = None) -> VerifyResult:
    """Check a whole chain in ``seq`` order (as stored), and its head record when given.

    Reports the first event that does not hold: a changed event (hash mismatch), a gap
    (deleted event), an out-of-order or duplicated ``seq``, or a broken link.
    """
    expected_seq = 1
    prev = GENESIS
    count = 0
    for event in events:
        if event.seq != expected_seq:
            if event.seq > expected_seq:
                reason = f"expected event {expected_seq}, found event {event.seq}: event {expected_seq} is missing"
            else:
                reason = f"event {event.seq} appears again after event {expected_seq - 1} (duplicated or reordered)"
            return VerifyResult(False, count, expected_seq - 1, prev, min(event.seq, expected_seq), reason)
        if event.prev_hash != prev:
            return VerifyResult(
                False,
                count,
                expected_seq - 1,
                prev,
                event.seq,
                f"its prev_hash {event.prev_hash[:16]} does not match event {event.seq - 1}'s hash {prev[:16]} "
                f"(an event before it was changed, removed or reordered)",
            )
        actual = compute_hash(event)
        if actual != event.hash:
            return VerifyResult(
                False,
                count,
                expected_seq - 1,
                prev,
                event.seq,
                f"its content does not match its hash ({event.kind} for {event.release}; the event was edited)",
            )
        prev = event.hash
        expected_seq += 1
        count += 1
    if head is not None:
        head_seq, head_hash = head
        if head_seq != count or (count and head_hash != prev):
            return VerifyResult(
                False,
                count,
                count,
                prev,
                count + 1 if head_seq > count else head_seq,
                f"the ledger head records event {head_seq} ({head_hash[:16]}) but the chain ends at event "
                f"{count} ({prev[:16]}): events at the end were deleted or the head was altered",
            )
    return VerifyResult(True, count, count, prev)


# --- anchoring: signed checkpoints kept outside the database ---------------------------------
CHECKPOINT_FORMAT = "releasetrain.ledger-checkpoint/v1"


def sign_checkpoint(seq: int, head_hash: str, private_key: Any, at: str | None = None) -> dict[str, Any]:
    """A signed statement "the chain's event ``seq`` has hash ``head_hash``", made with the
    ledger key (its own key: not the bundle or evidence key). Kept where the database writer
    cannot rewrite it, it anchors everything up to ``seq``."""
    import base64

    document = {"format": CHECKPOINT_FORMAT, "seq": int(seq), "hash": head_hash, "at": at or now_iso()}
    document["signature"] = base64.b64encode(private_key.sign(canonical(document).encode())).decode()
    return document


def checkpoint_problems(document: Any, public_key: Any) -> list[str]:
    """Why a checkpoint cannot be trusted (empty: signed by the pinned ledger key)."""
    import base64

    from cryptography.exceptions import InvalidSignature

    if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
        return [f"not a {CHECKPOINT_FORMAT} document"]
    statement = canonical({k: v for k, v in document.items() if k != "signature"}).encode()
    try:
        public_key.verify(base64.b64decode(document.get("signature", "")), statement)
    except (InvalidSignature, ValueError):
        return [f"checkpoint at event {document.get('seq')} is not signed with the pinned ledger key"]
    return []


def anchor_problems(result: VerifyResult, checkpoint: dict[str, Any], hash_at_seq: str | None) -> list[str]:
    """The chain against a (verified) checkpoint: it must still hold the checkpointed event,
    with the checkpointed hash. A rewritten-and-rehashed chain changes that hash; a truncated
    or deleted one no longer reaches the checkpoint."""
    seq = int(checkpoint["seq"])
    if result.head_seq < seq:
        return [
            f"the ledger ends at event {result.head_seq}, but checkpoint {checkpoint['at']} anchored event {seq}: "
            "events were deleted (truncated, or the ledger was replaced)"
        ]
    if hash_at_seq != checkpoint["hash"]:
        return [
            f"event {seq} has hash {str(hash_at_seq)[:16]}, but checkpoint {checkpoint['at']} anchored "
            f"{checkpoint['hash'][:16]}: the chain up to it was rewritten"
        ]
    return []
