"""Small helpers shared by the HTTP-speaking hooks: read an answer, quote it briefly in errors."""

from __future__ import annotations

import json
from typing import Any


def json_or_text(text: str) -> Any:
    """The answer as JSON when it is JSON, else the text itself ({} for an empty body)."""
    try:
        return json.loads(text) if text else {}
    except ValueError:
        return text


def short(payload: Any, limit: int = 300) -> str:
    """An answer quoted in an error message, cut at ``limit`` characters."""
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return text if len(text) <= limit else text[:limit] + "..."
