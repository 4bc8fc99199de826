"""Return an environment to the version it ran before this release."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException, TaskDeferred

from releasetrain.core.gatekeeper import Decision
from releasetrain.core.vocabulary import MOMENT_FAILED, MOMENT_STARTED, MOMENT_SUCCEEDED, OPTION_ROLL_BACK, Event
from releasetrain.hooks.deploy_target import DeployTargetError, DeployTargetHook
from releasetrain.links import BundleLink, ChangeRecordLink, TargetStatusLink
from releasetrain.operators._common import enforce, pull, record, release_request, run_ledger
from releasetrain.operators.deploy import DeployTargetCalls, pre_deploy


class RollbackOperator(DeployTargetCalls, BaseOperator):
    """Roll an environment back after its deploy, smoke or health gate failed.

    Runs with ``trigger_rule=one_failed``. It acts only on what this run changed: if this
    run never deployed to the environment (or found the version already live), it skips
    with the reason. Otherwise it redeploys the version recorded before the deploy, waits
    (deferred), and checks that the target runs it again and is healthy. The release run
    still ends ``failed``: a rollback is never a green release.

    Before it changes anything it writes a **snapshot** (the target's status and health,
    what this run deployed, what the ledger recorded for the environment, the deployment
    record) to ``<artifact store>/<release>/incidents/<run>/<environment>/snapshot.json``;
    after the rollback, a **postmortem draft** (``postmortem.md``, with the run's timeline
    from the ledger) next to it, and a **notification** to every webhook in
    ``notifications``. A notification that fails is logged and recorded in the ledger; it
    does not undo a successful rollback.

    :param deploy_task_id: the deploy task whose ``pre_deploy`` record says where to return
    :param notifications: the spec's routes (``[{"conn_id", "endpoint", "audience", "moments"}]``,
        or notifiers): told when the rollback starts (with ``backout_minutes`` as the expected
        duration) and succeeds, as each asked, and always when it fails or needs a human
    :param backout_minutes: the spec's backout estimate
    :param artifact_store: where snapshots and postmortems go (default: the bundle store's)
    :param unit: packaging modular: the deploy unit this rollback returns (its own endpoints on
        the target, its own deploy task's record; snapshot and postmortem in a folder of its own)
    :param postmortem_task_id: the stage's postmortem review: the change record moves to Review
        and stays there for it (that step closes it), instead of closing here
    """

    operator_extra_links = (
        ChangeRecordLink(),
        TargetStatusLink(),
        BundleLink(),
    )
    ui_color = "#f28b82"
    call_prefix = "rollback of "

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        deploy_target_conn_id: str,
        deploy_task_id: str,
        deploy_timeout_seconds: float = 900,
        poll_interval: float = 2.0,
        notifications: list[dict[str, Any]] | None = None,
        artifact_store: str | None = None,
        locked: bool = False,
        unit: str | None = None,
        backout_minutes: int | None = None,
        postmortem_task_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        # Retried only for Airflow 3.3's race between a fast trigger and the scheduler
        # ("finished with state success, but the task instance's state attribute is running"):
        # a retry finds the rollback's own records and neither acts nor tells anyone twice.
        # The rollback's own failures raise AirflowFailException: told once, never retried.
        kwargs.setdefault("retries", 2)
        kwargs.setdefault("retry_delay", timedelta(seconds=3))
        super().__init__(**kwargs)
        self.unit = unit
        self.postmortem_task_id = postmortem_task_id
        self.backout_minutes = backout_minutes
        self.locked = locked
        self.notifications = list(notifications or [])
        self.artifact_store = artifact_store
        self.release = release
        self.environment = environment
        self.deploy_target_conn_id = deploy_target_conn_id
        self.deploy_task_id = deploy_task_id
        self.deploy_timeout_seconds = deploy_timeout_seconds
        self.poll_interval = poll_interval

    def _target(self, context: Any) -> dict[str, Any] | None:
        """Where to return: what the environment ran before this run's deploy (the ledger, never XCom)."""
        return pre_deploy(run_ledger(context, self.release), self.environment, self.deploy_task_id)

    def _failed_version(self, context: Any, live: dict[str, Any] | None = None) -> str | None:
        return release_request(context, self.release).version

    def _failed_digest(self, context: Any) -> str | None:
        run = run_ledger(context, self.release)
        started = run.of(Event.DEPLOY_STARTED, environment=self.environment, task_id=self.deploy_task_id)
        return started[0].details.get("digest") if started else None

    def execute(self, context: Any) -> dict[str, Any] | None:
        done = self._already_done(context)
        if done is not None:
            return done
        self._refuse_if_already_failed(context)
        return self._telling_failures(context, self._execute)

    def _refuse_if_already_failed(self, context: Any) -> None:
        """A try after this rollback failed (Airflow's fast-trigger race can retry even an
        ``AirflowFailException``): it stays failed, and nobody is told again."""
        failed = self._own(context, Event.ROLLBACK_FAILED)
        if failed:
            raise AirflowFailException(
                f"{self.environment}: this rollback already failed ({failed[-1].details.get('reason', '')}); "
                "the environment needs manual recovery"
            )

    def _already_done(self, context: Any) -> dict[str, Any] | None:
        """A try after this task's rollback was recorded (Airflow lost the first try's end to
        its fast-trigger race): the recorded outcome, nothing redone. Only a record newer than
        the latest record of the step it rolls back counts: a deploy cleared and run again
        after the rollback puts a version back that this rollback has not undone."""
        mine = self._own(context, Event.ROLLBACK)
        if not mine:
            return None
        done = mine[-1]
        self.log.info("%s: this rollback is already on record (seq %s): nothing to redo", self.environment, done.seq)
        return {k: v for k, v in done.details.items() if k != "task_id"}

    def _resumed(self, context: Any) -> bool:
        """An earlier try of this task already recorded its start (and told it), after the
        latest record of the step it rolls back."""
        return bool(self._own(context, Event.ROLLBACK_STARTED))

    def _own(self, context: Any, kind: str) -> list[Any]:
        """This task's (and unit's) records of ``kind`` newer than the rolled-back step's latest."""
        run = run_ledger(context, self.release)
        after = max((e.seq for e in run.events if e.details.get("task_id") == self.deploy_task_id), default=-1)
        return [
            e
            for e in run.of(kind, environment=self.environment, task_id=self.task_id)
            if e.seq > after and self._ours(e)
        ]

    def _ours(self, event: Any) -> bool:
        """This task's unit's record (a test or a DAG may give units one task id)."""
        return event.details.get("unit") == self.unit

    def _telling_failures(self, context: Any, work: Any) -> Any:
        """Run ``work``; a failure (a rollback that failed or needs a human) is told to every
        audience before it fails the task, once (a fast target's completion runs inside the
        first call), and never after the success was told (what fails after it, closing the
        change say, is not a failed rollback). A skip (nothing to roll back) and a wait are not."""
        try:
            return work(context)
        except (AirflowSkipException, TaskDeferred):
            raise
        except Exception as exc:
            if not getattr(self, "_told", None):
                self._told = MOMENT_FAILED
                try:
                    self._announce_failure(context, exc)
                except Exception as telling:  # the rollback's own failure is what the task reports
                    self.log.error("the rollback's failure could not be told: %s", telling)
                try:  # on record, so that a retry neither rolls back again nor tells it again
                    details = {"reason": told_reason(exc), **({"unit": self.unit} if self.unit else {})}
                    record(context, Event.ROLLBACK_FAILED, self.release, environment=self.environment, details=details)
                except Exception as recording:
                    self.log.error("the rollback's failure could not be recorded: %s", recording)
            if isinstance(exc, AirflowFailException):
                raise
            raise AirflowFailException(str(exc)) from exc  # told as failed: a retry would not be a new rollback

    def _execute(self, context: Any) -> dict[str, Any] | None:
        before = self._target(context)
        if not before:
            raise AirflowSkipException(f"this run deployed nothing to {self.environment}: nothing to roll back")
        if before.get("noop"):
            raise AirflowSkipException(
                f"{self.environment} already ran this version before the run: this run changed nothing there"
            )
        if not before.get("version"):
            raise AirflowFailException(
                f"{self.environment} ran no version before this release: there is nothing to roll back to; "
                "the environment needs manual recovery"
            )
        if self.locked:
            from releasetrain.operators.lock import lock_decision

            # without the lock, what runs there now may be another run's deploy: never undo it
            enforce(
                context, lock_decision(context, self.deploy_target_conn_id, self.task_id, self.release), self.release
            )
        hook = self._hook()
        live = self._call(hook.get_status)
        running = live.get("in_progress") or {}
        if running.get("deployment_id") and running.get("run_id") == context["run_id"]:
            # aborted while this run's deployment was still going: let it finish, then roll back
            self.log.warning("%s: waiting for deployment %s to end first", self.environment, running["deployment_id"])
            return self._wait(context, hook, str(running["deployment_id"]), "execute_after_deployment")
        version = self._failed_version(context, live)
        idle = live.get("idle") or {}
        same_live = live.get("version") == before["version"] and live.get("digest") == before.get("digest")
        enforce(context, self._still_ours(context, live, before, version, same_live), self.release, self.environment)
        if version and idle.get("version") == version and same_live:
            # a canary (or an idle colour) that never became live: take it out of traffic
            self.log.warning("ABORTING %s in %s: traffic back to %s", version, self.environment, before["version"])
            return self._instant(context, hook, live, before, hook.abort, "traffic taken off the canary")
        if version and live.get("version") == version and idle.get("version") == before["version"]:
            self.log.warning("SWITCHING BACK %s from %s to %s", self.environment, version, before["version"])
            return self._instant(context, hook, live, before, hook.promote, "switched back to the previous colour")
        if same_live and self._resumed(context):
            # an earlier try started this rollback and the target is back: only its end is left
            self.log.info(
                "%s runs %s again: completing the rollback an earlier try started", self.environment, before["version"]
            )
            return self._after_rollback(context, before, self._verify(hook, before, context))
        if running.get("deployment_id") and self._resumed(context):
            # the rollback deployment an earlier try started is still going: wait for it, start nothing
            return self._wait(context, hook, str(running["deployment_id"]), "execute_complete")
        if same_live:
            self.log.info("%s still runs %s: the failed deploy changed nothing", self.environment, before["version"])
            result = self._verify(hook, before, context)
            record_rollback(context, self.release, self.environment, {**result, "noop": True}, version)
            if self.unit:
                self._close_when_every_unit_is_back(context, before)
            return result
        self.log.warning("ROLLING BACK %s from %s to %s", self.environment, live.get("version"), before["version"])
        self._snapshot(context, hook, live)
        self._intent(context, version, before, "redeploy")
        self._announce_start(context, version, before, "redeploy")
        started = self._call(
            hook.start_rollback,
            version=before["version"],
            digest=before.get("digest"),
            reason=f"release {self.release} run {context['run_id']} failed in {self.environment}",
        )
        if started.get("state") == "succeeded":
            return self._after_rollback(context, before, self._verify(hook, before, context))
        return self._wait(context, hook, str(started["deployment_id"]), "execute_complete")

    def _still_ours(
        self, context: Any, live: dict[str, Any], before: dict[str, Any], version: str | None, same_live: bool
    ) -> Decision:
        """Roll back only what this run put there: the target runs what it ran before this run
        (nothing to undo, or only a canary to take out), or the version and digest this run
        deployed (for a manual rollback: what its plan saw). Anything else is someone else's
        change, and undoing it silently is worse than stopping."""
        digest = self._failed_digest(context)
        if same_live:
            return Decision.allow(self.task_id)
        if version and live.get("version") == version and (not digest or live.get("digest") == digest):
            return Decision.allow(self.task_id)
        return Decision.refuse(
            self.task_id,
            f"{self.environment} runs {live.get('version')} ({live.get('digest')}), neither {version} ({digest}), "
            f"which this rollback is to replace, nor {before['version']}, which it would restore: rolling back would "
            "undo a change this run did not make; the environment needs a human",
        )

    def _intent(self, context: Any, failed: str | None, before: dict[str, Any], how: str) -> None:
        """Written before the rollback acts (a rollback the ledger cannot record does not start):
        the version it takes out, and where it returns."""
        details = {"failed_version": failed, "restore_to": before.get("version"), "how": how}
        if self.unit:
            details["unit"] = self.unit
        record(context, Event.ROLLBACK_STARTED, self.release, environment=self.environment, details=details)

    def execute_after_deployment(self, context: Any, event: dict[str, Any]) -> dict[str, Any] | None:
        self.log.info("the deployment ended %s: rolling back now", event.get("state"))
        return self.execute(context)

    def _instant(
        self, context: Any, hook: DeployTargetHook, live: dict[str, Any], before: dict[str, Any], action: Any, what: str
    ) -> dict[str, Any]:
        """A rollback that is a traffic change (abort the canary, switch the colours back)."""
        self._snapshot(context, hook, live)
        self._intent(context, self._failed_version(context, live), before, what)
        self._announce_start(context, self._failed_version(context, live), before, what)
        self._call(action)
        result = self._verify(hook, before, context)
        return self._after_rollback(context, before, {**result, "action": what})

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        return self._telling_failures(context, lambda c: self._complete(c, event))

    def _complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        before = self._target(context)
        if event["state"] != "succeeded":
            raise AirflowException(
                f"ROLLBACK OF {self.environment} FAILED ({event['state']}): {event['message']}; "
                "the environment needs manual recovery"
            )
        result = self._verify(self._hook(), before, context)
        return self._after_rollback(context, before, result)

    # --- preserved state, postmortem, notification ------------------------------------------
    def _incident_folder(self, context: Any) -> Any:
        from releasetrain.hooks.bundle_store import BundleStoreHook

        folder = BundleStoreHook(self.artifact_store).incident_folder(self.release, context["run_id"], self.environment)
        return folder / self.unit if self.unit else folder

    def _ledger_events(self, context: Any) -> list[Any]:
        return run_ledger(context, self.release).events

    def _snapshot(self, context: Any, hook: DeployTargetHook, live: dict[str, Any]) -> None:
        """Everything the postmortem needs that the rollback is about to overwrite."""
        import datetime as dt
        import json

        try:
            health_status, health = hook.get_health()
        except DeployTargetError as exc:
            health_status, health = None, str(exc)
        deployed = pull(context, self.deploy_task_id) or {}
        deployment = None
        if deployed.get("deployment_id"):
            try:
                deployment = hook.get_deployment(str(deployed["deployment_id"]))
            except DeployTargetError as exc:
                deployment = {"error": str(exc)}
        events = [e.to_dict() for e in self._ledger_events(context) if e.environment in (self.environment, "")]
        snapshot = {
            "taken_at": dt.datetime.now(dt.UTC).isoformat(),
            "release": self.release,
            "run_id": context["run_id"],
            "environment": self.environment,
            "target_status": live,
            "target_health": {"http_status": health_status, "body": health},
            "deployed_by_this_run": deployed,
            "deployment": deployment,
            "ledger_events": events,
            "analysis": [e["details"] for e in events if e["kind"] == "analysis"],
            "logs": self._task_logs(context),
        }
        folder = self._incident_folder(context)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "snapshot.json"
        path.write_text(json.dumps(snapshot, indent=2, sort_keys=True, default=str))
        context["ti"].xcom_push(key="snapshot", value=str(path))
        self.log.info("Pre-rollback snapshot of %s written to %s", self.environment, path)

    def _task_logs(self, context: Any, lines: int = 200) -> dict[str, str]:
        """The tail of this environment's task logs in this run, where the logs are local files."""
        from pathlib import Path

        from airflow.sdk.configuration import conf

        base = conf.get("logging", "base_log_folder", fallback=None)
        dag = context.get("dag")
        if not base or dag is None:
            return {}
        run = Path(base) / f"dag_id={dag.dag_id}" / f"run_id={context['run_id']}"
        logs = {}
        for path in sorted(run.glob(f"task_id={self.environment}.*/attempt=*.log")):
            task_id = path.parent.name.removeprefix("task_id=")
            if task_id == self.task_id:
                continue
            try:
                text = path.read_text(errors="replace").splitlines()[-lines:]
            except OSError:
                continue
            logs[f"{task_id}/{path.name}"] = "\n".join(text)
        return logs

    def _after_rollback(self, context: Any, before: dict[str, Any], result: dict[str, Any]) -> dict[str, Any]:
        import datetime as dt

        from releasetrain.core.incident import notification_payload, postmortem_markdown, timeline

        events = self._ledger_events(context)
        failures = [
            f"{e.environment}: {_failure_label(e)}: "
            f"{e.details.get('reason') or e.details.get('message') or e.details.get('kind') or ''}".rstrip(": ")
            for e in events
            if e.environment == self.environment
            and (
                e.kind in (Event.CHECKS_FAILED, Event.DEPLOY_FAILED, Event.ABORTED, Event.ROLLBACK_REQUESTED)
                or (e.kind == Event.ANALYSIS and e.details.get("outcome") in ("failed", "error", "aborted"))
                or (e.kind == Event.ANALYSIS_DECISION and e.details.get("choice") == OPTION_ROLL_BACK)
            )
        ]
        analyses = [e.details for e in events if e.kind == Event.ANALYSIS and e.environment == self.environment]
        folder = self._incident_folder(context)
        failed_version = self._failed_version(context)
        incident = {
            "release": self.release,
            "run_id": context["run_id"],
            "environment": self.environment,
            "failed_version": failed_version,
            "diff": self._bundle_diff(before["version"], failed_version),
            "failed_digest": self._failed_digest(context),
            "restored_version": before["version"],
            "restored_digest": before.get("digest"),
            "rolled_back_at": dt.datetime.now(dt.UTC).isoformat(),
            "failures": failures or [f"{self.environment}: a deploy, smoke or health gate failed (see the run)"],
            "snapshot": pull(context, self.task_id, key="snapshot"),
            "postmortem": str(folder / "postmortem.md"),
            "timeline": timeline(events),
            "analysis": [
                {k: a.get(k) for k in ("stage", "weight", "outcome", "reason", "counts", "measurements")}
                for a in analyses
            ],
            "run_url": _run_url(context),
        }
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "postmortem.md").write_text(postmortem_markdown(incident))
        notified, notify_errors = self._notify(context, notification_payload(incident), MOMENT_SUCCEEDED)
        self._told = MOMENT_SUCCEEDED
        result = {**result, "snapshot": incident["snapshot"], "postmortem": incident["postmortem"]}
        result["notified"] = notified
        if notify_errors:
            result["notification_errors"] = notify_errors
        record_rollback(context, self.release, self.environment, result, failed_version)
        if self.unit:
            self._close_when_every_unit_is_back(context, before)
        return result

    def _close_when_every_unit_is_back(self, context: Any, before: dict[str, Any]) -> None:
        """Packaging modular: the change closes as rolled back once every unit this run
        deployed to the environment has its rollback on record (a unit whose rollback fails
        keeps it open: the run's end closes it failed)."""
        run = run_ledger(context, self.release)
        deployed = {
            e.details.get("unit")
            for e in run.of(Event.DEPLOY_STARTED, environment=self.environment)
            if not (e.details.get("before") or {}).get("noop")
        }
        back = {e.details.get("unit") for e in run.of(Event.ROLLBACK, environment=self.environment)}
        if deployed <= back:
            note = f"{self.environment}: every unit rolled back ({', '.join(sorted(u for u in back if u))})"
            self._close_or_review(context, note)

    def _close_or_review(self, context: Any, note: str) -> None:
        """Close the change as rolled back, or leave it in Review for the postmortem review."""
        from releasetrain.operators.governance import close_change

        if self.postmortem_task_id:
            close_change(context, self.release, "rolled_back", f"{note}; postmortem review asked", hold_in_review=True)
        else:
            close_change(context, self.release, "rolled_back", note)

    def _bundle_diff(self, restored: str | None, failed: str | None) -> dict[str, Any] | str:
        """What the rolled-back version changed against the restored one (their bundle manifests)."""
        import json

        from releasetrain.core.bundle import manifest_diff
        from releasetrain.hooks.bundle_store import BundleStoreHook

        store = BundleStoreHook(self.artifact_store)
        manifests = {}
        for version in (restored, failed):
            path = store.location(self.release, version or "") / store.MANIFEST if version else None
            if path is None or not path.exists():
                return f"no bundle manifest of {self.release} {version} in the artifact store: no diff"
            manifests[version] = json.loads(path.read_text())
        return manifest_diff(manifests[restored], manifests[failed])

    def _notify(self, context: Any, payload: dict[str, Any], moment: str = MOMENT_SUCCEEDED) -> tuple[list, list]:
        """Tell the routes that hear of ``moment`` (the shared service: by audience, recorded)."""
        from releasetrain.notifiers.routes import tell

        return tell(
            context,
            release=self.release,
            environment=self.environment,
            routes=self.notifications,
            moment=moment,
            payload=payload,
        )

    def _announce_start(self, context: Any, failed: str | None, before: dict[str, Any], how: str) -> None:
        """The audiences hear that the rollback starts, and for how long it is expected to take."""
        import datetime as dt

        from releasetrain.core.incident import rollback_started_payload

        payload = rollback_started_payload(
            release=self.release,
            run_id=context["run_id"],
            environment=self.environment,
            failed_version=failed,
            restore_to=before.get("version"),
            how=how,
            expected_minutes=self.backout_minutes,
            unit=self.unit,
            started_at=dt.datetime.now(dt.UTC).isoformat(),
            run_url=_run_url(context),
        )
        self._notify(context, payload, MOMENT_STARTED)

    def _announce_failure(self, context: Any, exc: BaseException) -> None:
        """Every audience hears of a rollback that failed or needs a human (then it fails)."""
        from releasetrain.core.incident import rollback_failed_payload

        try:
            failed = self._failed_version(context)
        except Exception:  # the message goes out even when the run's records cannot be read
            failed = None
        payload = rollback_failed_payload(
            release=self.release,
            run_id=context["run_id"],
            environment=self.environment,
            failed_version=failed,
            reason=told_reason(exc),
            unit=self.unit,
            run_url=_run_url(context),
        )
        self._notify(context, payload, MOMENT_FAILED)

    def _verify(self, hook: DeployTargetHook, before: dict[str, Any], context: Any) -> dict[str, Any]:
        live = self._call(hook.get_status)
        if live.get("version") != before["version"]:
            raise AirflowException(
                f"rollback of {self.environment} did not restore {before['version']}: the target runs "
                f"{live.get('version')}"
            )
        if self.unit and before.get("digest") and live.get("digest") != before["digest"]:  # the unit's own bytes
            raise AirflowException(
                f"rollback of unit {self.unit} in {self.environment} restored {before['version']} as "
                f"{live.get('digest')}, not {before['digest']}: the unit needs a human"
            )
        status, health = hook.get_health()
        healthy = status == 200 and isinstance(health, dict) and health.get("healthy", True)
        if not healthy:
            raise AirflowException(
                f"{self.environment} runs {before['version']} again but is still unhealthy: HTTP {status} {health}"
            )
        self.log.info("%s rolled back to %s and healthy", self.environment, before["version"])
        result = {
            "environment": self.environment,
            "restored_version": before["version"],
            "restored_digest": before.get("digest"),
            "healthy": True,
            **({"unit": self.unit} if self.unit else {}),
        }
        if not self.unit:  # a unit's: once every unit this run changed is back (after its record)
            self._close_or_review(context, f"{self.environment} rolled back to {before['version']}")
        return result


REASON_CHARS = 500


def told_reason(exc: BaseException) -> str:
    """An error as the audiences read it: what Airflow masks in logs masked here too (a
    target's answer or a URL may hold a credential), and no longer than a message should be."""
    text = " ".join(str(exc).split())
    try:
        from airflow.sdk.execution_time.secrets_masker import redact

        text = str(redact(text))
    except Exception:  # no masker here: the text as it is, shortened
        pass
    return text if len(text) <= REASON_CHARS else text[: REASON_CHARS - 1] + "…"


def record_rollback(
    context: Any, release: str, environment: str, result: dict[str, Any], failed_version: str | None
) -> None:
    """The rollback's record, retried; a completed rollback is never reported failed for a
    ledger hiccup (its ``rollback_started`` record, written before it acted, stands, and the
    failure to record the outcome is logged loudly and kept in XCom)."""
    import logging
    import time

    details = {**result, "failed_version": failed_version}
    for attempt in range(RECORD_ATTEMPTS):
        try:
            record(context, Event.ROLLBACK, release, environment=environment, details=details)
            return
        except Exception as exc:
            if attempt == RECORD_ATTEMPTS - 1:
                logging.getLogger(__name__).error(
                    "ROLLBACK OF %s COMPLETED but its outcome could not be recorded in the ledger: %s",
                    environment,
                    exc,
                )
                context["ti"].xcom_push(key="unrecorded_rollback", value={**details, "error": str(exc)})
                return
            time.sleep(min(2**attempt, 8))


RECORD_ATTEMPTS = 5


def _failure_label(event: Any) -> str:
    if event.kind == Event.ANALYSIS:
        return f"{event.details.get('stage')} analysis {event.details.get('outcome')}"
    if event.kind == Event.ANALYSIS_DECISION:
        return f"rolled back by {event.actor} after an inconclusive analysis"
    if event.kind == Event.ABORTED:
        return f"aborted by {event.actor}"
    if event.kind == Event.ROLLBACK_REQUESTED:
        return f"manual rollback requested by {event.actor}"
    return event.kind.replace("_", " ")


def _run_url(context: Any) -> str | None:
    from airflow.sdk.configuration import conf

    base = conf.get("api", "base_url", fallback=None)
    dag = context.get("dag")
    if not base or dag is None:
        return None
    return f"{base.rstrip('/')}/dags/{dag.dag_id}/runs/{context['run_id']}"
