"""Airflow DAG ``releasetrain_retention``: the artifact store's retention (weekly).

``plan`` records, per release, what the store keeps (the last N bundles per environment and
packaged, what is live or last-good anywhere, legal holds) and what may go; ``delete``
deletes that, re-checked, and records each deletion. Trigger with ``{"dry_run": true}`` to
see the plan only. The policy is ``include/retention.yaml`` (the deployment's), never conf.
"""

from __future__ import annotations

from pathlib import Path

import pendulum
from airflow.sdk import DAG, Param

from releasetrain.core import vocabulary as v
from releasetrain.operators.retention import RetentionDeleteOperator, RetentionPlanOperator

PROJECT_ROOT = Path(__file__).resolve().parent.parent
POLICY = str(PROJECT_ROOT / "include" / "retention.yaml")

with DAG(
    dag_id=v.RETENTION_DAG_ID,
    dag_display_name="Artifact retention",
    description="Keep the bundles that matter, delete the rest (planned and recorded first)",
    schedule="@weekly",
    start_date=pendulum.datetime(2024, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    tags=["releasetrain", "maintenance"],
    params={"dry_run": Param(False, type="boolean", title="Dry run", description="Plan and record only.")},
    default_args={"owner": "releasetrain", "retries": 0},
) as dag:
    plan = RetentionPlanOperator(task_id=v.RETENTION_PLAN, policy_file=POLICY)
    plan >> RetentionDeleteOperator(task_id=v.RETENTION_DELETE, policy_file=POLICY)
