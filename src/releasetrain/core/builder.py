"""A small Python builder for releases authored in code instead of YAML.

It produces the same validated :class:`ReleaseSpec` a YAML file does, so the DAG factory
builds the same DAG from either::

    spec = (
        ReleaseBuilder("billing", owner_team="payments")
        .component("ledger-api", source="include/demo_fleet/artifacts/ledger-api")
        .environment("billing-dev", deploy_target="fleet_billing_dev", smoke_checks=[...])
        .environment("billing-prod", deploy_target="fleet_billing_prod", approvers=["approver"])
        .build()
    )
"""

from __future__ import annotations

from typing import Any

from releasetrain.core.spec import ReleaseSpec, parse_spec


class ReleaseBuilder:
    def __init__(
        self,
        name: str,
        *,
        owner_team: str,
        description: str = "",
        version: str | None = None,
        business_impact: str | None = None,
    ):
        self._data: dict[str, Any] = {
            "name": name,
            "owner_team": owner_team,
            "description": description,
            "components": [],
            "environments": [],
        }
        if version is not None:
            self._data["version"] = version
        if business_impact is not None:
            self._data["business_impact"] = business_impact

    def component(
        self, name: str, *, source: str, version: str | None = None, contract: str | None = None
    ) -> ReleaseBuilder:
        entry: dict[str, Any] = {"name": name, "source": source}
        if version is not None:
            entry["version"] = version
        if contract is not None:
            entry["contract"] = contract
        self._data["components"].append(entry)
        return self

    def environment(
        self,
        name: str,
        *,
        deploy_target: str,
        smoke_checks: list[dict[str, Any]] | None = None,
        health_checks: dict[str, Any] | None = None,
        approvers: list[str] | None = None,
        **options: Any,
    ) -> ReleaseBuilder:
        """Add the next environment in promotion order; ``approvers`` makes approval required."""
        entry: dict[str, Any] = {"name": name, "deploy_target": deploy_target, **options}
        if smoke_checks:
            entry["smoke_checks"] = smoke_checks
        if health_checks:
            entry["health_checks"] = health_checks
        if approvers:
            entry["approval"] = {"required": True, "approvers": approvers}
        self._data["environments"].append(entry)
        return self

    def tags(self, *tags: str) -> ReleaseBuilder:
        self._data["tags"] = list(tags)
        return self

    def artifact_store(self, url: str) -> ReleaseBuilder:
        self._data["artifact_store"] = url
        return self

    def rollback(self, plan: str, *, backout_minutes: int) -> ReleaseBuilder:
        """The rollback plan and backout-time estimate (needed for high-risk releases)."""
        self._data["rollback_plan"] = plan
        self._data["backout_minutes"] = backout_minutes
        return self

    def build(self, source: str | None = None) -> ReleaseSpec:
        """Validate and return the spec; errors name ``source`` (default ``python:<name>``)."""
        return parse_spec(self._data, source or f"python:{self._data['name']}")
