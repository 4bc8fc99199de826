"""Test data masking rules and refresh declarations (no Airflow, no database)."""

from __future__ import annotations

import pytest

from releasetrain.core.masking import MaskRule, RefreshError, check_values, load_refreshes, unmasked


@pytest.mark.parametrize(
    ("kind", "value", "bad"),
    [
        ("email", "jane.doe@gmail.com", True),
        ("email", "user42@example.com", False),
        ("email", "user42@shop.invalid", False),
        ("email", "not an address", False),
        ("email", None, False),
        ("card", "4111 1111 1111 1111", True),  # Luhn-valid
        ("card", "4111-1111-1111-1112", False),
        ("card", "0000000000000000", False),
        ("card", "XXXX-XXXX-XXXX-1111", False),
        ("null", None, False),
        ("null", "1990-01-01", True),
        ("hash", "a" * 64, False),
        ("hash", "Jane Doe", True),
        # evasions found by the attacker review
        ("email", "noreply@example.com john@gmail.com", True),
        ("email", "x@example.com\njane@corp.de", True),
        ("card", "4111-1111-1111-1111 exp 12/27", True),
        ("card", "4111111111111111|123", True),
        ("card", "order 7: 4111111111111111", True),
        ("card", 4111111111111111.0, True),
        ("card", "\uff14\uff11\uff11\uff11111111111111", True),  # full-width digits
        ("card", "4111 1111 1111 1111 1234", True),  # followed by more digits
        ("card", "ref 1234 5678 9012 3456 7", False),  # no Luhn-valid card in its groups
        ("keep", "anything at all", False),
    ],
)
def test_a_value_is_unmasked_when_it_looks_like_real_data(kind, value, bad):
    assert unmasked(MaskRule("t", "c", kind), value) is bad


def test_a_pattern_rule_needs_the_whole_value_to_match():
    rule = MaskRule("orders", "address", "pattern", r"MASKED-\d+")
    assert not unmasked(rule, "MASKED-17") and unmasked(rule, "Main Street 1, MASKED-17")


def test_problems_count_unmasked_values_and_never_show_them():
    rules = [MaskRule("customers", "email", "email"), MaskRule("customers", "card", "card")]
    counts, problems = check_values(
        rules, {"customers.email": ["a@example.com", "jane@gmail.com"], "customers.card": ["4111111111111111"]}
    )
    assert counts == {"customers.email": {"checked": 2, "unmasked": 1}, "customers.card": {"checked": 1, "unmasked": 1}}
    assert problems[0].startswith("customers.email: 1 of 2 values are not masked (addresses must be in a reserved")
    assert "gmail" not in " ".join(problems) and "4111" not in " ".join(problems)


GOOD = """
refreshes:
  - environment: staging
    source: {conn_id: masked_replica}
    target: {conn_id: staging_db}
    tables: [customers, orders]
    rules:
      - {table: customers, column: email, kind: email}
"""


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (GOOD.replace("staging_db", "masked_replica"), "refreshes\\[0\\].target: the target is the source connection"),
        (GOOD.replace("[customers, orders]", "['customers; DROP TABLE x']"), "tables: a list of table names"),
        (GOOD.replace("column: email", "column: 'email FROM x --'"), "rules\\[0\\].column: .* is not a column name"),
        (GOOD.replace("table: customers", "table: payments"), "'payments' is not one of the refresh's tables"),
        (GOOD.replace("kind: email", "kind: scramble"), "'scramble' is not one of"),
        (GOOD.replace("kind: email}", "kind: pattern, pattern: '('}"), "not a regular expression"),
        (GOOD.split("    rules:")[0], "a refresh without masking rules copies unmasked data"),
        (GOOD + GOOD.split("refreshes:")[1], "'staging' is refreshed twice"),
        (GOOD.replace("tables:", "sql: 'SELECT 1'\n    tables:"), "unknown fields \\['sql'\\]"),
    ],
)
def test_a_bad_declaration_is_refused_naming_file_and_field(tmp_path, text, error):
    path = tmp_path / "data_refresh.yaml"
    path.write_text(text)
    with pytest.raises(RefreshError, match=error):
        load_refreshes(path)


def test_a_good_declaration_gives_one_dag_per_environment(tmp_path):
    path = tmp_path / "data_refresh.yaml"
    path.write_text(GOOD)
    [refresh] = load_refreshes(path)
    assert refresh.dag_id == "refresh_test_data_staging" and refresh.plan()["tables"] == ["customers", "orders"]
    assert load_refreshes(tmp_path / "missing.yaml") == []


def test_every_copied_column_needs_a_rule_or_an_explicit_keep():
    from releasetrain.core.masking import undeclared

    rules = [MaskRule("customers", "email", "email"), MaskRule("customers", "id", "keep")]
    assert undeclared(rules, {"customers": ["id", "email", "phone"], "orders": ["id"]}) == [
        "customers.phone",
        "orders.id",
    ]
