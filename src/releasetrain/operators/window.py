"""The release-window gate in front of each environment's deploy."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from releasetrain.core.request import ReleaseRequest
from releasetrain.core.spec import CalendarLibrary, ReleaseSpecError
from releasetrain.core.vocabulary import Event
from releasetrain.core.windows import CalendarError, CalendarSpec, iso_z
from releasetrain.operators._common import record, release_request
from releasetrain.triggers.window import ReleaseWindowTrigger


class ReleaseWindowSensor(BaseOperator):
    """Let the run through only while the environment is open: inside an allowed window,
    outside every blackout, with ``expected_duration_minutes`` left in the window.

    Otherwise it defers to :class:`ReleaseWindowTrigger` (no worker slot) until the next
    opening and says in its log when and why it will go on. Calendars are evaluated again
    when it resumes. An emergency run (``emergency`` param with a justification) passes a
    closed gate; the exception (who, when, why, which rule) is logged and returned, and
    the run then needs a post-implementation review.

    :param layers: the environment's calendars (``CalendarSpec`` dicts), general first
    :param calendar_dirs: folders of shared calendars
    :param project_root: what ICS paths are relative to
    """

    ui_color = "#fff3cd"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        layers: list[dict[str, Any]],
        calendar_dirs: list[str],
        project_root: str,
        expected_duration_minutes: int = 30,
        recheck_seconds: float = 300.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.release = release
        self.environment = environment
        self.layers = [CalendarSpec.model_validate(layer).model_dump(mode="json") for layer in layers]
        self.calendar_dirs = list(calendar_dirs)
        self.project_root = project_root
        self.expected_duration_minutes = expected_duration_minutes
        self.recheck_seconds = recheck_seconds

    def _decision(self, now: dt.datetime):
        library = CalendarLibrary(Path(self.project_root), [Path(d) for d in self.calendar_dirs])
        try:
            calendar = library.resolve([CalendarSpec.model_validate(layer) for layer in self.layers])
        except (CalendarError, ReleaseSpecError) as exc:
            raise AirflowFailException(f"{self.environment}: the release calendar cannot be used: {exc}") from None
        return calendar.decide(now, dt.timedelta(minutes=self.expected_duration_minutes))

    def decide_now(self):
        """The calendar's decision at this moment (also used by the deploy, right before it starts)."""
        return self._decision(dt.datetime.now(dt.UTC))

    def execute(self, context: Any) -> dict[str, Any]:
        return self._gate(context, release_request(context, self.release))

    def execute_complete(self, context: Any, event: dict[str, Any]) -> dict[str, Any]:
        self.log.info(
            "%s opened at %s (%s); checking the current calendar", self.environment, event["at"], event["reason"]
        )
        return self._gate(context, release_request(context, self.release))

    def _gate(self, context: Any, request: ReleaseRequest) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        decision = self._decision(now)
        if decision.open:
            self.log.info("%s is open: %s", self.environment, decision.reason)
            result = {"environment": self.environment, "open": True, "at": iso_z(now), "reason": decision.reason}
            record(context, Event.WINDOW_PASSED, self.release, environment=self.environment, details=result)
            return result
        if request.emergency:
            exception = {
                "environment": self.environment,
                "requested_by": request.requested_by,
                "triggered_by": request.triggered_by,
                "at": iso_z(now),
                "justification": request.emergency_justification,
                "bypassed": decision.reason,
                "rules": list(decision.blocking) or ["allowed windows"],
            }
            self.log.warning("EMERGENCY: %s passes its closed release window: %s", self.environment, exception)
            record(
                context,
                Event.EXCEPTION,
                self.release,
                environment=self.environment,
                actor=request.requested_by or "",
                details={"kind": "release_window", **exception},
            )
            return {
                "environment": self.environment,
                "open": False,
                "at": iso_z(now),
                "reason": decision.reason,
                "emergency_exception": exception,
            }
        if decision.next_opening is None:
            raise AirflowFailException(
                f"{self.environment}: {decision.reason}. The calendar never opens long enough "
                f"({self.expected_duration_minutes} min): fix the calendar or expected_duration_minutes"
            )
        self.log.info(
            "%s is closed: %s. The run waits (deferred, no worker slot) and goes on by itself.",
            self.environment,
            decision.reason,
        )
        self.defer(
            trigger=ReleaseWindowTrigger(
                layers=self.layers,
                calendar_dirs=self.calendar_dirs,
                project_root=self.project_root,
                min_duration_seconds=self.expected_duration_minutes * 60,
                recheck_seconds=self.recheck_seconds,
            ),
            method_name="execute_complete",
        )
