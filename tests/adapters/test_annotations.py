"""Deploy markers against the local Grafana annotations server: what they say, auth, failure."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
import requests

from releasetrain.core.markers import annotation
from tests.servers.grafana import TOKEN, running_grafana

AT = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)


def test_deploys_traffic_steps_and_rollbacks_are_marked_and_nothing_else():
    deploy = annotation("deployed", "shop", "prod", "manual__1", {"version": "1.2.0"}, AT)
    assert deploy == {
        "time": int(AT.timestamp() * 1000),
        "tags": ["releasetrain", "release:shop", "environment:prod", "deploy", "version:1.2.0"],
        "text": "shop 1.2.0 deployed to prod (run manual__1)",
    }
    traffic = annotation("traffic_shifted", "shop", "prod", "r", {"version": "1.2.0", "weight": 25}, AT)
    assert traffic["text"].startswith("shop 1.2.0: 25% of prod's traffic") and "traffic" in traffic["tags"]
    back = annotation("rollback", "shop", "prod", "r", {"restored_version": "1.1.0", "unit": "api"}, AT)
    assert back["text"] == "shop rolled back in prod to 1.1.0 (unit api) (run r)" and "rollback" in back["tags"]
    assert annotation("approval_given", "shop", "prod", "r", {}, AT) is None


def test_the_hook_adds_an_annotation_with_the_token_and_names_a_refusal(monkeypatch):
    from releasetrain.hooks.annotations import AnnotationError, GrafanaAnnotationHook

    with running_grafana() as (grafana, url):
        conn = {"conn_type": "http", "host": url, "password": TOKEN, "extra": {"dashboard_uid": "releases"}}
        monkeypatch.setenv("AIRFLOW_CONN_GRAFANA_T", json.dumps(conn))
        body = annotation("deployed", "shop", "prod", "r", {"version": "1.2.0"}, AT)
        assert GrafanaAnnotationHook("grafana_t").annotate(body) == 1
        listed = requests.get(
            f"{url}/api/annotations", params={"tags": "release:shop"}, headers={"Authorization": f"Bearer {TOKEN}"}
        ).json()
        assert [(a["text"], a["dashboardUID"]) for a in listed] == [(body["text"], "releases")]
        monkeypatch.setenv("AIRFLOW_CONN_GRAFANA_T", json.dumps({**conn, "password": "wrong"}))
        with pytest.raises(AnnotationError, match="answered HTTP 401") as refused:
            GrafanaAnnotationHook("grafana_t").annotate(body)
        assert "wrong" not in str(refused.value) and TOKEN not in str(refused.value)
    with pytest.raises(AnnotationError, match="cannot be reached"):
        GrafanaAnnotationHook("grafana_t").annotate(body)


def test_a_marker_never_fails_the_step_that_changed_the_environment(monkeypatch):
    from releasetrain.operators import _common

    recorded = []
    monkeypatch.setenv("AIRFLOW__RELEASETRAIN__ANNOTATIONS_CONN_ID", "grafana_t")

    class Broken:
        def __init__(self, *args, **kwargs):
            pass

        def annotate(self, body):
            raise TypeError("an id that is not a number")

    monkeypatch.setattr("releasetrain.hooks.annotations.GrafanaAnnotationHook", Broken)
    monkeypatch.setattr(_common, "record", lambda *args, **kwargs: recorded.append((args, kwargs)))
    _common.mark({"run_id": "r"}, "deployed", "shop", "prod", {"version": "1.2.0"})
    [(args, kwargs)] = recorded
    assert args[1] == "annotated" and kwargs["details"]["error"] == "TypeError"
