"""Deploy a verified bundle to an environment's deploy target, and wait without a worker."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from releasetrain.core import gatekeeper
from releasetrain.core.change import ChangeState
from releasetrain.core.gatekeeper import Decision, RunLedger
from releasetrain.core.request import ReleaseRequest
from releasetrain.core.vocabulary import ASSESS_RISK, Event
from releasetrain.hooks.deploy_target import DeployTargetError, DeployTargetHook
from releasetrain.links import BundleLink, ChangeRecordLink, TargetStatusLink
from releasetrain.operators._common import enforce, record, release_request, run_ledger
from releasetrain.triggers.deployment import TERMINAL_STATES, DeploymentCompletionTrigger, completion_event

PRE_DEPLOY_KEY = "pre_deploy"


def pre_deploy(run: RunLedger, environment: str, deploy_task_id: str) -> dict[str, Any] | None:
    """What ``environment`` ran before this run's deploy task first touched it (the ledger)."""
    started = run.of(Event.DEPLOY_STARTED, environment=environment, task_id=deploy_task_id)
    return dict(started[0].details["before"]) if started else None


class DeployTargetCalls:
    """What operators that talk to a deploy target share: target errors named with the
    environment (``call_prefix`` first), and deferred waits for a deployment to end."""

    call_prefix = ""
    environment: str
    deploy_target_conn_id: str
    unit: str | None = None  # packaging modular: the deploy unit this task moves
    deploy_timeout_seconds: float = 900
    poll_interval: float = 2.0

    def _hook(self) -> DeployTargetHook:
        """The target; a deploy unit's own endpoints on it (packaging: modular)."""
        return DeployTargetHook(self.deploy_target_conn_id, component=self.unit)

    def _call(self, fn: Any, **kwargs: Any) -> dict[str, Any]:
        try:
            return fn(**kwargs)
        except DeployTargetError as exc:
            raise AirflowException(f"{self.call_prefix}{self.environment}: {exc}") from None

    def _wait(
        self, context: Any, hook: DeployTargetHook, deployment_id: str, method_name: str = "execute_complete"
    ) -> Any:
        """Wait for a deployment to end, in the triggerer. A target that has already finished
        it (a fast deploy) says so at a first look, one request right after the start, and the
        task goes on at once: no deferral round trip (task exit, trigger, a new task process)
        for a wait that is over. Returns what ``method_name`` returns in that case."""
        try:
            deployment = hook.get_deployment(deployment_id)
        except DeployTargetError:
            deployment = {}  # the trigger asks again, with its error budget
        state = str(deployment.get("state", ""))
        if state in TERMINAL_STATES:
            event = completion_event(deployment_id, state, str(deployment.get("message", "")), deployment)
            return getattr(self, method_name)(context, event)
        self.defer(  # type: ignore[attr-defined]
            trigger=DeploymentCompletionTrigger(
                deploy_target_conn_id=self.deploy_target_conn_id,
                deployment_id=deployment_id,
                poll_interval=self.poll_interval,
                timeout_seconds=self.deploy_timeout_seconds,
            ),
            method_name=method_name,
            timeout=timedelta(seconds=self.deploy_timeout_seconds + 60),
        )


class EnvironmentDeployOperator(DeployTargetCalls, BaseOperator):
    """Deploy version + digest to one environment, once the gatekeeper allows it.

    Every gate is decided from the run's ledger (:mod:`releasetrain.core.gatekeeper`),
    never from XCom or task states: the verified digest, the previous environment's pass
    with that digest, the approvals against the risk assessment's gates, the window
    decision, the owners. A refusal is recorded (``gate_refused``) and fails the task.

    - Promotion: the digest must be the one that passed ``previous_environment``
      (its ``environment_passed`` record, written by ``promotion_gate_task_id``).
    - Idempotent: if the target already runs this version and digest, nothing is sent.
    - Before changing anything, the target's current version is recorded in the ledger
      (``deploy_started``; XCom ``pre_deploy`` for display) so that a rollback knows where
      to return, whatever a later try or a user does.
    - Waiting for the target is deferred to :class:`DeploymentCompletionTrigger`.

    :param release: release name
    :param environment: environment name
    :param deploy_target_conn_id: the environment's deploy target connection
    :param verify_task_id: the task that verified the bundle for this environment
    :param previous_environment: the environment before this one, if any
    :param promotion_gate_task_id: the last gate of the previous environment
    :param approval_task_ids: the environment's approval tasks (quorum slots and
        readiness reviews); the approvals they recorded are checked again here against the
        gates the risk assessment selected: distinct, non-author, eligible, for this very
        digest (an approval task marked "success" by hand records no approval and stops
        the deploy)
    :param approvers: the quorum pool
    :param review_members: review group -> members
    :param quorum: the spec's quorum; ``reviews``: the spec's review groups
    :param owners: members of the group owning the environment: only they may release into it
    :param production: a production environment: the change record must be in Implement
    :param slot: ``idle`` for progressive strategies: the new version goes to the target's
        idle colour and takes no traffic until the rollout's steps move it
    :param requires: shared services that must run a minimum version first (``depends_on``)
    :param locked: the stage takes the target's lock first; the deploy refuses without it
    :param drift_task_id: the stage's drift check: its ledger record (no drift, or drift an
        owner accepted) must be there
    :param config: the environment's configuration profile (``{version, sha256, values,
        secrets}``, secrets as references): sent with the deployment, its secrets resolved
        here and only here; the ledger and XCom get its version and digest
    :param baseline_task_id: the stage's baseline step (a change advisory board): the
        profile's digest must have been approved for the environment (the ledger's
        ``baseline_approved``, this run's or an earlier one's)
    :param scope_task_id: the release's scope freeze check: its latest record must say the
        contents are in scope, or that an exception was granted
    :param libraries_task_id: the release's library check (several components): no
        conflicting versions, or a waiver, on record
    :param suite_task_ids: the test suites of earlier environments a production deploy
        waits for: each one's latest record must say it passed on this digest
    :param unit: packaging modular: the deploy unit this task deploys, its own bundle (the
        digest this environment's verify step recorded for it) on the target's
        ``components/<unit>/`` endpoints; every gate is still decided on the release bundle's digest
    :param components: the unit's components (for the record)
    :param migrate_task_id: the stage's schema migrations: its ``migrated`` record for this
        digest must be there, and each database's live schema (its journal, read now) must be in
        the range this version declared when it was packaged (``schemas``: component -> ``{conn_id, path}``)
    :param earlier_unit_task_ids: the deploys of the units before this one: each must have
        recorded its deployment of this release bundle (one marked successful by hand did not,
        and no later unit then ships: the environment is never left with half of a release)
    """

    operator_extra_links = (
        ChangeRecordLink(),
        TargetStatusLink(),
        BundleLink(),
    )
    ui_color = "#d2e3fc"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        deploy_target_conn_id: str,
        verify_task_id: str,
        previous_environment: str | None = None,
        promotion_gate_task_id: str | None = None,
        approval_task_ids: list[str] | None = None,
        approvers: list[str] | None = None,
        review_members: dict[str, list[str]] | None = None,
        quorum: int = 1,
        reviews: list[str] | None = None,
        owners: list[str] | None = None,
        production: bool = False,
        window_task_id: str | None = None,
        requires: list[dict[str, Any]] | None = None,
        deploy_timeout_seconds: float = 900,
        poll_interval: float = 2.0,
        slot: str | None = None,
        locked: bool = False,
        config: dict[str, Any] | None = None,
        drift_task_id: str | None = None,
        baseline_task_id: str | None = None,
        suite_task_ids: list[str] | None = None,
        scope_task_id: str | None = None,
        scope_freeze: dict[str, Any] | None = None,
        production_environments: list[str] | None = None,
        libraries_task_id: str | None = None,
        admit_task_id: str | None = None,
        unit: str | None = None,
        components: list[str] | None = None,
        earlier_unit_task_ids: list[str] | None = None,
        migrate_task_id: str | None = None,
        schemas: dict[str, dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        # Retried only for infrastructure trouble and Airflow 3.3's race between a fast
        # trigger and the scheduler noticing the deferral ("killed externally"): a retry
        # re-attaches to the running deployment or finds the version live. A deployment
        # that failed, or a refused gate, raises AirflowFailException: never retried.
        kwargs.setdefault("retries", 2)
        kwargs.setdefault("retry_delay", timedelta(seconds=3))
        super().__init__(**kwargs)
        self.slot = slot
        self.locked = locked
        self.config = config
        self.drift_task_id = drift_task_id
        self.baseline_task_id = baseline_task_id
        self.suite_task_ids = list(suite_task_ids or [])
        self.scope_task_id = scope_task_id
        self.scope_freeze = dict(scope_freeze or {})
        self.production_environments = list(production_environments or [])
        self.libraries_task_id = libraries_task_id
        self.admit_task_id = admit_task_id
        self.unit = unit
        self.components = list(components or [])
        self.earlier_unit_task_ids = list(earlier_unit_task_ids or [])
        self.migrate_task_id = migrate_task_id
        self.schemas = {k: dict(v) for k, v in (schemas or {}).items()}
        if baseline_task_id and not config:
            raise ValueError("baseline_task_id needs the config profile it approves")
        if (previous_environment is None) != (promotion_gate_task_id is None):
            raise ValueError("previous_environment and promotion_gate_task_id go together")
        if approval_task_ids and not approvers:
            raise ValueError("approval_task_ids need the approvers to check them against")
        self.approval_task_ids = list(approval_task_ids or [])
        self.approvers = list(approvers or [])
        self.review_members = {k: list(v) for k, v in (review_members or {}).items()}
        self.quorum = quorum
        self.reviews = list(reviews or [])
        self.owners = list(owners) if owners is not None else None
        self.production = production
        self.window_task_id = window_task_id
        self.requires = list(requires or [])
        self.release = release
        self.environment = environment
        self.deploy_target_conn_id = deploy_target_conn_id
        self.verify_task_id = verify_task_id
        self.previous_environment = previous_environment
        self.promotion_gate_task_id = promotion_gate_task_id
        self.deploy_timeout_seconds = deploy_timeout_seconds
        self.poll_interval = poll_interval

    def execute(self, context: Any) -> dict[str, Any]:
        request = release_request(context, self.release)
        version = request.version
        run = run_ledger(context, self.release)
        digest = self._verified_digest(context, run)
        enforce(context, self._gates(context, run, request, digest), self.release, self.environment)
        if self.scope_task_id:  # the contents are within the frozen scope, or an exception was granted
            enforce(context, self._scope_holds(context, run), self.release, self.environment)
        if self.libraries_task_id:  # no conflicting library versions across components, or a waiver
            enforce(context, gatekeeper.libraries(run, self.libraries_task_id), self.release, self.environment)
        if self.suite_task_ids:  # the earlier environments' test suites passed on these bytes
            decision = gatekeeper.suites_passed(run, self.suite_task_ids, digest, self.task_id)
            enforce(context, decision, self.release, self.environment)
        if self.baseline_task_id:  # the profile about to be sent is one the change advisory board approved
            enforce(context, self._baseline_approved(run, request), self.release, self.environment)
        if self.requires:  # the shared services it needs, asked again now (the waiting step proves nothing)
            from releasetrain.operators.dependency import requirements_decision

            enforce(context, requirements_decision(self.requires, self.task_id), self.release, self.environment)
        if self.window_task_id:
            self._check_window_now(run)
        if self.production:
            from releasetrain.operators.governance import move_change

            move_change(
                context, self.release, ChangeState.IMPLEMENT, f"deploying {version} ({digest}) to {self.environment}"
            )

        release_digest, digest = digest, self._target_digest(context, run, digest)
        hook = self._hook()
        live = self._call(hook.get_status)
        if self.drift_task_id:  # under the lock: the target is still what the drift check saw
            enforce(context, self._drift_holds(run, live), self.release, self.environment)
        already_live = live.get("version") == version and live.get("digest") == digest
        if self.config and already_live:  # the same bytes with another profile (or edited settings) is a change too
            from releasetrain.core.profile import values_digest

            reported = live.get("config") or {}
            already_live = reported.get("sha256") == self.config["sha256"] and values_digest(
                reported.get("values")
            ) == values_digest(self.config.get("values"))
        before = self._before(context, run, live, version, digest, already_live, release_digest)
        running = live.get("in_progress") or {}
        if (running.get("version"), running.get("digest"), running.get("run_id")) == (
            version,
            digest,
            context["run_id"],
        ):
            self.log.info(
                "%s: re-attaching to deployment %s started by an earlier try",
                self.environment,
                running["deployment_id"],
            )
            return self._wait(context, hook, str(running["deployment_id"]))
        if already_live:
            self.log.info(
                "%s already runs %s %s (%s): nothing to deploy", self.environment, self.release, version, digest
            )
            # a retry finding its own first try's deployment live is no no-op: the record says
            # what ran before this run (the first try's record), and that this run changed it
            noop = bool(before.get("noop", True))
            return self._result(
                version, digest, before, deployment_id=None, noop=noop, context=context, release_digest=release_digest
            )

        self.log.info(
            "Deploying %s %s (%s) to %s%s, replacing %s",
            self.release,
            version,
            digest,
            self.environment,
            " (idle colour, no traffic yet)" if self.slot == "idle" else "",
            live.get("version") or "nothing",
        )
        started = self._call(
            hook.start_deployment,
            release=self.release,
            version=version,
            digest=digest,
            run_id=context["run_id"],
            slot=self.slot,
            bundle=self._bundle(run, digest),
            config=self._profile(),
        )
        if started.get("state") == "succeeded":
            return self._result(
                version,
                digest,
                live,
                deployment_id=started.get("deployment_id"),
                noop=bool(started.get("noop")),
                context=context,
                release_digest=release_digest,
            )
        return self._wait(context, hook, str(started["deployment_id"]))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        version = release_request(context, self.release).version
        if event["state"] != "succeeded":
            record(
                context,
                Event.DEPLOY_FAILED,
                self.release,
                environment=self.environment,
                details={"version": version, "state": event["state"], "message": event.get("message") or ""},
            )
            raise AirflowFailException(
                f"deploying {self.release} {version} to {self.environment} ended {event['state']}: "
                f"{event['message'] or 'no message from the target'} (deployment {event['deployment_id']})"
            )
        deployment = event["deployment"]
        run = run_ledger(context, self.release)
        release_digest = self._verified_digest(context, run)
        digest = self._target_digest(context, run, release_digest)
        if (deployment.get("version"), deployment.get("digest")) != (version, digest):
            raise AirflowFailException(
                f"{self.environment}: the target reports {deployment.get('version')} "
                f"({deployment.get('digest')}) for deployment {event['deployment_id']}, "
                f"but {version} ({digest}) was deployed"
            )
        pre = pre_deploy(run_ledger(context, self.release), self.environment, self.task_id) or {}
        self.log.info(
            "%s now runs %s %s (deployment %s)", self.environment, self.release, version, event["deployment_id"]
        )
        return self._result(
            version,
            digest,
            pre,
            deployment_id=event["deployment_id"],
            noop=False,
            context=context,
            release_digest=release_digest,
        )

    def _scope_holds(self, context: Any, run: RunLedger) -> Decision:
        """The scope step's record, and the scope judged again now: it may have frozen (or an
        exception changed it) since the step checked this run."""
        decision = gatekeeper.scope(run, self.scope_task_id)
        if not decision.allowed or not self.scope_freeze:
            return decision
        from releasetrain.operators.scope import judge_scope

        now = judge_scope(context, self.release, self.scope_freeze, self.production_environments)
        if now.outcome == "change":
            return Decision.refuse(
                self.scope_task_id,
                f"the scope is frozen now ({now.frozen.source if now.frozen else ''}) and this run's contents are "
                f"outside it ({'; '.join(now.changes)}): clear {self.scope_task_id} to ask for an exception",
            )
        return decision

    def _baseline_approved(self, run: RunLedger, request: ReleaseRequest) -> Decision:
        from releasetrain.hooks.ledger import LedgerHook

        hook = LedgerHook()
        try:
            approvals = list(hook.events(release=self.release, kind=Event.BASELINE_APPROVED))
        finally:
            hook.close()
        return gatekeeper.baseline(
            run, approvals, self.environment, self.config["sha256"], self.baseline_task_id, request.authors
        )

    def _drift_holds(self, run: RunLedger, live: dict[str, Any]) -> Decision:
        """The drift step's record (no drift, or drift accepted) and the target as it is now:
        settings changed since the check are a drift nobody has seen."""
        from releasetrain.core.profile import values_digest

        decision = gatekeeper.drift(run, self.environment, self.drift_task_id)
        if not decision.allowed:
            return decision
        seen = (gatekeeper.drift_record(run, self.environment, self.drift_task_id) or {}).get("reported")
        reported = live.get("config")
        now = (
            {"sha256": reported.get("sha256"), "values_digest": values_digest(reported.get("values"))}
            if reported
            else None
        )
        ours = {"sha256": self.config["sha256"], "values_digest": values_digest(self.config.get("values"))}
        if seen != now and now != ours:  # this run's own profile: an earlier try of this deploy put it there
            return Decision.refuse(
                self.drift_task_id,
                f"the configuration of {self.environment} changed after {self.drift_task_id} checked it: "
                f"clear {self.drift_task_id} to check it again",
            )
        return Decision.allow(self.drift_task_id)

    @property
    def profile(self) -> dict[str, str] | None:
        """What may be shown of the profile: version, digest and plain values (the baseline a
        later drift check compares the target with)."""
        if not self.config:
            return None
        return {
            "version": self.config["version"],
            "sha256": self.config["sha256"],
            "values": dict(self.config.get("values") or {}),  # never a secret: those are references
        }

    def _profile(self) -> dict[str, Any] | None:
        """The profile as the target gets it: values, and secrets resolved now (masked in logs)."""
        if not self.config:
            return None
        from releasetrain.hooks.config_profile import ConfigProfileError, ConfigProfileHook

        try:
            secrets = ConfigProfileHook(self.environment).resolve(self.config.get("secrets") or {})
        except ConfigProfileError as exc:
            raise AirflowFailException(str(exc)) from None
        return {**self.profile, "secrets": secrets}

    def _bundle(self, run: RunLedger, digest: str) -> dict[str, Any] | None:
        """Where the target fetches the bundle, and its signature document, for the target to
        verify against its own pinned key (the location is the packaging's ledger record).
        None when neither can be found: a target that verifies then refuses the deployment."""
        import json

        from airflow.sdk import ObjectStoragePath

        from releasetrain.hooks.bundle_store import BundleStoreHook

        packaged = run.last(Event.PACKAGED)
        location = packaged.details.get("location") if packaged else None
        if packaged and self.unit:  # a deploy unit's own bundle
            unit = next((u for u in packaged.details.get("units") or [] if u.get("unit") == self.unit), {})
            location, packaged = (unit.get("location"), packaged) if unit.get("digest") == digest else (None, None)
        elif packaged and packaged.details.get("digest") != digest:
            location = None
        if not location:
            self.log.warning("%s: no packaged bundle %s in the ledger to hand the target", self.environment, digest)
            return None
        folder = ObjectStoragePath(location)
        try:
            signature = json.loads((folder / BundleStoreHook.SIGNATURE).read_text())
        except (OSError, ValueError) as exc:
            self.log.warning("%s: the bundle's signature cannot be read: %s", self.environment, exc)
            return None
        return {"url": str(folder / BundleStoreHook.BUNDLE), "signature": signature}

    def _before(
        self,
        context: Any,
        run: RunLedger,
        live: dict[str, Any],
        version: str,
        digest: str,
        already_live: bool,
        release_digest: str | None = None,
    ) -> dict[str, Any]:
        """What the environment ran before this run touched it: recorded in the ledger before the
        first try changes anything, and read back from there by every later try and the rollback."""
        before = pre_deploy(run, self.environment, self.task_id)
        if before is None:
            before = {"version": live.get("version"), "digest": live.get("digest"), "noop": already_live}
            record(
                context,
                Event.DEPLOY_STARTED,
                self.release,
                environment=self.environment,
                details={
                    "version": version,
                    "digest": digest,
                    "before": before,
                    **self._unit_details(release_digest),
                    **({"config": self.profile} if self.config else {}),
                },
            )
        context["ti"].xcom_push(key=PRE_DEPLOY_KEY, value=before)  # display only
        return before

    def _unit_details(self, release_digest: str | None) -> dict[str, Any]:
        """A deploy unit's records name the unit, its components and the release bundle's digest
        (what was approved and promoted); ``digest`` is the unit bundle's, what the target runs."""
        if not self.unit:
            return {}
        return {"unit": self.unit, "components": list(self.components), "release_digest": release_digest}

    def _target_digest(self, context: Any, run: RunLedger, release_digest: str) -> str:
        """What the target is to run: the release bundle's digest, or (packaging modular) this
        unit's bundle, as this environment's verify step checked it against that release bundle."""
        if not self.unit:
            return release_digest
        verified = run.last(Event.VERIFIED, environment=self.environment, task_id=self.verify_task_id)
        unit_digest = ((verified.details if verified else {}).get("units") or {}).get(self.unit)
        if not unit_digest:
            reason = f"{self.verify_task_id} verified no bundle for unit {self.unit}: nothing of it will be deployed"
            enforce(context, Decision.refuse(self.task_id, reason), self.release, self.environment)
        return str(unit_digest)

    def _verified_digest(self, context: Any, run: RunLedger) -> str:
        from releasetrain.operators._common import verified_digest

        return verified_digest(context, run, self.release, self.environment, self.verify_task_id)

    def _gates(self, context: Any, run: RunLedger, request: ReleaseRequest, digest: str) -> Decision:
        """Everything this deploy relies on, decided by the gatekeeper from the run's ledger."""
        decisions = [self._owner(request)]
        if self.locked:
            from releasetrain.operators.lock import lock_decision

            decisions.append(lock_decision(context, self.deploy_target_conn_id, self.task_id, self.release))
        if self.previous_environment and self.promotion_gate_task_id:
            decisions.append(
                gatekeeper.environment_passed(
                    run, self.previous_environment, digest, gate_task_id=self.promotion_gate_task_id
                )
            )
        if self.approval_task_ids:
            gates = gatekeeper.risk_gates(run, self.environment, self.quorum, self.reviews, assess_task_id=ASSESS_RISK)
            if isinstance(gates, Decision):
                decisions.append(gates)
            else:
                quorum, reviews = gates
                decisions.append(
                    gatekeeper.approvals(
                        run,
                        self.environment,
                        digest=digest,
                        quorum=quorum,
                        reviews=reviews,
                        pool=self.approvers,
                        review_members=self.review_members,
                        authors=request.authors,
                        step=f"{self.environment} approvals",
                        task_ids=self.approval_task_ids,
                    )
                )
        if self.window_task_id:
            decisions.append(gatekeeper.window(run, self.environment, self.window_task_id))
        if self.admit_task_id:
            decisions.append(self._train(context, run))
        decisions += [
            gatekeeper.step_proof(run, earlier, self.environment, digest=digest)
            for earlier in self.earlier_unit_task_ids
        ]
        if self.migrate_task_id:
            decisions.append(gatekeeper.migrated(run, self.environment, self.migrate_task_id, digest))
            decisions.append(self._schemas_fit(run, request))
        return Decision.combine(self.task_id, decisions)

    def _schemas_fit(self, run: RunLedger, request: ReleaseRequest) -> Decision:
        """Each database's live schema (its journal, read now) is in the range this version
        declared (recorded when it was packaged)."""
        from releasetrain.core.migration import (
            MigrationError,
            compatibility_problem,
            schema_version,
            unresolved_failure,
        )
        from releasetrain.core.vocabulary import PACKAGE
        from releasetrain.hooks.schema import SchemaDatabaseHook

        packaged = run.last(Event.PACKAGED, task_id=PACKAGE)
        declared = (packaged.details.get("migrations") or {}) if packaged else {}
        problems = []
        for component, spec in self.schemas.items():
            if component not in declared:
                problems.append(f"{component}: " + run.missing(PACKAGE, "declared schema range"))
                continue
            if self.unit and self.components and component not in self.components:
                continue  # another unit's database: its own deploy checks it
            try:
                with SchemaDatabaseHook(spec["conn_id"]) as db:
                    rows = db.journal(component)
            except (MigrationError, ConnectionError) as exc:
                problems.append(f"the schema of {component} cannot be read: {exc}")
                continue
            schema, failure = schema_version(rows), unresolved_failure(rows)
            if failure is not None:  # a half-migrated database: nothing deploys onto it until a person said so
                problems.append(
                    f"step {failure.version:04d}_{failure.name} of {component} failed in run {failure.run_id} and its "
                    "data was never reported reconciled"
                )
                continue
            problem = compatibility_problem(
                component,
                schema,
                declared[component]["compatible"],
                f"{self.release} {request.version}",
                self.environment,
            )
            if problem:
                problems.append(problem)
        return Decision.refuse(self.task_id, *problems) if problems else Decision.allow(self.task_id)

    def _train(self, context: Any, run: RunLedger) -> Decision:
        """A normal run superseded by a hotfix deploys nothing; nor does one held by a hotfix
        unless its lock step took the target (recorded) before the hold began: the lock waits
        or refuses, and this holds also when the lock was marked successful by hand."""
        from releasetrain.core.train import FREE, HELD
        from releasetrain.core.vocabulary import LANE_NORMAL
        from releasetrain.operators.train import hold_of

        admitted = run.last(Event.RUN_ADMITTED)
        if admitted is None:
            return gatekeeper.admitted(run, self.admit_task_id or "", self.task_id)
        if admitted.details.get("lane") != LANE_NORMAL:
            return Decision.allow(self.task_id)
        hold = hold_of(context, self.release, self.production_environments)
        if hold.state == FREE or (hold.state == HELD and run.of(Event.LOCK_ACQUIRED, environment=self.environment)):
            return Decision.allow(self.task_id)
        return Decision.refuse(self.task_id, *hold.reasons)

    def _check_window_now(self, run: RunLedger) -> None:
        """The window itself, checked again right before deploying (a recorded emergency exception passes)."""
        if run.of(Event.EXCEPTION, environment=self.environment, task_id=self.window_task_id):
            return
        window = self.dag.get_task(self.window_task_id)
        decision = window.decide_now()
        if not decision.open:
            raise AirflowFailException(
                f"{self.environment}: the release window closed before the deploy could start ({decision.reason}); "
                f"nothing is deployed: clear {self.window_task_id} to wait for the next opening"
            )

    def _owner(self, request: ReleaseRequest) -> Decision:
        """Only the owning team releases into its environment (the release's own schedule may too)."""
        if self.owners is None:
            return Decision.allow(self.task_id)
        outsiders = sorted(p for p in request.authors if p not in set(self.owners))
        if outsiders:
            return Decision.refuse(
                self.task_id,
                f"{', '.join(outsiders)} may not release into {self.environment}: only its "
                f"owners ({', '.join(self.owners)}) may",
            )
        return Decision.allow(self.task_id)

    def _result(
        self,
        version: str,
        digest: str | None,
        previous: dict[str, Any],
        *,
        deployment_id: Any,
        noop: bool,
        context: Any = None,
        release_digest: str | None = None,
    ) -> dict[str, Any]:
        result = {
            "environment": self.environment,
            "version": version,
            "digest": digest,
            "deployment_id": deployment_id,
            "noop": noop,
            "previous_version": previous.get("version"),
            "previous_digest": previous.get("digest"),
        }
        result.update(self._unit_details(release_digest))
        if self.slot:  # on the idle colour: not live until promoted
            result["slot"] = self.slot
        if self.config:
            result["config"] = self.profile
        if context is not None:
            record(context, Event.DEPLOYED, self.release, environment=self.environment, details=result)
        return result
