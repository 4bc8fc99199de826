"""A component's API contract (an OpenAPI document) decides its version class.

The contract of the version about to ship is compared with the contract of the version live
in production: a removed endpoint, parameter or field, a changed type, or a newly required
input breaks clients (major); an added endpoint, optional parameter or field is a feature
(minor); nothing changed: a patch. A declared version whose class is lower than that is
refused with the breaking changes listed. Parsing and validation use the maintained
``openapi-spec-validator``; the diff rules are ours (``tests/core/test_contract.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from releasetrain.core.versioning import Version, VersionClass, classify_change

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
RANK = {"none": 0, "patch": 1, "minor": 2, "major": 3}
Level = Literal["major", "minor"]


class ContractError(ValueError):
    """A contract that cannot be read or is not a valid OpenAPI document."""


@dataclass(frozen=True)
class Change:
    level: Level
    what: str


def load_contract(data: bytes, where: str) -> dict[str, Any]:
    """An OpenAPI document (YAML or JSON), validated; ``where`` names it in errors."""
    from openapi_spec_validator import validate
    from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

    try:
        document = yaml.load(data, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # noqa: S506 - safe
    except yaml.YAMLError as exc:
        raise ContractError(f"{where}: not YAML or JSON: {exc}") from None
    if not isinstance(document, dict):
        raise ContractError(f"{where}: an OpenAPI document must be a mapping")
    outside = _outside_refs(document)
    if outside:  # the validator would fetch them (files, URLs): a contract is data, read from its bundle only
        raise ContractError(f"{where}: $ref may only point inside the document (#/...), not to {outside[0]}")
    try:
        validate(document)
    except OpenAPIValidationError as exc:
        path = "/".join(str(p) for p in getattr(exc, "path", []) or [])
        raise ContractError(
            f"{where}: not a valid OpenAPI document{f' at {path}' if path else ''}: {exc.message}"
        ) from None
    except Exception as exc:  # the validator's own errors for unsupported versions and the like
        raise ContractError(f"{where}: not a valid OpenAPI document: {exc}") from None
    return document


def _outside_refs(node: Any) -> list[str]:
    """Every ``$ref`` that does not point inside the document."""
    if isinstance(node, Mapping):
        found = [node["$ref"]] if isinstance(node.get("$ref"), str) and not node["$ref"].startswith("#") else []
        return found + [ref for value in node.values() for ref in _outside_refs(value)]
    if isinstance(node, list):
        return [ref for value in node for ref in _outside_refs(value)]
    return []


def _resolve(document: Mapping[str, Any], node: Any, seen: frozenset[str] = frozenset()) -> tuple[Any, frozenset[str]]:
    """Follow local ``$ref`` pointers (``#/components/schemas/X``); ``seen`` stops cycles."""
    while isinstance(node, Mapping) and isinstance(node.get("$ref"), str):
        ref = node["$ref"]
        if ref in seen or not ref.startswith("#/"):
            return {}, seen
        seen = seen | {ref}
        target: Any = document
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            target = target.get(part) if isinstance(target, Mapping) else None
        node = target if target is not None else {}
    return node, seen


def operations(document: Mapping[str, Any]) -> dict[tuple[str, str], Mapping[str, Any]]:
    """``(path, method) -> operation`` of every endpoint."""
    found = {}
    for path, item in (document.get("paths") or {}).items():
        item, _ = _resolve(document, item)
        for method in METHODS:
            if isinstance(item, Mapping) and isinstance(item.get(method), Mapping):
                found[(path, method)] = {"_shared": item.get("parameters") or [], **item[method]}
    return found


def _parameters(document: Mapping[str, Any], op: Mapping[str, Any]) -> dict[tuple[str, str], Mapping[str, Any]]:
    params = {}
    for raw in [*op.get("_shared", []), *(op.get("parameters") or [])]:
        param, _ = _resolve(document, raw)
        if isinstance(param, Mapping) and "name" in param:
            params[(param["name"], param.get("in", "query"))] = param
    return params


def _json_schema(document: Mapping[str, Any], holder: Any) -> Any:
    """The schema of a request body or response: its JSON content, else its first content."""
    holder, _ = _resolve(document, holder)
    content = holder.get("content") if isinstance(holder, Mapping) else None
    if not isinstance(content, Mapping) or not content:
        return None
    media = content.get("application/json") or next(iter(content.values()))
    return media.get("schema") if isinstance(media, Mapping) else None


def _type(schema: Mapping[str, Any]) -> str | None:
    kind = schema.get("type")
    if kind is None and "properties" in schema:
        return "object"
    return "|".join(kind) if isinstance(kind, list) else kind


def _schema_changes(
    document_old: Mapping[str, Any],
    document_new: Mapping[str, Any],
    old: Any,
    new: Any,
    where: str,
    *,
    request: bool,
    seen: frozenset[str] = frozenset(),
) -> list[Change]:
    old, seen_old = _resolve(document_old, old, seen)
    new, seen_new = _resolve(document_new, new, seen)
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return []  # no schema on one side (or a $ref cycle already followed): nothing to compare
    seen = seen_old | seen_new
    changes: list[Change] = []
    if _type(old) and _type(new) and _type(old) != _type(new):
        return [Change("major", f"changed type of {where}: {_type(old)} -> {_type(new)}")]
    if _type(new) == "object" or "properties" in new or "properties" in old:
        old_props, new_props = old.get("properties") or {}, new.get("properties") or {}
        old_required, new_required = set(old.get("required") or []), set(new.get("required") or [])
        for name in sorted(set(old_props) - set(new_props)):
            changes.append(Change("major", f"removed field {where}.{name}"))
        for name in sorted(set(new_props) - set(old_props)):
            if request and name in new_required:
                changes.append(Change("major", f"added required field {where}.{name}"))
            else:
                changes.append(Change("minor", f"added field {where}.{name}"))
        for name in sorted(set(old_props) & set(new_props)):
            if request and name in new_required and name not in old_required:
                changes.append(Change("major", f"field {where}.{name} became required"))
            changes += _schema_changes(
                document_old,
                document_new,
                old_props[name],
                new_props[name],
                f"{where}.{name}",
                request=request,
                seen=seen,
            )
    if _type(new) == "array" and "items" in old and "items" in new:
        changes += _schema_changes(
            document_old, document_new, old["items"], new["items"], f"{where}[]", request=request, seen=seen
        )
    return changes


def diff_contracts(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    """What changed from contract ``old`` to ``new``, each change with its level."""
    changes: list[Change] = []
    old_ops, new_ops = operations(old), operations(new)
    for path, method in sorted(set(old_ops) - set(new_ops)):
        changes.append(Change("major", f"removed endpoint {method.upper()} {path}"))
    for path, method in sorted(set(new_ops) - set(old_ops)):
        changes.append(Change("minor", f"added endpoint {method.upper()} {path}"))
    for path, method in sorted(set(old_ops) & set(new_ops)):
        endpoint = f"{method.upper()} {path}"
        before, after = old_ops[(path, method)], new_ops[(path, method)]
        changes += _parameter_changes(old, new, before, after, endpoint)
        changes += _schema_changes(
            old,
            new,
            _json_schema(old, before.get("requestBody")),
            _json_schema(new, after.get("requestBody")),
            f"{endpoint} request",
            request=True,
        )
        old_responses, new_responses = before.get("responses") or {}, after.get("responses") or {}
        for status in sorted(set(map(str, old_responses)) - set(map(str, new_responses))):
            changes.append(Change("major", f"removed response {status} of {endpoint}"))
        for status in sorted(set(map(str, new_responses)) - set(map(str, old_responses))):
            changes.append(Change("minor", f"added response {status} of {endpoint}"))
        for status in sorted(set(map(str, old_responses)) & set(map(str, new_responses))):
            changes += _schema_changes(
                old,
                new,
                _json_schema(old, _by_str(old_responses, status)),
                _json_schema(new, _by_str(new_responses, status)),
                f"{endpoint} response {status}",
                request=False,
            )
    return changes


def _by_str(mapping: Mapping[Any, Any], key: str) -> Any:
    return next(value for k, value in mapping.items() if str(k) == key)


def _parameter_changes(
    old: Mapping[str, Any], new: Mapping[str, Any], before: Mapping[str, Any], after: Mapping[str, Any], endpoint: str
) -> list[Change]:
    changes: list[Change] = []
    old_params, new_params = _parameters(old, before), _parameters(new, after)
    for name, where in sorted(set(old_params) - set(new_params)):
        changes.append(Change("major", f"removed {where} parameter {name} of {endpoint}"))
    for name, where in sorted(set(new_params) - set(old_params)):
        if new_params[(name, where)].get("required"):
            changes.append(Change("major", f"added required {where} parameter {name} of {endpoint}"))
        else:
            changes.append(Change("minor", f"added {where} parameter {name} of {endpoint}"))
    for key in sorted(set(old_params) & set(new_params)):
        name, where = key
        if new_params[key].get("required") and not old_params[key].get("required"):
            changes.append(Change("major", f"{where} parameter {name} of {endpoint} became required"))
        changes += _schema_changes(
            old,
            new,
            old_params[key].get("schema"),
            new_params[key].get("schema"),
            f"{where} parameter {name} of {endpoint}",
            request=True,
        )
    return changes


def contract_class(changes: list[Change]) -> str:
    """The version class the changes need: ``major``, ``minor`` or ``patch``."""
    levels = {change.level for change in changes}
    return "major" if "major" in levels else "minor" if "minor" in levels else "patch"


def declared_class(live: str, declared: str) -> str:
    """The class of the step from version ``live`` to ``declared``: major, minor, patch or
    none (the same version, or only its pre-release part changed)."""
    step = classify_change(live, declared)
    return "none" if step in (VersionClass.SAME, VersionClass.PRERELEASE) else step.value


def class_problem(component: str, live: str, declared: str, changes: list[Change]) -> str | None:
    """Why ``declared`` is too small a step from ``live`` for the contract's changes (None: it is not)."""
    if not changes:
        return None  # the same contract: any step (or the same version again) will do
    if Version.parse(declared) < Version.parse(live):
        listed = "; ".join(c.what for c in changes)
        return (
            f"component {component} {declared} is older than {live}, live in production, but changes its "
            f"API contract: {listed}"
        )
    needed, given = contract_class(changes), declared_class(live, declared)
    if RANK[given] >= RANK[needed]:
        return None
    listed = [c.what for c in changes if c.level == needed]
    return (
        f"component {component} {live} -> {declared} is a {given} version step, but its API contract changes "
        f"need a {needed} version: {'; '.join(listed)}"
    )
