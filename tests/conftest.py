from __future__ import annotations

import os
import tempfile
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Unit and adapter tests never touch a shared Airflow home: one throw-away home per session,
# configured before anything imports airflow.
_home = tempfile.mkdtemp(prefix="releasetrain-unit-home-")
os.environ["AIRFLOW_HOME"] = _home
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(PROJECT_ROOT / "dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ.pop("RELEASETRAIN_SPEC_DIRS", None)
