"""A deploy target's lock, held by one run from its deploy to the last check and traffic
step of that environment, so no other deploy can land in between (and no rollback of this
run silently undoes one)."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from releasetrain.core.gatekeeper import Decision
from releasetrain.core.ledger import LedgerError
from releasetrain.core.vocabulary import Event
from releasetrain.operators._common import dag_id_of, record

LEDGER_CONN_ID = "releasetrain_ledger"


def holder_of(context: Any) -> str:
    """The lock holder's name for this run: ``<dag_id>/<run_id>`` (run ids repeat across DAGs)."""
    return f"{dag_id_of(context)}/{context['run_id']}"


def lock_decision(context: Any, target: str, step: str) -> Decision:
    """Allowed only while this run holds ``target``'s lock (read from the lock table, not XCom)."""
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    try:
        holder = hook.store.lock_holder(target)
    except LedgerError as exc:
        return Decision.refuse(step, f"the lock of {target} cannot be read: {exc}")
    finally:
        hook.close()
    me = holder_of(context)
    if holder == me:
        return Decision.allow(step)
    who = f"held by {holder}" if holder else "not held by anyone"
    return Decision.refuse(step, f"this run does not hold the lock of deploy target {target} ({who})")


class TargetLockOperator(BaseOperator):
    """Take the deploy target's lock for this run; wait deferred while another run holds it.

    :param environment: the environment whose stage the lock covers
    :param target: the deploy target (its connection id): environments sharing one
        target share its lock
    :param poll_interval: seconds between tries while waiting
    """

    ui_color = "#e6e6fa"

    def __init__(
        self, *, release: str, environment: str, target: str, poll_interval: float = 5.0, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.environment = environment
        self.target = target
        self.poll_interval = poll_interval

    def execute(self, context: Any) -> dict[str, Any]:
        from releasetrain.hooks.ledger import LedgerHook
        from releasetrain.triggers.lock import TargetLockTrigger

        me = holder_of(context)
        hook = LedgerHook()
        try:
            holder = hook.store.try_lock(self.target, me)
        except LedgerError as exc:
            raise AirflowFailException(f"{self.environment}: cannot lock deploy target {self.target}: {exc}") from None
        finally:
            hook.close()
        if holder == me:
            return self._acquired(context)
        self.log.info("%s: deploy target %s is held by %s; waiting (deferred)", self.environment, self.target, holder)
        self.defer(
            trigger=TargetLockTrigger(
                target=self.target, holder=me, ledger_conn_id=LEDGER_CONN_ID, poll_interval=self.poll_interval
            ),
            method_name="execute_complete",
        )
        return {}

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        if not event.get("acquired"):
            raise AirflowFailException(f"{self.environment}: could not lock {self.target}: {event.get('error')}")
        return self._acquired(context)

    def _acquired(self, context: Any) -> dict[str, Any]:
        details = {"target": self.target, "holder": holder_of(context)}
        record(context, Event.LOCK_ACQUIRED, self.release, environment=self.environment, details=details)
        self.log.info("%s: this run holds deploy target %s", self.environment, self.target)
        return details


class TargetUnlockOperator(BaseOperator):
    """Release the deploy target's lock once the environment's stage is over, whatever its
    outcome (``trigger_rule=all_done``, after the last check, the abort and the rollback).
    The listener also releases a run's locks when the run ends (e.g. marked failed by hand)."""

    ui_color = "#e6e6fa"

    def __init__(self, *, release: str, environment: str, target: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.environment = environment
        self.target = target

    def execute(self, context: Any) -> dict[str, Any]:
        from releasetrain.hooks.ledger import LedgerHook

        hook = LedgerHook()
        try:
            released = hook.store.unlock(holder_of(context), self.target)
        finally:
            hook.close()
        if released:
            details = {"target": self.target, "holder": holder_of(context)}
            record(context, Event.LOCK_RELEASED, self.release, environment=self.environment, details=details)
            self.log.info("%s: deploy target %s released", self.environment, self.target)
        return {"target": self.target, "released": bool(released)}
