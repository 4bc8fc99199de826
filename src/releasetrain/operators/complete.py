"""The last task of a release: only reached when every environment passed."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from releasetrain.core import gatekeeper
from releasetrain.core.gatekeeper import Decision
from releasetrain.core.vocabulary import PACKAGE, Event
from releasetrain.operators._common import enforce, record, release_request, run_ledger


class ReleaseCompleteOperator(BaseOperator):
    """Summarise the released version and where it runs, once the ledger shows it passed.

    It is the run's non-rollback leaf: when any gate fails it is ``upstream_failed``,
    which keeps the run ``failed`` even when a rollback succeeds. Its own gate reads the
    ledger, not task states: every environment recorded its pass with the packaged digest,
    an emergency run recorded its post-implementation review, and the closure (when the
    release has one) was recorded. A gate marked successful by hand recorded none of that.

    :param environments: the release's environments, in promotion order
    :param gate_task_ids: each environment's last gate (``<env>.passed``), in promotion order
    :param suite_task_ids: the test suites of non-production environments: each passed
    """

    ui_color = "#ceead6"

    def __init__(
        self,
        *,
        release: str,
        gate_task_ids: list[str],
        environments: list[str] | None = None,
        review_task_id: str | None = None,
        closure_task_id: str | None = None,
        suite_task_ids: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.suite_task_ids = list(suite_task_ids or [])
        self.closure_task_id = closure_task_id
        self.release = release
        self.gate_task_ids = list(gate_task_ids)
        self.environments = list(environments or [t.split(".", 1)[0] for t in gate_task_ids])
        self.review_task_id = review_task_id

    def execute(self, context: Any) -> dict[str, Any]:
        request = release_request(context, self.release)
        run = run_ledger(context, self.release)
        packaged = run.last(Event.PACKAGED, task_id=PACKAGE)
        digest = packaged.details.get("digest") if packaged else ""
        decisions = [
            gatekeeper.environment_passed(run, env, digest or "", gate_task_id=gate)
            for env, gate in zip(self.environments, self.gate_task_ids, strict=True)
        ]
        if self.suite_task_ids:
            decisions.append(gatekeeper.suites_passed(run, self.suite_task_ids, digest or "", "test suites"))
        if request.emergency and self.review_task_id:
            decisions.append(
                gatekeeper.recorded_person(run, Event.REVIEW, self.review_task_id, "post-implementation review")
            )
        if self.closure_task_id:
            decisions.append(gatekeeper.recorded_person(run, Event.CLOSURE, self.closure_task_id, "runbook update"))
        enforce(context, Decision.combine(f"{self.release} complete", decisions), self.release)
        if not self.closure_task_id:
            from releasetrain.operators.governance import close_change

            close_change(context, self.release, "success", f"released {request.version}")
            record(context, Event.CLOSURE, self.release, details={"version": request.version, "outcome": "success"})
        self.log.info(
            "Released %s %s (%s) to %s", self.release, request.version, digest, " -> ".join(self.environments)
        )
        return {
            "release": self.release,
            "version": request.version,
            "digest": digest,
            "environments": self.environments,
        }
