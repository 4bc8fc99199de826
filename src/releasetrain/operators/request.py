"""The first task of every release run: settle what is being released and by whom."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from releasetrain.core.request import parse_candidate
from releasetrain.core.vocabulary import SCHEDULER, Event
from releasetrain.operators._common import record, release_request


class ReleaseRequestOperator(BaseOperator):
    """Resolve version, author and change summary of this run and record them in the ledger.

    The request is built from the DAG run (triggering user, conf), which nobody can edit
    after Airflow created it; every later task builds it again the same way. A scheduled
    train takes its candidate from the variable ``releasetrain_<name>_version`` (a version,
    or ``{"version": ..., "published_by": ...}``: who published it is the run's author);
    this task pins it in the ledger for the rest of the run. The XCom result is for display.

    :param release: release name
    :param planned_version: the spec's fixed version (a planned release), or None (a train)
    """

    ui_color = "#e8f0fe"

    def __init__(self, *, release: str, planned_version: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.planned_version = planned_version

    def _candidate(self, context: Any) -> dict[str, Any]:
        """Scheduled trains take the candidate CI published in ``releasetrain_<name>_version``."""
        if context["dag_run"].triggering_user_name is not None:
            return {}
        from airflow.sdk import Variable

        return parse_candidate(Variable.get(f"releasetrain_{self.release}_version", default=None))

    def execute(self, context: Any) -> dict[str, Any]:
        request = release_request(
            context, self.release, planned_version=self.planned_version, candidate=self._candidate(context)
        )
        self.log.info(
            "Release %s %s requested by %s (triggered by %s): %s",
            self.release,
            request.version,
            request.requested_by,
            request.triggered_by or "the scheduler",
            request.change_summary,
        )
        record(
            context,
            Event.TRIGGERED,
            self.release,
            actor=request.triggered_by or SCHEDULER,
            details=request.to_dict(),
        )
        return request.to_dict()
