"""Deploy markers: every deploy, traffic step and rollback as an annotation on the
organisation's dashboards (Grafana's annotations API), so that a graph's turn can be read
against what changed. Pure: what an annotation says; the hook sends it."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from releasetrain.core.vocabulary import Event

# ledger event kind -> what the marker calls it
MARKED = {Event.DEPLOYED.value: "deploy", Event.TRAFFIC_SHIFTED.value: "traffic", Event.ROLLBACK.value: "rollback"}


def annotation(
    kind: str, release: str, environment: str, run_id: str, details: Mapping[str, Any], at: datetime
) -> dict[str, Any] | None:
    """The annotation for a ledger event (None: the kind is not marked). Its tags let a
    dashboard filter by release, environment and what happened (``releasetrain``,
    ``release:<name>``, ``environment:<env>``, ``deploy|traffic|rollback``)."""
    what = MARKED.get(str(kind))
    if what is None:
        return None
    version = details.get("version") or details.get("restored_version") or ""
    if what == "deploy":
        text = f"{release} {version} deployed to {environment}"
    elif what == "traffic":
        text = f"{release} {version}: {details.get('weight', '?')}% of {environment}'s traffic on the new version"
    else:
        text = f"{release} rolled back in {environment} to {version}"
    if details.get("unit"):
        text += f" (unit {details['unit']})"
    tags = ["releasetrain", f"release:{release}", f"environment:{environment}", what]
    if version:
        tags.append(f"version:{version}")
    return {"time": int(at.timestamp() * 1000), "tags": tags, "text": f"{text} (run {run_id})"}
