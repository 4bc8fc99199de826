"""The first task of every release run: settle what is being released and by whom."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from releasetrain.core.versioning import is_semver


class ReleaseRequestOperator(BaseOperator):
    """Resolve version, author and change summary of this run and record them (XCom).

    :param release: release name
    :param planned_version: the spec's fixed version (a planned release), or None (a train)
    """

    ui_color = "#e8f0fe"

    def __init__(self, *, release: str, planned_version: str | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.planned_version = planned_version

    def _candidate_version(self, context: Any) -> str | None:
        """Scheduled trains take the candidate CI published in ``releasetrain_<name>_version``."""
        if context["dag_run"].triggering_user_name is not None:
            return None
        from airflow.sdk import Variable

        return Variable.get(f"releasetrain_{self.release}_version", default=None)

    def execute(self, context: Any) -> dict[str, Any]:
        params = context["params"]
        unknown = sorted(set(context["dag_run"].conf or {}) - set(params))
        if unknown:
            raise AirflowFailException(
                f"unknown trigger param(s) {', '.join(unknown)}; this release takes {', '.join(sorted(params))}"
            )
        version = (params.get("version") or self.planned_version or self._candidate_version(context) or "").strip()
        if not is_semver(version):
            raise AirflowFailException(f"param 'version': {version!r} is not a semantic version (e.g. 1.4.2)")
        if self.planned_version and version != self.planned_version:
            raise AirflowFailException(
                f"param 'version': {self.release} is a planned release of {self.planned_version}; "
                f"{version} cannot be released through it"
            )
        triggered_by = context["dag_run"].triggering_user_name
        scheduled = str(getattr(context["dag_run"], "run_type", "")) in ("scheduled", "DagRunType.SCHEDULED")
        requested_by = (
            (params.get("requested_by") or "").strip() or triggered_by or ("scheduler" if scheduled else None)
        )
        if not requested_by:
            # Without a known author nobody could be kept from approving their own release.
            raise AirflowFailException("param 'requested_by': who requests this release is unknown; set it")
        emergency = bool(params.get("emergency"))
        justification = " ".join((params.get("emergency_justification") or "").split())
        if emergency and len(justification) < 20:
            raise AirflowFailException(
                "param 'emergency_justification': an emergency change needs a justification "
                "(at least 20 characters: the incident or risk that cannot wait for a window)"
            )
        request = {
            "release": self.release,
            "version": version,
            "triggered_by": triggered_by,
            "requested_by": requested_by,
            "change_summary": params.get("change_summary") or "",
            "run_id": context["run_id"],
            "emergency": emergency,
            "emergency_justification": justification if emergency else "",
        }
        self.log.info(
            "Release %s %s requested by %s (triggered by %s): %s",
            self.release,
            version,
            requested_by or "-",
            triggered_by or "the scheduler",
            request["change_summary"],
        )
        from releasetrain.operators._common import record

        record(context, "triggered", self.release, actor=triggered_by or "scheduler", details=request)
        return request
