"""The postmortem review after a rollback: where the plan puts it, and what the evidence keeps."""

from __future__ import annotations

import pytest

from releasetrain.core.evidence import summarise
from releasetrain.core.ledger import LedgerEvent
from releasetrain.core.plan import PlanContext, plan_release
from releasetrain.core.spec import ReleaseSpecError, parse_spec
from releasetrain.core.vocabulary import Kind, Rule

GROUPS = {"commerce": ["carol", "dan"], "ops": ["olga"]}


def spec(postmortem=None, packaging="monolithic", **env):
    return parse_spec(
        {
            "name": "shop",
            "owner_team": "commerce",
            "packaging": packaging,
            "components": [{"name": "web", "source": "include/web"}, {"name": "api", "source": "include/api"}],
            "environments": [
                {"name": "dev", "deploy_target": "fleet_dev"},
                {"name": "prod", "deploy_target": "fleet_prod", **env},
            ],
            **({"postmortem": postmortem} if postmortem is not None else {}),
        },
        "test",
    )


def ctx(groups=GROUPS):
    return PlanContext(project_root="/srv", calendar_dirs=[], groups=groups)


def test_a_review_follows_each_environments_rollbacks_and_holds_nothing_up():
    plan = plan_release(spec({"deadline_minutes": 90}), ctx())
    for env in ("dev", "prod"):
        review = plan.steps[f"{env}.postmortem"]
        assert review.kind == Kind.POSTMORTEM and review.trigger_rule == Rule.ALL_DONE
        assert plan.upstream(f"{env}.postmortem") == [f"{env}.rollback"]
        assert plan.downstream(f"{env}.postmortem") == [], "the unlock and the next stage never wait for it"
        assert review.args["owners"] == ["carol", "dan"] and review.args["deadline_minutes"] == 90
        assert plan.steps[f"{env}.rollback"].args["postmortem_task_id"] == f"{env}.postmortem"
    without = plan_release(spec(), ctx())
    assert "prod.postmortem" not in without.steps and "postmortem_task_id" not in without.steps["prod.rollback"].args


def test_a_modular_release_reviews_every_units_rollback_at_once():
    plan = plan_release(spec({}, packaging="modular"), ctx())
    assert plan.upstream("prod.postmortem") == ["prod.rollback_api", "prod.rollback_web"]
    assert plan.steps["prod.postmortem"].args["deadline_minutes"] == 4320  # three days by default


def test_who_is_asked():
    named = plan_release(spec({"owners": ["olga"]}), ctx())
    assert named.steps["prod.postmortem"].args["owners"] == ["olga"]
    with pytest.raises(ReleaseSpecError, match="nobody to ask for dev's postmortem"):
        plan_release(spec({}), ctx({"ops": ["olga"]}))
    with pytest.raises(ReleaseSpecError, match="greater than or equal to 1"):
        spec({"deadline_minutes": 0})


def event(kind, actor="", environment="prod", **details):
    return LedgerEvent(
        seq=1, at="2026-11-29T10:00:00Z", release="shop", run_id="r", environment=environment, kind=kind,
        actor=actor, details=details,
    )  # fmt: skip


def test_the_evidence_keeps_the_review_or_that_it_was_overdue():
    assert "postmortems" not in summarise([event("rollback", restored_version="1.0.0")]), "older documents verify"
    summary = summarise(
        [
            event("postmortem_reviewed", "olga", findings="f", contributing_causes="c", actions="a"),
            event("postmortem_overdue", environment="dev", deadline_minutes=60),
        ]
    )
    assert summary["postmortems"] == [
        {"environment": "prod", "kind": "postmortem_reviewed", "actor": "olga", "at": "2026-11-29T10:00:00Z",
         "findings": "f", "contributing_causes": "c", "actions": "a"},
        {"environment": "dev", "kind": "postmortem_overdue", "actor": "", "at": "2026-11-29T10:00:00Z",
         "deadline_minutes": 60},
    ]  # fmt: skip


def test_a_review_asked_and_never_answered_shows_in_the_evidence():
    summary = summarise([event("postmortem_requested", owners=["olga"]), event("rollback", restored_version="1")])
    assert summary["postmortems"] == [{"environment": "prod", "kind": "postmortem_unanswered"}]
