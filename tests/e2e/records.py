"""Reading the ledger's records in end-to-end tests."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


def the_refusal(records: Iterable[Any]) -> str:
    """The one reason the gatekeeper gave (``gate_refused``), as recorded in the ledger.

    A HITL step answered very fast may run twice (Airflow 3.3's fast-answer race: the
    operators retry it), and each try that saw the answer records its refusal; every try
    must have refused for the same reason.
    """
    reasons = {" ".join(r.details["reasons"]) for r in records if r.kind == "gate_refused"}
    assert len(reasons) == 1, f"expected one reason for the refusal, the ledger holds {sorted(reasons)}"
    return reasons.pop()


def the_decision(records: Iterable[Any], kind: str) -> Any:
    """The one HITL decision of ``kind`` a step recorded (e.g. ``drift_accepted``).

    Airflow 3.3's fast-answer race can run the step twice, and each try that saw the answer
    records it: every such record must be the same decision (same person, same details but
    the time), and that one decision is returned.
    """
    found = [r for r in records if r.kind == kind]
    assert found, f"no {kind} record in the ledger"
    same = {
        (r.actor, repr(sorted((k, repr(v)) for k, v in r.details.items() if k not in ("at", "try_number"))))
        for r in found
    }
    assert len(same) == 1, f"{kind}: the tries recorded different decisions: {sorted(same)}"
    return found[-1]
