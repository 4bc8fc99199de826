from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from releasetrain.core.spec import ReleaseSpecError, json_schema_text, load_spec, parse_spec
from tests.conftest import PROJECT_ROOT

STOREFRONT = PROJECT_ROOT / "include" / "releases" / "storefront.yaml"


def minimal(**overrides):
    data = {
        "name": "shop",
        "owner_team": "commerce",
        "components": [{"name": "web", "source": "include/web"}],
        "environments": [
            {"name": "dev", "deploy_target": "fleet_dev"},
            {"name": "prod", "deploy_target": "fleet_prod", "approval": {"required": True, "approvers": ["bob"]}},
        ],
    }
    data.update(overrides)
    return data


def test_example_specs_load():
    spec = load_spec(STOREFRONT)
    assert spec.dag_id == "release_storefront"
    assert [e.name for e in spec.environments] == ["dev", "staging", "prod"]
    assert spec.is_train and spec.environment("prod").approval.required
    assert spec.previous_environment("prod").name == "staging" and spec.previous_environment("dev") is None


def test_planned_release_keeps_its_version():
    spec = parse_spec(minimal(version="2.1.0"))
    assert spec.version == "2.1.0" and not spec.is_train


def _problems(data):
    with pytest.raises(ReleaseSpecError) as info:
        parse_spec(data, "include/releases/shop.yaml")
    return str(info.value)


@pytest.mark.parametrize(
    "mutate, expected",
    [
        pytest.param(
            lambda d: d["environments"][1].pop("deploy_target"),
            "include/releases/shop.yaml: environments[1].deploy_target: field required",
            id="missing",
        ),
        pytest.param(
            lambda d: d["environments"][0].update(deploy_targt="x"),
            "environments[0].deploy_targt: unknown field",
            id="typo",
        ),
        pytest.param(lambda d: d.update(version="1.2"), "version: '1.2' is not a semantic version", id="bad-version"),
        pytest.param(
            lambda d: d["environments"].append({"name": "dev", "deploy_target": "x"}),
            "environments: name 'dev' is used more than once",
            id="duplicate-env",
        ),
        pytest.param(
            lambda d: d["environments"][1].update(approval={"required": True}),
            "environments[1].approval: an approval that is required needs approvers or approver groups",
            id="approval-without-approvers",
        ),
        pytest.param(
            lambda d: d.update(components=[]), "components: List should have at least 1 item", id="no-components"
        ),
        pytest.param(
            lambda d: d["environments"][0].update(smoke_checks=[{"name": "x", "expect_status": 999}]),
            "environments[0].smoke_checks[0].expect_status: HTTP status codes must be between 100 and 599",
            id="bad-status",
        ),
        pytest.param(
            lambda d: d["environments"][0].update(
                health_checks={"period_seconds": 5, "interval_seconds": 10, "checks": [{"name": "h"}]}
            ),
            "environments[0].health_checks: interval_seconds must not be longer than period_seconds",
            id="interval-too-long",
        ),
        pytest.param(lambda d: d.update(name="Shop!"), "name: String should match pattern", id="bad-name"),
    ],
)
def test_errors_name_file_field_and_reason(mutate, expected):
    data = minimal()
    mutate(data)
    assert expected in _problems(data)


def test_yaml_syntax_error_names_line(tmp_path: Path):
    path = tmp_path / "shop.yaml"
    path.write_text("name: shop\ncomponents: [\n")
    with pytest.raises(ReleaseSpecError, match=r"shop.yaml: line \d+, column \d+: invalid YAML"):
        load_spec(path)


def test_file_name_must_match_release_name(tmp_path: Path):
    path = tmp_path / "other.yaml"
    path.write_text(yaml.safe_dump(minimal()))
    with pytest.raises(ReleaseSpecError, match="other.yaml: name: 'shop' must match the file name 'other'"):
        load_spec(path)


def test_not_a_mapping(tmp_path: Path):
    path = tmp_path / "shop.yaml"
    path.write_text("- just\n- a list\n")
    with pytest.raises(ReleaseSpecError, match="must be a YAML mapping"):
        load_spec(path)


def test_committed_json_schema_is_current():
    committed = (PROJECT_ROOT / "include" / "schema" / "release-spec.schema.json").read_text()
    assert committed == json_schema_text(), "run `make schema` and commit the result"
    schema = json.loads(committed)
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) >= {"name", "owner_team", "components", "environments"}


def test_every_example_spec_matches_the_json_schema():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(json_schema_text())
    for path in (PROJECT_ROOT / "include" / "releases").glob("*.yaml"):
        jsonschema.validate(yaml.safe_load(path.read_text()), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(
            yaml.safe_load(
                textwrap.dedent("""
            name: x
            owner_team: t
            components: [{name: a, source: b}]
            environments: [{name: dev}]
        """)
            ),
            schema,
        )


@pytest.mark.parametrize(
    "mutate, expected",
    [
        pytest.param(
            lambda d: d["environments"][0].update(approval={"approvers": ["bob"]}),
            "environments[0].approval: approvers, groups, reviews, quorum or timeout_hours are set but required "
            "is false",
            id="approvers-without-required",
        ),
        pytest.param(
            lambda d: d["environments"][0].update(name="package"),
            "environments[0].name: 'package' is reserved",
            id="reserved-name",
        ),
        pytest.param(
            lambda d: d["environments"][0].update(
                health_checks={
                    "period_seconds": 10,
                    "interval_seconds": 5,
                    "max_failures": 2,
                    "checks": [{"name": "h"}],
                }
            ),
            "max_failures 2 allows every one of the 2 health rounds to fail",
            id="health-never-fails",
        ),
        pytest.param(
            lambda d: d["environments"][1].update(
                production=True, approval={}, smoke_checks=[{"name": "up", "endpoint": "health"}]
            ),
            "environments[1]: production needs at least one human approval",
            id="production-without-approval",
        ),
        pytest.param(
            lambda d: d["environments"][1].update(production=True),
            "environments[1]: production needs at least one smoke check",
            id="production-without-smoke-check",
        ),
    ],
)
def test_specs_that_would_silently_weaken_a_gate_are_refused(mutate, expected):
    data = minimal()
    mutate(data)
    assert expected in _problems(data)


def test_production_may_opt_out_of_approval_in_writing():
    data = minimal()
    data["environments"][1].update(
        production=True,
        approval={"required": False, "reason": "fully automated: change advisory board waiver CAB-12"},
        smoke_checks=[{"name": "up", "endpoint": "health"}],
    )
    spec = parse_spec(data)
    assert spec.environment("prod").approval.reason.startswith("fully automated")
