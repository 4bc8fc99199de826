"""Schema migrations before an environment's deploy, and reconciliation after one half-failed."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from airflow.providers.standard.operators.hitl import HITLOperator
from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from releasetrain.core import migration as m
from releasetrain.core.approval import SegregationOfDutiesError, check_responder
from releasetrain.core.bundle import BundleError, read_archive, verify_signed_bundle
from releasetrain.core.gatekeeper import Decision, RunLedger
from releasetrain.core.incident import live_version
from releasetrain.core.vocabulary import OPTION_NOT_RECONCILED, OPTION_RECONCILED, Event
from releasetrain.hooks.bundle_store import BundleStoreHook, SigningKeyHook
from releasetrain.hooks.schema import SchemaDatabaseHook, StepFailed
from releasetrain.operators._common import (
    enforce,
    record,
    record_decision,
    release_request,
    run_ledger,
    verified_digest,
)
from releasetrain.operators._common import responder as responder_of

POLL_SECONDS = 10.0


def bundle_steps(
    release: str,
    version: str,
    digest: str,
    migrations: dict[str, dict[str, Any]],
    *,
    artifact_store: str | None,
    signing_conn_id: str,
) -> dict[str, tuple[list[m.MigrationStep], dict[str, Any]]]:
    """Each component's steps and declared schema range, read from the release bundle checked again here (content, the
    verified digest, signature): the SQL that runs is the SQL that was signed."""
    try:
        archive, signature = BundleStoreHook(artifact_store).read(release, version)
        verify_signed_bundle(
            archive,
            signature,
            SigningKeyHook(signing_conn_id).public_key(),
            release=release,
            version=version,
            expected_digest=digest,
        )
        _, files = read_archive(archive)
    except BundleError as exc:
        raise AirflowFailException(f"{release} {version}: the bundle's migrations cannot be trusted: {exc}") from None
    found: dict[str, tuple[list[m.MigrationStep], dict[str, Any]]] = {}
    for component, spec in migrations.items():
        folder = m.folder_files(files, f"{component}/{spec['path']}")
        try:
            found[component] = m.read_folder(folder, f"{component}/{spec['path']}")
        except m.MigrationError as exc:
            raise AirflowFailException(f"{release} {version}: {exc}") from None
    return found


def declared_ranges(events: list[Any], component: str) -> dict[str, dict[str, Any] | None]:
    """Version -> the schema range it declared for ``component`` when it was packaged."""
    ranges: dict[str, dict[str, Any] | None] = {}
    for event in events:
        if event.kind == Event.PACKAGED and event.details.get("version"):
            declared = (event.details.get("migrations") or {}).get(component)
            ranges[event.details["version"]] = dict(declared["compatible"]) if declared else None
    return ranges


class SchemaMigrateOperator(BaseOperator):
    """Apply a component's pending migration steps to the environment's database, in the
    target's lock, before the deploy.

    - The steps come from the verified, signed release bundle.
    - Refused, every reason named, before any step runs: a step to a schema some version live
      in any environment (the ledger) does not declare it works with (a contract step also
      while a live version declares no range), a schema outside the new version's range, an
      applied step whose text changed, a step older than the live schema, an earlier run's
      failure nobody reported reconciled.
    - Each step runs in its own transaction with its journal row; a cleared or retried task
      finds it applied and applies nothing twice. Each step is recorded in the ledger too.
    - Another migration holding the database (PostgreSQL advisory lock): the task waits
      deferred, up to the component's ``wait_minutes``.
    - Its ``migrated`` record is what the deploy asks for: the task marked successful by hand
      proves nothing.

    :param migrations: component -> ``{path, conn_id, wait_minutes}``
    :param environments: every environment of the release (their live versions are checked)
    """

    template_fields = ()
    ui_color = "#fef7e0"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        migrations: dict[str, dict[str, Any]],
        verify_task_id: str,
        environments: list[str],
        deploy_target_conn_id: str,
        artifact_store: str | None = None,
        signing_conn_id: str = SigningKeyHook.default_conn_name,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("retries", 2)  # infrastructure only: a failed step fails without retry
        kwargs.setdefault("retry_delay", timedelta(seconds=5))
        super().__init__(**kwargs)
        self.release = release
        self.environment = environment
        self.migrations = {k: dict(v) for k, v in migrations.items()}
        self.verify_task_id = verify_task_id
        self.environments = list(environments)
        self.deploy_target_conn_id = deploy_target_conn_id
        self.artifact_store = artifact_store
        self.signing_conn_id = signing_conn_id

    def execute(self, context: Any, deadlines: dict[str, str] | None = None) -> dict[str, Any]:
        from releasetrain.operators.lock import lock_decision

        request = release_request(context, self.release)
        run = run_ledger(context, self.release)
        digest = verified_digest(context, run, self.release, self.environment, self.verify_task_id)
        lock = lock_decision(context, self.deploy_target_conn_id, self.task_id, self.release)
        enforce(context, lock, self.release, self.environment)
        answered = run.last(Event.RECONCILED, environment=self.environment)
        if answered is not None and not answered.details.get("reconciled"):  # no resuming past that answer
            refusal = Decision.refuse(
                self.task_id,
                f"{answered.actor or 'an owner'} reported the data in {self.environment} not reconciled in this run: "
                "its migration does not resume (trigger a new run once the reconcile request is answered)",
            )
            enforce(context, refusal, self.release, self.environment)
        steps = bundle_steps(
            self.release,
            request.version,
            digest,
            self.migrations,
            artifact_store=self.artifact_store,
            signing_conn_id=self.signing_conn_id,
        )
        events = self._release_events()
        result: dict[str, Any] = {"digest": digest, "version": request.version, "components": {}}
        for component, spec in self.migrations.items():
            with SchemaDatabaseHook(
                spec["conn_id"], run_id=context["run_id"], release=self.release, release_version=request.version
            ) as db:
                try:
                    if not db.try_lock(component):
                        self._wait(component, spec, dict(deadlines or {}))
                    result["components"][component] = self._migrate(
                        context, db, component, spec, *steps[component], events, request.version
                    )
                except m.MigrationError as exc:
                    raise AirflowFailException(f"{self.environment}: {exc}") from None
                except ConnectionError as exc:
                    raise RuntimeError(f"{self.environment}: {exc}") from None  # retried: infrastructure
        record(context, Event.MIGRATED, self.release, environment=self.environment, details=result)
        return result

    def _release_events(self) -> list[Any]:
        from releasetrain.hooks.ledger import LedgerHook

        hook = LedgerHook()
        try:
            return list(hook.events(release=self.release))
        finally:
            hook.close()

    def _wait(self, component: str, spec: dict[str, Any], deadlines: dict[str, str]) -> None:
        """Another migration holds the database: wait deferred, then try again from the start
        (each component's wait has its own deadline, from when it first waited)."""
        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        now = datetime.now(UTC)
        deadline = deadlines.get(component)
        until = datetime.fromisoformat(deadline) if deadline else now + timedelta(minutes=spec["wait_minutes"])
        if now >= until:
            raise AirflowFailException(
                f"{self.environment}: another migration has held the database of {component} "
                f"({spec['conn_id']}) for {spec['wait_minutes']} minutes; nothing was applied"
            )
        self.log.info("%s: another migration holds %s's database; waiting (deferred)", self.environment, component)
        self.defer(
            trigger=TimeDeltaTrigger(timedelta(seconds=POLL_SECONDS)),
            method_name="execute_after_wait",
            kwargs={"deadlines": {**deadlines, component: until.isoformat()}},
        )

    def execute_after_wait(
        self, context: Any, event: Any = None, deadlines: dict[str, str] | None = None
    ) -> dict[str, Any]:
        return self.execute(context, deadlines=deadlines)

    def _migrate(
        self,
        context: Any,
        db: SchemaDatabaseHook,
        component: str,
        spec: dict[str, Any],
        steps: list[m.MigrationStep],
        compatible: dict[str, Any],
        events: list[Any],
        version: str,
    ) -> dict[str, Any]:
        rows = db.journal(component)
        ranges = declared_ranges(events, component)
        live = []
        for environment in self.environments:
            running = live_version(events, [environment])
            if running is not None:
                live.append(m.LiveVersion(environment, running, ranges.get(running)))
        plan = m.plan_migration(
            component,
            steps,
            rows,
            release=self.release,
            version=version,
            compatible=compatible,
            live=live,
            run_id=context["run_id"],
        )
        if plan.refusals:
            enforce(context, Decision.refuse(self.task_id, *plan.refusals), self.release, self.environment)
        applied = []
        for step in plan.to_apply:
            self.log.info("%s: applying %s step %s to %s", self.environment, step.phase, step.label, component)
            try:
                db.apply(component, step)
            except StepFailed as exc:
                record(
                    context,
                    Event.MIGRATION_FAILED,
                    self.release,
                    environment=self.environment,
                    details={"component": component, **step.record(), "error": exc.detail, "applied": applied},
                )
                raise AirflowFailException(
                    f"{self.environment}: migration step {step.label} of {component} failed: {exc.detail}; "
                    f"applied before it in this run: {applied or 'none'}. The journal keeps the failure; the "
                    f"environment's reconcile step runs the declared reconcile steps and asks for confirmation"
                ) from None
            applied.append(step.label)
            record(
                context,
                Event.MIGRATION_APPLIED,
                self.release,
                environment=self.environment,
                details={"component": component, **step.record(), "schema": step.version},
            )
        if not applied:
            self.log.info("%s: %s is at schema %d, nothing to apply", self.environment, component, plan.schema_before)
        rows = db.journal(component)  # what this run applied, in every try (a wait or a retry in between)
        return {
            "schema": m.schema_version(rows),
            "applied": [
                f"{r.version:04d}_{r.name}" for r in rows if r.run_id == context["run_id"] and r.status == m.APPLIED
            ],
            "database": spec["conn_id"],
            "compatible": compatible,
        }


class ReconcileOperator(HITLOperator):
    """After the environment's migrate step and rollbacks, whatever they did (``all_done``).

    Reconciliation is needed when this run's migration failed half-way (the journal has its
    failure), or when a rollback restored a version that does not work with the live schema
    (its declared range, recorded at packaging). Then the declared reconcile steps of what
    this run touched run, newest first, each journaled and recorded; and an owner of the
    environment (never an author) is asked "data reconciled?", shown the steps and the
    journal. The target stays locked until it is answered. "Data reconciled" resolves the
    failure in the journal (a later migration may run); "Not reconciled" fails the step and
    the failure stays: no later migration runs on that database. Nothing to reconcile: skipped.
    """

    template_fields = ()
    ui_color = "#fce8e6"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        migrations: dict[str, dict[str, Any]],
        migrate_task_id: str,
        verify_task_id: str,
        rollback_task_ids: list[str],
        owners: list[str],
        artifact_store: str | None = None,
        signing_conn_id: str = SigningKeyHook.default_conn_name,
        units: dict[str, list[str]] | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.pop("params", None)  # the DAG's trigger params are not part of this form
        kwargs.setdefault("retries", 2)  # Airflow 3.3's fast-answer race (see ReleaseApprovalOperator)
        kwargs.setdefault("retry_delay", timedelta(seconds=5))
        super().__init__(
            subject=f"Data reconciled in {environment} after {release}'s migration?",
            options=[OPTION_RECONCILED, OPTION_NOT_RECONCILED],
            **kwargs,
        )
        self.release = release
        self.environment = environment
        self.migrations = {k: dict(v) for k, v in migrations.items()}
        self.migrate_task_id = migrate_task_id
        self.verify_task_id = verify_task_id
        self.rollback_task_ids = list(rollback_task_ids)
        self.owners = list(owners)
        self.artifact_store = artifact_store
        self.signing_conn_id = signing_conn_id
        self.units = {k: list(v) for k, v in (units or {}).items()}  # packaging modular: unit -> components

    def _hook(self, context: Any, component: str, version: str) -> SchemaDatabaseHook:
        return SchemaDatabaseHook(
            self.migrations[component]["conn_id"],
            run_id=context["run_id"],
            release=self.release,
            release_version=version,
        )

    def _needs(self, context: Any, run: RunLedger, version: str) -> dict[str, list[str]]:
        """Component -> why it needs reconciling ({}: nothing does), from the journal and the ledger."""
        from releasetrain.hooks.ledger import LedgerHook

        hook = LedgerHook()
        try:
            events = list(hook.events(release=self.release))
        finally:
            hook.close()
        latest = run.latest(
            self.migrate_task_id,
            Event.MIGRATED,
            Event.MIGRATION_FAILED,
            Event.GATE_REFUSED,
            environment=self.environment,
        )
        finished = latest is not None and latest.kind == Event.MIGRATED
        rollbacks = [
            e.details
            for e in run.of(Event.ROLLBACK, environment=self.environment)
            if e.details.get("restored_version") and e.details.get("task_id") in self.rollback_task_ids
        ]
        needs: dict[str, list[str]] = {}
        for component in self.migrations:
            with self._hook(context, component, version) as db:
                rows = db.journal(component)
            reasons = []
            failure = m.unresolved_failure(rows)
            if failure is not None and failure.run_id == context["run_id"]:
                reasons.append(f"step {failure.version:04d}_{failure.name} failed: {failure.detail or 'no detail'}")
            elif not finished and m.unfinished(rows, context["run_id"]):
                reasons.append(
                    f"this run applied steps of {component} and {self.migrate_task_id} never recorded its end "
                    "(a lost connection, or the step set by hand)"
                )
            schema = m.schema_version(rows)
            ranges = declared_ranges(events, component)
            for rollback in rollbacks:
                unit = rollback.get("unit")
                if unit and component not in self.units.get(unit, [component]):
                    continue  # another unit's rollback: this component's version did not move
                back = rollback["restored_version"]
                compatible = ranges.get(back)
                if compatible is not None and not m.in_range(schema, compatible):
                    reasons.append(
                        f"the rollback restored {back}, which works with schema "
                        f"{m._range_text(compatible)}; the database is at {schema}"
                    )
            if reasons:
                needs[component] = reasons
        return needs

    def execute(self, context: Any) -> Any:
        request = release_request(context, self.release)
        run = run_ledger(context, self.release)
        needs = self._needs(context, run, request.version)
        if not needs:
            raise AirflowSkipException(f"{self.environment}: no migration failed and no rollback outran the schema")
        digest = verified_digest(context, run, self.release, self.environment, self.verify_task_id)
        steps = bundle_steps(
            self.release,
            request.version,
            digest,
            {c: self.migrations[c] for c in needs},
            artifact_store=self.artifact_store,
            signing_conn_id=self.signing_conn_id,
        )
        report: dict[str, Any] = {}
        for component, reasons in needs.items():
            report[component] = self._reconcile(context, component, steps[component][0], reasons, request.version)
        record(
            context,
            Event.RECONCILE_REQUESTED,
            self.release,
            environment=self.environment,
            details={"components": report},
        )
        from releasetrain.operators.approval import _md, assign_non_authors

        if not self.owners:
            enforce(
                context,
                Decision.refuse(self.task_id, "nobody may confirm the data is reconciled"),
                self.release,
                self.environment,
            )
        assign_non_authors(self, request, self.owners, f"reconciliation in {self.environment}")
        lines = [
            f"A schema migration of **{self.release} {request.version}** in **{self.environment}** needs its data "
            "reconciled before the environment is released.",
            "",
        ]
        for component, part in report.items():
            lines += [f"### {_md(component)} (schema {part['schema']})", ""]
            lines += [f"- why: {_md(reason)}" for reason in part["reasons"]]
            lines += [f"- reconcile step {_md(s)}: {_md(state)}" for s, state in part["reconcile"].items()] or [
                "- no reconcile step is declared for the steps this run touched"
            ]
            lines += ["", "Journal (newest last):", "", "```", *part["journal"], "```", ""]
        lines.append(
            "Answer **Data reconciled** once the data is consistent (the journal then lets later migrations run), "
            "or **Not reconciled** to keep the database blocked for migrations."
        )
        self.body = "\n".join(lines)
        return super().execute(context)

    def _reconcile(
        self, context: Any, component: str, steps: list[m.MigrationStep], reasons: list[str], version: str
    ) -> dict[str, Any]:
        outcome: dict[str, str] = {}
        run_id = context["run_id"]
        with self._hook(context, component, version) as db:
            self._hold(db, component)
            rows = db.journal(component)
            if m.unresolved_failure(rows) is None and m.unfinished(rows, run_id):  # it never ended: a failure
                last = [r for r in rows if r.run_id == run_id][-1]
                db.note(component, last, m.FAILED, f"{self.migrate_task_id} never recorded its end")
            for step in m.reconcile_steps(steps, db.journal(component), run_id):
                try:
                    db.reconcile(component, step)
                except StepFailed as exc:
                    outcome[step.label] = f"failed: {exc.detail}"
                    record(
                        context,
                        Event.RECONCILE_FAILED,
                        self.release,
                        environment=self.environment,
                        details={"component": component, **step.record(), "error": exc.detail},
                    )
                    break
                outcome[step.label] = "applied"
                record(
                    context,
                    Event.RECONCILE_APPLIED,
                    self.release,
                    environment=self.environment,
                    details={"component": component, **step.record()},
                )
            rows = db.journal(component)
        failure = m.unresolved_failure(rows)
        return {
            "reasons": reasons,
            "reconcile": outcome,
            "schema": m.schema_version(rows),
            "journal": m.journal_text(rows),
            "failure_row": failure.row_id if failure else None,  # the failure an answer resolves
        }

    def _hold(self, db: SchemaDatabaseHook, component: str) -> None:
        """No migration runs on the database while it is reconciled or marked reconciled."""
        if not db.try_lock(component):
            raise AirflowException(
                f"{self.environment}: another migration holds the database of {component}; trying again"
            )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> Any:
        request = release_request(context, self.release)
        result = super().execute_complete(context=context, event=event)
        responder = responder_of(result, request)
        try:
            check_responder(responder, self.owners, set(request.authors))
        except SegregationOfDutiesError as exc:
            raise AirflowFailException(f"reconciliation in {self.environment}: {exc}") from None
        reconciled = result["chosen_options"] == [OPTION_RECONCILED]
        run = run_ledger(context, self.release)
        asked = run.of(Event.RECONCILE_REQUESTED, environment=self.environment, task_id=self.task_id)
        shown = dict((asked[-1].details.get("components") or {}) if asked else {})
        components = sorted(shown)
        for component in components:  # the answer is about the failure the person was shown
            with self._hook(context, component, request.version) as db:
                self._hold(db, component)
                rows = db.journal(component)
                failure = m.unresolved_failure(rows)
                expected = shown[component].get("failure_row")
                answered_before = any(  # Airflow 3.3's fast-answer race: an earlier try marked it
                    r.status == m.RECONCILED and r.run_id == context["run_id"] and f"(row {expected})" in r.detail
                    for r in rows
                )
                now = failure.row_id if failure else None
                if now != expected and not (now is None and answered_before):
                    enforce(
                        context,
                        Decision.refuse(
                            self.task_id,
                            f"the journal of {component} changed while the request waited (open failure: row "
                            f"{now}, shown: row {expected}); the answer was about another state: clear "
                            f"{self.task_id} to ask again",
                        ),
                        self.release,
                        self.environment,
                    )
                if reconciled and failure is not None:
                    db.mark_reconciled(component, failure, responder or "")
        record_decision(
            context,
            Event.RECONCILED,
            self.release,
            environment=self.environment,
            actor=responder or "",
            details={"reconciled": reconciled, "components": components, "answer": result["chosen_options"]},
        )
        if not reconciled:
            raise AirflowFailException(
                f"{responder} reported the data in {self.environment} not reconciled: the journal keeps the failure "
                "and no later migration runs on that database until a reconcile request is answered"
            )
        return {"reconciled": True, "by": responder, "components": components}
