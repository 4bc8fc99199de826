"""The releasetrain Airflow plugin, registered once through the ``airflow.plugins`` entry
point of the installed distribution (never through the plugins folder).

It registers the release-window timetable (without which DAGs using it could not be
serialized), a template macro, and the listener that records run states and manual
task state changes in the release ledger.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from releasetrain import listener
from releasetrain.alerts_api import create_app
from releasetrain.cockpit_api import router as cockpit_router
from releasetrain.core.versioning import is_semver
from releasetrain.links import LINKS
from releasetrain.timetables.release_window import ReleaseWindowTimetable


class ReleaseTrainPlugin(AirflowPlugin):
    """Makes ``{{ macros.releasetrain.is_semver(...) }}`` available in templates, serves the alert
    webhook and the release cockpit, and puts the cockpit in the UI."""

    name = "releasetrain"
    macros = [is_semver]
    timetables = [ReleaseWindowTimetable]
    listeners = [listener]
    # the extra links of deploy, rollback, approval and analysis tasks (registered, so the UI
    # can show the links the tasks' operators declare)
    operator_extra_links = LINKS
    # served by the API server under /releasetrain: the alert webhook (Alertmanager) and the
    # release cockpit (its routes authenticate through Airflow's own user resolution)
    _app = create_app()
    _app.include_router(cockpit_router())
    fastapi_apps = [{"app": _app, "url_prefix": "/releasetrain", "name": "releasetrain"}]
    # the cockpit in the UI: a "Releases" entry on the navigation bar and a "Release" tab on runs
    external_views = [
        {
            "name": "Releases",
            "href": "/releasetrain/cockpit/",
            "destination": "nav",
            "url_route": "releasetrain-cockpit",
        },
        {
            "name": "Release",
            "href": "/releasetrain/cockpit/runs/{DAG_ID}/{RUN_ID}",
            "destination": "dag_run",
            "url_route": "releasetrain-release",
        },
    ]
