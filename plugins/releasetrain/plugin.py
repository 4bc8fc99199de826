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
from releasetrain.core.versioning import is_semver
from releasetrain.timetables.release_window import ReleaseWindowTimetable


class ReleaseTrainPlugin(AirflowPlugin):
    """Makes ``{{ macros.releasetrain.is_semver(...) }}`` available in templates."""

    name = "releasetrain"
    macros = [is_semver]
    timetables = [ReleaseWindowTimetable]
    listeners = [listener]
    # the alert webhook (Alertmanager), served by the API server under /releasetrain
    fastapi_apps = [{"app": create_app(), "url_prefix": "/releasetrain", "name": "releasetrain alerts"}]
