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
