"""Issue 13 (environments): test data goes into a non-production environment only masked.

``refresh_test_data_refresh-env`` copies ``customers`` and ``orders`` from a source database
into the environment's database (both real PostgreSQL databases of the session). With a real
e-mail address and a valid card number in the source, the masking check refuses, records
counts only (never a value) and nothing is copied; the check set to success by hand and the
copy cleared proves nothing. Once the source is masked, the refresh copies and records it.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.e2e

DAG = "refresh_test_data_refresh-env"


def sql(dsn: str, statement: str) -> list:
    import psycopg2

    conn = psycopg2.connect(dsn)
    try:
        with conn, conn.cursor() as cur:
            cur.execute(statement)
            return cur.fetchall() if cur.description else []
    finally:
        conn.close()


def test_test_data_is_copied_only_after_the_masking_check_passed(stack, admin, ledger):
    if not stack.refresh_dsns:
        pytest.skip("the test data refresh needs PostgreSQL")
    source, target = stack.refresh_dsns
    sql(
        source,
        "INSERT INTO customers VALUES (1, 'Customer 1', 'user1@example.com', 'XXXX-XXXX-XXXX-0001'),"
        " (2, 'Jane Roe', 'jane.roe@gmail.com', '4111 1111 1111 1111'), (3, 'Customer 3', NULL, NULL);"
        " INSERT INTO orders VALUES (10, 1, 12.50), (11, 2, 99.00);",
    )
    sql(target, "INSERT INTO customers VALUES (7, 'old', 'old@example.com', NULL)")

    def events(run_id: str, kind: str) -> list:
        return [e for e in ledger.events(DAG, run_id, DAG) if e.kind == kind]

    refused = admin.trigger(DAG, {})["dag_run_id"]
    assert admin.wait_for_run(DAG, refused, timeout=300)["state"] == "failed"
    states = admin.task_states(DAG, refused)
    assert states["mask_check"] == "failed" and states["copy"] == "upstream_failed", states
    [checked] = events(refused, "masking_checked")
    assert checked.details["passed"] is False
    assert checked.details["problems"] == [
        "customers.name: 1 of 3 values are not masked (must match 'Customer \\\\d+')",
        "customers.email: 1 of 3 values are not masked (addresses must be in a reserved domain such as "
        "example.com or .invalid)",
        "customers.card: 1 of 3 values are not masked (no valid card number may remain)",
    ]
    recorded = json.dumps(checked.details)
    assert "gmail" not in recorded and "4111" not in recorded and "Roe" not in recorded

    # the check marked successful by hand, the copy run again: it asks the ledger and refuses
    admin.set_task_state(DAG, refused, "mask_check", "success")
    admin.clear_tasks(DAG, refused, ["copy"])
    assert admin.wait_for_run(DAG, refused, timeout=300)["state"] == "failed"
    [reason] = [
        " ".join(e.details["reasons"]) for e in events(refused, "gate_refused") if e.details["task_id"] == "copy"
    ]
    assert "mask_check found unmasked data: customers.name: 1 of 3 values are not masked" in reason
    assert sql(target, "SELECT id FROM customers") == [(7,)], "nothing was copied"

    sql(source, "UPDATE customers SET name = 'Customer 2', email = 'user2@shop.invalid', card = NULL WHERE id = 2")
    copied = admin.trigger(DAG, {})["dag_run_id"]
    assert admin.wait_for_run(DAG, copied, timeout=300)["state"] == "success", admin.task_states(DAG, copied)
    [refreshed] = events(copied, "test_data_refreshed")
    assert refreshed.details["rows"] == {"customers": 3, "orders": 2}
    assert refreshed.details["masking"]["customers.email"] == {"checked": 3, "unmasked": 0}
    assert sql(target, "SELECT id, email FROM customers ORDER BY id") == [
        (1, "user1@example.com"),
        (2, "user2@shop.invalid"),
        (3, None),
    ]
    assert sql(target, "SELECT count(*) FROM orders") == [(2,)]
