"""The DAG factory on Airflow's own DagBag: graph shape, params, broken specs."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import TriggerRule

from releasetrain.core.builder import ReleaseBuilder
from releasetrain.core.spec import load_spec
from releasetrain.factory import build_release_dag
from tests.conftest import PROJECT_ROOT


@pytest.fixture(scope="module")
def dagbag():
    return DagBag(str(PROJECT_ROOT / "dags"))


def test_every_example_dag_imports_cleanly(dagbag):
    assert dagbag.import_errors == {}
    assert {"release_storefront", "release_billing"} <= set(dagbag.dag_ids)


def test_storefront_graph(dagbag):
    dag = dagbag.dags["release_storefront"]
    # runs are ordered by the release train's lanes (admit), not by Airflow's one-run limit,
    # so a hotfix never queues behind a normal run waiting in a gate
    assert dag.max_active_runs == 32 and "release" in dag.tags and "team:commerce" in dag.tags
    assert "Promotion path" in dag.doc_md
    tasks = dag.task_dict
    assert tasks["prepare"].upstream_task_ids == {"admit"} and not tasks["admit"].upstream_task_ids
    assert tasks["admit"].overtaking == [], "storefront's form offers neither a hotfix nor an emergency"
    checkout = dagbag.dags["release_checkout"].task_dict  # a hotfix policy: a lane of its own
    assert checkout["admit"].overtaking[0] == "hotfix"
    assert tasks["assess_risk"].upstream_task_ids == {"prepare"}
    assert tasks["package"].upstream_task_ids == {"assess_risk"}
    assert tasks["dev.verify"].upstream_task_ids == {"package"}
    for env in ("dev", "staging", "prod"):
        # the target's lock is taken after the bundle is verified and the target's configuration
        # checked for drift (the profile's baseline), and held until the stage is over
        assert tasks[f"{env}.drift"].upstream_task_ids == {f"{env}.verify"}
        # the first environment's lock also waits for the library check of the two components
        libraries = {"libraries"} if env == "dev" else set()
        assert tasks[f"{env}.lock"].upstream_task_ids == {f"{env}.drift"} | libraries
        assert tasks[f"{env}.deploy"].libraries_task_id == "libraries"
        assert tasks[f"{env}.deploy"].drift_task_id == f"{env}.drift", "the deploy checks the drift record"
        assert tasks[f"{env}.deploy"].upstream_task_ids == {f"{env}.lock"}, "every deploy follows its lock"
        assert tasks[f"{env}.lock"].admit_task_id == "admit", "a lock asks the train whether the run may go"
        assert tasks[f"{env}.deploy"].locked and tasks[f"{env}.rollback"].locked
        assert tasks[f"{env}.rollback"].trigger_rule == TriggerRule.ONE_FAILED
        assert tasks[f"{env}.unlock"].trigger_rule == TriggerRule.ALL_DONE
        # after every step of the stage: marking passed and rollback done by hand frees nothing early
        assert tasks[f"{env}.unlock"].upstream_task_ids >= {
            f"{env}.lock",
            f"{env}.deploy",
            f"{env}.smoke",
            f"{env}.passed",
            f"{env}.rollback",
        }
        # every environment ends in `passed`, which checks the stage's records in the ledger
        assert tasks[f"{env}.passed"].proof_task_ids[:3] == [f"{env}.verify", f"{env}.deploy", f"{env}.smoke"]
    assert tasks["prod.passed"].proof_task_ids == ["prod.verify", "prod.deploy", "prod.smoke", "prod.health"]
    assert tasks["staging.verify"].upstream_task_ids == {"dev.passed"}
    # prod's parity with staging (their profiles) is checked first and shown to its approvers
    assert tasks["prod.parity"].upstream_task_ids == {"staging.passed"}
    assert tasks["prod.approve"].upstream_task_ids == {"prod.parity"}
    assert tasks["prod.approve"].parity_task_id == "prod.parity"
    # quorum slots one after the other (the second skips itself below high risk), then a
    # security readiness review in parallel, because a security group exists
    assert tasks["prod.approve_2"].upstream_task_ids == {"prod.approve"}
    assert tasks["prod.review_security"].upstream_task_ids == {"prod.parity"}
    assert tasks["prod.verify"].upstream_task_ids == {"prod.approve_2", "prod.review_security"}
    assert tasks["prod.verify"].trigger_rule == TriggerRule.NONE_FAILED
    assert tasks["prod.deploy"].approval_task_ids == ["prod.approve", "prod.approve_2", "prod.review_security"]
    assert tasks["prod.deploy"].production and not tasks["staging.deploy"].production
    assert tasks["prod.rollback"].upstream_task_ids == {"prod.deploy", "prod.smoke", "prod.health"}
    assert tasks["release_complete"].upstream_task_ids == {"prod.passed", "closure"}
    assert tasks["closure"].upstream_task_ids == {"prod.passed"}
    assert tasks["release_complete"].trigger_rule == TriggerRule.ALL_SUCCESS
    assert tasks["release_complete"].gate_task_ids == ["dev.passed", "staging.passed", "prod.passed"]
    assert tasks["prod.deploy"].promotion_gate_task_id == "staging.passed"
    assert tasks["prod.approve"].passed_task_ids == ["dev.passed", "staging.passed"]
    leaves = {t.task_id for t in dag.tasks if not t.downstream_task_ids}
    assert "release_complete" in leaves and leaves - {"release_complete"} == {
        "dev.unlock",
        "staging.unlock",
        "prod.unlock",
    }


def test_trigger_form_params(dagbag):
    params = dagbag.dags["release_storefront"].params
    version = params.get_param("version")
    assert version.schema["pattern"].startswith("^(0|[1-9]")
    assert version.schema["title"] == "Version" and "semantic version" in version.description.lower()
    assert params.get_param("requested_by").schema["title"] == "Requested by"
    with pytest.raises(Exception, match="does not match"):
        version.resolve("not-a-version")
    assert version.resolve("2.0.0") == "2.0.0"


def test_planned_release_pins_the_version():
    spec = load_spec(PROJECT_ROOT / "include" / "releases" / "storefront.yaml").model_copy(update={"version": "3.1.0"})
    param = build_release_dag(spec, project_root=PROJECT_ROOT).params.get_param("version")
    assert param.resolve("3.1.0") == "3.1.0"
    with pytest.raises(Exception, match="is not one of"):
        param.resolve("3.2.0")


def test_builder_gives_the_same_dag_as_yaml():
    yaml_spec = load_spec(PROJECT_ROOT / "include" / "releases" / "storefront.yaml")
    built = ReleaseBuilder(
        "storefront",
        owner_team="commerce",
        description=yaml_spec.description,
        business_impact=yaml_spec.business_impact,
    )
    for c in yaml_spec.components:
        built.component(c.name, source=c.source, contract=c.contract)
    for e in yaml_spec.environments:
        built.environment(
            e.name,
            deploy_target=e.deploy_target,
            smoke_checks=[c.model_dump(exclude_defaults=True) for c in e.smoke_checks],
            health_checks=e.health_checks.model_dump() if e.health_checks else None,
            approvers=e.approval.approvers if e.approval.required else None,
            **({"config": e.config.model_dump(exclude_defaults=True)} if e.config else {}),
        )
    built.rollback(yaml_spec.rollback_plan, backout_minutes=yaml_spec.backout_minutes)
    python_spec = built.tags(*yaml_spec.tags).build()
    assert python_spec == yaml_spec
    a = build_release_dag(yaml_spec, project_root=PROJECT_ROOT)
    b = build_release_dag(python_spec, project_root=PROJECT_ROOT)
    assert {t: sorted(op.downstream_task_ids) for t, op in a.task_dict.items()} == {
        t: sorted(op.downstream_task_ids) for t, op in b.task_dict.items()
    }


def test_broken_spec_is_an_import_error_of_its_own_file_and_others_still_load(tmp_path: Path, monkeypatch):
    specs = tmp_path / "releases"
    specs.mkdir()
    shutil.copy(PROJECT_ROOT / "include" / "releases" / "storefront.yaml", specs)
    shutil.copy(PROJECT_ROOT / "tests" / "fixtures" / "broken" / "broken.yaml", specs)
    monkeypatch.setenv("RELEASETRAIN_SPEC_DIRS", str(specs))
    bag = DagBag(str(PROJECT_ROOT / "dags"))
    assert "release_storefront" in bag.dag_ids and "release_billing" in bag.dag_ids
    assert "release_broken" not in bag.dag_ids
    [(path, message)] = bag.import_errors.items()
    assert path.endswith("release_spec_errors.py")
    assert "broken.yaml: environments[1].deploy_target: field required" in message
    assert "broken.yaml: environments[1].deploy_targt: unknown field" in message


def test_a_tasks_parse_builds_only_its_own_release(tmp_path: Path, monkeypatch):
    """Issue 12: a task's process parses the DAG file for its own DAG only (Airflow's parsing
    context names it); reading and building every other spec made each task start cost
    O(specs). The rollback DAG's tasks find their DAG the same way."""
    from airflow.sdk.definitions.context import _AIRFLOW_PARSING_CONTEXT_DAG_ID as PARSING_DAG_ID

    from releasetrain.factory import load_release_dags

    specs = tmp_path / "releases"
    specs.mkdir()
    for name in ("storefront", "checkout", "payments"):
        shutil.copy(PROJECT_ROOT / "include" / "releases" / f"{name}.yaml", specs)
    read: list[str] = []
    real = load_spec

    def counting(path, **kwargs):
        read.append(Path(path).stem)
        return real(path, **kwargs)

    monkeypatch.setattr("releasetrain.factory.load_spec", counting)
    everything = load_release_dags([specs], project_root=PROJECT_ROOT)
    assert set(everything) == {
        f"{k}_{n}" for k in ("release", "rollback") for n in ("storefront", "checkout", "payments")
    }
    for dag_id in ("release_checkout", "rollback_checkout"):
        read.clear()
        monkeypatch.setenv(PARSING_DAG_ID, dag_id)  # as the task runner sets it (its context manager)
        mine = load_release_dags([specs], project_root=PROJECT_ROOT)
        assert read == ["checkout"] and set(mine) == {"release_checkout", "rollback_checkout"}
        assert [t.task_id for t in mine[dag_id].tasks] == [t.task_id for t in everything[dag_id].tasks]
    # a DAG of another file (the hand-written billing DAG) is not ours: everything is built
    read.clear()
    monkeypatch.setenv(PARSING_DAG_ID, "billing_nightly")
    assert set(load_release_dags([specs], project_root=PROJECT_ROOT)) == set(everything)
    assert sorted(read) == ["checkout", "payments", "storefront"]


def test_parsing_does_no_io(monkeypatch):
    """Building DAGs must not touch the network or connections (they are parsed every few seconds)."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network access during DAG parsing")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr("airflow.sdk.BaseHook.get_connection", refuse)
    bag = DagBag(str(PROJECT_ROOT / "dags"))
    assert bag.import_errors == {} and "release_storefront" in bag.dag_ids


def test_python_built_release_naming_an_unknown_group_is_a_clear_error():
    from releasetrain.core.builder import ReleaseBuilder
    from releasetrain.core.spec import ReleaseSpecError

    spec = (
        ReleaseBuilder("grouped", owner_team="x")
        .component("web", source="include/demo_fleet/artifacts/storefront-web")
        .environment("prod", deploy_target="t", approvers=["approver"])
        .build()
    )
    spec = spec.model_copy(
        update={
            "environments": [
                spec.environments[0].model_copy(
                    update={"approval": spec.environments[0].approval.model_copy(update={"reviews": ["auditors"]})}
                )
            ]
        }
    )
    with pytest.raises(ReleaseSpecError, match=r"approval.reviews\[0\]: no approver group 'auditors' is defined"):
        build_release_dag(spec, project_root=PROJECT_ROOT, auto_register=False)


def test_a_company_wide_freeze_binds_every_release_without_the_spec_naming_it(tmp_path: Path):
    from releasetrain.core.spec import CalendarLibrary

    (tmp_path / "company-freeze.yaml").write_text(
        "name: company-freeze\napplies_to: all\ntimezone: UTC\n"
        "blackouts:\n  - {name: year end, start: '2030-12-20T00:00', end: '2031-01-04T00:00'}\n"
    )
    (tmp_path / "team-window.yaml").write_text("name: team-window\ntimezone: UTC\nblackouts: []\n")
    spec = load_spec(PROJECT_ROOT / "include" / "releases" / "storefront.yaml")
    assert spec.calendar is None and not spec.has_calendar
    library = CalendarLibrary(PROJECT_ROOT, [tmp_path])
    dag = build_release_dag(spec, project_root=PROJECT_ROOT, calendars=library, auto_register=False)
    for env in ("dev", "staging", "prod"):
        window = dag.task_dict[f"{env}.window"]
        assert [layer["use"] for layer in window.layers] == [["company-freeze"]], "only the calendar for all"
    assert "post_implementation_review" in dag.task_dict and "emergency" in dag.params


def test_the_people_directory_reaches_every_task_and_clobbers_nothing(dagbag):
    dag = dagbag.dags["release_checkout"] if "release_checkout" in dagbag.dags else dagbag.dags["release_storefront"]
    assert all(isinstance(task.user_directory, dict) for task in dag.tasks)
    closure = dagbag.dags["release_storefront"].task_dict["closure"]
    assert isinstance(closure.people, list), "the closure's people are users, not the directory"
    aborts = [t for d in dagbag.dags.values() for t in d.tasks if t.task_id.endswith(".abort")]
    assert aborts and all(isinstance(t.people, list) for t in aborts)


# --- parsing: stable, and no per-operator copies of the trigger form --------------------------
def _serialized(dag) -> tuple[str, dict]:
    from airflow.serialization.serialized_objects import LazyDeserializedDAG

    lazy = LazyDeserializedDAG.from_dag(dag)
    return lazy.hash, lazy.data


def test_the_serialized_dag_does_not_change_between_parses(monkeypatch):
    """Issue 12: the doc showed the next openings, computed from the clock, so every parse
    stored a new serialized DAG version. Nothing in it may come from the clock: parsed at two
    different times (days apart, through ``datetime.datetime.now``), the hash is the same."""
    import datetime

    from releasetrain.factory import build_rollback_dag

    real = datetime.datetime

    def at(moment):
        class Clock(real):
            @classmethod
            def now(cls, tz=None):
                return moment if tz is None else moment.astimezone(tz)

            @classmethod
            def utcnow(cls):
                return moment.replace(tzinfo=None)

        return Clock

    spec = load_spec(PROJECT_ROOT / "include/releases/payments.yaml", display_root=PROJECT_ROOT)
    hashes = []
    for moment in (real(2026, 12, 1, 9, 0, tzinfo=datetime.UTC), real(2026, 12, 4, 17, 31, tzinfo=datetime.UTC)):
        monkeypatch.setattr(datetime, "datetime", at(moment))
        release = build_release_dag(spec, project_root=PROJECT_ROOT, auto_register=False)
        rollback = build_rollback_dag(spec, project_root=PROJECT_ROOT, auto_register=False)
        monkeypatch.setattr(datetime, "datetime", real)
        hashes.append((_serialized(release)[0], _serialized(rollback)[0]))
    assert hashes[0] == hashes[1]


def test_the_trigger_form_is_the_dags_and_reaches_every_tasks_run():
    """The DAG's params are given once its tasks exist (Airflow deep-copies them into every
    operator otherwise); a task's run still sees them, merged by Airflow."""
    from airflow.sdk.definitions.param import process_params

    spec = load_spec(PROJECT_ROOT / "include/releases/payments.yaml", display_root=PROJECT_ROOT)
    dag = build_release_dag(spec, project_root=PROJECT_ROOT, auto_register=False)
    assert {"version", "requested_by", "emergency"} <= set(dag.params)
    deploy = dag.task_dict["payments-prod.deploy"]
    assert "version" not in deploy.params
    seen = process_params(dag, deploy, {"version": "3.2.0", "requested_by": "alice"}, suppress_exception=False)
    assert seen["version"] == "3.2.0" and seen["requested_by"] == "alice" and seen["emergency"] is False
    approval = dag.task_dict["payments-prod.approve"]
    assert "version" not in approval.params, "an approval's form shows only its own fields"
    serialized = _serialized(dag)[1]["dag"]
    assert "version" in dict(serialized["params"]), "the trigger form is serialized with the DAG"


def test_a_scheduled_dag_whose_form_cannot_resolve_is_refused(monkeypatch):
    """Airflow refuses a schedule with params that need a conf; assigning them after the tasks
    keeps that check (remembered per schema and default)."""
    from airflow.sdk import Param

    from releasetrain import factory

    spec = load_spec(PROJECT_ROOT / "include/releases/payments.yaml", display_root=PROJECT_ROOT)
    assert spec.schedule == "windows"
    original = factory.release_params

    def needs_conf(s):
        return {**original(s), "ticket": Param(type="string", minLength=3)}

    monkeypatch.setattr(factory, "release_params", needs_conf)
    for _ in range(2):  # the remembered answer refuses too
        with pytest.raises(ValueError, match="not allowed to define a Schedule.*ticket"):
            build_release_dag(spec, project_root=PROJECT_ROOT, auto_register=False)


def test_the_factory_renders_the_golden_graphs():
    """Issue 13: the factory plans before it builds; for every spec in the repository it
    still renders exactly the graphs it rendered before (tasks, classes, arguments, trigger
    rules, pools, edges, params, doc, schedule). After an intended change of a graph:
    ``python -m tests.graphs --update`` and review the diff of the golden file."""
    import json

    from tests.graphs import GOLDEN, current

    golden = json.loads(GOLDEN.read_text())
    now = current()
    assert sorted(now) == sorted(golden)
    for key, graph in golden.items():
        assert sorted(now[key]["tasks"]) == sorted(graph["tasks"]), key
        for task_id, task in graph["tasks"].items():
            assert now[key]["tasks"][task_id] == task, f"{key}: {task_id}"
        assert now[key] == graph, key


def test_the_renderer_knows_every_kind_and_the_plans_rules_are_airflows():
    from releasetrain.core.vocabulary import Kind, Rule
    from releasetrain.factory import OPERATORS

    assert set(OPERATORS) == set(Kind)
    assert {rule.value for rule in Rule} <= {rule.value for rule in TriggerRule}


def test_the_retention_dag_plans_before_it_deletes(dagbag):
    dag = dagbag.dags["releasetrain_retention"]
    assert dag.task_dict["plan"].downstream_task_ids == {"delete"}
    assert dag.params["dry_run"] is False and dag.max_active_runs == 1
