"""The releasetrain Airflow plugin, registered once through the ``airflow.plugins`` entry
point of the installed distribution (never through the plugins folder).

Later capabilities plug in here: release-window timetables, the ledger listener and the
release calendar view.
"""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin

from releasetrain.core.versioning import is_semver


class ReleaseTrainPlugin(AirflowPlugin):
    """Makes ``{{ macros.releasetrain.is_semver(...) }}`` available in templates."""

    name = "releasetrain"
    macros = [is_semver]
