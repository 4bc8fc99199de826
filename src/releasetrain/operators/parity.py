"""Parity between production and the environment before it, shown to production's approvers."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from releasetrain.core.profile import parity
from releasetrain.core.vocabulary import Event
from releasetrain.operators._common import record


class ParityCheckOperator(BaseOperator):
    """Compare two environments where they should match: the settings their profiles define,
    and the versions of the shared services (``depends_on``) running in each (the ledger).
    Records the differences (``parity_checked``) for the approvers' request; it does not
    block: the approvers decide with it in front of them.

    :param compared_with: the environment before this one
    :param keys: environment -> the setting names of its profile
    :param services: ``[{release, environments: {env: where it runs for env}}]``
    """

    ui_color = "#e8f0fe"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        compared_with: str,
        keys: dict[str, list[str]],
        services: list[dict[str, Any]],
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.environment = environment
        self.compared_with = compared_with
        self.keys = {k: list(v) for k, v in keys.items()}
        self.services = list(services)

    def execute(self, context: Any) -> dict[str, Any]:
        from releasetrain.hooks.ledger import LedgerHook
        from releasetrain.triggers.dependency import ledger_live

        hook = LedgerHook()
        try:
            live = ledger_live(hook.store)
            services = [
                {
                    "release": s["release"],
                    "versions": {env: live(s["release"], where) for env, where in s["environments"].items()},
                }
                for s in self.services
            ]
        finally:
            hook.close()
        differences = parity(self.compared_with, self.environment, self.keys, services)
        report = {"compared_with": self.compared_with, "differences": differences, "services": services}
        record(context, Event.PARITY_CHECKED, self.release, environment=self.environment, details=report)
        for line in differences or ["none"]:
            self.log.info("%s vs %s: %s", self.compared_with, self.environment, line)
        return report
