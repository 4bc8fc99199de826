"""An environment's configuration profile at deploy time: its secret references resolved
from Airflow connections or the secrets backend, masked in every log, and never returned
to anything that records (XCom, the ledger, evidence): only the deploy call carries them."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseHook, Variable


class ConfigProfileError(Exception):
    """A secret reference that does not resolve: named, its value never shown."""


class ConfigProfileHook(BaseHook):
    """Resolve a profile's ``secrets`` (``{NAME: {connection, field} | {variable}}``)."""

    hook_name = "Release configuration profile"

    def __init__(self, environment: str) -> None:
        super().__init__()
        self.environment = environment

    def resolve(self, secrets: dict[str, dict[str, Any]]) -> dict[str, str]:
        from airflow.sdk.log import mask_secret

        resolved: dict[str, str] = {}
        for name, ref in sorted(secrets.items()):
            value = self._value(name, ref)
            mask_secret(value)  # by value: Airflow masks by name only for names it deems sensitive
            resolved[name] = value
        return resolved

    def _value(self, name: str, ref: dict[str, Any]) -> str:
        where = f"{self.environment}: config secret {name}"
        if ref.get("connection"):
            conn_id, field = ref["connection"], ref.get("field", "password")
            try:
                conn = self.get_connection(conn_id)
            except Exception as exc:
                raise ConfigProfileError(
                    f"{where}: connection {conn_id!r} is not defined ({type(exc).__name__})"
                ) from None
            value = conn.password if field == "password" else conn.login
            if not value:
                raise ConfigProfileError(f"{where}: connection {conn_id!r} has no {field}")
            return str(value)
        path = ref.get("variable")
        try:
            value = Variable.get(path)
        except Exception as exc:
            raise ConfigProfileError(f"{where}: variable {path!r} is not defined ({type(exc).__name__})") from None
        if not value:
            raise ConfigProfileError(f"{where}: variable {path!r} is empty")
        return str(value)
