"""The artifact store's retention: plan (the dry run, always first), then delete what the plan
allowed and still may go."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from releasetrain.core.vocabulary import RETENTION_PLAN, Event
from releasetrain.operators._common import record


def _current_plan(artifact_store: str | None, policy_file: str) -> tuple[Any, Any]:
    """The store, and its retention plan now (store listing + every release's ledger events)."""
    from releasetrain.core.retention import load_policy, plan_retention
    from releasetrain.hooks.bundle_store import BundleStoreHook
    from releasetrain.hooks.ledger import LedgerHook

    store = BundleStoreHook(artifact_store)
    stored = store.stored_bundles()
    hook = LedgerHook()
    try:
        events = {release: list(hook.events(release=release)) for release in stored}
    finally:
        hook.close()
    return store, plan_retention(stored, events, load_policy(Path(policy_file)))


class RetentionPlanOperator(BaseOperator):
    """List what the store keeps (with the reasons) and what may go; record it per release.

    :param artifact_store: the store (None: the default store)
    :param policy_file: ``keep_last`` and ``legal_holds`` (the deployment's, not a run's)
    """

    ui_color = "#f1f3f4"

    def __init__(self, *, artifact_store: str | None = None, policy_file: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifact_store = artifact_store
        self.policy_file = policy_file

    def execute(self, context: Any) -> dict[str, Any]:
        _, plan = _current_plan(self.artifact_store, self.policy_file)
        for release, kept in plan.keep.items():
            doomed = sorted(v for r, v in plan.delete if r == release)
            details = {"keep": kept, "delete": doomed}
            record(context, Event.RETENTION_PLANNED, release, details=details)
            self.log.info("%s: keeps %s; may delete %s", release, sorted(kept), doomed or "nothing")
        return plan.to_dict()


class RetentionDeleteOperator(BaseOperator):
    """Delete the bundles this run's plan recorded as deletable (read from the ledger, not
    XCom) and that the plan made now still lets go (a version deployed since is kept).
    Nothing happens when the run's ``dry_run`` is true. Each deletion is recorded.
    """

    ui_color = "#fce8e6"

    def __init__(self, *, artifact_store: str | None = None, policy_file: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.artifact_store = artifact_store
        self.policy_file = policy_file

    def execute(self, context: Any) -> dict[str, Any]:
        from releasetrain.hooks.ledger import LedgerHook
        from releasetrain.operators._common import dag_id_of

        if context["params"].get("dry_run"):
            self.log.info("dry run: nothing deleted (the plan is in the ledger)")
            return {"deleted": [], "dry_run": True}
        store, now = _current_plan(self.artifact_store, self.policy_file)
        hook = LedgerHook()
        try:
            planned = {
                (event.release, version)
                for release in {r for r, _ in now.delete}
                for event in hook.events(release=release, run_id=context["run_id"], dag_id=dag_id_of(context))
                if event.kind == Event.RETENTION_PLANNED and event.details.get("task_id") == RETENTION_PLAN
                for version in event.details.get("delete", [])
            }
        finally:
            hook.close()
        deleted = []
        for release, version in now.delete:
            if (release, version) not in planned:
                continue  # not in this run's recorded plan: never deleted unannounced
            digest = store.delete(release, version)
            if digest is not None:
                record(context, Event.BUNDLE_DELETED, release, details={"version": version, "digest": digest})
                deleted.append([release, version])
        self.log.info("deleted %d bundles: %s", len(deleted), deleted)
        return {"deleted": deleted, "dry_run": False}
