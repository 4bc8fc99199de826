"""Progressive delivery at adapter level, against the real demo fleet: the deploy-target
contract's colours and weights, the rollback's choice (abort the canary, switch back,
redeploy), the analysis operators' outcomes and the manual rollback plan."""

from __future__ import annotations

import collections
import datetime
import json
import time

import pytest
import requests
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, TaskDeferred

from releasetrain.core.incident import last_good_version
from releasetrain.core.ledger import new_event
from releasetrain.hooks.deploy_target import DeployTargetError, DeployTargetHook
from releasetrain.operators.deploy import PRE_DEPLOY_KEY
from releasetrain.operators.manual_rollback import ManualRollbackOperator
from releasetrain.operators.progressive import (
    AnalysisDecisionOperator,
    PromoteOperator,
    TrafficAnalysisOperator,
    measurements_markdown,
)
from releasetrain.operators.rollback import RollbackOperator
from tests.helpers import FakeTI, context, http_connection, running_fleet

NEW = "sha256:" + "b" * 64
AUTH = ("deployer", "s3cret-pass")
REQUEST = {"release": "shop", "version": "2.0.0", "requested_by": "author", "triggered_by": "author"}


@pytest.fixture
def fleet(monkeypatch):
    with running_fleet(seed={"prod": "1.0.0"}, deploy_seconds=0.05) as (state, url):
        monkeypatch.setenv("AIRFLOW_CONN_T_PROD", http_connection(f"{url}/environments/prod"))
        yield state, url


def idle_deploy(state, hook: DeployTargetHook, version: str = "2.0.0", digest: str = NEW) -> None:
    started = hook.start_deployment(release="shop", version=version, digest=digest, run_id="manual__test", slot="idle")
    assert started["state"] == "in_progress"
    with state.lock:
        state.deployments[started["deployment_id"]]["finish_at"] = 0
        state.advance()


def served(url: str, n: int = 400, route: str = "app") -> collections.Counter:
    return collections.Counter(
        requests.get(f"{url}/environments/prod/{route}/version", auth=AUTH, timeout=5).json().get("version")
        for _ in range(n)
    )


def test_colours_weights_promote_switch_back_and_abort(fleet):
    state, url = fleet
    hook = DeployTargetHook("t_prod")
    idle_deploy(state, hook)
    status = hook.get_status()
    assert status["version"] == "1.0.0" and status["idle"]["version"] == "2.0.0" and status["idle"]["weight"] == 0
    assert served(url, 50) == {"1.0.0": 50}  # the idle colour takes no live traffic
    assert served(url, 5, "preview") == {"2.0.0": 5}  # but its preview answers
    hook.set_traffic(20)
    split = served(url)
    assert 40 <= split["2.0.0"] <= 130 and split["1.0.0"] + split["2.0.0"] == 400, split
    # a rolling deploy or a rollback cannot take over while a canary takes traffic
    with pytest.raises(DeployTargetError, match="409.*promote or abort it first"):
        hook.start_deployment(release="shop", version="3.0.0", digest="sha256:" + "c" * 64, run_id="r2")
    hook.promote()
    status = hook.get_status()
    assert (status["version"], status["previous_version"], status["idle"]["version"]) == ("2.0.0", "1.0.0", "1.0.0")
    assert served(url, 30) == {"2.0.0": 30}
    hook.promote()  # promoting the idle colour again switches back
    assert hook.get_status()["version"] == "1.0.0" and served(url, 30) == {"1.0.0": 30}
    hook.abort()
    assert hook.get_status()["idle"] is None
    with pytest.raises(DeployTargetError, match="409.*no idle colour"):
        hook.set_traffic(10)
    with pytest.raises(DeployTargetError, match="400.*weight"):
        hook._expect("POST", "traffic", {"weight": 101}, (200,))


def test_live_scoped_fault_spares_preview_and_metrics_name_the_route(fleet):
    state, url = fleet
    hook = DeployTargetHook("t_prod")
    idle_deploy(state, hook)
    requests.post(
        f"{url}/faults",
        json={"environment": "prod", "version": "2.0.0", "error_rate": 1.0, "scope": "live", "latency_ms": 300},
        auth=AUTH,
        timeout=5,
    )
    assert {
        requests.get(f"{url}/environments/prod/preview/x", auth=AUTH, timeout=5).status_code for _ in range(10)
    } == {200}
    hook.set_traffic(100)
    assert {requests.get(f"{url}/environments/prod/app/x", auth=AUTH, timeout=5).status_code for _ in range(10)} == {
        500
    }
    metrics = requests.get(f"{url}/metrics", timeout=5).text
    assert 'fleet_requests_total{environment="prod",version="2.0.0",route="app",code="500"} 10' in metrics
    assert 'fleet_requests_total{environment="prod",version="2.0.0",route="preview",code="200"} 10' in metrics
    assert 'fleet_traffic_weight{environment="prod",version="2.0.0"} 100' in metrics
    # the injected latency shows in the histogram: none of the 20 requests of 2.0.0 was under 0.25 s
    assert 'fleet_request_duration_seconds_bucket{environment="prod",version="2.0.0",le="0.25"} 0' in metrics
    assert 'fleet_request_duration_seconds_count{environment="prod",version="2.0.0"} 20' in metrics


def test_synthetic_traffic_reaches_both_colours():
    with running_fleet(seed={"prod": "1.0.0"}, deploy_seconds=0.05) as (state, url):
        with state.lock:
            state.environments["prod"]["idle"] = {"colour": "green", "version": "2.0.0", "digest": NEW, "weight": 50}
        state.start_traffic(200)
        time.sleep(1.0)
        with state.lock:
            counts = dict(state.requests)
        live_new = sum(v for (env, ver, route, _), v in counts.items() if (ver, route) == ("2.0.0", "app"))
        live_old = sum(v for (env, ver, route, _), v in counts.items() if (ver, route) == ("1.0.0", "app"))
        preview = sum(v for (env, ver, route, _), v in counts.items() if route == "preview")
        assert live_new > 10 and live_old > 10 and preview > 20, counts


def rollback_ti(before_version="1.0.0", before_digest=None):
    return FakeTI(
        {
            ("prepare", "return_value"): REQUEST,
            ("prod.deploy", PRE_DEPLOY_KEY): {"version": before_version, "digest": before_digest, "noop": False},
            ("prod.deploy", "return_value"): {"version": "2.0.0", "digest": NEW},
        }
    )


def rollback_op(cls=RollbackOperator, **kwargs):
    return cls(
        task_id="prod.rollback",
        release="shop",
        environment="prod",
        deploy_target_conn_id="t_prod",
        poll_interval=0.1,
        **{"deploy_task_id": "prod.deploy", **kwargs},
    )


def test_rollback_takes_the_traffic_off_a_canary(fleet):
    state, url = fleet
    hook = DeployTargetHook("t_prod")
    idle_deploy(state, hook)
    hook.set_traffic(10)
    result = rollback_op().execute(context(rollback_ti(before_digest=state.env("prod")["digest"])))
    assert result["action"] == "traffic taken off the canary" and result["restored_version"] == "1.0.0"
    assert hook.get_status()["idle"] is None and served(url, 40) == {"1.0.0": 40}
    folder = result["postmortem"].removeprefix("file://").rsplit("/", 1)[0]
    snapshot = json.loads(open(f"{folder}/snapshot.json").read())
    assert snapshot["target_status"]["idle"]["weight"] == 10


def test_rollback_switches_blue_green_back(fleet):
    state, url = fleet
    hook = DeployTargetHook("t_prod")
    old = state.env("prod")["digest"]
    idle_deploy(state, hook)
    hook.promote()
    result = rollback_op().execute(context(rollback_ti(before_digest=old)))
    assert result["action"] == "switched back to the previous colour"
    status = hook.get_status()
    assert status["version"] == "1.0.0" and status["idle"]["version"] == "2.0.0" and served(url, 20) == {"1.0.0": 20}


def test_traffic_step_shifts_then_defers_and_outcomes_map_to_task_states(fleet):
    state, url = fleet
    hook = DeployTargetHook("t_prod")
    idle_deploy(state, hook)
    analysis = {
        "provider": {"kind": "prometheus", "conn_id": "nowhere"},
        "interval_seconds": 5,
        "count": 1,
        "metrics": [{"name": "error_rate", "query": "q", "absolute": {"max": 0.01}}],
    }
    op = TrafficAnalysisOperator(
        task_id="prod.canary_10",
        release="shop",
        environment="prod",
        deploy_target_conn_id="t_prod",
        deploy_task_id="prod.deploy",
        analysis=analysis,
        stage="canary 10%",
        weight=10,
    )
    ti = rollback_ti(before_digest=state.env("prod")["digest"])
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context(ti))
    trigger = deferred.value.trigger
    assert trigger.values == {
        "release": "shop",
        "version": "2.0.0",
        "baseline_version": "1.0.0",
        "environment": "prod",
        "route": "app",
    }
    assert hook.get_status()["idle"]["weight"] == 10
    event = {"outcome": "inconclusive", "reason": "no data", "counts": {}, "measurements": []}
    assert op.execute_complete(context(ti), event)["outcome"] == "inconclusive"
    with pytest.raises(AirflowFailException, match="analysis failed: too many errors; the rollback follows"):
        op.execute_complete(context(ti), {**event, "outcome": "failed", "reason": "too many errors"})
    # once a human aborted, no step moves traffic any more
    ti.xcoms[("prod.abort", "aborted")] = {"by": "approver", "reason": "support calls"}
    aborted = TrafficAnalysisOperator(**{**op_kwargs(op), "abort_task_id": "prod.abort"})
    with pytest.raises(AirflowFailException, match="aborted by approver: support calls"):
        aborted.execute(context(ti))
    with pytest.raises(AirflowFailException, match="aborted by approver"):
        PromoteOperator(
            task_id="prod.promote",
            release="shop",
            environment="prod",
            deploy_target_conn_id="t_prod",
            abort_task_id="prod.abort",
        ).execute(context(ti))
    assert hook.get_status()["idle"]["weight"] == 10


def op_kwargs(op: TrafficAnalysisOperator) -> dict:
    return dict(
        task_id=op.task_id,
        release=op.release,
        environment=op.environment,
        deploy_target_conn_id=op.deploy_target_conn_id,
        deploy_task_id=op.deploy_task_id,
        analysis=op.analysis,
        stage=op.stage,
        weight=op.weight,
    )


def test_decision_is_asked_only_for_inconclusive_analyses_and_never_of_authors(monkeypatch):
    from airflow.providers.standard.operators.hitl import HITLOperator

    asked = []
    monkeypatch.setattr(HITLOperator, "execute", lambda self, context: asked.append(self.assigned_users) or "asked")
    op = AnalysisDecisionOperator(
        task_id="prod.decide_10",
        release="shop",
        environment="prod",
        analysis_task_id="prod.canary_10",
        deciders=["approver", "author"],
    )
    ti = FakeTI({("prepare", "return_value"): REQUEST, ("prod.canary_10", "return_value"): {"outcome": "successful"}})
    with pytest.raises(AirflowSkipException, match="no decision needed"):
        op.execute(context(ti))
    ti.xcoms[("prod.canary_10", "return_value")] = {"outcome": "inconclusive", "stage": "canary 10%", "reason": "r"}
    assert op.execute(context(ti)) == "asked"
    assert asked == [[{"id": "approver", "name": "approver"}]]  # never the author
    answer = {
        "chosen_options": ["Promote"],
        "params_input": {},
        "responded_by_user": {"id": "author", "name": "author"},
        "responded_at": datetime.datetime.now(datetime.UTC),
    }
    # an author's answer (e.g. through a stale request) is refused and the request asked again
    assert op.execute_complete(context(ti), answer) == "asked" and len(asked) == 2
    rollback = {**answer, "chosen_options": ["Roll back"], "responded_by_user": {"id": "approver", "name": "a"}}
    with pytest.raises(AirflowFailException, match="approver chose to roll back"):
        op.execute_complete(context(ti), rollback)
    promote = {**answer, "responded_by_user": {"id": "approver", "name": "a"}}
    assert op.execute_complete(context(ti), promote)["choice"] == "Promote"
    with pytest.raises(AirflowFailException, match="nobody decided"):
        op.execute_complete(context(ti), {"timedout": True})


def test_measurements_are_a_table_for_people():
    text = measurements_markdown(
        {
            "measurements": [
                {
                    "verdict": "marginal",
                    "score": 100.0,
                    "metrics": [
                        {"name": "error_rate", "phase": "pass", "canary": 0.0, "baseline": 0.001},
                        {"name": "saturation", "phase": "inconclusive", "canary": None, "baseline": None},
                    ],
                }
            ]
        }
    )
    assert "| 1 | marginal | 100.0 | error_rate: pass (0 vs 0.001); saturation: inconclusive (no data) |" in text


def events(*rows):
    return [
        new_event(
            seq=i,
            prev_hash="0" * 64,
            release="shop",
            run_id=run,
            environment=env,
            kind=kind,
            details=details,
            actor="",
        )
        for i, (run, env, kind, details) in enumerate(rows, start=1)
    ]


@pytest.mark.parametrize(
    "rows, current, expected",
    [
        pytest.param([], "1.0.0", None, id="nothing-deployed"),
        pytest.param(
            [("r1", "prod", "deployed", {"version": "1.0.0"}), ("r1", "", "run_state", {"state": "success"})],
            "2.0.0",
            "1.0.0",
            id="one-good",
        ),
        pytest.param(
            [
                ("r1", "prod", "deployed", {"version": "1.0.0"}),
                ("r2", "prod", "deployed", {"version": "1.1.0"}),
                ("r2", "prod", "rollback", {}),
                ("r3", "prod", "deployed", {"version": "1.2.0"}),
                ("r3", "", "run_state", {"state": "failed"}),
                ("r4", "staging", "deployed", {"version": "1.3.0"}),
                ("r5", "prod", "deployed", {"version": "2.0.0"}),
            ],
            "2.0.0",
            "1.0.0",
            id="skips-rolled-back-failed-other-env-and-current",
        ),
    ],
)
def test_last_good_version(rows, current, expected):
    good = last_good_version(events(*rows), "prod", current)
    assert (good or {}).get("version") == expected


def test_manual_rollback_acts_only_on_its_environment(fleet):
    ti = FakeTI({("plan", "return_value"): {"environment": "staging", "version": "1.0.0"}})
    op = rollback_op(ManualRollbackOperator)
    with pytest.raises(AirflowSkipException, match="for staging, not prod"):
        op.execute(context(ti))


def test_fleet_json_stats_feed_the_json_metrics_provider(fleet, monkeypatch):
    """The demo's canary reads the fleet's /stats through the generic JSON metrics provider."""
    from releasetrain.hooks.metrics import JsonMetricsHook, MetricsError

    state, url = fleet
    monkeypatch.setenv("AIRFLOW_CONN_FLEET_STATS", http_connection(url))
    requests.post(f"{url}/faults", json={"environment": "prod", "version": "1.0.0", "error_rate": 1.0}, auth=AUTH)
    start = time.time() - 1
    for _ in range(10):
        requests.get(f"{url}/environments/prod/app/x", auth=AUTH, timeout=5)
    requests.delete(f"{url}/faults", auth=AUTH, timeout=5)
    time.sleep(1.1)
    for _ in range(10):
        requests.get(f"{url}/environments/prod/app/x", auth=AUTH, timeout=5)
    end = time.time() + 1
    hook = JsonMetricsHook("fleet_stats", endpoint="stats", path="values")
    rates = hook.samples("error_rate environment=prod version=1.0.0 route=app", start, end, 1)
    assert rates[0] == 1.0 and rates[-1] == 0.0, rates
    counts = hook.samples("requests environment=prod version=1.0.0", start, end, end - start)
    assert counts == [20]
    assert hook.samples("error_rate environment=prod version=9.9.9", start, end, 1) == []  # no data
    with pytest.raises(MetricsError, match="HTTP 400"):
        hook.samples("nonsense", start, end, 1)


class RecordingNotifier:
    """Stands in for a provider's notifier (Slack, SMTP): built from the spec's args."""

    sent: list[dict] = []

    def __init__(self, **kwargs):
        self.kwargs = kwargs

    def notify(self, context):
        RecordingNotifier.sent.append(self.kwargs)


def test_rollback_notifies_any_airflow_notifier_and_a_failing_one_is_recorded(fleet):
    from releasetrain.core.spec import Notification, ReleaseSpecError  # noqa: F401

    RecordingNotifier.sent.clear()
    op = rollback_op(
        notifications=[
            Notification(
                kind="notifier",
                notifier="tests.adapters.test_progressive.RecordingNotifier",
                args={"text": ":rotating_light: ${text}", "channel": "#releases", "blocks": ["${json}"]},
            ).model_dump(mode="json"),
            {"kind": "notifier", "notifier": "tests.adapters.test_progressive.NoSuchNotifier", "args": {}},
        ]
    )
    payload = {"text": "shop 2.0.0 was rolled back in prod", "release": "shop"}
    notified, errors = op._notify({}, payload)
    assert notified == ["tests.adapters.test_progressive.RecordingNotifier"]
    [sent] = RecordingNotifier.sent
    assert sent["text"] == ":rotating_light: shop 2.0.0 was rolled back in prod" and sent["channel"] == "#releases"
    assert json.loads(sent["blocks"][0]) == payload
    assert len(errors) == 1 and "NoSuchNotifier" in errors[0]
    with pytest.raises(ValueError, match="needs notifier"):
        Notification(kind="notifier")


def test_manifest_diff_names_what_changed():
    from releasetrain.core.bundle import manifest_diff

    def manifest(version, files, component_version=None):
        return {
            "version": version,
            "components": [
                {
                    "name": "web",
                    "version": component_version or version,
                    "files": [{"path": f"web/{p}", "sha256": h} for p, h in files.items()],
                }
            ],
        }

    diff = manifest_diff(
        manifest("1.0.0", {"index.html": "a", "app.js": "b", "old.css": "c"}),
        manifest("2.0.0", {"index.html": "a", "app.js": "B", "new.css": "d"}),
    )
    assert diff == {
        "from": "1.0.0",
        "to": "2.0.0",
        "components": {"web": ["1.0.0", "2.0.0"]},
        "added": ["web/new.css"],
        "removed": ["web/old.css"],
        "changed": ["web/app.js"],
    }


def test_blue_green_analysis_needs_the_new_version_on_the_idle_colour(fleet):
    state, url = fleet
    analysis = {
        "provider": {"kind": "prometheus", "conn_id": "nowhere"},
        "metrics": [{"name": "error_rate", "query": "q", "absolute": {"max": 0.01}}],
    }
    op = TrafficAnalysisOperator(
        task_id="prod.analysis",
        release="shop",
        environment="prod",
        deploy_target_conn_id="t_prod",
        deploy_task_id="prod.deploy",
        analysis=analysis,
        stage="pre-promotion",
        route="preview",
    )
    with pytest.raises(AirflowFailException, match="2.0.0 is not on the target's idle colour"):
        op.execute(context(rollback_ti()))
    hook = DeployTargetHook("t_prod")
    idle_deploy(state, hook)
    with pytest.raises(TaskDeferred):
        op.execute(context(rollback_ti()))
    assert hook.get_status()["idle"]["weight"] == 0  # analysed on preview traffic, no live traffic moved
    hook.promote()
    hook.abort()
    assert op.execute(context(rollback_ti()))["outcome"] == "skipped"  # already live: nothing to analyse
