from __future__ import annotations

from typing import Any

from airflow.sdk.exceptions import AirflowFailException

REQUEST_TASK_ID = "prepare"
PACKAGE_TASK_ID = "package"


def pull(context: Any, task_id: str, key: str = "return_value") -> Any:
    return context["ti"].xcom_pull(task_ids=task_id, key=key)


def require(context: Any, task_id: str, what: str) -> dict[str, Any]:
    """An earlier task's result that this task cannot do without."""
    value = pull(context, task_id)
    if not value:
        raise AirflowFailException(f"{what} is missing: task {task_id!r} recorded no result in this run")
    return value


def release_values(request: dict[str, Any], environment: str, digest: str = "") -> dict[str, str]:
    """Placeholders available to checks: ``${release}``, ``${version}``, ``${environment}``, ``${digest}``."""
    return {
        "release": request["release"],
        "version": request["version"],
        "environment": environment,
        "digest": digest,
    }


RISK_TASK_ID = "assess_risk"


def record(
    context: Any,
    kind: str,
    release: str,
    *,
    environment: str = "",
    actor: str = "",
    details: dict[str, Any] | None = None,
) -> None:
    """Append an event of this run to the release ledger (a failure to record fails the task)."""
    from releasetrain.hooks.ledger import LedgerHook

    hook = LedgerHook()
    try:
        hook.append(
            kind,
            release=release,
            run_id=context["run_id"],
            environment=environment,
            actor=actor or "",
            details=details or {},
        )
    finally:
        hook.close()


def gates_for(context: Any, environment: str, quorum: int, reviews: list[str]) -> tuple[int, list[str]]:
    """The quorum and reviews the risk assessment selected for an environment (the spec's without one)."""
    risk = pull(context, RISK_TASK_ID) or {}
    gates = (risk.get("gates") or {}).get(environment)
    if not gates:
        return quorum, list(reviews)
    return int(gates["quorum"]), list(gates["reviews"])
