"""Extra links on deploy, rollback, approval and analysis tasks: made from the run's ledger
and the connections' hosts (never a credential), as Airflow makes them when a task ends."""

from __future__ import annotations

import json
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

from releasetrain.core.vocabulary import Event
from releasetrain.links import BundleLink, ChangeRecordLink, MetricsGraphLink, TargetStatusLink
from tests.helpers import DAG_ID, RELEASE, RUN_ID, seed

KEY = SimpleNamespace(dag_id=DAG_ID, run_id=RUN_ID, task_id="prod.deploy", map_index=-1)


def op(**attrs):
    return SimpleNamespace(release=RELEASE, **attrs)


def test_the_change_record_link_opens_the_backends_record_or_the_runs_story(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_SNOW", json.dumps({"conn_type": "http", "host": "https://acme.service-now.com",
                                                          "login": "u", "password": "secret-pw"}))  # fmt: skip
    change = {"backend": "servicenow", "id": "abc123", "number": "CHG0001", "state": "new", "change_type": "normal"}
    seed(Event.RISK_ASSESSED, task_id="assess_risk", change=change, change_conn_id="snow")
    url = ChangeRecordLink().get_link(op(), ti_key=KEY)
    assert url == "https://acme.service-now.com/nav_to.do?uri=change_request.do%3Fsys_id%3Dabc123"
    assert "secret-pw" not in url
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "http://airflow.example")
    seed(Event.RISK_ASSESSED, task_id="assess_risk", change={**change, "backend": "builtin"}, change_conn_id=None)
    assert ChangeRecordLink().get_link(op(), ti_key=KEY) == (
        f"http://airflow.example/releasetrain/cockpit/runs/{DAG_ID}/{RUN_ID}"
    )


def test_a_jira_change_links_to_its_issue(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_JIRA", json.dumps({"conn_type": "http", "host": "jira.example", "port": 8443,
                                                          "schema": "https"}))  # fmt: skip
    change = {"backend": "jira", "id": "10001", "number": "CHG-7", "state": "new", "change_type": "normal"}
    seed(Event.RISK_ASSESSED, task_id="assess_risk", change=change, change_conn_id="jira")
    assert ChangeRecordLink().get_link(op(), ti_key=KEY) == "https://jira.example:8443/browse/CHG-7"


def test_a_link_never_carries_credentials_written_into_a_host(monkeypatch):
    host = "https://deployer:pw123@fleet.example/environments/prod"
    monkeypatch.setenv("AIRFLOW_CONN_T_PROD", json.dumps({"conn_type": "http", "host": host}))
    url = TargetStatusLink().get_link(op(deploy_target_conn_id="t_prod"), ti_key=KEY)
    assert url == "https://fleet.example/environments/prod/status"
    monkeypatch.setenv("AIRFLOW_CONN_T_PROD", json.dumps({"conn_type": "http", "host": "javascript:alert(1)"}))
    assert TargetStatusLink().get_link(op(deploy_target_conn_id="t_prod"), ti_key=KEY) == ""


def test_no_change_record_no_link():
    assert ChangeRecordLink().get_link(op(), ti_key=KEY) == ""


def test_the_target_status_and_bundle_links(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_T_PROD", json.dumps({"conn_type": "http", "host": "http://fleet:8799/environments/prod",
                                                            "login": "deployer", "password": "s3cret"}))  # fmt: skip
    assert TargetStatusLink().get_link(op(deploy_target_conn_id="t_prod"), ti_key=KEY) == (
        "http://fleet:8799/environments/prod/status"
    )
    unit = op(deploy_target_conn_id="t_prod", unit="api")
    assert TargetStatusLink().get_link(unit, ti_key=KEY).endswith("/environments/prod/components/api/status")
    assert BundleLink().get_link(op(), ti_key=KEY) == ""
    seed(Event.PACKAGED, task_id="package", location="s3://releases/storefront/2.0.0", digest="sha256:x")
    assert BundleLink().get_link(op(), ti_key=KEY) == "s3://releases/storefront/2.0.0"


def test_the_metrics_graph_link_is_the_analysis_query_in_prometheus(monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_PROM", json.dumps({"conn_type": "http", "host": "http://prometheus:9090"}))
    analysis = {
        "provider": {"kind": "prometheus", "conn_id": "prom"},
        "interval_seconds": 20,
        "count": 6,
        "metrics": [{"name": "errors", "query": 'rate(errors{version="${version}",env="${environment}"}[${window}])'}],
    }
    seed(Event.ANALYSIS, environment="prod", task_id="prod.canary_10", version="2.0.0", outcome="passed")
    url = MetricsGraphLink().get_link(op(analysis=analysis, environment="prod", route="app"), ti_key=KEY)
    parts = urlsplit(url)
    assert (parts.netloc, parts.path) == ("prometheus:9090", "/graph")
    query = parse_qs(parts.query)
    assert query["g0.expr"] == ['rate(errors{version="2.0.0",env="prod"}[20s])']
    assert query["g0.range_input"] == ["120s"]
    json_provider = {**analysis, "provider": {"kind": "json", "conn_id": "prom"}}
    assert MetricsGraphLink().get_link(op(analysis=json_provider, environment="prod"), ti_key=KEY) == ""


def test_the_operators_declare_their_links_and_the_plugin_registers_them():
    from releasetrain.operators.approval import ReleaseApprovalOperator
    from releasetrain.operators.deploy import EnvironmentDeployOperator
    from releasetrain.operators.progressive import TrafficAnalysisOperator
    from releasetrain.operators.rollback import RollbackOperator
    from releasetrain.plugin import ReleaseTrainPlugin

    def names(cls):
        return [link.name for link in cls.operator_extra_links]

    assert names(EnvironmentDeployOperator) == names(RollbackOperator) == ["Change record", "Target status", "Bundle"]
    assert names(ReleaseApprovalOperator) == ["Change record", "Bundle"]
    assert names(TrafficAnalysisOperator) == ["Metrics graph"]
    assert {type(link) for link in ReleaseTrainPlugin.operator_extra_links} == {
        ChangeRecordLink, TargetStatusLink, BundleLink, MetricsGraphLink
    }  # fmt: skip
