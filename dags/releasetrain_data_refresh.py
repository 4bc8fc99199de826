"""Airflow DAGs ``refresh_test_data_<env>``: production-derived test data into a
non-production environment, only after the masking check passed.

One DAG per refresh declared in ``include/data_refresh.yaml`` (the deployment's file; the
``[releasetrain] data_refresh_file`` setting, or ``AIRFLOW__RELEASETRAIN__DATA_REFRESH_FILE``,
names another): ``mask_check`` reads the source and checks every masking rule, recorded in
the ledger; ``copy`` asks the ledger for that record, checks the rules again on exactly the
rows it copies, and replaces the target's tables in one transaction. Triggered by hand.
"""

from __future__ import annotations

import os
from pathlib import Path

import pendulum
from airflow.sdk import DAG

from releasetrain.core import vocabulary as v
from releasetrain.core.masking import load_refreshes
from releasetrain.operators.refresh import MaskingCheckOperator, TestDataCopyOperator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
REFRESH_FILE = Path(
    os.environ.get("AIRFLOW__RELEASETRAIN__DATA_REFRESH_FILE") or PROJECT_ROOT / "include" / "data_refresh.yaml"
)

for refresh in load_refreshes(REFRESH_FILE):
    with DAG(
        dag_id=refresh.dag_id,
        dag_display_name=f"Test data refresh: {refresh.environment}",
        description=f"Masked data from {refresh.source_conn_id} into {refresh.environment}, masking checked first",
        schedule=None,
        start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
        catchup=False,
        max_active_runs=1,
        tags=["releasetrain", "maintenance", "test-data"],
        default_args={"owner": "releasetrain", "retries": 0},
    ) as dag:
        check = MaskingCheckOperator(task_id=v.REFRESH_CHECK, refresh=refresh.plan())
        check >> TestDataCopyOperator(task_id=v.REFRESH_COPY, refresh=refresh.plan(), check_task_id=v.REFRESH_CHECK)
    globals()[refresh.dag_id] = dag
