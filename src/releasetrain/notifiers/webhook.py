"""A generic webhook notifier: POST a JSON document to an HTTP connection."""

from __future__ import annotations

import json
from typing import Any

from airflow.providers.http.hooks.http import HttpHook
from airflow.sdk import BaseNotifier


class WebhookError(RuntimeError):
    """The webhook did not accept the notification (names connection, endpoint and answer)."""


class WebhookNotifier(BaseNotifier):
    """POST ``payload`` as JSON to ``<connection host>/<endpoint>``.

    Works as an Airflow callback (``on_failure_callback=WebhookNotifier(...)``) and is
    what releasetrain uses after a rollback. Slack, Teams or a chat bridge take the
    ``text`` field; anything else gets the whole document.

    :param http_conn_id: HTTP connection of the receiver (host = base URL; auth from it)
    :param payload: JSON-safe document, sent as it is (never rendered as a template)
    :param endpoint: path relative to the connection's base URL
    """

    # nothing is rendered: the payload holds text from the ledger and the application
    # (failure reasons), which must never be evaluated as a template with the task's context
    template_fields = ()

    def __init__(self, *, http_conn_id: str, payload: dict[str, Any], endpoint: str = "", timeout: float = 15.0):
        super().__init__()
        self.http_conn_id = http_conn_id
        self.payload = payload
        self.endpoint = endpoint
        self.timeout = timeout

    def notify(self, context: Any) -> None:
        hook = HttpHook(method="POST", http_conn_id=self.http_conn_id)
        try:
            response = hook.run(
                endpoint=self.endpoint,
                data=json.dumps(self.payload, default=str),
                headers={"Content-Type": "application/json"},
                extra_options={"check_response": False, "timeout": self.timeout},
            )
        except Exception as exc:
            raise WebhookError(f"webhook {self.http_conn_id!r}: POST {self.endpoint or '/'} failed: {exc}") from exc
        if not 200 <= response.status_code < 300:
            raise WebhookError(
                f"webhook {self.http_conn_id!r}: POST {self.endpoint or '/'} answered HTTP {response.status_code}: "
                f"{response.text[:200]}"
            )
        self.log.info("Notified webhook %s (HTTP %s)", self.http_conn_id, response.status_code)
