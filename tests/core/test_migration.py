"""Schema migrations, the pure part: reading a folder of steps, what may run, reconciliation."""

from __future__ import annotations

import pytest

from releasetrain.core import migration as m

EXPAND_1 = b"-- phase: expand\nCREATE TABLE orders (id integer PRIMARY KEY, legacy_note text);\n"
EXPAND_2 = b"-- Adds the new column.\n-- phase: expand\nALTER TABLE orders ADD COLUMN note text;\n"
RECONCILE_2 = b"UPDATE orders SET legacy_note = note WHERE legacy_note IS NULL;\n"
CONTRACT_3 = b"-- phase: contract\nALTER TABLE orders DROP COLUMN legacy_note;\n"


def steps(**extra: bytes) -> list[m.MigrationStep]:
    files = {
        "0001_create_orders.sql": EXPAND_1,
        "0002_add_note.sql": EXPAND_2,
        "0002_add_note.reconcile.sql": RECONCILE_2,
        "0003_drop_legacy_note.sql": CONTRACT_3,
        **extra,
    }
    return m.read_steps(files, "api/migrations")


def row(version: int, status: str = m.APPLIED, run_id: str = "r1", sha: str | None = None) -> m.JournalRow:
    step = {s.version: s for s in steps()}[version]
    return m.JournalRow("api", version, step.name, step.phase, status, sha or step.sha256, run_id=run_id)


def test_a_folder_reads_as_ordered_steps_with_phases_and_reconciles() -> None:
    found = steps()
    assert [(s.version, s.name, s.phase) for s in found] == [
        (1, "create_orders", "expand"),
        (2, "add_note", "expand"),
        (3, "drop_legacy_note", "contract"),
    ]
    assert found[1].reconcile == RECONCILE_2.decode() and found[0].reconcile is None
    assert found[1].record()["reconcile"] is True and "sql" not in found[1].record()


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"readme.md": b"x"}, "api/migrations/readme.md: not a migration step"),
        ({"0001_a.sql": b"CREATE TABLE a (id int);"}, "no '-- phase: expand' or '-- phase: contract' line"),
        ({"0001_a.sql": b"-- phase: shrink\nSELECT 1;"}, "phase 'shrink' is not one of expand, contract"),
        ({"0001_a.sql": EXPAND_1, "0001_b.sql": EXPAND_1}, "step 0001 is also api/migrations/0001_a.sql"),
        ({"0002_b.reconcile.sql": b"SELECT 1;"}, "0002_b.reconcile.sql: no step 0002_b.sql to reconcile"),
        ({"0000_a.sql": EXPAND_1}, "step numbers start at 0001"),
        ({"0001_a.sql": b"   \n"}, "the step is empty"),
        ({"sub/0001_a.sql": EXPAND_1}, "holds no sub-folders"),
        ({"0001_a.sql": b"\xff\xfe"}, "not UTF-8 text"),
    ],
)
def test_a_bad_folder_is_refused_naming_the_file(files: dict[str, bytes], message: str) -> None:
    with pytest.raises(m.MigrationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        m.read_steps(files, "api/migrations")


def test_the_phase_line_must_be_in_the_comment_at_the_top() -> None:
    with pytest.raises(m.MigrationError, match="no '-- phase"):
        m.read_steps({"0001_a.sql": b"SELECT 1;\n-- phase: expand\n"}, "f")


def plan(rows, *, compatible=None, live=(), run_id="r2", found=None):
    return m.plan_migration(
        "api",
        found if found is not None else steps(),
        list(rows),
        release="shop",
        version="1.2.0",
        compatible=compatible or {"min": 2, "max": None},
        live=live,
        run_id=run_id,
    )


def test_only_pending_steps_run_and_a_retry_applies_nothing_twice() -> None:
    first = plan([row(1)], live=[m.LiveVersion("dev", "1.1.0", {"min": 1, "max": None})])
    assert [s.version for s in first.to_apply] == [2, 3] and first.refusals == []
    assert (first.schema_before, first.schema_after) == (1, 3)
    again = plan([row(1), row(2, run_id="r2"), row(3, run_id="r2")])
    assert again.to_apply == [] and again.refusals == [] and again.schema_before == 3


def test_a_contract_step_waits_while_a_live_version_needs_the_old_shape() -> None:
    live = [
        m.LiveVersion("dev", "1.1.0", {"min": 2, "max": None}),
        m.LiveVersion("prod", "1.0.0", {"min": 1, "max": 2}),
    ]
    refused = plan([row(1), row(2)], live=live)
    assert refused.to_apply == []
    assert refused.refusals == [
        "contract step 0003_drop_legacy_note of api: prod runs shop 1.0.0, which works with schema 1..2, not 3: "
        "it still needs the old shape"
    ]
    undeclared = plan([row(1), row(2)], live=[m.LiveVersion("prod", "0.9.0", None)])
    assert "prod runs shop 0.9.0, which declares no schema range" in undeclared.refusals[0]
    # once every environment runs a version that works with schema 3, it runs
    assert [s.version for s in plan([row(1), row(2)], live=live[:1]).to_apply] == [3]


def test_an_expand_step_runs_beside_a_version_without_a_range_but_not_one_that_excludes_it() -> None:
    assert [
        s.version for s in plan([row(1)], live=[m.LiveVersion("prod", "0.9.0", None)], found=steps()[:2]).to_apply
    ] == [2]
    refused = plan([row(1)], live=[m.LiveVersion("prod", "1.0.0", {"min": 1, "max": 1})], found=steps()[:2])
    assert refused.refusals == [
        "expand step 0002_add_note of api: prod runs shop 1.0.0, which works with schema 1..1, not 2"
    ]


def test_the_new_version_must_work_with_the_schema_its_steps_leave() -> None:
    refused = plan([row(1)], compatible={"min": 1, "max": 2})
    assert "shop 1.2.0 works with schema 1..2 of api; its steps would take it to 3" in refused.refusals


def test_an_applied_step_edited_later_and_an_out_of_order_step_are_refused() -> None:
    edited = plan([row(1, sha="sha256:other")])
    assert "step 0001_create_orders of api was applied with sha256:other" in edited.refusals[0]
    late = plan([row(1), row(3)])  # 0002 pending below schema 3
    assert "step 0002_add_note of api is older than the live schema 3" in late.refusals[0]


def test_an_earlier_runs_unreconciled_failure_blocks_every_later_migration() -> None:
    failed = [row(1), row(2, m.FAILED, run_id="r1")]
    refused = plan(failed, run_id="r2")
    assert (
        "step 0002_add_note of api failed in run r1 and its data was never reported reconciled" in refused.refusals[0]
    )
    assert plan(failed, run_id="r1").refusals == []  # that run's own retry resumes
    resolved = [*failed, row(2, m.RECONCILED, run_id="r1")]
    assert plan(resolved, run_id="r2").refusals == [] and m.unresolved_failure(resolved) is None


def test_reconcile_runs_what_the_run_touched_newest_first_and_never_twice() -> None:
    found = steps()
    rows = [row(1, run_id="r0"), row(2, run_id="r1"), row(3, m.FAILED, run_id="r1")]
    with_reconcile_3 = m.read_steps(
        {
            "0001_create_orders.sql": EXPAND_1,
            "0002_add_note.sql": EXPAND_2,
            "0002_add_note.reconcile.sql": RECONCILE_2,
            "0003_drop_legacy_note.sql": CONTRACT_3,
            "0003_drop_legacy_note.reconcile.sql": b"SELECT 1;",
        },
        "api/migrations",
    )
    assert [s.version for s in m.reconcile_steps(with_reconcile_3, rows, "r1")] == [3, 2]
    assert [s.version for s in m.reconcile_steps(found, rows, "r1")] == [2]  # 0003 declares none
    done = [*rows, row(2, m.RECONCILE_APPLIED, run_id="r1")]
    assert m.reconcile_steps(found, done, "r1") == []
    assert m.reconcile_steps(found, rows, "r0") == []  # 0001 has no reconcile


def test_compatibility_is_named_with_both_sides() -> None:
    assert m.compatibility_problem("api", 2, {"min": 2, "max": None}, "shop 1.1.0", "prod") is None
    assert m.compatibility_problem("api", 3, {"min": 1, "max": 2}, "shop 1.0.0", "prod") == (
        "prod: the live schema of api is 3, outside the range 1..2 that shop 1.0.0 works with"
    )
    assert m.schema_version([row(1), row(2, m.FAILED)]) == 1


# --- the spec and the plan ------------------------------------------------------------------
def migrating_spec(**component: object):
    from releasetrain.core.spec import parse_spec

    migrations = {
        "path": "migrations",
        "databases": {"dev": "orders_dev", "prod": "orders_prod"},
        **component,
    }
    return parse_spec(
        {
            "name": "shop",
            "owner_team": "commerce",
            "components": [{"name": "api", "source": "include/api", "migrations": migrations}],
            "environments": [
                {"name": "dev", "deploy_target": "fleet_dev"},
                {"name": "prod", "deploy_target": "fleet_prod", "approval": {"required": True, "approvers": ["bob"]}},
            ],
        },
        "test",
    )


@pytest.mark.parametrize(
    ("component", "error"),
    [
        ({"databases": {"dev": "orders_dev"}}, r"no database for \['prod'\]"),
        ({"databases": {"dev": "a", "prod": "b", "qa": "c"}}, r"\['qa'\] are not environments"),
        ({"path": "../shared"}, "must be a path inside the component"),
        ({"databases": {"dev": "a b", "prod": "b"}}, "String should match pattern"),
    ],
)
def test_a_bad_migrations_block_is_refused(component: dict, error: str) -> None:
    from releasetrain.core.spec import ReleaseSpecError

    with pytest.raises(ReleaseSpecError, match=error):
        migrating_spec(**component)


def test_migrate_runs_in_the_lock_before_the_deploy_and_reconcile_holds_the_lock() -> None:
    from releasetrain.core import vocabulary as v
    from releasetrain.core.plan import PlanContext, plan_release
    from releasetrain.core.vocabulary import Kind, Rule

    ctx = PlanContext(project_root="/srv", calendar_dirs=[], groups={"commerce": ["dana"]})
    plan = plan_release(migrating_spec(), ctx)
    for env in ("dev", "prod"):
        migrate, deploy = plan.steps[f"{env}.migrate"], plan.steps[f"{env}.deploy"]
        reconcile = plan.steps[f"{env}.reconcile"]
        assert migrate.kind == Kind.MIGRATE and reconcile.kind == Kind.RECONCILE
        assert plan.upstream(f"{env}.migrate") == [f"{env}.lock"]
        assert f"{env}.migrate" in plan.upstream(f"{env}.deploy")
        assert deploy.args["migrate_task_id"] == f"{env}.migrate"
        assert deploy.args["schemas"]["api"]["conn_id"] == f"orders_{env}"
        assert migrate.args["environments"] == ["dev", "prod"]
        assert reconcile.trigger_rule == Rule.ALL_DONE
        assert sorted(plan.upstream(f"{env}.reconcile")) == [f"{env}.migrate", f"{env}.rollback"]
        assert f"{env}.reconcile" in plan.upstream(f"{env}.unlock")
        assert f"{env}.migrate" in plan.upstream(f"{env}.rollback")  # a failed migration is the stage failing
    assert plan.steps["prod.reconcile"].args["owners"] == ["bob"]
    assert plan.steps["assess_risk"].args["schema_migration"] is True
    assert v.MIGRATE == "migrate"


def test_a_migrating_environment_needs_someone_to_confirm_a_reconciliation() -> None:
    from releasetrain.core.plan import PlanContext, plan_release
    from releasetrain.core.spec import ReleaseSpecError

    with pytest.raises(ReleaseSpecError, match="nobody could confirm a reconciliation"):
        plan_release(migrating_spec(), PlanContext(project_root="/srv", calendar_dirs=[], groups={"commerce": []}))
    # the owner team as a group answers for environments without owners or approvers
    plan = plan_release(
        migrating_spec(), PlanContext(project_root="/srv", calendar_dirs=[], groups={"commerce": ["dana"]})
    )
    assert plan.steps["dev.reconcile"].args["owners"] == ["dana"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (b"compatible: {min: 3, max: 2}", "compatible.max 2 is below compatible.min 3"),
        (b"compatible: {min: -1}", "compatible.min must be a whole number >= 0, not -1"),
        (b"compatible: {min: yes}", "compatible.min must be a whole number >= 0, not True"),
        (b"compatible: {min: 1, upto: 2}", r"unknown fields \['upto'\]"),
        (b"min: 1", "must hold exactly 'compatible: {min: N, max: M}'"),
        (b"compatible: [1", "not readable YAML"),
    ],
)
def test_the_declared_range_is_checked_naming_the_file(text: bytes, message: str) -> None:
    with pytest.raises(m.MigrationError, match=message):
        m.read_folder({"schema.yaml": text, "0001_a.sql": EXPAND_1}, "api/migrations")


def test_a_folder_declares_its_range_beside_its_steps() -> None:
    found, compatible = m.read_folder({"schema.yaml": b"compatible: {min: 1}\n", "0001_a.sql": EXPAND_1}, "f")
    assert compatible == {"min": 1, "max": None} and [s.version for s in found] == [1]
    with pytest.raises(m.MigrationError, match="f/schema.yaml is missing"):
        m.read_folder({"0001_a.sql": EXPAND_1}, "f")


def test_the_example_release_and_its_migrations_read() -> None:
    from pathlib import Path

    from releasetrain.core.plan import PlanContext, plan_release
    from releasetrain.core.spec import load_spec

    root = Path(__file__).resolve().parents[2]
    spec = load_spec(root / "include" / "examples" / "orders.yaml", display_root=root)
    [api] = spec.components
    folder = root / api.source / api.migrations.path
    found, compatible = m.read_folder({p.name: p.read_bytes() for p in folder.iterdir()}, "orders-api/migrations")
    assert [(s.version, s.phase) for s in found] == [(1, "expand"), (2, "expand"), (3, "contract"), (4, "expand")]
    assert compatible == {"min": 4, "max": None} and found[3].reconcile is not None
    plan = plan_release(spec, PlanContext(project_root=str(root), calendar_dirs=[], groups={"operations": ["ops"]}))
    assert plan.upstream("orders-prod.deploy").count("orders-prod.migrate") == 1


@pytest.mark.parametrize(
    ("sql", "what"),
    [
        ("INSERT INTO t VALUES (1);\nCOMMIT;\nSELECT 1/0;", "COMMIT"),
        ("begin;\nUPDATE t SET a = 1;", "BEGIN"),
        ("CREATE INDEX CONCURRENTLY i ON t (a);", "CONCURRENTLY"),
        ("UPDATE t SET a = 1; ROLLBACK", "ROLLBACK"),
        ("VACUUM t;", "VACUUM"),
        ("START TRANSACTION; UPDATE t SET a = 1;", "START TRANSACTION"),
    ],
)
def test_a_step_that_controls_its_own_transaction_is_refused(sql: str, what: str) -> None:
    with pytest.raises(m.MigrationError, match=f"api/migrations/0001_a.sql: {what} controls or escapes"):
        m.read_steps({"0001_a.sql": f"-- phase: expand\n{sql}".encode()}, "api/migrations")
    with pytest.raises(m.MigrationError, match="0001_a.reconcile.sql"):
        m.read_steps({"0001_a.sql": EXPAND_1, "0001_a.reconcile.sql": sql.encode()}, "api/migrations")


def test_blocks_strings_and_comments_may_say_begin_and_commit() -> None:
    sql = (
        "-- phase: expand\n"
        "-- we COMMIT to nothing here\n"
        "DO $$ BEGIN UPDATE t SET a = 1; END $$;\n"
        "DO $body$ BEGIN PERFORM 1; END; $body$;\n"
        "INSERT INTO notes VALUES ('begin; commit;');\n"
        "/* ROLLBACK; */ UPDATE t SET b = 2;\n"
    )
    [step] = m.read_steps({"0001_a.sql": sql.encode()}, "f")
    assert step.phase == "expand"


def test_a_run_that_applied_steps_is_unfinished_until_its_migrate_step_records_its_end() -> None:
    assert m.unfinished([row(1, run_id="r1")], "r1") and not m.unfinished([row(1, run_id="r0")], "r1")
    assert m.unfinished([row(2, m.FAILED, run_id="r1")], "r1")
