"""The releasetrain Airflow plugin, registered once through the ``airflow.plugins`` entry
point of the installed distribution (never through the plugins folder).

It registers the release-window timetable (without which DAGs using it could not be
serialized) and a template macro.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from releasetrain.core.versioning import is_semver
from releasetrain.timetables.release_window import ReleaseWindowTimetable


class ReleaseTrainPlugin(AirflowPlugin):
    """Makes ``{{ macros.releasetrain.is_semver(...) }}`` available in templates."""

    name = "releasetrain"
    macros = [is_semver]
    timetables = [ReleaseWindowTimetable]
