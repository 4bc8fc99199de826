"""Progressive delivery: traffic steps with canary analysis, human decisions on
inconclusive analyses, promotion (the blue-green switch), and the manual abort.

The environment's deploy task puts the new version on the target's idle colour (no
traffic). Then, per strategy:

- ``canary``: ``canary_<w>`` per traffic step (weight ``w`` percent to the new version,
  then an analysis), each followed by ``decide_<w>``; then ``promote``;
- ``blue_green``: ``analysis`` (pre-promotion, on the idle colour's preview traffic),
  ``decide_analysis``, ``promote`` (the switch), and after the smoke and health gates
  ``watch`` (post-promotion analysis) with ``decide_watch``.

An analysis that fails (or errs) fails its task: the environment's ``rollback`` runs,
which takes the traffic off the canary, or switches back. An inconclusive analysis
passes to its ``decide_*`` task: a HITL request where a human chooses *Promote* or
*Roll back*, with the measurements in the request body (every ``decide_*`` task skips
itself when its analysis was conclusive). ``abort`` runs beside the whole rollout: a
HITL request that anyone allowed to release or approve may answer to abort and roll back;
it ends by itself when the rollout is over.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import BaseOperator, Param
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from releasetrain.core import gatekeeper
from releasetrain.core.approval import SegregationOfDutiesError, check_responder
from releasetrain.core.gatekeeper import Decision, RunLedger
from releasetrain.core.vocabulary import OPTION_ABORT, OPTION_PROMOTE, OPTION_ROLL_BACK, VERIFY, Event, env_task
from releasetrain.hooks.deploy_target import DeployTargetError, DeployTargetHook
from releasetrain.hooks.ledger import DEFAULT_CONN_ID as LEDGER_CONN_ID
from releasetrain.links import MetricsGraphLink
from releasetrain.operators._common import (
    assigned,
    dag_id_of,
    enforce,
    record,
    record_decision,
    release_request,
    run_ledger,
)
from releasetrain.operators._common import responder as responder_of
from releasetrain.operators.deploy import DeployTargetCalls, pre_deploy

# Airflow 3.3 can fail a deferred task "externally" when its trigger fires before the
# scheduler has processed the worker's exit from deferring (seen after 6 s on a loaded
# 2-core machine). These tasks are safe to run again (a weight already set is not set
# again; a promoted version is not promoted twice), so they retry; decisions raise
# AirflowFailException, which is never retried.
RACE_RETRIES = {"retries": 4, "retry_delay": timedelta(seconds=3)}
ABORTED_KEY = "aborted"
PROMOTE, ROLL_BACK = OPTION_PROMOTE, OPTION_ROLL_BACK


def _guard(context: Any, operator: Any, run: RunLedger, prior_task_ids: list[str]) -> None:
    """Refuse to move traffic once the rollout was aborted, without the target's lock, or
    before the steps before this one left their analysis verdicts in the ledger (a step
    marked successful by hand left none)."""
    from releasetrain.operators.lock import lock_decision

    decisions = [gatekeeper.not_aborted(run, operator.environment, operator.task_id)]
    if getattr(operator, "locked", False):
        decisions.append(lock_decision(context, operator.deploy_target_conn_id, operator.task_id, operator.release))
    decisions += [gatekeeper.analysis_proof(run, task_id, operator.environment) for task_id in prior_task_ids]
    enforce(context, Decision.combine(operator.task_id, decisions), operator.release, operator.environment)


class TrafficAnalysisOperator(DeployTargetCalls, BaseOperator):
    """Optionally shift traffic, then analyse the new version without a worker slot.

    :param weight: percent of live traffic for the new version (``None``: leave as is)
    :param analysis: the spec's analysis (``AnalysisPolicy`` fields plus ``provider``)
    :param stage: what is analysed, for people (``canary 10%``, ``pre-promotion``, ...)
    :param route: ``app`` (live traffic) or ``preview`` (the idle colour only); the
        ``${route}`` placeholder of queries and journeys
    :param journey: ``{"conn_id", "files": {name: path}}`` for journey metrics
    :param abort_task_id: the run's manual-abort task, if any
    :param prior_task_ids: the analyses before this one, whose verdicts (or a human's
        decision to promote) must be in the ledger before traffic moves on
    """

    operator_extra_links = (MetricsGraphLink(),)
    ui_color = "#fce8b2"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        deploy_target_conn_id: str,
        deploy_task_id: str,
        analysis: dict[str, Any],
        stage: str,
        weight: int | None = None,
        route: str = "app",
        journey: dict[str, Any] | None = None,
        abort_task_id: str | None = None,
        prior_task_ids: list[str] | None = None,
        locked: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**{**RACE_RETRIES, **kwargs})
        self.locked = locked
        self.release = release
        self.environment = environment
        self.deploy_target_conn_id = deploy_target_conn_id
        self.deploy_task_id = deploy_task_id
        self.prior_task_ids = list(prior_task_ids or [])
        self.analysis = dict(analysis)
        self.stage = stage
        self.weight = weight
        self.route = route
        self.journey = journey
        self.abort_task_id = abort_task_id

    def execute(self, context: Any) -> dict[str, Any] | None:
        from releasetrain.triggers.analysis import CanaryAnalysisTrigger

        run = run_ledger(context, self.release)
        _guard(context, self, run, self.prior_task_ids)
        version = release_request(context, self.release).version
        before = pre_deploy(run, self.environment, self.deploy_task_id) or {}
        hook = DeployTargetHook(self.deploy_target_conn_id)
        if self.weight is not None or self.route == "preview":  # the new version must be on the idle colour
            status = self._call(hook.get_status)
            idle = status.get("idle") or {}
            if status.get("version") == version and idle.get("version") != version:
                self.log.info("%s already serves %s on its live colour: no traffic to shift", self.environment, version)
                skipped = {"outcome": "skipped", "reason": f"{version} was already live", "stage": self.stage}
                record(context, Event.ANALYSIS, self.release, environment=self.environment, details=skipped)
                return skipped
            if idle.get("version") != version:
                raise AirflowFailException(
                    f"{self.environment}: {version} is not on the target's idle colour (idle: "
                    f"{idle.get('version') or 'none'}); the deploy task puts it there"
                )
            if self.weight is None:
                pass  # blue-green: the idle colour is analysed on its preview traffic
            elif idle.get("weight") == self.weight:  # an earlier try set it: say so once
                self.log.info("%s: %d%% of live traffic already goes to %s", self.environment, self.weight, version)
            else:
                self._shift(context, hook, version)
        values = {
            "release": self.release,
            "version": version,
            "baseline_version": before.get("version") or "",
            "environment": self.environment,
            "route": self.route,
        }
        started = run.of(Event.DEPLOY_STARTED, environment=self.environment, task_id=self.deploy_task_id)
        if started:  # a session baseline "before_deploy" counts the old version's sessions before this
            values["deployed_at"] = str(datetime.fromisoformat(started[0].at).timestamp())
        policy = {k: v for k, v in self.analysis.items() if k != "provider"}
        abort = (
            {"dag_id": context["dag"].dag_id, "run_id": context["run_id"], "task_id": self.abort_task_id}
            if self.abort_task_id
            else None
        )
        self.log.info(
            "Analysing %s %s (%s): %d measurements every %ss",
            self.environment,
            version,
            self.stage,
            policy.get("count", 3),
            policy.get("interval_seconds", 30),
        )
        interval, count = int(policy.get("interval_seconds", 30)), int(policy.get("count", 3))
        self.defer(
            trigger=CanaryAnalysisTrigger(
                policy=policy,
                provider=self.analysis["provider"],
                values=values,
                abort=abort,
                journey=self.journey,
                journal={
                    "ledger_conn_id": LEDGER_CONN_ID,
                    "release": self.release,
                    "environment": self.environment,
                    "dag_id": dag_id_of(context),
                    "run_id": context["run_id"],
                    "task_id": self.task_id,
                    "try_number": getattr(context["ti"], "try_number", 0),
                    # a new uuid for every try and every run row: a run deleted and triggered
                    # again under the same run id never resumes the old run's analysis
                    "ti_id": str(getattr(context["ti"], "id", "") or ""),
                },
            ),
            method_name="execute_complete",
            # errors do not count toward `count`; leave room for them, never wait forever
            timeout=timedelta(seconds=interval * (count + 10) * 2 + 300),
        )
        return None

    def _shift(self, context: Any, hook: DeployTargetHook, version: str) -> None:
        self._call(hook.set_traffic, weight=self.weight)
        details = {"version": version, "weight": self.weight, "stage": self.stage}
        record(context, Event.TRAFFIC_SHIFTED, self.release, environment=self.environment, details=details)
        self.log.info("%s: %d%% of live traffic now goes to %s", self.environment, self.weight, version)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        version = release_request(context, self.release).version
        result = {**event, "stage": self.stage, "weight": self.weight, "version": version}
        for i, measurement in enumerate(event.get("measurements") or [], start=1):
            self.log.info("measurement %d: %s: %s", i, measurement.get("verdict"), measurement.get("reason"))
        record_decision(
            context,
            Event.ANALYSIS,
            self.release,
            environment=self.environment,
            details={
                "stage": self.stage,
                "weight": self.weight,
                "version": version,
                "outcome": event["outcome"],
                "reason": event.get("reason", ""),
                "counts": event.get("counts", {}),
                "measurements": event.get("measurements", []),
            },
        )
        outcome = event["outcome"]
        self.log.info("Analysis of %s %s (%s): %s: %s", self.environment, version, self.stage, outcome, event["reason"])
        if outcome == "aborted":
            raise AirflowFailException(f"{self.environment} {self.stage}: {event['reason']}")
        if outcome in ("failed", "error"):
            context["ti"].xcom_push(key="return_value", value=result)
            raise AirflowFailException(
                f"{self.environment} {self.stage} analysis {outcome}: {event['reason']}; the rollback follows"
            )
        return result


def measurements_markdown(result: dict[str, Any]) -> str:
    """An analysis result as a Markdown table, for the people who decide on it."""
    lines = ["| # | Verdict | Score | Metrics |", "|---|---|---|---|"]
    for i, m in enumerate(result.get("measurements") or [], start=1):
        metrics = "; ".join(
            f"{r['name']}: {r['phase']}"
            + (f" ({r['canary']:.4g}" if isinstance(r.get("canary"), int | float) else " (no data")
            + (f" vs {r['baseline']:.4g})" if isinstance(r.get("baseline"), int | float) else ")")
            for r in m.get("metrics") or []
        )
        score = m.get("score")
        lines.append(
            f"| {i} | {m.get('verdict')} | {'-' if score is None else f'{score:.1f}'} | {metrics or m.get('reason')} |"
        )
    return "\n".join(lines)


class AnalysisDecisionOperator(HITLOperator):
    """A human decides on an inconclusive analysis: *Promote* or *Roll back*.

    Skips itself unless ``analysis_task_id`` ended inconclusive. Asked of ``deciders``
    minus the release's authors (re-checked at response time; a refused answer is recorded
    and the request is asked again). No answer before the timeout rolls back.
    """

    ui_color = "#fde293"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        analysis_task_id: str,
        deciders: list[str],
        timeout_hours: float = 4,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("retries", 2)  # the fast-answer race, as for approvals
        kwargs.setdefault("retry_delay", timedelta(seconds=5))
        super().__init__(
            subject=f"Inconclusive analysis of {release} in {environment}",
            options=[PROMOTE, ROLL_BACK],
            defaults=[ROLL_BACK],
            response_timeout=timedelta(hours=timeout_hours),
            **kwargs,
        )
        self.release = release
        self.environment = environment
        self.analysis_task_id = analysis_task_id
        self.deciders = list(deciders)

    def execute(self, context: Any) -> Any:
        run = run_ledger(context, self.release)
        verdict = run.last(Event.ANALYSIS, environment=self.environment, task_id=self.analysis_task_id)
        result = verdict.details if verdict else {}
        if result.get("outcome") != "inconclusive":
            # the next step checks the ledger's verdict itself: a missing one is refused there
            raise AirflowSkipException(
                f"{self.analysis_task_id} was {result.get('outcome') or 'not recorded'}: no decision needed"
            )
        # a "Roll back" (or a failed analysis) is final for the environment: never asked again
        enforce(context, gatekeeper.condemned(run, self.environment, self.task_id), self.release, self.environment)
        request = release_request(context, self.release)
        excluded = set(request.authors)
        eligible = [user for user in self.deciders if user not in excluded]
        if not eligible:
            raise AirflowFailException(
                f"{self.environment}: nobody may decide on the inconclusive analysis (deciders "
                f"{', '.join(self.deciders) or 'none'} are all authors); rolling back"
            )
        self.assigned_users = assigned(self, eligible)
        self.subject = (
            f"{self.release} {request.version} in {self.environment}: the {result.get('stage')} analysis is "
            "inconclusive. Promote or roll back?"
        )
        self.body = "\n".join(
            [
                f"**{result.get('reason')}**",
                "",
                measurements_markdown(result),
                "",
                f"May decide: {', '.join(eligible)} (authors cannot). No answer rolls back.",
            ]
        )
        record(
            context,
            Event.APPROVAL_REQUESTED,
            self.release,
            environment=self.environment,
            details={"task_id": self.task_id, "decision": "inconclusive analysis", "assigned": eligible},
        )
        return super().execute(context)

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        request = release_request(context, self.release)
        if event.get("timedout") or event.get("error_type") == "timeout":
            record_decision(
                context,
                Event.ANALYSIS_DECISION,
                self.release,
                environment=self.environment,
                details={"task_id": self.task_id, "choice": ROLL_BACK, "timed_out": True},
            )
            raise AirflowFailException(f"{self.environment}: nobody decided on the inconclusive analysis; rolling back")
        result = HITLOperator.execute_complete(self, context=context, event=event)
        choice = result["chosen_options"][0]
        responder = responder_of(result, request)
        try:
            check_responder(responder, self.deciders, set(request.authors))
        except SegregationOfDutiesError as exc:
            record_decision(
                context,
                Event.APPROVAL_REFUSED,
                self.release,
                environment=self.environment,
                actor=responder or "",
                details={"task_id": self.task_id, "reason": str(exc), "chosen": choice},
            )
            self.log.warning("decision refused (%s); asking again", exc)
            return self.execute(context)
        record_decision(
            context,
            Event.ANALYSIS_DECISION,
            self.release,
            environment=self.environment,
            actor=responder,
            details={"task_id": self.task_id, "choice": choice, "analysis_task_id": self.analysis_task_id},
        )
        if choice == ROLL_BACK:
            raise AirflowFailException(
                f"{responder} chose to roll back {self.release} {request.version} in {self.environment} "
                "after an inconclusive analysis"
            )
        self.log.info("%s chose to promote despite the inconclusive analysis", responder)
        return {**result, "choice": choice}


class PromoteOperator(BaseOperator):
    """Make the new version live: the last canary step's promotion, or the blue-green switch."""

    ui_color = "#ceead6"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        deploy_target_conn_id: str,
        abort_task_id: str | None = None,
        analysis_task_ids: list[str] | None = None,
        locked: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(**{**RACE_RETRIES, **kwargs})
        self.locked = locked
        self.release = release
        self.environment = environment
        self.deploy_target_conn_id = deploy_target_conn_id
        self.abort_task_id = abort_task_id
        self.analysis_task_ids = list(analysis_task_ids or [])

    def execute(self, context: Any) -> dict[str, Any]:
        _guard(context, self, run_ledger(context, self.release), self.analysis_task_ids)
        version = release_request(context, self.release).version
        hook = DeployTargetHook(self.deploy_target_conn_id)
        try:
            status = hook.get_status()
            idle = status.get("idle") or {}
            if status.get("version") == version and idle.get("version") != version:
                self.log.info("%s already serves %s: nothing to promote", self.environment, version)
                # seen on the target itself (a retry after the switch): the stage's proof all the same
                done = {"version": version, "noop": True}
                record(context, Event.PROMOTED, self.release, environment=self.environment, details=done)
                return {"environment": self.environment, **done}
            if idle.get("version") != version:
                raise AirflowFailException(
                    f"{self.environment}: {version} is not on the idle colour (idle: {idle.get('version') or 'none'})"
                )
            hook.promote()
            after = hook.get_status()
        except DeployTargetError as exc:
            raise AirflowException(f"{self.environment}: {exc}") from None
        if after.get("version") != version:
            raise AirflowException(
                f"{self.environment}: promoted, but the target serves {after.get('version')}, not {version}"
            )
        details = {
            "version": version,
            "colour": idle.get("colour"),
            "replaced": status.get("version"),
        }
        record(context, Event.PROMOTED, self.release, environment=self.environment, details=details)
        self.log.info("%s now serves %s from %s", self.environment, version, idle.get("colour"))
        return {"environment": self.environment, "noop": False, **details}


class RolloutAbortOperator(HITLOperator):
    """A standing "abort" request beside the rollout of a new version.

    Anyone in ``people`` (the environment's approvers and owners, and the release's
    authors: stopping one's own rollout is always allowed) may answer it in the Airflow UI
    (Required Actions) or over REST, with a reason. The answer resumes this task directly;
    it records who aborted and why, and fails, which starts the environment's rollback;
    the running analysis stops at once and no later step moves traffic. When the rollout
    ends first (``phase_task_ids`` finished), the request closes and the task skips.
    """

    ui_color = "#f6aea9"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        people: list[str],
        phase_task_ids: list[str],
        poll_interval: float = 5.0,
        **kwargs: Any,
    ) -> None:
        params = kwargs.pop("params", None) or {}
        params["reason"] = Param("", type="string", title="Why", maxLength=2000)
        super().__init__(
            subject=f"Abort the rollout of {release} in {environment}?",
            options=[OPTION_ABORT],
            params=params,
            **kwargs,
        )
        self.release = release
        self.environment = environment
        self.people = list(people)
        self.phase_task_ids = list(phase_task_ids)
        self.poll_interval = poll_interval

    def execute(self, context: Any) -> None:
        from airflow.sdk.execution_time.hitl import upsert_hitl_detail

        from releasetrain.triggers.phase import PhaseEndTrigger

        request = release_request(context, self.release)
        people = sorted(set(self.people) | set(request.authors))
        self.subject = f"Abort the rollout of {self.release} {request.version} in {self.environment}?"
        upsert_hitl_detail(
            ti_id=context["task_instance"].id,
            options=self.options,
            subject=self.subject,
            body=(
                f"{self.release} {request.version} is rolling out in **{self.environment}**. Answer to stop it: "
                "the analysis stops, no more traffic moves, and the environment is rolled back. This request "
                "closes by itself when the rollout is over."
            ),
            defaults=None,
            multiple=False,
            params=self.serialized_params,
            assigned_users=assigned(self, people) or None,
        )
        self.defer(
            trigger=PhaseEndTrigger(
                dag_id=context["dag"].dag_id,
                run_id=context["run_id"],
                task_ids=self.phase_task_ids,
                poll_interval=self.poll_interval,
            ),
            method_name="execute_complete",
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> None:
        if event.get("phase_over"):
            raise AirflowSkipException(f"the rollout in {self.environment} is over ({event.get('states')}): no abort")
        by = (event.get("responded_by_user") or {}).get("id") or "unknown"
        reason = str((event.get("params_input") or {}).get("reason") or "").strip()
        details = {"by": by, "reason": reason, "version": release_request(context, self.release).version}
        context["ti"].xcom_push(key=ABORTED_KEY, value=details)  # display; the steps read the ledger
        record_decision(context, Event.ABORTED, self.release, environment=self.environment, actor=by, details=details)
        raise AirflowFailException(
            f"{by} aborted the rollout in {self.environment}: {reason or 'no reason given'}; rolling back"
        )


class EnvironmentPassedOperator(BaseOperator):
    """The environment's last gate: the gatekeeper checks that every step of the stage left
    its record in the ledger (deploy, checks, analyses or decisions, promotion), then it
    records ``environment_passed`` with the digest the next environment must receive.

    A step marked successful by hand left no record: the environment does not pass.

    :param proof_task_ids: the stage's steps whose success must be on record
    """

    ui_color = "#ceead6"

    def __init__(self, *, release: str, environment: str, proof_task_ids: list[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.environment = environment
        self.proof_task_ids = list(proof_task_ids)

    def execute(self, context: Any) -> dict[str, Any]:
        run = run_ledger(context, self.release)
        step = f"{self.environment} pass"
        # a pass feeds the rollback candidates: never re-recorded by a cleared run
        enforce(context, gatekeeper.not_ended(run, step), self.release, self.environment)
        verified = run.last(Event.VERIFIED, environment=self.environment, task_id=env_task(self.environment, VERIFY))
        digest = verified.details.get("digest") if verified else None
        decision = gatekeeper.steps_passed(run, self.environment, self.proof_task_ids, digest=digest, step=step)
        enforce(context, decision, self.release, self.environment)
        # the version the deploy recorded (a backfill can rewrite a run's conf, never the ledger)
        deployed = run.last(Event.DEPLOYED, environment=self.environment)
        version = (deployed.details.get("version") if deployed else None) or release_request(
            context, self.release
        ).version
        result = {"environment": self.environment, "digest": digest, "version": version, "passed": True}
        record(context, Event.ENVIRONMENT_PASSED, self.release, environment=self.environment, details=result)
        self.log.info("%s passed with %s (%s)", self.environment, version, digest)
        return result
