"""An Airflow DAG for a release authored in Python with the builder API: the same DAG a YAML spec gives."""

from __future__ import annotations

from pathlib import Path

from releasetrain.core.builder import ReleaseBuilder
from releasetrain.factory import build_release_dag

PROJECT_ROOT = Path(__file__).resolve().parent.parent

billing = (
    ReleaseBuilder("billing", owner_team="payments", description="Invoicing and ledger API.")
    .component("ledger-api", source="include/demo_fleet/artifacts/ledger-api")
    .environment(
        "billing-staging",
        deploy_target="fleet_billing_staging",
        smoke_checks=[{"name": "serves the new version", "endpoint": "app/", "expect_json": {"version": "${version}"}}],
    )
    .environment(
        "billing-prod",
        deploy_target="fleet_billing_prod",
        approvers=["approver", "admin"],
        smoke_checks=[{"name": "serves the new version", "endpoint": "app/", "expect_json": {"version": "${version}"}}],
        health_checks={
            "period_seconds": 20,
            "interval_seconds": 5,
            "checks": [{"name": "target healthy", "endpoint": "health", "expect_json": {"healthy": True}}],
        },
    )
    .rollback("Redeploy the previous version with the billing-prod.rollback task", backout_minutes=15)
    .tags("example", "python-builder")
    .build()
)

dag = build_release_dag(billing, project_root=PROJECT_ROOT)
