"""Smoke checks right after a deploy, and health verification over a period."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException

from releasetrain.core.checks import render_check
from releasetrain.core.gatekeeper import Decision
from releasetrain.core.spec import HttpCheck
from releasetrain.core.vocabulary import Event
from releasetrain.hooks.http_check import HttpCheckHook
from releasetrain.operators._common import enforce, record, release_request, release_values, run_ledger
from releasetrain.triggers.health import HealthVerificationTrigger


def _rendered(checks: list[dict[str, Any]], values: dict[str, str]) -> list[HttpCheck]:
    return [render_check(HttpCheck.model_validate(c), values) for c in checks]


class _EnvironmentCheckOperator(BaseOperator):
    """Checks of one environment after its deploy.

    :param release: release name
    :param environment: environment name
    :param deploy_task_id: the deploy task whose digest is checked
    :param http_conn_id: default connection for the checks (the deploy target)
    """

    def __init__(self, *, release: str, environment: str, deploy_task_id: str, http_conn_id: str, **kwargs: Any):
        super().__init__(**kwargs)
        self.release = release
        self.environment = environment
        self.deploy_task_id = deploy_task_id
        self.http_conn_id = http_conn_id

    def _values(self, context: Any) -> tuple[dict[str, Any], dict[str, str]]:
        """The deployment record and the ``${...}`` placeholder values for the checks."""
        request = release_request(context, self.release)
        deployed = self._deployed(context)
        return deployed, release_values(request, self.environment, deployed["digest"])

    def _deployed(self, context: Any) -> dict[str, Any]:
        """What this run's deploy task recorded in the ledger (a deploy marked successful by hand did not)."""
        run = run_ledger(context, self.release)
        deployed = run.last(Event.DEPLOYED, environment=self.environment, task_id=self.deploy_task_id)
        if deployed is None:
            refusal = Decision.refuse(self.task_id, run.missing(self.deploy_task_id, "deployment"))
            enforce(context, refusal, self.release, self.environment)
        details = dict(deployed.details)  # type: ignore[union-attr]
        # packaging modular: the stage's checks are about the release bundle every unit came from
        details["digest"] = details.get("release_digest") or details["digest"]
        return details


class SmokeCheckOperator(_EnvironmentCheckOperator):
    """Run the environment's smoke checks once; any failing check fails the task.

    Returns the promotion record the next environment checks:
    ``{"environment", "digest", "passed": True, "checks": [...]}``.

    :param checks: ``HttpCheck`` dicts from the spec
    :param journeys: synthetic journeys to run after the checks: name -> YAML file
    """

    ui_color = "#fce8e6"
    what = "smoke"
    passed_event, failed_event = Event.CHECKS_PASSED, Event.CHECKS_FAILED

    def __init__(self, *, checks: list[dict[str, Any]], journeys: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.checks = [HttpCheck.model_validate(c).model_dump(mode="json") for c in checks]
        self.journeys = dict(journeys or {})

    def _journeys(self, values: dict[str, str]) -> list[Any]:
        from releasetrain.core.journey import JourneyError, load_journey
        from releasetrain.hooks.journey import JourneyHook

        results = []
        for name, path in self.journeys.items():
            try:
                result = JourneyHook(self.http_conn_id).run(load_journey(path), values={**values, "route": "app"})
            except JourneyError as exc:
                raise AirflowException(f"{self.environment}: journey {name} cannot run: {exc}") from None
            self.log.info("journey %-28s %s  %s", name, "PASS" if result.ok else "FAIL", result.summary)
            results.append(result)
        return results

    def execute(self, context: Any) -> dict[str, Any]:
        deployed, values = self._values(context)
        hook = HttpCheckHook(self.http_conn_id)
        results = [hook.run_check(check) for check in _rendered(self.checks, values)]
        journeys = self._journeys(values)
        for result in results:
            self.log.info(
                "smoke %-30s %s  %s %s ms %s",
                result.name,
                "PASS" if result.passed else "FAIL",
                result.status,
                result.latency_ms,
                "; ".join(result.failures),
            )
        failed = [r for r in results if not r.passed]
        failed_journeys = [j for j in journeys if not j.ok]
        failures = [f"{r.name}: {'; '.join(r.failures)}" for r in failed] + [
            f"journey {j.journey}: {j.summary}" for j in failed_journeys
        ]
        record(
            context,
            self.failed_event if failures else self.passed_event,
            self.release,
            environment=self.environment,
            details={
                **self._kind(),
                "digest": deployed["digest"],
                "checks": [r.to_dict() for r in results],
                "journeys": [j.to_dict() for j in journeys],
                **({"failures": failures} if failures else {}),
            },
        )
        if failures:
            raise AirflowException(
                f"{self.environment}: {len(failures)} of {len(results) + len(journeys)} {self.what} "
                "checks failed: " + " | ".join(failures)
            )
        if not results:
            self.log.warning("%s declares no smoke checks", self.environment)
        return {
            "environment": self.environment,
            "digest": deployed["digest"],
            "passed": True,
            "checks": [r.to_dict() for r in results],
            "journeys": [j.to_dict() for j in journeys],
        }

    def _kind(self) -> dict[str, str]:
        return {"kind": "smoke"}


class TestSuiteOperator(SmokeCheckOperator):
    """One of an environment's test suites (checks and journeys), run after its deploy beside
    the others: records ``tests_passed`` or ``tests_failed`` (with the failures). A
    production deploy and the release's completion ask the ledger for it.

    :param suite: the suite's name
    """

    __test__ = False  # not a pytest test class
    ui_color = "#e6f4ea"
    passed_event, failed_event = Event.TESTS_PASSED, Event.TESTS_FAILED

    def __init__(self, *, suite: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.suite = suite
        self.what = f"test suite {suite}"

    def _kind(self) -> dict[str, str]:
        return {"kind": "suite", "suite": self.suite}


class HealthVerificationOperator(_EnvironmentCheckOperator):
    """Watch the environment's health for a period after the deploy (deferred).

    :param health: the spec's ``HealthVerification`` as a dict
    """

    ui_color = "#fad2cf"

    def __init__(self, *, health: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.health = health

    def execute(self, context: Any) -> None:
        _, values = self._values(context)
        checks = [c.model_dump(mode="json") for c in _rendered(self.health["checks"], values)]
        self.log.info(
            "Watching %s health for %ss, every %ss, %s failed rounds allowed",
            self.environment,
            self.health["period_seconds"],
            self.health["interval_seconds"],
            self.health["max_failures"],
        )
        self.defer(
            trigger=HealthVerificationTrigger(
                http_conn_id=self.http_conn_id,
                checks=checks,
                period_seconds=self.health["period_seconds"],
                interval_seconds=self.health["interval_seconds"],
                max_failures=self.health["max_failures"],
            ),
            method_name="execute_complete",
            timeout=timedelta(seconds=self._deferral_timeout(checks)),
        )

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        deployed = self._deployed(context)
        for failure in event.get("last_failures", []):
            self.log.warning("health %s: %s", failure["name"], "; ".join(failure["failures"]))
        record(
            context,
            Event.CHECKS_PASSED if event["healthy"] else Event.CHECKS_FAILED,
            self.release,
            environment=self.environment,
            details={"kind": "health", "digest": deployed["digest"], "reason": event.get("reason")},
        )
        if not event["healthy"]:
            raise AirflowException(f"{self.environment} is unhealthy after the deploy: {event['reason']}")
        self.log.info("%s is healthy: %s", self.environment, event["reason"])
        return {"environment": self.environment, "digest": deployed["digest"], "passed": True, "health": event}

    def _deferral_timeout(self, checks: list[dict[str, Any]]) -> float:
        """Generous upper bound: every round may wait for its slowest check's timeout."""
        rounds = self.health["period_seconds"] // self.health["interval_seconds"] + 1
        slowest = max(c["timeout_seconds"] for c in checks)
        return self.health["period_seconds"] + rounds * slowest + 120
