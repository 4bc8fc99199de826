"""The last task of a release: only reached when every environment passed."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from releasetrain.operators._common import PACKAGE_TASK_ID, REQUEST_TASK_ID, pull, record


class ReleaseCompleteOperator(BaseOperator):
    """Summarise the released version and where it runs.

    It is the run's non-rollback leaf: when any gate fails it is ``upstream_failed``,
    which keeps the run ``failed`` even when a rollback succeeds.

    :param gate_task_ids: each environment's last gate, in promotion order
    """

    ui_color = "#ceead6"

    def __init__(
        self,
        *,
        release: str,
        gate_task_ids: list[str],
        review_task_id: str | None = None,
        closure_task_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.closure_task_id = closure_task_id
        self.release = release
        self.gate_task_ids = gate_task_ids
        self.review_task_id = review_task_id

    def execute(self, context: Any) -> dict[str, Any]:
        request = pull(context, REQUEST_TASK_ID) or {}
        if request.get("emergency") and self.review_task_id:
            review = pull(context, self.review_task_id) or {}
            if not (review.get("responded_by_user") or {}).get("id"):
                raise AirflowFailException(
                    f"emergency release {self.release}: no post-implementation review is recorded "
                    f"(was {self.review_task_id} marked by hand?); the release cannot end successful"
                )
        if self.closure_task_id:
            if not (pull(context, self.closure_task_id) or {}).get("runbook_update"):
                raise AirflowFailException(
                    f"{self.release}: no runbook update is recorded by {self.closure_task_id} "
                    "(was it marked by hand?); the release cannot end successful"
                )
        else:
            from releasetrain.operators.governance import close_change

            close_change(context, self.release, "success", f"released {request.get('version')}")
            record(context, "closure", self.release, details={"version": request.get("version"), "outcome": "success"})
        packaged = pull(context, PACKAGE_TASK_ID) or {}
        environments = [pull(context, task_id)["environment"] for task_id in self.gate_task_ids]
        self.log.info(
            "Released %s %s (%s) to %s",
            self.release,
            request.get("version"),
            packaged.get("digest"),
            " -> ".join(environments),
        )
        return {
            "release": self.release,
            "version": request.get("version"),
            "digest": packaged.get("digest"),
            "environments": environments,
        }
