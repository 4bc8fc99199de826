"""Test data refresh: production-derived data goes into a non-production environment only
after a masking check of every declared rule passes.

The deployment declares each refresh in ``include/data_refresh.yaml`` (never a run's conf):
the environment, the source and target connections, the tables (copied in order) and the
masking rules (table, column, kind). Tables and columns are plain identifiers, checked here;
queries are built from them, never taken from YAML. Values found unmasked are counted,
never shown. Nothing here imports Airflow.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}(\.[a-z_][a-z0-9_]{0,62})?")  # used with fullmatch
CONN_ID = re.compile(r"[A-Za-z0-9_.-]+")
ENVIRONMENT = re.compile(r"[a-z][a-z0-9_-]{0,62}")
RULE_KINDS = ("email", "card", "null", "hash", "pattern", "keep")  # keep: declared not personal
# domains reserved for examples and tests (RFC 2606, RFC 6761): a masked address uses one
MASKED_DOMAINS = ("example.com", "example.net", "example.org")
MASKED_SUFFIXES = (".invalid", ".test", ".example", ".localhost")
_EMAIL = re.compile(r"[^@\s<>,;]+@([^@\s<>,;]+)")
_DIGIT_RUN = re.compile(r"[0-9]+(?:[ -][0-9]+)*")  # digits, in groups split by single spaces or dashes
_HASH = re.compile(r"^(?:[0-9a-f]{40}|[0-9a-f]{64}|[0-9a-f]{128})$")


class RefreshError(ValueError):
    """A refresh declaration that cannot be used, naming the file and the field."""


@dataclass(frozen=True)
class MaskRule:
    table: str
    column: str
    kind: str
    pattern: str | None = None

    @property
    def where(self) -> str:
        return f"{self.table}.{self.column}"


@dataclass(frozen=True)
class Refresh:
    environment: str
    source_conn_id: str
    target_conn_id: str
    tables: tuple[str, ...]
    rules: tuple[MaskRule, ...]
    sample_rows: int = 0  # 0: every row

    @property
    def dag_id(self) -> str:
        from releasetrain.core.vocabulary import REFRESH_DAG_PREFIX

        return f"{REFRESH_DAG_PREFIX}{self.environment}"

    def plan(self) -> dict[str, Any]:
        """Plain data for the operators."""
        return {
            "environment": self.environment,
            "source_conn_id": self.source_conn_id,
            "target_conn_id": self.target_conn_id,
            "tables": list(self.tables),
            "rules": [
                {"table": r.table, "column": r.column, "kind": r.kind, **({"pattern": r.pattern} if r.pattern else {})}
                for r in self.rules
            ],
            "sample_rows": self.sample_rows,
        }


def rules_of(plan: Mapping[str, Any]) -> list[MaskRule]:
    return [MaskRule(r["table"], r["column"], r["kind"], r.get("pattern")) for r in plan["rules"]]


def _luhn(digits: str) -> bool:
    total = 0
    for i, d in enumerate(reversed(digits)):
        n = int(d)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def unmasked(rule: MaskRule, value: Any) -> bool:
    """Whether ``value`` looks like real data under ``rule`` (None is always masked, except
    that a ``null`` rule accepts nothing else)."""
    if rule.kind == "null":
        return value is not None
    if value is None or rule.kind == "keep":
        return False
    text = unicodedata.normalize("NFKC", str(value))
    if rule.kind == "email":  # every address in the value must be in a reserved domain
        for match in _EMAIL.finditer(text):
            domain = match.group(1).lower().rstrip(".")
            if not (domain in MASKED_DOMAINS or domain.endswith(MASKED_SUFFIXES)):
                return True
        return False
    if rule.kind == "card":  # 13-19 digits passing the Luhn check, as consecutive digit groups
        for match in _DIGIT_RUN.finditer(text):
            groups = re.split(r"[ -]", match.group(0))
            for i in range(len(groups)):
                for j in range(i + 1, len(groups) + 1):
                    part = "".join(groups[i:j])
                    if 13 <= len(part) <= 19 and _luhn(part) and len(set(part)) > 1:
                        return True
        return False
    if rule.kind == "hash":
        return not _HASH.match(text)
    return not re.fullmatch(rule.pattern or "", text)


def check_values(
    rules: Iterable[MaskRule], values: Mapping[str, list[Any]]
) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Each rule against the values read for its column (``values``: ``table.column`` -> list).

    Returns per rule ``{checked, unmasked}`` and one problem line per failing rule; the
    values themselves are never part of either."""
    counts, problems = {}, []
    for rule in rules:
        column = values.get(rule.where, [])
        bad = sum(1 for v in column if unmasked(rule, v))
        counts[rule.where] = {"checked": len(column), "unmasked": bad}
        if bad:
            problems.append(f"{rule.where}: {bad} of {len(column)} values are not masked ({_expected(rule)})")
    return counts, problems


def _expected(rule: MaskRule) -> str:
    return {
        "email": "addresses must be in a reserved domain such as example.com or .invalid",
        "card": "no valid card number may remain",
        "null": "must be empty",
        "hash": "must be a hex digest",
    }.get(rule.kind, f"must match {rule.pattern!r}")


def undeclared(rules: Iterable[MaskRule], columns: Mapping[str, list[str]]) -> list[str]:
    """Columns of the copied tables (``table`` -> its columns) that no rule declares: copied,
    they would go unchecked. Each must have a rule (``keep`` when it holds nothing personal)."""
    declared = {(r.table, r.column) for r in rules}
    return [f"{table}.{c}" for table, names in columns.items() for c in names if (table, c) not in declared]


def load_refreshes(path: Path) -> list[Refresh]:
    """The deployment's refresh declarations (a missing file: none)."""
    if not path.is_file():
        return []
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise RefreshError(f"{path}: not valid YAML: {exc}") from None
    entries = data.get("refreshes") or [] if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise RefreshError(f"{path}: refreshes: a list of refreshes is expected")
    refreshes, seen = [], set()
    for i, entry in enumerate(entries):
        where = f"{path}: refreshes[{i}]"
        refresh = _refresh(entry, where)
        if refresh.environment in seen:
            raise RefreshError(f"{where}.environment: {refresh.environment!r} is refreshed twice")
        seen.add(refresh.environment)
        refreshes.append(refresh)
    return refreshes


def _refresh(entry: Any, where: str) -> Refresh:
    if not isinstance(entry, dict):
        raise RefreshError(f"{where}: a mapping is expected")
    unknown = sorted(set(entry) - {"environment", "source", "target", "tables", "rules", "sample_rows"})
    if unknown:
        raise RefreshError(f"{where}: unknown fields {unknown}")

    def text(key: str, pattern: re.Pattern[str], value: Any = None) -> str:
        value = entry.get(key) if value is None else value
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise RefreshError(f"{where}.{key}: {value!r} is not valid")
        return value

    environment = text("environment", ENVIRONMENT)
    source = text(
        "source",
        CONN_ID,
        (entry.get("source") or {}).get("conn_id") if isinstance(entry.get("source"), dict) else entry.get("source"),
    )
    target = text(
        "target",
        CONN_ID,
        (entry.get("target") or {}).get("conn_id") if isinstance(entry.get("target"), dict) else entry.get("target"),
    )
    if source == target:
        raise RefreshError(f"{where}.target: the target is the source connection")
    tables = entry.get("tables")
    if (
        not isinstance(tables, list)
        or not tables
        or not all(isinstance(t, str) and IDENTIFIER.fullmatch(t) for t in tables)
    ):
        raise RefreshError(f"{where}.tables: a list of table names (lower-case identifiers) is expected")
    rules = []
    for j, raw in enumerate(entry.get("rules") or []):
        at = f"{where}.rules[{j}]"
        if not isinstance(raw, dict) or sorted(set(raw) - {"table", "column", "kind", "pattern"}):
            raise RefreshError(f"{at}: {{table, column, kind, pattern?}} is expected")
        table, column, kind = raw.get("table"), raw.get("column"), raw.get("kind")
        if table not in tables:
            raise RefreshError(f"{at}.table: {table!r} is not one of the refresh's tables")
        if not isinstance(column, str) or not IDENTIFIER.fullmatch(column) or "." in column:
            raise RefreshError(f"{at}.column: {column!r} is not a column name")
        if kind not in RULE_KINDS:
            raise RefreshError(f"{at}.kind: {kind!r} is not one of {list(RULE_KINDS)}")
        pattern = raw.get("pattern")
        if (kind == "pattern") != isinstance(pattern, str):
            raise RefreshError(f"{at}.pattern: a pattern rule needs pattern (and only it)")
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise RefreshError(f"{at}.pattern: not a regular expression ({exc})") from None
        rules.append(MaskRule(table, column, kind, pattern))
    if not rules:
        raise RefreshError(f"{where}.rules: a refresh without masking rules copies unmasked data; declare them")
    sample = entry.get("sample_rows", 0)
    if not isinstance(sample, int) or isinstance(sample, bool) or sample < 0:
        raise RefreshError(f"{where}.sample_rows: a number of rows (0: every row) is expected")
    return Refresh(environment, source, target, tuple(tables), tuple(rules), sample)
