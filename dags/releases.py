"""Every valid release spec in include/releases/ becomes two Airflow DAGs: ``release_<name>``
(the release) and ``rollback_<name>`` (its manual rollback, for incidents).

Broken specs are reported by ``release_spec_errors.py`` as that file's import error, so
they never take the valid releases down. Set ``[releasetrain] spec_dirs`` (or
AIRFLOW__RELEASETRAIN__SPEC_DIRS; os.pathsep-separated) to read specs from other folders.
"""

from __future__ import annotations

from pathlib import Path

from releasetrain.factory import load_release_dags, spec_dirs

PROJECT_ROOT = Path(__file__).resolve().parent.parent

globals().update(load_release_dags(spec_dirs(PROJECT_ROOT), project_root=PROJECT_ROOT))
