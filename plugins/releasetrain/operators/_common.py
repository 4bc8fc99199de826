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
