"""Evaluation of HTTP checks against their explicit success criteria (pure functions).

The adapters do the I/O and hand the observed response here; this module decides.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from string import Template
from typing import Any

from releasetrain.core.spec import HttpCheck

_MISSING = object()


@dataclass
class Observation:
    """What an HTTP request returned (or that it failed to return anything)."""

    status: int | None
    body: str = ""
    latency_ms: float = 0.0
    error: str | None = None


@dataclass
class CheckResult:
    name: str
    passed: bool
    url: str
    status: int | None
    latency_ms: float
    failures: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def substitute(text: str, values: Mapping[str, str]) -> str:
    """Replace ``${name}`` placeholders; unknown placeholders stay as they are."""
    return Template(text).safe_substitute(values)


def path_problem(path: str, routes: Sequence[str] = ()) -> str | None:
    """Why a request path may not be sent (None: it may).

    Application checks stay inside the application: the path is relative, has no ``.`` or
    ``..`` segment (also percent-encoded), and, when ``routes`` are given (checks sent to
    the deploy target's base URL), starts with one of them (``app``, ``preview``, ...), or
    with ``components/<unit>/`` and one of them (a deploy unit's application), so no check
    can reach the target's own API (``deployments``, ``promote``, ``rollback``).
    """
    from urllib.parse import unquote

    if "://" in path or path.startswith(("/", "\\")) or "\\" in path:
        return f"the path {path!r} is not relative to the application's base URL"
    route = path.split("?", 1)[0].split("#", 1)[0]
    for segment in route.split("/"):
        decoded = unquote(segment)
        if decoded in (".", "..") or any(part in (".", "..") for part in decoded.replace("\\", "/").split("/")):
            return f"the path {path!r} leaves the application's route (a '.' or '..' segment)"
    segments = route.split("/")
    if segments[0] == "components" and len(segments) > 2 and re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", segments[1]):
        segments = segments[2:]  # a deploy unit's application (packaging modular): a component's name, as is
    if routes and segments[0] not in routes:
        return f"the path {path!r} is outside the application's routes ({', '.join(routes)})"
    return None


def encode_values(values: Mapping[str, Any]) -> dict[str, str]:
    """Values made safe to put in a URL path: each one a single, percent-encoded segment."""
    from urllib.parse import quote

    return {k: quote(v if isinstance(v, str) else json.dumps(v), safe="") for k, v in values.items()}


def render_check(check: HttpCheck, values: Mapping[str, str]) -> HttpCheck:
    """The check with ``${version}``-style placeholders filled in (encoded in the endpoint)."""
    return check.model_copy(
        update={
            "endpoint": substitute(check.endpoint, encode_values(values)),
            "expect_json": {
                k: substitute(v, values) if isinstance(v, str) else v for k, v in check.expect_json.items()
            },
            "body_contains": substitute(check.body_contains, values) if check.body_contains else None,
        }
    )


def json_path(document: Any, dotted: str) -> Any:
    """``a.b.0.c`` into nested dicts and lists; :data:`_MISSING` when absent."""
    current = document
    for part in dotted.split("."):
        if isinstance(current, Mapping) and part in current:
            current = current[part]
        elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
            current = current[int(part)]
        else:
            return _MISSING
    return current


def evaluate(check: HttpCheck, url: str, observation: Observation) -> CheckResult:
    """Judge one observation against a (rendered) check."""
    failures: list[str] = []
    if observation.error is not None:
        failures.append(f"request failed: {observation.error}")
    else:
        if observation.status not in check.expect_status:
            failures.append(f"status {observation.status}, expected {' or '.join(map(str, check.expect_status))}")
        if check.expect_json:
            try:
                document = json.loads(observation.body) if observation.body else None
            except ValueError:
                failures.append("response body is not JSON")
            else:
                for path, expected in check.expect_json.items():
                    actual = json_path(document, path)
                    if actual is _MISSING:
                        failures.append(f"JSON field {path!r} is missing")
                    elif actual != expected:
                        failures.append(f"JSON field {path!r} is {actual!r}, expected {expected!r}")
        if check.body_contains is not None and check.body_contains not in observation.body:
            failures.append(f"body does not contain {check.body_contains!r}")
        if check.max_latency_ms is not None and observation.latency_ms > check.max_latency_ms:
            failures.append(f"latency {observation.latency_ms:.0f} ms above {check.max_latency_ms} ms")
    return CheckResult(
        name=check.name,
        passed=not failures,
        url=url,
        status=observation.status,
        latency_ms=round(observation.latency_ms, 1),
        failures=failures,
    )


@dataclass
class HealthVerdict:
    healthy: bool
    rounds: int
    failed_rounds: int
    max_failures: int
    reason: str
    last_failures: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judge_health(rounds: list[list[CheckResult]], max_failures: int, *, finished: bool) -> HealthVerdict | None:
    """Decide the health of an environment from the check rounds so far.

    A round fails when any of its checks fails. More than ``max_failures`` failed rounds
    is unhealthy at once (no need to wait out the period); when the period is over
    (``finished``) with at most ``max_failures`` failed rounds, it is healthy.
    Returns ``None`` while undecided.
    """
    failed = [r for r in rounds if any(not c.passed for c in r)]
    last = [c.to_dict() for c in (failed[-1] if failed else []) if not c.passed]
    if len(failed) > max_failures:
        names = sorted({c["name"] for c in last})
        return HealthVerdict(
            False,
            len(rounds),
            len(failed),
            max_failures,
            f"{len(failed)} of {len(rounds)} health rounds failed (allowed: {max_failures}); "
            f"failing: {', '.join(names)}",
            last,
        )
    if finished:
        return HealthVerdict(
            True,
            len(rounds),
            len(failed),
            max_failures,
            f"{len(rounds) - len(failed)} of {len(rounds)} health rounds passed",
            last,
        )
    return None
