"""The hotfix policy, decided from the request and the release's ledger (no Airflow)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from releasetrain.core.hotfix import decide_hotfix, in_test, production_contents
from releasetrain.core.request import ReleaseRequestError, build_request
from releasetrain.core.spec import ReleaseSpecError, parse_spec
from releasetrain.core.vocabulary import Event

POLICY = {"severities": ["sev1", "sev2"], "components": ["api"], "exclude_in_test": True}
PROD = {"web": {"1.0.0"}, "api": {"1.0.0"}}


@dataclass
class E:
    kind: str
    run_id: str
    environment: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    dag_id: str = "release_shop"


def packaged(run: str, **versions: str) -> E:
    return E(Event.PACKAGED, run, details={"components": [{"name": k, "version": v} for k, v in versions.items()]})


@pytest.mark.parametrize(
    ("severity", "planned", "testing", "reasons"),
    [
        ("sev1", {"web": "1.0.0", "api": "1.0.1"}, {}, []),
        ("sev3", {"web": "1.0.0", "api": "1.0.1"}, {}, ["severity sev3 is not one a hotfix may be for (sev1, sev2)"]),
        ("sev2", {"web": "1.0.1", "api": "1.0.1"}, {}, ["component web may not change in a hotfix (allowed: api)"]),
        (
            "sev1",
            {"web": "1.0.0", "api": "1.1.0"},
            {"api 1.1.0": ["r7"]},
            ["component api 1.1.0 is still in test in run r7"],
        ),
        (
            "sev1",
            {"web": "1.0.0", "api": "1.0.0"},
            {},
            ["nothing changes against production: a hotfix must change something"],
        ),
    ],
)
def test_a_hotfix_is_allowed_only_within_the_policy_and_each_missed_criterion_is_named(
    severity, planned, testing, reasons
):
    decision = decide_hotfix(POLICY, severity, planned, PROD, testing)
    assert decision.reasons == reasons and decision.allowed is (not reasons)
    if not reasons:
        assert decision.changed == {"api": "1.0.1"}


def pkg(run: str, version: str, **components: str) -> E:
    return E(
        Event.PACKAGED,
        run,
        details={
            "version": version,
            "digest": f"d{version}",
            "components": [{"name": k, "version": v} for k, v in components.items()],
        },
    )


def test_production_and_what_is_in_test_come_from_the_ledger():
    events = [
        pkg("r1", "1.0.0", web="1.0.0", api="1.0.0"),
        E(Event.DEPLOYED, "r1", "prod", details={"version": "1.0.0"}),
        E(Event.ENVIRONMENT_PASSED, "r1", "prod"),
        pkg("r2", "1.1.0", web="1.1.0", api="1.1.0"),  # open, in staging
        pkg("r3", "1.2.0", web="1.2.0", api="1.2.0"),
        E(Event.RUN_STATE, "r3", details={"state": "failed"}),  # ended: nothing in test
        pkg("r4", "2.0.0", web="1.0.0", api="2.0.0"),
        E(Event.DEPLOYED, "r4", "prod", details={"version": "2.0.0", "slot": "idle"}),  # never promoted
        E(Event.RUN_STATE, "r4", details={"state": "failed"}),
        pkg("now", "1.0.1", web="1.0.0", api="1.0.1"),
    ]
    assert production_contents(events, ["prod"]) == {"web": {"1.0.0"}, "api": {"1.0.0"}}, (
        "the idle colour is no production"
    )
    assert in_test(events, ["prod"], "now") == {"web 1.1.0": ["r2"], "api 1.1.0": ["r2"]}


def test_another_dag_ending_a_run_of_the_same_id_does_not_end_the_run_in_test():
    events = [pkg("r2", "1.1.0", api="1.1.0"), E(Event.RUN_STATE, "r2", details={"state": "failed"})]
    events[0].dag_id, events[1].dag_id = "release_shop", "rollback_shop"
    assert in_test(events, ["prod"], "now", "release_shop") == {"api 1.1.0": ["r2"]}


def test_a_component_differing_in_any_production_environment_is_changed():
    decision = decide_hotfix(
        POLICY, "sev1", {"web": "1.0.0", "api": "1.0.1"}, {"web": {"1.0.0", "0.9.0"}, "api": {"1.0.0"}}, {}
    )
    assert (
        decision.changed == {"api": "1.0.1", "web": "1.0.0"} and "component web may not change" in decision.reasons[0]
    )


def test_a_hotfix_run_states_its_severity_and_incident():
    def request(**params):
        base = {"version": "1.0.1", "requested_by": None, "change_summary": "", **params}
        return build_request(
            release="shop",
            dag_id="release_shop",
            run_id="r",
            params=base,
            conf=base,
            triggering_user="alice",
            run_type="manual",
        )

    with pytest.raises(ReleaseRequestError, match="param 'severity': a hotfix states its severity"):
        request(hotfix=True, incident="INC-1")
    with pytest.raises(ReleaseRequestError, match="param 'incident': a hotfix names the incident"):
        request(hotfix=True, severity="sev1")
    fixed = request(hotfix=True, severity="sev1", incident="INC-4711")
    assert (fixed.hotfix, fixed.severity, fixed.incident) == (True, "sev1", "INC-4711")
    assert request(severity="sev1", incident="INC-1").severity == "", "only a hotfix carries a severity"


def test_a_policy_names_only_components_of_the_release():
    base = {
        "name": "shop",
        "owner_team": "t",
        "components": [{"name": "web", "source": "include/web"}],
        "environments": [{"name": "dev", "deploy_target": "d"}],
    }
    with pytest.raises(ReleaseSpecError, match=r"hotfix_policy.components: \['api'\] are not components"):
        parse_spec({**base, "hotfix_policy": {"components": ["api"]}})
    assert parse_spec({**base, "hotfix_policy": {}}).hotfix_policy.severities == ["sev1", "sev2"]


def test_after_a_rollback_production_runs_what_the_rollback_restored():
    events = [
        pkg("r1", "1.0.0", api="1.0.0"),
        E(Event.DEPLOYED, "r1", "prod", details={"version": "1.0.0"}),
        pkg("r2", "1.1.0", api="1.1.0"),
        E(Event.DEPLOYED, "r2", "prod", details={"version": "1.1.0"}),
        E(Event.ROLLBACK, "r2", "prod", details={"restored_version": "1.0.0", "restored_digest": "d1.0.0"}),
    ]
    assert production_contents(events, ["prod"]) == {"api": {"1.0.0"}}
    assert production_contents(events[:4], ["prod"]) == {"api": {"1.1.0"}}
