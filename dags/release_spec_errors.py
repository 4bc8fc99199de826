"""Reports broken release specs as this Airflow DAG file's import error (it defines no dag).

The error names each broken file, the field path and what is wrong, e.g.
``include/releases/shop.yaml: environments[1].deploy_target: field required``.
Airflow marks every DAG of a file with an import error stale; keeping the report in a
file of its own leaves the valid releases (``releases.py``) running.
"""

from __future__ import annotations

from pathlib import Path

from releasetrain.factory import raise_spec_errors, spec_dirs

PROJECT_ROOT = Path(__file__).resolve().parent.parent

raise_spec_errors(spec_dirs(PROJECT_ROOT), project_root=PROJECT_ROOT)
