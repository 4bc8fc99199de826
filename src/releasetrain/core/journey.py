"""Synthetic transactions: scripted multi-step HTTP journeys declared in YAML (pure).

A journey is a list of steps, each one request and what its answer must look like::

    name: checkout
    variables: {sku: A1}
    steps:
      - name: add to cart
        request: {method: POST, path: app/cart, json: {sku: "${sku}"}}
        expect: {status: 200, json: {ok: true}}
        extract: {cart_id: id}
      - name: view cart
        request: {path: "app/cart/${cart_id}"}
        expect: {json: {ok: true, id: "${cart_id}"}}

``${name}`` is replaced in the request path, header values, any string in the JSON body
(keys too) and in the expected ``json`` values and ``contains`` text. Names come from the
journey's ``variables`` (defaults), then the values the caller gives, then what earlier
steps extracted (later wins). A string that is exactly one placeholder keeps the value's
JSON type (``"${qty}"`` sends ``2``, not ``"2"``); ``$${`` is a literal ``${``.

:func:`run_journey` does no I/O: the adapter hands it ``send(method, path, headers, json)
-> (status, text, elapsed_ms)``. The journey stops at the first failing step; a ``send``
that raises is a failed step, never an exception. A placeholder that no variable, given
value or earlier extraction can fill raises :class:`JourneyError` before anything is sent.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from releasetrain.core.checks import _MISSING, encode_values, json_path, path_problem
from releasetrain.core.spec import NAME_PATTERN, _problems, _read_yaml, unique_names

__all__ = [
    "Expectation",
    "Journey",
    "JourneyError",
    "JourneyRequest",
    "JourneyResult",
    "JourneyStep",
    "Send",
    "StepResult",
    "load_journey",
    "parse_journey",
    "render",
    "run_journey",
]

VARIABLE_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# ``$${`` (an escaped, literal ``${``) or ``${name}``; anything else that starts with ``${`` is malformed
_PLACEHOLDER = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{")

#: ``send(method, path, headers, json) -> (status, text, elapsed_ms)``: one HTTP request, done by an adapter.
Send = Callable[[str, str, dict[str, str], Any], tuple[int, str, float]]


class JourneyError(ValueError):
    """A journey that cannot be used. ``str()`` names the file (or journey), field path and reason::

    include/journeys/checkout.yaml: steps[1].expect.status: must be an HTTP status code ...
    """

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: {path}: {reason}" if path else f"{source}: {reason}" for path, reason in problems]
        super().__init__("\n".join(lines))


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True, populate_by_name=True)


class JourneyRequest(_Model):
    method: Literal["GET", "POST", "PUT", "PATCH", "DELETE"] = "GET"
    path: str = Field(description="Relative to the target's base URL, e.g. 'app/cart/${cart_id}'.")
    headers: dict[str, str] = Field(default_factory=dict, description="Extra request headers (values templated).")
    body: Any = Field(default=None, alias="json", description="JSON body (strings templated).")

    @field_validator("path")
    @classmethod
    def _relative(cls, value: str) -> str:
        if "://" in value or value.startswith("//"):
            raise ValueError(f"{value!r} must be a path relative to the target's base URL, not a URL")
        return value

    @model_validator(mode="after")
    def _no_body_on_get(self) -> JourneyRequest:
        if self.method == "GET" and self.body is not None:
            raise ValueError("a GET request sends no JSON body: use POST, PUT or PATCH, or remove json")
        return self


class Expectation(_Model):
    """What the answer must look like. Without ``status`` any 2xx answer is accepted."""

    status: list[int] | None = Field(default=None, description="Accepted HTTP status code(s); default: any 2xx.")
    json_fields: dict[str, Any] = Field(
        default_factory=dict, alias="json", description="Dotted JSON paths and the values they must have."
    )
    contains: str | None = Field(default=None, min_length=1, description="Text the answer body must contain.")
    max_ms: float | None = Field(default=None, gt=0, description="Upper bound for the response time.")

    @field_validator("status", mode="before")
    @classmethod
    def _status_codes(cls, value: Any) -> list[int] | None:
        if value is None:
            return None
        codes = value if isinstance(value, list) else [value]
        if not codes or not all(isinstance(c, int) and not isinstance(c, bool) and 100 <= c <= 599 for c in codes):
            raise ValueError(f"must be an HTTP status code (100-599) or a non-empty list of them, got {value!r}")
        return codes

    def accepts(self, status: int) -> bool:
        return 200 <= status <= 299 if self.status is None else status in self.status

    def describe_status(self) -> str:
        return "2xx" if self.status is None else " or ".join(map(str, self.status))


class JourneyStep(_Model):
    name: str = Field(min_length=1, description="What this step does, shown in logs and results.")
    request: JourneyRequest
    expect: Expectation = Field(default_factory=Expectation)
    extract: dict[str, str] = Field(
        default_factory=dict, description="Variable name -> dotted path into the JSON answer."
    )

    @field_validator("extract")
    @classmethod
    def _extract_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            if not re.match(VARIABLE_PATTERN, name):
                raise ValueError(f"{name!r} is not a valid variable name (letters, digits, _)")
            if not path:
                raise ValueError(f"{name!r} needs a dotted JSON path, e.g. 'id' or 'items.0.sku'")
        return value


class Journey(_Model):
    """A synthetic transaction: steps run in order against one target, stopping at the first failure."""

    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    variables: dict[str, str] = Field(default_factory=dict, description="Defaults for ${name} placeholders.")
    steps: list[JourneyStep] = Field(min_length=1)

    @field_validator("variables")
    @classmethod
    def _variable_names(cls, value: dict[str, str]) -> dict[str, str]:
        bad = [name for name in value if not re.match(VARIABLE_PATTERN, name)]
        if bad:
            raise ValueError(f"{bad} are not valid variable names (letters, digits, _)")
        return value

    @field_validator("steps")
    @classmethod
    def _unique_steps(cls, value: list[JourneyStep]) -> list[JourneyStep]:
        return unique_names(value, "step name")

    def inputs(self) -> list[str]:
        """Placeholders that neither ``variables`` nor an earlier step's ``extract`` fill:
        the values a caller must give."""
        known = set(self.variables)
        needed: list[str] = []
        for step in self.steps:
            for _, text in _templated(step):
                for name in _placeholders(text):
                    if name not in known and name not in needed:
                        needed.append(name)
            known |= set(step.extract)
        return needed


# -- templating ----------------------------------------------------------------------------------


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def _placeholders(text: str) -> list[str]:
    return [m.group(1) for m in _PLACEHOLDER.finditer(text) if m.group(1)]


def _substitute(text: str, values: Mapping[str, Any]) -> Any:
    whole = _PLACEHOLDER.fullmatch(text)
    if whole and whole.group(1):
        return values[whole.group(1)]

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$${":
            return "${"
        if match.group(1) is None:
            raise ValueError(f"malformed placeholder in {text!r}: write ${{name}} (or $${{ for a literal ${{)")
        return _text(values[match.group(1)])

    return _PLACEHOLDER.sub(replace, text)


def render(value: Any, values: Mapping[str, Any], *, keep_types: bool = True) -> Any:
    """``value`` with every ``${name}`` filled from ``values``, recursively into dicts and lists.

    With ``keep_types`` a string that is exactly one placeholder becomes the value itself;
    otherwise values are written as text (JSON for non-strings). Raises ``KeyError`` for an
    unknown name.
    """
    if isinstance(value, str):
        result = _substitute(value, values)
        return result if keep_types else _text(result)
    if isinstance(value, Mapping):
        return {_text(render(k, values)): render(v, values, keep_types=keep_types) for k, v in value.items()}
    if isinstance(value, list):
        return [render(item, values, keep_types=keep_types) for item in value]
    return value


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _strings(k, where)
            yield from _strings(v, where)
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, where)


def _templated(step: JourneyStep) -> Iterator[tuple[str, str]]:
    """(field path, text) of every templated string of a step."""
    yield "request.path", step.request.path
    for header, text in step.request.headers.items():
        yield f"request.headers.{header}", text
    yield from _strings(step.request.body, "request.json")
    for path, expected in step.expect.json_fields.items():
        yield from _strings(expected, f"expect.json.{path}")
    if step.expect.contains is not None:
        yield "expect.contains", step.expect.contains


def _check_placeholders(journey: Journey, given: Mapping[str, Any]) -> None:
    """Every placeholder can be filled, and is well formed: else :class:`JourneyError`, before any request."""
    known = set(journey.variables) | set(given)
    problems: list[tuple[str, str]] = []
    for i, step in enumerate(journey.steps):
        for where, text in _templated(step):
            for match in _PLACEHOLDER.finditer(text):
                name = match.group(1)
                if match.group(0) == "${" and name is None:
                    problems.append(
                        (f"steps[{i}].{where}", f"step {step.name!r}: malformed placeholder in {text!r}: use ${{name}}")
                    )
                elif name is not None and name not in known:
                    problems.append(
                        (
                            f"steps[{i}].{where}",
                            f"step {step.name!r}: unknown variable ${{{name}}} (not in variables, the given "
                            f"values or an earlier step's extract; known: {', '.join(sorted(known)) or 'none'})",
                        )
                    )
        known |= set(step.extract)
    if problems:
        raise JourneyError(f"journey {journey.name!r}", problems)


# -- running -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class StepResult:
    name: str
    ok: bool
    status: int | None
    elapsed_ms: float
    error: str | None = None
    method: str = ""
    path: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class JourneyResult:
    """The outcome of one run: the steps that ran (the last one failed when ``ok`` is false)."""

    ok: bool
    journey: str
    steps: list[StepResult]
    failed_step: str | None = None
    extracted: dict[str, Any] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def elapsed_ms(self) -> float:
        return round(sum(step.elapsed_ms for step in self.steps), 1)

    @property
    def summary(self) -> str:
        if self.ok:
            return f"journey {self.journey!r}: {len(self.steps)} steps passed in {self.elapsed_ms:.0f} ms"
        error = self.steps[-1].error if self.steps else None
        return f"journey {self.journey!r} failed at step {self.failed_step!r}: {error}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe (for XCom and the task log)."""
        return {
            "ok": self.ok,
            "journey": self.journey,
            "steps": [step.to_dict() for step in self.steps],
            "failed_step": self.failed_step,
            "extracted": json.loads(json.dumps(self.extracted, default=str)),
            "skipped": list(self.skipped),
            "elapsed_ms": self.elapsed_ms,
            "summary": self.summary,
        }


def _same(actual: Any, expected: Any) -> bool:
    """Equality that tells ``true`` from ``1`` (JSON does)."""
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(actual, Mapping) and isinstance(expected, Mapping):
        return actual.keys() == expected.keys() and all(_same(actual[k], expected[k]) for k in actual)
    if isinstance(actual, list) and isinstance(expected, list):
        return len(actual) == len(expected) and all(_same(a, e) for a, e in zip(actual, expected, strict=True))
    return actual == expected


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _judge(
    step: JourneyStep, scope: Mapping[str, Any], status: int, text: str, elapsed_ms: float
) -> tuple[list[str], Any]:
    """The failures of one answer, and the answer's JSON document (:data:`_MISSING` if none)."""
    expect = step.expect
    failures: list[str] = []
    if not expect.accepts(status):
        quoted = f": {_short(text)}" if text.strip() else ""
        # the other expectations would only repeat that this is not the expected answer
        return [f"HTTP {status}, expected {expect.describe_status()}{quoted}"], _MISSING
    document: Any = _MISSING
    if expect.json_fields or step.extract:
        try:
            document = json.loads(text) if text else _MISSING
        except ValueError:
            pass
        if document is _MISSING:
            failures.append(f"the answer is not JSON: {_short(text) or '(empty)'}")
    if document is not _MISSING:
        for path, expected in expect.json_fields.items():
            wanted = render(expected, scope)
            actual = json_path(document, path)
            if actual is _MISSING:
                failures.append(f"JSON field {path!r} is missing")
            elif not _same(actual, wanted):
                failures.append(f"JSON field {path!r} is {actual!r}, expected {wanted!r}")
        for variable, path in step.extract.items():
            if json_path(document, path) is _MISSING:
                failures.append(f"cannot extract {variable!r}: JSON field {path!r} is missing")
    if expect.contains is not None:
        wanted = render(expect.contains, scope, keep_types=False)
        if wanted not in text:
            failures.append(f"the answer does not contain {wanted!r}")
    if expect.max_ms is not None and elapsed_ms > expect.max_ms:
        failures.append(f"took {elapsed_ms:.0f} ms, more than {expect.max_ms:g} ms")
    return failures, document


def run_journey(
    journey: Journey, send: Send, values: Mapping[str, Any] | None = None, routes: Sequence[str] = ()
) -> JourneyResult:
    """Run the steps in order through ``send``; stop at the first failing step.

    ``values`` fill placeholders (over the journey's ``variables``); in paths each value is
    one percent-encoded segment, and a path outside ``routes`` (when given) or leaving the
    application with ``.``/``..`` fails its step without a request. Raises
    :class:`JourneyError` (naming the step and field) before sending anything when a
    placeholder cannot be filled; everything else, a ``send`` that raises included, ends
    in the returned :class:`JourneyResult`.
    """
    given = dict(values or {})
    _check_placeholders(journey, given)
    scope: dict[str, Any] = {**journey.variables, **given}
    extracted: dict[str, Any] = {}
    results: list[StepResult] = []
    for index, step in enumerate(journey.steps):
        request = step.request
        # values in a path (given, or taken from an earlier answer) are one encoded segment each:
        # an answer can never steer a request to another route
        path = render(request.path, encode_values(scope), keep_types=False)
        headers = {name: render(text, scope, keep_types=False) for name, text in request.headers.items()}
        body = render(request.body, scope)
        failures: list[str]
        status: int | None = None
        elapsed_ms = 0.0
        problem = path_problem(path, routes)
        if problem:
            failures = [problem]
        else:
            started = time.monotonic()
            try:
                status, text, elapsed_ms = send(request.method, path, headers, body)
            except Exception as exc:  # the adapter's failure is this step's failure
                elapsed_ms = (time.monotonic() - started) * 1000
                failures = [f"request failed: {str(exc) or type(exc).__name__}"]
            else:
                failures, document = _judge(step, scope, status, text, elapsed_ms)
                if not failures:
                    for variable, dotted in step.extract.items():
                        extracted[variable] = scope[variable] = json_path(document, dotted)
        ok = not failures
        results.append(
            StepResult(
                name=step.name,
                ok=ok,
                status=status,
                elapsed_ms=round(elapsed_ms, 1),
                error=None if ok else "; ".join(failures),
                method=request.method,
                path=path,
            )
        )
        if not ok:
            return JourneyResult(
                ok=False,
                journey=journey.name,
                steps=results,
                failed_step=step.name,
                extracted=extracted,
                skipped=[s.name for s in journey.steps[index + 1 :]],
            )
    return JourneyResult(ok=True, journey=journey.name, steps=results, extracted=extracted)


# -- loading -------------------------------------------------------------------------------------


def parse_journey(data: Any, source: str = "<journey>") -> Journey:
    """Validate already-loaded data; raise :class:`JourneyError` naming field paths."""
    if not isinstance(data, dict):
        raise JourneyError(source, [("", "a journey must be a YAML mapping")])
    try:
        return Journey.model_validate(data)
    except ValidationError as exc:
        raise JourneyError(source, _problems(exc, hint="")) from None


def load_journey(path: Path | str, display_root: Path | str | None = None) -> Journey:
    """Read and validate one YAML journey; its ``name`` must match the file name."""
    path = Path(path)
    root = Path(display_root) if display_root is not None else None
    source = str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else str(path)
    data = _read_yaml(path, source, JourneyError)
    journey = parse_journey(data, source)
    if journey.name != path.stem:
        raise JourneyError(source, [("name", f"{journey.name!r} must match the file name {path.stem!r}")])
    return journey
