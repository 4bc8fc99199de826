"""The release request: what a run releases and who asked, built from the DAG run itself.

The DAG run's triggering user, run type and conf are set by Airflow when the run is
created; nobody can edit them afterwards. That makes them, unlike XCom, an authoritative
source: every task that needs the request builds it again from the run
(:func:`build_request`) instead of reading what an earlier task left in XCom.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from releasetrain.core.identity import Directory
from releasetrain.core.versioning import is_semver
from releasetrain.core.vocabulary import SCHEDULER


class ReleaseRequestError(ValueError):
    """A run that cannot be a release: names the param and what is wrong with it."""


@dataclass(frozen=True)
class ReleaseRequest:
    """One release run's request.

    ``triggered_by`` is the name of the user Airflow authenticated when the run was created
    (None for scheduled runs) and ``triggered_by_id`` its user id (from the people
    directory); ``requested_by`` is the change owner's user id (the ``requested_by`` param,
    else the triggering user, else whoever published the candidate version for a scheduled
    run). Identity is by id; names are for display.
    """

    release: str
    version: str
    dag_id: str
    run_id: str
    triggered_by: str | None
    requested_by: str
    change_summary: str = ""
    emergency: bool = False
    emergency_justification: str = ""
    scheduled: bool = False
    triggered_by_id: str | None = None
    hotfix: bool = False
    severity: str = ""
    incident: str = ""

    @property
    def authors(self) -> frozenset[str]:
        """The ids of the people who asked for the release: they may never approve or review it
        (the triggering user's name too, so a directory gap can never let an author through)."""
        people = (self.triggered_by_id, self.triggered_by, self.requested_by)
        return frozenset(p for p in people if p and p != SCHEDULER)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def build_request(
    *,
    release: str,
    dag_id: str,
    run_id: str,
    params: Mapping[str, Any],
    conf: Mapping[str, Any] | None,
    triggering_user: str | None,
    run_type: str,
    planned_version: str | None = None,
    candidate: Mapping[str, Any] | None = None,
    people: Mapping[str, str] | None = None,
) -> ReleaseRequest:
    """The request of a run, from what Airflow recorded when it created the run.

    :param params: the run's resolved params (DAG defaults and the run's conf)
    :param conf: the run's conf as given (unknown keys are refused)
    :param triggering_user: ``dag_run.triggering_user_name``
    :param run_type: ``dag_run.run_type`` (``scheduled``, ``manual``, ...)
    :param candidate: for scheduled trains, the published candidate:
        ``{"version": ..., "published_by": ...}``
    :param people: the people directory (user id -> name)
    :raises ReleaseRequestError: naming the param that is wrong
    """
    unknown = sorted(set(conf or {}) - set(params))
    if unknown:
        raise ReleaseRequestError(
            f"unknown trigger param(s) {', '.join(unknown)}; this release takes {', '.join(sorted(params))}"
        )
    scheduled = str(run_type).lower().rsplit(".", 1)[-1] == "scheduled"
    candidate = dict(candidate or {}) if scheduled and triggering_user is None else {}
    version = str(params.get("version") or planned_version or candidate.get("version") or "").strip()
    if not is_semver(version):
        raise ReleaseRequestError(f"param 'version': {version!r} is not a semantic version (e.g. 1.4.2)")
    if planned_version and version != planned_version:
        raise ReleaseRequestError(
            f"param 'version': {release} is a planned release of {planned_version}; "
            f"{version} cannot be released through it"
        )
    triggering_user_id = Directory(people or {}).id_of(triggering_user)
    requested_by = (
        str(params.get("requested_by") or "").strip()
        or triggering_user_id
        or str(candidate.get("published_by") or "").strip()
        or (SCHEDULER if scheduled else "")
    )
    if not requested_by:
        # Without a known author nobody could be kept from approving their own release.
        raise ReleaseRequestError("param 'requested_by': who requests this release is unknown; set it")
    emergency = bool(params.get("emergency"))
    justification = " ".join(str(params.get("emergency_justification") or "").split())
    if emergency and len(justification) < 20:
        raise ReleaseRequestError(
            "param 'emergency_justification': an emergency change needs a justification "
            "(at least 20 characters: the incident or risk that cannot wait for a window)"
        )
    hotfix = bool(params.get("hotfix"))
    severity = str(params.get("severity") or "")
    incident = " ".join(str(params.get("incident") or "").split())
    if hotfix and not severity:
        raise ReleaseRequestError("param 'severity': a hotfix states its severity (sev1 is the most severe)")
    if hotfix and len(incident) < 3:
        raise ReleaseRequestError("param 'incident': a hotfix names the incident it fixes (e.g. INC-4711)")
    return ReleaseRequest(
        release=release,
        version=version,
        dag_id=dag_id,
        run_id=run_id,
        triggered_by=triggering_user,
        triggered_by_id=triggering_user_id,
        requested_by=requested_by,
        change_summary=str(params.get("change_summary") or ""),
        emergency=emergency,
        emergency_justification=justification if emergency else "",
        scheduled=scheduled,
        hotfix=hotfix,
        severity=severity if hotfix else "",
        incident=incident if hotfix else "",
    )


def parse_candidate(value: Any) -> dict[str, Any]:
    """The published candidate of a train: ``{"version", "published_by"}`` (JSON), or a bare version."""
    import json

    if value is None:
        return {}
    if isinstance(value, Mapping):
        return dict(value)
    text = str(value).strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return {}
        return dict(data) if isinstance(data, dict) else {}
    return {"version": text}
