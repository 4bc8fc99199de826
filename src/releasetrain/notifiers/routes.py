"""Telling the release's audiences: the spec's notification routes, by moment.

One service for every operator that tells someone something (a rollback starting, succeeding
or failing; a bundle failing verification): each route (``notifications[]``) gets the
moments it asked for (``moments``) and always a failed rollback and a tampered bundle, with its
``audience`` in the message; what was sent, to whom, and what failed is recorded in the
ledger (``notified``). A route that fails is logged and recorded; it never changes the
outcome of the step that tells.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def tell(
    context: Any,
    *,
    release: str,
    environment: str,
    routes: list[dict[str, Any]],
    moment: str,
    payload: dict[str, Any],
) -> tuple[list[str], list[str]]:
    """Send ``payload`` to every route told at ``moment``; returns (routes told, errors)."""
    from releasetrain.core.incident import addressed, route_moments
    from releasetrain.core.vocabulary import Event
    from releasetrain.notifiers.webhook import WebhookNotifier
    from releasetrain.operators._common import record

    told, errors, audiences = [], [], []
    for route in routes:
        if moment not in route_moments(route):
            continue
        name = route.get("conn_id") or route.get("notifier") or "?"
        message = addressed(payload, route)
        try:
            if route.get("kind") == "notifier":
                build_notifier(route, message).notify(context)
            else:
                WebhookNotifier(
                    http_conn_id=route["conn_id"], payload=message, endpoint=route.get("endpoint", "")
                ).notify(context)
            told.append(name)
            audiences.append(message["audience"])
        except Exception as exc:  # a route's failure never changes the step's outcome; it is recorded
            log.error("Notification (%s) through %s failed: %s", moment, name, exc)
            errors.append(f"{name}: {exc}")
    if told or errors:
        details = {
            "moment": moment,
            "event": payload.get("event"),
            "told": told,
            "audiences": sorted(set(audiences)),
            **({"errors": errors} if errors else {}),
            **({"unit": payload["unit"]} if payload.get("unit") else {}),
        }
        try:
            record(context, Event.NOTIFIED, release, environment=environment, details=details)
        except Exception as exc:  # the message went out; a ledger hiccup does not undo it
            log.error("Notification (%s) sent but not recorded: %s", moment, exc)
    return told, errors


def build_notifier(target: dict[str, Any], payload: dict[str, Any]) -> Any:
    """An Airflow notifier from the spec: ``${text}`` / ``${json}`` filled into its string args."""
    import importlib
    import json

    from airflow.sdk.bases.notifier import BaseNotifier

    from releasetrain.core.policy import Policy

    policy = Policy.from_environment()
    if not policy.notifier_allowed(target["notifier"]):  # the spec loader refuses it too
        raise ValueError(f"{target['notifier']} is not an allowed notifier ({', '.join(policy.allowed_notifiers)})")
    module, _, name = target["notifier"].rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, BaseNotifier)):
        raise ValueError(f"{target['notifier']} is not an Airflow notifier (BaseNotifier)")

    import re

    filled = {"text": str(payload.get("text", "")), "json": json.dumps(payload, indent=2)}

    def fill(value: Any) -> Any:
        if isinstance(value, str):  # one pass: a placeholder inside the filled text stays as it is
            return re.sub(r"\$\{(text|json)\}", lambda m: filled[m.group(1)], value)
        if isinstance(value, dict):
            return {k: fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [fill(v) for v in value]
        return value

    return cls(**fill(dict(target.get("args") or {})))
