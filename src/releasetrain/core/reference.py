"""The release spec reference (``docs/spec-reference.md``), generated from the spec's JSON
Schema: one table per object (the spec itself first, then every object it refers to, in
the order they are first referred to), each field with its type, default and description.

``make schema`` writes it beside the schema; a test keeps both in step with the model.
"""

from __future__ import annotations

import json
from typing import Any

HEADER = """# Release spec reference

Generated from `include/schema/release-spec.schema.json` by `make schema`: do not edit.
Every field of a release spec (`include/releases/<name>.yaml`); a field without a default
is required. Point your editor's YAML plugin at the schema for completion and checks.
"""


def _ref_name(ref: str) -> str:
    return ref.rsplit("/", 1)[-1]


def _anchor(name: str) -> str:
    return name.lower()


def type_of(prop: dict[str, Any]) -> str:
    """A field's type as a reader says it: ``list of Environment``, ``string or null``..."""
    if "$ref" in prop:
        name = _ref_name(prop["$ref"])
        return f"[{name}](#{_anchor(name)})"
    if "enum" in prop:
        return "one of " + ", ".join(f"`{json.dumps(v)}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{json.dumps(prop['const'])}`"
    for key in ("anyOf", "oneOf"):
        if key in prop:
            return " or ".join(dict.fromkeys(type_of(p) for p in prop[key]))
    kind = prop.get("type")
    if kind == "array":
        return f"list of {type_of(prop.get('items') or {})}"
    if kind == "object":
        extra = prop.get("additionalProperties")
        return f"map of {type_of(extra)}" if isinstance(extra, dict) else "object"
    if isinstance(kind, list):
        return " or ".join(kind)
    return kind or "any"


def _refs(node: Any) -> list[str]:
    found: list[str] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref" and isinstance(value, str):
                found.append(_ref_name(value))
            else:
                found += _refs(value)
    elif isinstance(node, list):
        for value in node:
            found += _refs(value)
    return found


def _cell(text: Any) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _constraints(prop: dict[str, Any]) -> str:
    parts = []
    for key, word in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if key in prop:
            parts.append(f"{word} {prop[key]}")
    if "pattern" in prop:
        parts.append(f"matches `{prop['pattern']}`")
    if "minItems" in prop:
        parts.append(f"at least {prop['minItems']}")
    return f" ({', '.join(parts)})" if parts else ""


def _table(name: str, node: dict[str, Any]) -> list[str]:
    lines = [f"## {name}", ""]
    if node.get("description"):
        lines += [" ".join(node["description"].split()), ""]
    required = set(node.get("required") or [])
    lines += ["| field | type | default | description |", "|---|---|---|---|"]
    for field, prop in (node.get("properties") or {}).items():
        default = "required" if field in required else f"`{json.dumps(prop['default'])}`" if "default" in prop else ""
        description = _cell(prop.get("description", "")) + _constraints(prop)
        lines.append(f"| `{field}` | {_cell(type_of(prop))} | {_cell(default)} | {description} |")
    return [*lines, ""]


def spec_reference(schema: dict[str, Any]) -> str:
    """The reference as Markdown."""
    defs = schema.get("$defs") or {}
    order: list[str] = []
    queue = _refs(schema.get("properties") or {})
    while queue:
        name = queue.pop(0)
        if name in order or name not in defs:
            continue
        order.append(name)
        queue += _refs(defs[name])
    order += sorted(n for n in defs if n not in order)
    lines = [HEADER, "Objects: " + ", ".join(f"[{n}](#{_anchor(n)})" for n in order), ""]
    lines += _table(schema.get("title", "ReleaseSpec"), schema)
    for name in order:
        lines += _table(name, defs[name])
    return "\n".join(lines).rstrip() + "\n"
