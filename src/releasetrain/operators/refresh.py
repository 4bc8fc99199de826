"""Test data refresh: the masking check, then the copy into a non-production environment."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator, Connection
from airflow.sdk.exceptions import AirflowFailException

from releasetrain.core import gatekeeper
from releasetrain.core.gatekeeper import Decision
from releasetrain.core.masking import IDENTIFIER, MaskRule, check_values, rules_of, undeclared
from releasetrain.core.vocabulary import Event
from releasetrain.operators._common import enforce, record, run_ledger


def _hook(conn_id: str) -> Any:
    """The connection's DB-API hook (the provider of its type, e.g. PostgreSQL's)."""
    try:
        return Connection.get(conn_id).get_hook()
    except Exception as exc:
        raise AirflowFailException(f"connection {conn_id!r}: no database hook ({exc})") from None


def _read(hook: Any, table: str, limit: int = 0) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A table's columns and rows (names are identifiers the refresh file was checked for)."""
    conn = hook.get_conn()
    try:
        cursor = conn.cursor()
        cursor.execute(f"SELECT * FROM {table}" + (f" LIMIT {int(limit)}" if limit else ""))
        columns = [d[0] for d in cursor.description]
        odd = [c for c in columns if not IDENTIFIER.fullmatch(c) or "." in c]
        if odd:
            raise AirflowFailException(f"table {table}: columns {odd} are not plain identifiers; not copied")
        return columns, [tuple(row) for row in cursor.fetchall()]
    finally:
        conn.close()


def _problems(
    rules: list[MaskRule], tables: dict[str, tuple[list[str], list[tuple[Any, ...]]]]
) -> tuple[dict[str, dict[str, int]], list[str]]:
    """Every rule against the rows read, and every column read that no rule declares."""
    counts, problems = check_values(rules, _values(rules, tables))
    unruled = undeclared(rules, {t: columns for t, (columns, _) in tables.items()})
    problems += [
        f"{c}: no masking rule declares it (add one, or kind: keep when it holds nothing personal)" for c in unruled
    ]
    return counts, problems


def _values(rules: list[MaskRule], tables: dict[str, tuple[list[str], list[tuple[Any, ...]]]]) -> dict[str, list]:
    values: dict[str, list] = {}
    for rule in rules:
        columns, rows = tables[rule.table]
        if rule.column not in columns:
            raise AirflowFailException(f"masking rule {rule.where}: the table has no column {rule.column!r}")
        index = columns.index(rule.column)
        values[rule.where] = [row[index] for row in rows]
    return values


class _RefreshOperator(BaseOperator):
    ui_color = "#e6f4ea"

    def __init__(self, *, refresh: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.refresh = dict(refresh)

    @property
    def key(self) -> str:
        """The refresh's name in the ledger (its DAG id)."""
        from releasetrain.core.vocabulary import REFRESH_DAG_PREFIX

        return f"{REFRESH_DAG_PREFIX}{self.refresh['environment']}"


class MaskingCheckOperator(_RefreshOperator):
    """Read the source's tables (every row, or ``sample_rows`` of each) and check each masking
    rule; recorded (``masking_checked``, counts only, never a value). A failing rule refuses
    the refresh, naming the column and how many values are not masked."""

    def execute(self, context: Any) -> dict[str, Any]:
        rules = rules_of(self.refresh)
        hook = _hook(self.refresh["source_conn_id"])
        tables = {t: _read(hook, t, self.refresh.get("sample_rows") or 0) for t in self.refresh["tables"]}
        counts, problems = _problems(rules, tables)
        details = {"source": self.refresh["source_conn_id"], "counts": counts, "problems": problems}
        record(
            context,
            Event.MASKING_CHECKED,
            self.key,
            environment=self.refresh["environment"],
            details={**details, "passed": not problems},
        )
        if problems:
            enforce(context, Decision.refuse(self.task_id, *problems), self.key, self.refresh["environment"])
        self.log.info("masking holds in %s: %s", self.refresh["source_conn_id"], counts)
        return details


class TestDataCopyOperator(_RefreshOperator):
    """Copy the tables into the target (in one transaction: emptied, then filled, in the
    declared order), only when this run's masking check recorded that every rule held, and
    after checking every rule again on exactly the rows it copies. Recorded
    (``test_data_refreshed``, rows per table)."""

    __test__ = False  # not a pytest test class

    def __init__(self, *, check_task_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.check_task_id = check_task_id

    def execute(self, context: Any) -> dict[str, Any]:
        env = self.refresh["environment"]
        enforce(context, gatekeeper.masking(run_ledger(context, self.key), self.check_task_id), self.key, env)
        source = _hook(self.refresh["source_conn_id"])
        tables = {t: _read(source, t) for t in self.refresh["tables"]}
        rules = rules_of(self.refresh)
        counts, problems = _problems(rules, tables)
        if problems:  # the data changed since the check: nothing is copied
            enforce(context, Decision.refuse(self.task_id, *problems), self.key, env)
        target = _hook(self.refresh["target_conn_id"])
        conn = target.get_conn()
        try:
            if hasattr(conn, "autocommit"):
                conn.autocommit = False  # one transaction: emptied and filled together, or not at all
            cursor = conn.cursor()
            for table in reversed(self.refresh["tables"]):  # children before parents
                cursor.execute(f"DELETE FROM {table}")
            for table in self.refresh["tables"]:
                columns, rows = tables[table]
                if rows:
                    marks = ", ".join([getattr(target, "placeholder", "%s")] * len(columns))
                    cursor.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})", rows)
            conn.commit()
        except Exception as exc:
            conn.rollback()
            # never the database's message: its DETAIL may quote a row (personal data)
            code = getattr(exc, "pgcode", None) or getattr(exc, "sqlstate", None) or "no SQLSTATE"
            raise AirflowFailException(
                f"copying into {self.refresh['target_conn_id']} failed ({type(exc).__name__}, {code}); nothing changed"
            ) from None
        finally:
            conn.close()
        details = {
            "source": self.refresh["source_conn_id"],
            "target": self.refresh["target_conn_id"],
            "rows": {t: len(tables[t][1]) for t in self.refresh["tables"]},
            "masking": counts,
        }
        record(context, Event.TEST_DATA_REFRESHED, self.key, environment=env, details=details)
        self.log.info("refreshed %s: %s", env, details["rows"])
        return details
