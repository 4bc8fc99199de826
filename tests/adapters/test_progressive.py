"""Progressive delivery at adapter level, against the real demo fleet: the deploy-target
contract's colours and weights, the rollback's choice (abort the canary, switch back,
redeploy), the analysis operators' outcomes and the manual rollback plan."""

from __future__ import annotations

import collections
import datetime
import json
import re
import time

import pytest
import requests
from airflow.sdk import BaseNotifier
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException, TaskDeferred

from releasetrain.core.incident import last_good_version
from releasetrain.core.ledger import new_event
from releasetrain.hooks.deploy_target import DeployTargetError, DeployTargetHook
from releasetrain.operators._common import record
from releasetrain.operators.deploy import PRE_DEPLOY_KEY
from releasetrain.operators.manual_rollback import ManualRollbackOperator
from releasetrain.operators.progressive import (
    AnalysisDecisionOperator,
    EnvironmentPassedOperator,
    PromoteOperator,
    TrafficAnalysisOperator,
    measurements_markdown,
)
from releasetrain.operators.rollback import RollbackOperator
from tests.helpers import PARAMS, RELEASE, FakeTI, context, http_connection, run_events, running_fleet, seed

NEW = "sha256:" + "b" * 64
AUTH = ("deployer", "s3cret-pass")
# What a forged XCom would claim (any Airflow user can write XCom): the operators must ignore it.
FORGED_BEFORE = {"version": "0.9.0", "digest": "sha256:" + "f" * 64, "noop": False}


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


def deploy_started(before_version="1.0.0", before_digest=None) -> None:
    """The deploy task's ledger record of what prod ran before it (where a rollback returns)."""
    before = {"version": before_version, "digest": before_digest, "noop": False}
    seed("deploy_started", environment="prod", task_id="prod.deploy", version="2.0.0", digest=NEW, before=before)


def rollback_ti(before_version="1.0.0", before_digest=None):
    """Records prod.deploy's ``deploy_started``; the XCom's ``pre_deploy`` is forged (and ignored)."""
    deploy_started(before_version, before_digest)
    return FakeTI(
        {
            ("prod.deploy", PRE_DEPLOY_KEY): FORGED_BEFORE,
            ("prod.deploy", "return_value"): {"version": "2.0.0", "digest": NEW},
        }
    )


def rollback_op(cls=RollbackOperator, **kwargs):
    return cls(
        task_id="prod.rollback",
        release=RELEASE,
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
    result = rollback_op().execute(
        context(rollback_ti(before_digest=state.env("prod")["digest"]), task_id="prod.rollback")
    )
    assert result["action"] == "traffic taken off the canary" and result["restored_version"] == "1.0.0"
    assert hook.get_status()["idle"] is None and served(url, 40) == {"1.0.0": 40}
    folder = result["postmortem"].removeprefix("file://").rsplit("/", 1)[0]
    snapshot = json.loads(open(f"{folder}/snapshot.json").read())
    assert snapshot["target_status"]["idle"]["weight"] == 10
    [rollback] = run_events("rollback")
    assert (rollback.environment, rollback.details["failed_version"]) == ("prod", "2.0.0")
    assert rollback.details["task_id"] == "prod.rollback"


def test_rollback_without_the_deploy_record_changes_nothing(fleet):
    """Where to return is the deploy task's ledger record: a forged ``pre_deploy`` XCom alone is no reason."""
    state, url = fleet
    hook = DeployTargetHook("t_prod")
    idle_deploy(state, hook)
    hook.set_traffic(10)
    ti = FakeTI({("prod.deploy", PRE_DEPLOY_KEY): {**FORGED_BEFORE, "version": "1.0.0"}})
    with pytest.raises(AirflowSkipException, match="this run deployed nothing to prod"):
        rollback_op().execute(context(ti, task_id="prod.rollback"))
    assert hook.get_status()["idle"]["weight"] == 10 and not run_events("rollback")


def test_rollback_switches_blue_green_back(fleet):
    state, url = fleet
    hook = DeployTargetHook("t_prod")
    old = state.env("prod")["digest"]
    idle_deploy(state, hook)
    hook.promote()
    result = rollback_op().execute(context(rollback_ti(before_digest=old), task_id="prod.rollback"))
    assert result["action"] == "switched back to the previous colour" and result["restored_version"] == "1.0.0"
    status = hook.get_status()
    assert status["version"] == "1.0.0" and status["idle"]["version"] == "2.0.0" and served(url, 20) == {"1.0.0": 20}


ANALYSIS = {
    "provider": {"kind": "prometheus", "conn_id": "nowhere"},
    "interval_seconds": 5,
    "count": 1,
    "metrics": [{"name": "error_rate", "query": "q", "absolute": {"max": 0.01}}],
}


def canary(weight: int, prior: list[str] | None = None, **kwargs) -> TrafficAnalysisOperator:
    return TrafficAnalysisOperator(
        task_id=f"prod.canary_{weight}",
        release=RELEASE,
        environment="prod",
        deploy_target_conn_id="t_prod",
        deploy_task_id="prod.deploy",
        analysis=ANALYSIS,
        stage=f"canary {weight}%",
        weight=weight,
        prior_task_ids=prior,
        **kwargs,
    )


def promote_op(**kwargs) -> PromoteOperator:
    return PromoteOperator(
        task_id="prod.promote", release=RELEASE, environment="prod", deploy_target_conn_id="t_prod", **kwargs
    )


def test_traffic_step_shifts_then_defers_and_outcomes_map_to_task_states(fleet):
    state, url = fleet
    hook = DeployTargetHook("t_prod")
    idle_deploy(state, hook)
    op = canary(10)
    ti = rollback_ti(before_digest=state.env("prod")["digest"])
    with pytest.raises(TaskDeferred) as deferred:
        op.execute(context(ti, task_id="prod.canary_10"))
    trigger = deferred.value.trigger
    [started] = run_events("deploy_started")
    assert trigger.values == {
        "release": RELEASE,
        "version": "2.0.0",
        "baseline_version": "1.0.0",  # the deploy's ledger record, not the forged XCom's 0.9.0
        "environment": "prod",
        "route": "app",
        # a session baseline "before_deploy" counts up to the deploy's start (its ledger record)
        "deployed_at": str(datetime.datetime.fromisoformat(started.at).timestamp()),
    }
    assert hook.get_status()["idle"]["weight"] == 10
    [shifted] = run_events("traffic_shifted")
    assert shifted.details["weight"] == 10 and shifted.details["task_id"] == "prod.canary_10"
    event = {"outcome": "inconclusive", "reason": "no data", "counts": {}, "measurements": []}
    assert op.execute_complete(context(ti), event)["outcome"] == "inconclusive"
    with pytest.raises(AirflowFailException, match="analysis failed: too many errors; the rollback follows"):
        op.execute_complete(context(ti), {**event, "outcome": "failed", "reason": "too many errors"})
    verdicts = [(e.details["task_id"], e.details["outcome"]) for e in run_events("analysis")]
    assert verdicts == [("prod.canary_10", "inconclusive"), ("prod.canary_10", "failed")]
    # once a human aborted (the abort task's ledger record), no step moves traffic any more
    seed("aborted", environment="prod", actor="approver", task_id="prod.abort", by="approver", reason="support calls")
    aborted = TrafficAnalysisOperator(**{**op_kwargs(op), "abort_task_id": "prod.abort"})
    with pytest.raises(AirflowFailException, match="aborted by approver: support calls; nothing was changed"):
        aborted.execute(context(ti))
    with pytest.raises(AirflowFailException, match="prod.promote refused: .*aborted by approver"):
        promote_op(abort_task_id="prod.abort").execute(context(ti, task_id="prod.promote"))
    assert hook.get_status()["idle"]["weight"] == 10
    assert hook.get_status()["version"] == "1.0.0"
    refused = run_events("gate_refused")
    assert [e.details["step"] for e in refused] == ["prod.canary_10", "prod.promote"]


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
        release=RELEASE,
        environment="prod",
        analysis_task_id="prod.canary_10",
        deciders=["approver", "author"],
    )
    # the analysis task's XCom is not its verdict: a forged "inconclusive" asks nobody
    ti = FakeTI({("prod.canary_10", "return_value"): {"outcome": "inconclusive", "stage": "canary 10%"}})
    with pytest.raises(AirflowSkipException, match="prod.canary_10 was not recorded: no decision needed"):
        op.execute(context(ti, task_id="prod.decide_10"))
    seed("analysis", environment="prod", task_id="prod.canary_10", outcome="successful", stage="canary 10%")
    with pytest.raises(AirflowSkipException, match="prod.canary_10 was successful: no decision needed"):
        op.execute(context(ti))
    seed(
        "analysis", environment="prod", task_id="prod.canary_10", outcome="inconclusive", stage="canary 10%", reason="r"
    )
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
    assert [e.actor for e in run_events("approval_refused")] == ["author"]
    rollback = {**answer, "chosen_options": ["Roll back"], "responded_by_user": {"id": "approver", "name": "a"}}
    with pytest.raises(AirflowFailException, match="approver chose to roll back"):
        op.execute_complete(context(ti), rollback)
    promote = {**answer, "responded_by_user": {"id": "approver", "name": "a"}}
    assert op.execute_complete(context(ti), promote)["choice"] == "Promote"
    with pytest.raises(AirflowFailException, match="nobody decided"):
        op.execute_complete(context(ti), {"timedout": True})
    decisions = [(e.actor, e.details["choice"], e.details["task_id"]) for e in run_events("analysis_decision")]
    assert decisions == [
        ("approver", "Roll back", "prod.decide_10"),
        ("approver", "Promote", "prod.decide_10"),
        ("", "Roll back", "prod.decide_10"),
    ]


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
    # the plan is what the plan task recorded in the ledger (its XCom is display only)
    plan = {"environment": "staging", "version": "1.0.0", "from_version": "2.0.0"}
    record(context(FakeTI(task_id="plan")), "rollback_requested", RELEASE, environment="staging", details=plan)
    ti = FakeTI({("plan", "return_value"): {"environment": "prod", "version": "1.0.0"}})  # forged
    op = rollback_op(ManualRollbackOperator)
    with pytest.raises(AirflowSkipException, match="for staging, not prod"):
        op.execute(context(ti, task_id="prod.rollback"))


def test_manual_rollback_without_a_recorded_plan_is_refused(fleet):
    state, url = fleet
    ti = FakeTI({("plan", "return_value"): {"environment": "prod", "version": "0.9.0"}})  # forged
    with pytest.raises(AirflowFailException, match="no rollback plan recorded in the ledger by plan"):
        rollback_op(ManualRollbackOperator).execute(context(ti, task_id="prod.rollback"))
    assert DeployTargetHook("t_prod").get_status()["version"] == "1.0.0" and not run_events("rollback")


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


class RecordingNotifier(BaseNotifier):
    """Stands in for a provider's notifier (Slack, SMTP): built from the spec's args."""

    sent: list[dict] = []

    def __init__(self, **kwargs):
        super().__init__()
        self.kwargs = kwargs

    def notify(self, context):
        RecordingNotifier.sent.append(self.kwargs)


def test_rollback_notifies_an_allowed_airflow_notifier_and_a_failing_one_is_recorded(fleet, monkeypatch):
    from releasetrain.core.spec import Notification, ReleaseSpecError  # noqa: F401

    # the deployment allows the notifier (a spec cannot)
    allowed = "tests.adapters.test_progressive.RecordingNotifier,tests.adapters.test_progressive.NoSuchNotifier"
    monkeypatch.setenv("AIRFLOW__RELEASETRAIN__ALLOWED_NOTIFIERS", allowed)
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
    assert json.loads(sent["blocks"][0]) == {**payload, "audience": "on-call"}, "the route's audience is in it"
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
        release=RELEASE,
        environment="prod",
        deploy_target_conn_id="t_prod",
        deploy_task_id="prod.deploy",
        analysis=analysis,
        stage="pre-promotion",
        route="preview",
    )
    ti = rollback_ti()
    with pytest.raises(AirflowFailException, match="2.0.0 is not on the target's idle colour"):
        op.execute(context(ti, task_id="prod.analysis"))
    hook = DeployTargetHook("t_prod")
    idle_deploy(state, hook)
    with pytest.raises(TaskDeferred):
        op.execute(context(ti))
    assert hook.get_status()["idle"]["weight"] == 0  # analysed on preview traffic, no live traffic moved
    assert not run_events("traffic_shifted")
    hook.promote()
    hook.abort()
    assert op.execute(context(ti))["outcome"] == "skipped"  # already live: nothing to analyse
    [skipped] = run_events("analysis")  # the skip is a verdict the next steps accept
    assert (skipped.details["outcome"], skipped.details["task_id"]) == ("skipped", "prod.analysis")


# --- the trust model: a step goes on only from the ledger records of the steps before it -------
# Each earlier step's XCom claims success (forged: any Airflow user can write XCom or mark a
# task "success"); only what the analysis task and the decide task recorded counts.
FORGED_SUCCESS = {("prod.canary_10", "return_value"): {"outcome": "successful", "stage": "canary 10%"}}


def verdict(outcome: str, **details) -> None:
    seed("analysis", environment="prod", task_id="prod.canary_10", outcome=outcome, stage="canary 10%", **details)


def decided(choice: str) -> None:
    seed("analysis_decision", environment="prod", actor="approver", task_id="prod.decide_10", choice=choice)


def by_hand() -> None:
    """The listener's record of a user setting prod.canary_10 to success in the UI (no verdict)."""
    seed("task_state", task_id="prod.canary_10", state="success", by_hand=True)


REFUSED_PRIORS = [
    pytest.param(
        [lambda: verdict("failed", reason="too many errors")],
        r"prod.canary_10's analysis failed: too many errors",
        id="failed",
    ),
    pytest.param(
        [by_hand],
        r"no analysis verdict recorded in the ledger by prod.canary_10 in this run \(it was set to success by hand",
        id="marked-success-by-hand",
    ),
    pytest.param(
        [], r"no analysis verdict recorded in the ledger by prod.canary_10 in this run \(was it marked", id="missing"
    ),
    pytest.param(
        [lambda: verdict("inconclusive")],
        r"prod.canary_10 was inconclusive and no decision to promote recorded in the ledger by prod.decide_10",
        id="inconclusive-undecided",
    ),
    pytest.param(
        [lambda: verdict("inconclusive"), lambda: decided("Roll back")],
        r"approver chose 'Roll back' at prod.decide_10",
        id="inconclusive-rolled-back",
    ),
    pytest.param(  # the analysis cleared and run again until it passed: the failure stands
        [lambda: verdict("failed", reason="too many errors"), lambda: verdict("successful")],
        r"prod.canary_10's analysis failed: too many errors .*final for prod in this run",
        id="failed-then-rerun-until-it-passed",
    ),
    pytest.param(  # the decision cleared and answered again: the Roll back stands
        [lambda: verdict("inconclusive"), lambda: decided("Roll back"), lambda: decided("Promote")],
        r"approver chose 'Roll back' at prod.decide_10 .*final for prod in this run",
        id="rolled-back-then-promoted",
    ),
]
ALLOWED_PRIORS = [
    pytest.param([lambda: verdict("successful")], id="successful"),
    pytest.param([lambda: verdict("skipped")], id="skipped"),
    pytest.param([lambda: verdict("inconclusive"), lambda: decided("Promote")], id="inconclusive-promoted"),
]


def canary_at_10(state) -> DeployTargetHook:
    """prod after canary_10 moved its traffic: 2.0.0 on the idle colour with 10% of live traffic."""
    hook = DeployTargetHook("t_prod")
    deploy_started(before_digest=state.env("prod")["digest"])
    idle_deploy(state, hook)
    hook.set_traffic(10)
    return hook


@pytest.mark.parametrize("records, reason", REFUSED_PRIORS)
def test_traffic_step_above_the_first_needs_the_earlier_verdict_in_the_ledger(fleet, records, reason):
    state, url = fleet
    hook = canary_at_10(state)
    for write in records:
        write()
    with pytest.raises(AirflowFailException, match=rf"^prod.canary_50 refused: {reason}.*; nothing was changed"):
        canary(50, ["prod.canary_10"]).execute(context(FakeTI(FORGED_SUCCESS), task_id="prod.canary_50"))
    assert hook.get_status()["idle"]["weight"] == 10 and not run_events("traffic_shifted")
    [refused] = run_events("gate_refused")
    assert refused.details["step"] == "prod.canary_50" and refused.details["task_id"] == "prod.canary_50"
    assert re.search(reason, refused.details["reasons"][0])  # the recorded refusal names the task


@pytest.mark.parametrize("records", ALLOWED_PRIORS)
def test_traffic_step_above_the_first_goes_on_from_the_earlier_verdict(fleet, records):
    state, url = fleet
    hook = canary_at_10(state)
    for write in records:
        write()
    with pytest.raises(TaskDeferred):
        canary(50, ["prod.canary_10"]).execute(context(FakeTI(), task_id="prod.canary_50"))
    assert hook.get_status()["idle"]["weight"] == 50
    assert [e.details["weight"] for e in run_events("traffic_shifted")] == [50] and not run_events("gate_refused")


@pytest.mark.parametrize("records, reason", REFUSED_PRIORS)
def test_promote_needs_every_verdict_in_the_ledger(fleet, records, reason):
    state, url = fleet
    hook = canary_at_10(state)
    for write in records:
        write()
    with pytest.raises(AirflowFailException, match=rf"^prod.promote refused: {reason}.*; nothing was changed"):
        promote_op(analysis_task_ids=["prod.canary_10"]).execute(
            context(FakeTI(FORGED_SUCCESS), task_id="prod.promote")
        )
    status = hook.get_status()
    assert status["version"] == "1.0.0" and status["idle"]["version"] == "2.0.0" and status["idle"]["weight"] == 10
    assert not run_events("promoted")
    [refused] = run_events("gate_refused")
    assert refused.details["step"] == "prod.promote" and re.search(reason, refused.details["reasons"][0])


@pytest.mark.parametrize("records", ALLOWED_PRIORS)
def test_promote_goes_on_from_the_verdicts(fleet, records):
    state, url = fleet
    hook = canary_at_10(state)
    for write in records:
        write()
    result = promote_op(analysis_task_ids=["prod.canary_10"]).execute(context(FakeTI(), task_id="prod.promote"))
    assert result["version"] == "2.0.0" and hook.get_status()["version"] == "2.0.0"
    [promoted] = run_events("promoted")
    assert promoted.details["task_id"] == "prod.promote" and promoted.details["replaced"] == "1.0.0"


def test_a_retried_promote_after_the_switch_still_leaves_its_proof(fleet):
    state, url = fleet
    canary_at_10(state)
    verdict("successful")
    op = promote_op(analysis_task_ids=["prod.canary_10"])
    op.execute(context(FakeTI(), task_id="prod.promote"))
    again = op.execute(context(FakeTI(), task_id="prod.promote"))  # a retry finds 2.0.0 already live
    assert again["noop"] is True
    assert [e.details.get("noop", False) for e in run_events("promoted")] == [False, True]


# --- the environment's last gate -------------------------------------------------------------
PROOFS = ["prod.verify", "prod.deploy", "prod.canary_10", "prod.promote", "prod.smoke"]
PROOF_RECORDS = {
    "prod.verify": lambda: seed("verified", environment="prod", task_id="prod.verify", version="2.0.0", digest=NEW),
    "prod.deploy": lambda: seed("deployed", environment="prod", task_id="prod.deploy", version="2.0.0", digest=NEW),
    "prod.canary_10": lambda: verdict("successful"),
    "prod.promote": lambda: seed("promoted", environment="prod", task_id="prod.promote", version="2.0.0"),
    "prod.smoke": lambda: seed("checks_passed", environment="prod", task_id="prod.smoke", checks=["smoke"]),
}


def passed_op() -> EnvironmentPassedOperator:
    return EnvironmentPassedOperator(task_id="prod.passed", release=RELEASE, environment="prod", proof_task_ids=PROOFS)


@pytest.mark.parametrize(
    "missing, what",
    [
        ("prod.verify", "'verified'"),
        ("prod.deploy", "'deployed'"),
        ("prod.canary_10", "analysis verdict"),
        ("prod.promote", "'promoted'"),
        ("prod.smoke", "'checks_passed'"),
    ],
)
def test_environment_passes_only_with_every_steps_record(missing, what):
    for task_id, write in PROOF_RECORDS.items():
        if task_id != missing:
            write()
    forged = FakeTI({(t, "return_value"): {"passed": True, "digest": NEW} for t in PROOFS})
    with pytest.raises(
        AirflowFailException, match=rf"prod pass refused: no {what} recorded in the ledger by {missing}"
    ):
        passed_op().execute(context(forged, task_id="prod.passed"))
    assert not run_events("environment_passed")
    [refused] = run_events("gate_refused")
    assert (
        refused.environment == "prod"
        and len(refused.details["reasons"]) == 1
        and missing in refused.details["reasons"][0]
    )


def test_environment_pass_records_the_verified_digest_and_refuses_another():
    for write in PROOF_RECORDS.values():
        write()
    seed("deployed", environment="prod", task_id="prod.deploy", version="2.0.0", digest="sha256:" + "c" * 64)
    with pytest.raises(AirflowFailException, match=r"prod.deploy recorded digest sha256:c+, not " + NEW):
        passed_op().execute(context(FakeTI(), task_id="prod.passed"))
    assert not run_events("environment_passed")
    PROOF_RECORDS["prod.deploy"]()
    result = passed_op().execute(context(FakeTI(), task_id="prod.passed"))
    assert result == {"environment": "prod", "digest": NEW, "version": "2.0.0", "passed": True}
    [passed] = run_events("environment_passed")
    assert (passed.environment, passed.details["digest"], passed.details["task_id"]) == ("prod", NEW, "prod.passed")


def test_a_run_that_ended_records_no_pass_again():
    """Attack: an old run's prod.passed cleared after its version was rolled back would record
    a fresh pass (a rollback candidate); and a backfill's new conf never names the version."""
    for write in PROOF_RECORDS.values():
        write()
    seed("run_state", actor="airflow", state="success", message="")
    with pytest.raises(AirflowFailException, match="prod pass refused: this run already ended success"):
        passed_op().execute(context(FakeTI(), task_id="prod.passed"))
    assert not run_events("environment_passed")


def test_the_pass_names_the_version_the_deploy_recorded_not_the_conf():
    for write in PROOF_RECORDS.values():
        write()
    rewritten = {**PARAMS, "version": "9.9.9"}
    result = passed_op().execute(context(FakeTI(), task_id="prod.passed", params=rewritten))
    assert result["version"] == "2.0.0"
