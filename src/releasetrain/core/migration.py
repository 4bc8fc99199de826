"""Schema migrations that move with the application: expand and contract steps, the
compatibility range each application version declares, the journal, and reconciliation.

Pure: no Airflow, no database. The migrate and reconcile steps read the journal (a table in
the target database) and the ledger, and ask this module what to do.

A component's migrations are plain SQL files in one folder of the component (packaged, signed
and verified like every other file), with the schema range that version of the component
declares::

    schema.yaml                         compatible: {min: 2}
    0001_create_orders.sql              -- phase: expand
    0002_add_order_note.sql             -- phase: expand
    0002_add_order_note.reconcile.sql   (optional: makes the data consistent again when step 2
                                         half-failed, or when a rollback returns to a version
                                         that cannot use the schema it left)
    0003_drop_legacy_note.sql           -- phase: contract

The schema version of a database is the highest step its journal says was applied. An
application version declares the schema versions it works with (``compatible: {min, max}`` in
the folder's ``schema.yaml``: the range travels with the code, each version its own, recorded
when the version is packaged).

- A step to schema ``N`` runs only while every version live in any environment (the ledger)
  declares it works with ``N``; an **expand** step also runs beside a live version that
  declares no range (additive changes keep old code working), a **contract** step never does:
  it waits for a later release, once no live version needs the old shape.
- The schema after the steps must be in the new version's own range (checked before any
  step runs), and the deploy checks the live schema against it again.
- Each step runs in its own transaction with its journal row; a retried or cleared migrate
  step applies nothing twice. A step whose text changed after it was applied is refused.
- A failed step stays an unresolved failure in the journal until someone answers "data
  reconciled" after the reconcile steps ran; no later migration runs on that database before.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

EXPAND = "expand"
CONTRACT = "contract"
PHASES = (EXPAND, CONTRACT)

# journal statuses (one row per event, never updated)
APPLIED = "applied"
FAILED = "failed"
RECONCILE_APPLIED = "reconcile_applied"
RECONCILE_FAILED = "reconcile_failed"
RECONCILED = "reconciled"  # a person said the data is consistent again: the failure is resolved
STATUSES = (APPLIED, FAILED, RECONCILE_APPLIED, RECONCILE_FAILED, RECONCILED)

STEP_FILE = re.compile(r"^(\d{4})_([a-z0-9][a-z0-9_]*)\.sql$")
RECONCILE_FILE = re.compile(r"^(\d{4})_([a-z0-9][a-z0-9_]*)\.reconcile\.sql$")
PHASE_LINE = re.compile(r"^--\s*phase:\s*(\S*)\s*$")


class MigrationError(ValueError):
    """A migration folder, journal or plan that cannot be used, named with where."""


@dataclass(frozen=True)
class MigrationStep:
    version: int
    name: str
    phase: str
    sql: str
    sha256: str
    reconcile: str | None = None
    reconcile_sha256: str | None = None

    @property
    def label(self) -> str:
        return f"{self.version:04d}_{self.name}"

    def record(self) -> dict[str, Any]:
        """What the ledger keeps of a step (never its SQL)."""
        return {
            "version": self.version,
            "name": self.name,
            "phase": self.phase,
            "sha256": self.sha256,
            "reconcile": self.reconcile_sha256 is not None,
        }


@dataclass(frozen=True)
class JournalRow:
    """One row of a database's migration journal (in the order they were written)."""

    component: str
    version: int
    name: str
    phase: str
    status: str
    sha256: str
    run_id: str = ""
    release_version: str = ""
    at: str = ""
    detail: str = ""
    row_id: int = 0  # the row's id in the journal table

    def record(self) -> dict[str, Any]:
        return {
            "row_id": self.row_id,
            "version": self.version,
            "name": self.name,
            "phase": self.phase,
            "status": self.status,
            "run_id": self.run_id,
            "release_version": self.release_version,
            "at": self.at,
            **({"detail": self.detail} if self.detail else {}),
        }


_DOLLAR_QUOTED = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*|)\$.*?\$\1\$", re.DOTALL)
_COMMENTS = re.compile(r"--[^\n]*|/\*.*?\*/", re.DOTALL)
_QUOTED = re.compile(r"'(?:[^']|'')*'")
_OWN_TRANSACTION = re.compile(
    r"(?:^|;)\s*(BEGIN|COMMIT|ROLLBACK|END|ABORT|START\s+TRANSACTION|SAVEPOINT|RELEASE|PREPARE\s+TRANSACTION)\b"
    r"|\bCONCURRENTLY\b|\bVACUUM\b",
    re.IGNORECASE,
)


def transaction_problem(sql: str, where: str) -> str | None:
    """A step that ends, opens or escapes its transaction (``COMMIT``, ``BEGIN``, ``CREATE INDEX
    CONCURRENTLY``, ``VACUUM``) could be half-applied with no journal row, or applied twice: each
    step runs in one transaction with its journal row, so these are refused."""
    text = _COMMENTS.sub(" ", _QUOTED.sub("''", _DOLLAR_QUOTED.sub("$$", sql)))
    found = _OWN_TRANSACTION.search(text)
    if found is None:
        return None
    what = " ".join((found.group(1) or found.group(0)).split()).upper()
    return (
        f"{where}: {what} controls or escapes the step's transaction; each step runs in one transaction with its "
        "journal row (split it into steps; run CONCURRENTLY or VACUUM work outside releasetrain)"
    )


def _sha(data: str) -> str:
    return "sha256:" + hashlib.sha256(data.encode()).hexdigest()


def _phase(text: str, where: str) -> str:
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        if not stripped.startswith("--"):
            break  # the header is the comment block at the top
        found = PHASE_LINE.match(stripped)
        if found:
            if found.group(1) not in PHASES:
                raise MigrationError(f"{where}: phase {found.group(1)!r} is not one of {', '.join(PHASES)}")
            return found.group(1)
    raise MigrationError(f"{where}: no '-- phase: expand' or '-- phase: contract' line in the comment at the top")


SCHEMA_FILE = "schema.yaml"


def read_compatible(data: bytes, where: str) -> dict[str, Any]:
    """The schema range a version declares in its folder's ``schema.yaml``
    (``compatible: {min: 2, max: 3}``; ``max`` omitted: no step it knows of removes what it uses)."""
    import yaml

    path = f"{where}/{SCHEMA_FILE}"
    try:
        doc = yaml.safe_load(data.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise MigrationError(f"{path}: not readable YAML ({exc})") from None
    compatible = doc.get("compatible") if isinstance(doc, dict) else None
    if not isinstance(doc, dict) or set(doc) != {"compatible"} or not isinstance(compatible, dict):
        raise MigrationError(f"{path}: must hold exactly 'compatible: {{min: N, max: M}}'")
    unknown = sorted(set(compatible) - {"min", "max"})
    if unknown:
        raise MigrationError(f"{path}: compatible has unknown fields {unknown} (min, max)")
    low, high = compatible.get("min", 0), compatible.get("max")
    for field_name, value in (("min", low), ("max", high)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
            raise MigrationError(f"{path}: compatible.{field_name} must be a whole number >= 0, not {value!r}")
    if high is not None and high < low:
        raise MigrationError(f"{path}: compatible.max {high} is below compatible.min {low}")
    return {"min": low, "max": high}


def read_folder(files: Mapping[str, bytes], where: str) -> tuple[list[MigrationStep], dict[str, Any]]:
    """A migration folder: its steps and the schema range the version declares (``schema.yaml``)."""
    if SCHEMA_FILE not in files:
        raise MigrationError(
            f"{where}/{SCHEMA_FILE} is missing: the version must declare the schema versions it works with "
            "(compatible: {min: N, max: M})"
        )
    compatible = read_compatible(files[SCHEMA_FILE], where)
    return read_steps({k: v for k, v in files.items() if k != SCHEMA_FILE}, where), compatible


def read_steps(files: Mapping[str, bytes], where: str) -> list[MigrationStep]:
    """The steps of one migration folder (``files``: names in the folder -> bytes), in order.

    Every file must be a step (``NNNN_name.sql``) or a step's reconcile
    (``NNNN_name.reconcile.sql``): anything else is refused, never skipped."""
    steps: dict[int, tuple[str, str]] = {}
    reconciles: dict[str, str] = {}
    for name in sorted(files):
        path = f"{where}/{name}"
        if "/" in name:
            raise MigrationError(f"{path}: a migration folder holds no sub-folders")
        try:
            text = files[name].decode("utf-8")
        except UnicodeDecodeError:
            raise MigrationError(f"{path}: not UTF-8 text") from None
        if RECONCILE_FILE.match(name):
            reconciles[name[: -len(".reconcile.sql")]] = text
            continue
        found = STEP_FILE.match(name)
        if not found:
            raise MigrationError(
                f"{path}: not a migration step (NNNN_name.sql) or a step's reconcile (NNNN_name.reconcile.sql)"
            )
        version = int(found.group(1))
        if version == 0:
            raise MigrationError(f"{path}: step numbers start at 0001 (schema 0 is a database without steps)")
        if version in steps:
            raise MigrationError(f"{path}: step {version:04d} is also {where}/{steps[version][0]}")
        steps[version] = (name, text)
    result = []
    for version, (name, text) in sorted(steps.items()):
        stem = name[: -len(".sql")]
        reconcile = reconciles.pop(stem, None)
        if not text.strip():
            raise MigrationError(f"{where}/{name}: the step is empty")
        for sql, path in ((text, f"{where}/{name}"), (reconcile, f"{where}/{stem}.reconcile.sql")):
            problem = transaction_problem(sql, path) if sql is not None else None
            if problem:
                raise MigrationError(problem)
        result.append(
            MigrationStep(
                version=version,
                name=stem.split("_", 1)[1],
                phase=_phase(text, f"{where}/{name}"),
                sql=text,
                sha256=_sha(text),
                reconcile=reconcile,
                reconcile_sha256=_sha(reconcile) if reconcile is not None else None,
            )
        )
    if reconciles:
        orphan = sorted(reconciles)[0]
        raise MigrationError(f"{where}/{orphan}.reconcile.sql: no step {orphan}.sql to reconcile")
    return result


def folder_files(files: Mapping[str, bytes], folder: str) -> dict[str, bytes]:
    """The files of ``folder`` among a component's files (paths relative to the component)."""
    prefix = folder.strip("/") + "/"
    return {path[len(prefix) :]: data for path, data in files.items() if path.startswith(prefix)}


# --- the journal --------------------------------------------------------------------------
def schema_version(rows: Iterable[JournalRow]) -> int:
    """The highest step applied (0: none)."""
    return max((r.version for r in rows if r.status == APPLIED), default=0)


def unresolved_failure(rows: Iterable[JournalRow]) -> JournalRow | None:
    """The last failed step not followed by a ``reconciled`` row."""
    failure = None
    for row in rows:
        if row.status == FAILED:
            failure = row
        elif row.status == RECONCILED:
            failure = None
    return failure


def _range_text(compatible: Mapping[str, Any]) -> str:
    low, high = compatible.get("min", 0), compatible.get("max")
    return f"{low}..{high}" if high is not None else f"{low} or later"


def in_range(schema: int, compatible: Mapping[str, Any]) -> bool:
    high = compatible.get("max")
    return schema >= int(compatible.get("min", 0)) and (high is None or schema <= int(high))


def compatibility_problem(
    component: str, schema: int, compatible: Mapping[str, Any], who: str, where: str
) -> str | None:
    """``who`` (a release and version) cannot run on schema ``schema`` in ``where``: named."""
    if in_range(schema, compatible):
        return None
    return (
        f"{where}: the live schema of {component} is {schema}, outside the range {_range_text(compatible)} "
        f"that {who} works with"
    )


@dataclass(frozen=True)
class LiveVersion:
    """What runs in one environment (the ledger) and the schema range it declared when it
    was packaged (None: it declared none)."""

    environment: str
    version: str
    compatible: Mapping[str, Any] | None


@dataclass(frozen=True)
class MigrationPlan:
    to_apply: list[MigrationStep]
    schema_before: int
    schema_after: int
    refusals: list[str]


def plan_migration(
    component: str,
    steps: list[MigrationStep],
    rows: list[JournalRow],
    *,
    release: str,
    version: str,
    compatible: Mapping[str, Any],
    live: Iterable[LiveVersion],
    run_id: str,
) -> MigrationPlan:
    """Which steps to apply on one database, or why none may run (every reason named)."""
    refusals: list[str] = []
    failure = unresolved_failure(rows)
    if failure is not None and failure.run_id != run_id:  # this run's own retry resumes
        refusals.append(
            f"step {failure.version:04d}_{failure.name} of {component} failed in run {failure.run_id} "
            f"and its data was never reported reconciled: answer that run's reconcile request first"
        )
    applied = {r.version: r for r in rows if r.status == APPLIED}
    by_version = {s.version: s for s in steps}
    for number, row in sorted(applied.items()):
        step = by_version.get(number)
        if step is not None and step.sha256 != row.sha256:
            refusals.append(
                f"step {step.label} of {component} was applied with {row.sha256}, the bundle's text is "
                f"{step.sha256}: an applied step is never edited (add a new step)"
            )
    before = schema_version(rows)
    pending = [s for s in steps if s.version not in applied]
    late = [s for s in pending if s.version < before]
    if late:
        refusals.append(
            f"step {late[0].label} of {component} is older than the live schema {before}: steps apply in order "
            f"(renumber it after {before:04d})"
        )
    after = max([before, *(s.version for s in pending)])
    if not in_range(after, compatible):
        refusals.append(
            f"{release} {version} works with schema {_range_text(compatible)} of {component}; "
            f"its steps would take it to {after}"
        )
    live = list(live)
    for step in pending:
        for other in live:
            if other.compatible is None:
                if step.phase == CONTRACT:
                    refusals.append(
                        f"contract step {step.label} of {component}: {other.environment} runs {release} "
                        f"{other.version}, which declares no schema range and may need the old shape; "
                        f"contract once every environment runs a version that works with schema {step.version}"
                    )
            elif not in_range(step.version, other.compatible):
                refusals.append(
                    f"{step.phase} step {step.label} of {component}: {other.environment} runs {release} "
                    f"{other.version}, which works with schema {_range_text(other.compatible)}, not "
                    f"{step.version}" + (": it still needs the old shape" if step.phase == CONTRACT else "")
                )
    return MigrationPlan(pending if not refusals else [], before, after, refusals)


def unfinished(rows: list[JournalRow], run_id: str) -> bool:
    """This run applied or attempted steps on the database (its migrate step then never
    recorded its end, e.g. a lost connection or the step marked by hand)."""
    return any(r.run_id == run_id and r.status in (APPLIED, FAILED) for r in rows)


def reconcile_steps(steps: list[MigrationStep], rows: list[JournalRow], run_id: str) -> list[MigrationStep]:
    """The reconcile steps a run's rollback runs, newest first: the step that failed and the
    steps this run applied, each with a declared reconcile, not yet reconciled in this run."""
    touched = {r.version for r in rows if r.run_id == run_id and r.status in (APPLIED, FAILED)}
    done = {r.version for r in rows if r.run_id == run_id and r.status == RECONCILE_APPLIED}
    return [
        s
        for s in sorted(steps, key=lambda s: -s.version)
        if s.version in touched and s.reconcile and s.version not in done
    ]


def journal_text(rows: Iterable[JournalRow], limit: int = 20) -> list[str]:
    """The journal's last rows, one readable line each (for the person asked to confirm)."""
    lines = [
        f"{r.at or '-'}  {r.version:04d}_{r.name}  {r.phase}  {r.status}  run {r.run_id or '-'}"
        + (f"  ({r.detail})" if r.detail else "")
        for r in rows
    ]
    return lines[-limit:]
