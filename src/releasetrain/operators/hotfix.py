"""The hotfix decision, before packaging: a hotfix run that fails the spec's policy is
refused with the criteria it missed; the decision is recorded either way."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator

from releasetrain.core.gatekeeper import Decision
from releasetrain.core.hotfix import HOTFIX_EVENTS, decide_hotfix, in_test, production_contents
from releasetrain.core.vocabulary import Event
from releasetrain.operators._common import enforce, record, release_request
from releasetrain.operators.train import hold_the_train


class HotfixPolicyOperator(BaseOperator):
    """Decide whether this run may go as a hotfix (see :mod:`releasetrain.core.hotfix`).

    A normal run passes through (nothing to decide). A hotfix run records ``hotfix_decided``
    (severity, incident, the components it changes against production, the reasons) and is
    refused (``gate_refused``) when the policy says no; packaging asks the ledger for the
    decision, so the step marked success by hand packages nothing.

    :param policy: the spec's ``hotfix_policy``
    :param components: ``[{"name", "version"}]`` (version None: the run's version)
    :param production: the release's production environments
    :param admit_task_id: the release train's admission step: an allowed hotfix holds the
        normal run underway (``run_held``)
    """

    ui_color = "#fce8e6"

    def __init__(
        self,
        *,
        release: str,
        policy: dict[str, Any],
        components: list[dict[str, Any]],
        production: list[str],
        admit_task_id: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.policy = dict(policy)
        self.components = [dict(c) for c in components]
        self.production = list(production)
        self.admit_task_id = admit_task_id

    def execute(self, context: Any) -> dict[str, Any]:
        from releasetrain.core.gatekeeper import not_ended
        from releasetrain.hooks.ledger import LedgerHook
        from releasetrain.operators._common import run_ledger

        # a finished run cleared does not decide again (what it shipped stays on record)
        enforce(context, not_ended(run_ledger(context, self.release), self.task_id), self.release)
        request = release_request(context, self.release)
        if not request.hotfix:
            self.log.info("not a hotfix: no hotfix policy to apply")
            return {"hotfix": False}
        hook = LedgerHook()
        try:
            events = sorted(
                (e for kind in HOTFIX_EVENTS for e in hook.events(release=self.release, kind=kind)), key=lambda e: e.seq
            )
        finally:
            hook.close()
        planned = {c["name"]: c.get("version") or request.version for c in self.components}
        decision = decide_hotfix(
            self.policy,
            request.severity,
            planned,
            production_contents(events, self.production),
            in_test(events, self.production, context["run_id"], context["dag_run"].dag_id),
        )
        details = decision.details(request.severity, request.incident)
        record(context, Event.HOTFIX_DECIDED, self.release, details=details)
        if not decision.allowed:
            refusal = Decision.refuse(self.task_id, *[f"hotfix for {request.incident}: {r}" for r in decision.reasons])
            enforce(context, refusal, self.release)
        self.log.info("hotfix for %s (%s) allowed: changes %s", request.incident, request.severity, decision.changed)
        if self.admit_task_id:  # allowed: the normal run underway waits for this one from now on
            hold_the_train(context, self.release, f"hotfix for {request.incident} ({request.severity})", self.log)
        return details
