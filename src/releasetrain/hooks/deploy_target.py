"""The deploy-target hook: a small HTTP contract every deploy target implements.

The connection's host is the target's base URL (e.g.
``http://127.0.0.1:8799/environments/prod``); login/password, when set, are sent as
HTTP basic auth. Relative to that base URL:

==================================  ===========================================================
``GET  status``                     ``{version, digest, previous_version, previous_digest,
                                    state, healthy}``; optional ``run_id`` (the run that
                                    deployed the live version) and ``in_progress``
                                    (``{deployment_id, version, digest, run_id}``), ``config``
                                    (the profile it runs with: ``{version, sha256, values,
                                    secrets: {NAME: fingerprint}}``, never a secret's value)
``POST deployments``                body ``{release, version, digest, run_id}``, optional
                                    ``config`` (``{version, sha256, values, secrets}``: the
                                    environment's profile, its secrets resolved); ``202
                                    {deployment_id, state: "in_progress"}``, ``200 {state:
                                    "succeeded", noop: true}`` when already live, ``409`` when a
                                    deployment is in progress
``GET  deployments/{id}``           ``{deployment_id, state: in_progress|succeeded|failed,
                                    version, digest, message}``
``POST rollback``                   body ``{version, digest, reason}``; ``202 {deployment_id,
                                    state}``, ``409`` when the version was never deployed there
``GET  health``                     ``200 {healthy: true, ...}`` or ``503 {healthy: false, ...}``
==================================  ===========================================================

Releases packaged ``modular`` deploy each unit on its own: the same ``status``,
``deployments``, ``rollback`` and ``health`` calls under ``components/{unit}/`` (each unit
has its own version, digest and history); deployment ids stay target-wide
(``GET deployments/{id}`` finds a unit's deployment too).


Targets that support progressive delivery (``canary`` and ``blue_green`` strategies) run
two colours and implement four more things:

==================================  ===========================================================
``POST deployments``                with ``"slot": "idle"``: deploy to the idle colour, which
                                    takes no live traffic; ``GET status`` then shows ``idle:
                                    {colour, version, digest, weight}``
``POST traffic``                    ``{weight: 0..100}``: share of live traffic for the idle
                                    colour; ``200 {state: "succeeded", idle}``, ``409`` without
                                    an idle colour
``POST promote``                    the idle colour becomes live (all traffic); the old live
                                    colour stays idle, so promoting again switches back;
                                    ``200 {state: "succeeded", version}``
``POST abort``                      the idle colour takes no traffic and is discarded;
                                    ``200 {state: "succeeded"}``
==================================  ===========================================================
"""

from __future__ import annotations

from typing import Any

from airflow.providers.http.hooks.http import HttpAsyncHook, HttpHook
from airflow.sdk import BaseHook

from releasetrain.hooks._http import json_or_text as _json_or_text
from releasetrain.hooks._http import short as _short


class DeployTargetError(RuntimeError):
    """The deploy target refused a request or answered something outside the contract."""


class DeployTargetHook(BaseHook):
    """Talks to one deploy target through an Airflow HTTP connection.

    :param deploy_target_conn_id: connection whose host is the target's base URL
    :param timeout: seconds for each HTTP request
    """

    conn_name_attr = "deploy_target_conn_id"
    default_conn_name = "deploy_target_default"
    conn_type = "releasetrain_deploy_target"  # its connection form (provider info); an "http" one works too
    hook_name = "releasetrain deploy target"

    def __init__(
        self, deploy_target_conn_id: str = default_conn_name, *, timeout: float = 30.0, component: str | None = None
    ) -> None:
        super().__init__()
        self.deploy_target_conn_id = deploy_target_conn_id
        self.timeout = timeout
        self.component = component

    def _on(self, endpoint: str) -> str:
        """A deploy unit's endpoints (packaging: modular) are under ``components/<unit>/``."""
        return f"components/{self.component}/{endpoint}" if self.component else endpoint

    def _request(self, method: str, endpoint: str, body: dict[str, Any] | None = None) -> tuple[int, Any]:
        hook = HttpHook(method=method, http_conn_id=self.deploy_target_conn_id)
        try:
            response = hook.run(
                endpoint=endpoint,
                json=body,
                extra_options={"check_response": False, "timeout": self.timeout},
            )
        except Exception as exc:  # connection refused, DNS, timeouts: name the target
            raise DeployTargetError(
                f"deploy target {self.deploy_target_conn_id!r}: {method} {endpoint} failed: {exc}"
            ) from exc
        return response.status_code, _json_or_text(response.text)

    def _expect(self, method: str, endpoint: str, body: dict[str, Any] | None, ok: tuple[int, ...]) -> Any:
        status, payload = self._request(method, endpoint, body)
        if status not in ok:
            raise DeployTargetError(
                f"deploy target {self.deploy_target_conn_id!r}: {method} {endpoint} answered HTTP {status}: "
                f"{_short(payload)}"
            )
        return _contract(self.deploy_target_conn_id, f"{method} {endpoint}", payload)

    def get_status(self) -> dict[str, Any]:
        return self._expect("GET", self._on("status"), None, (200,))

    def start_deployment(
        self,
        *,
        release: str,
        version: str,
        digest: str,
        run_id: str,
        slot: str | None = None,
        bundle: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """``bundle``: ``{url, signature}``, so the target can fetch the bytes and verify them
        against its own pinned key before deploying (it never has to trust the digest).
        ``config``: the environment's profile ``{version, sha256, values, secrets}`` (secrets
        resolved: this request is the only place they go)."""
        body: dict[str, Any] = {"release": release, "version": version, "digest": digest, "run_id": run_id}
        if slot:
            body["slot"] = slot
        if bundle:
            body["bundle"] = bundle
        if config:
            body["config"] = config
        return _started(
            self.deploy_target_conn_id,
            "POST deployments",
            self._expect("POST", self._on("deployments"), body, (200, 201, 202)),
        )

    def get_deployment(self, deployment_id: str) -> dict[str, Any]:
        return self._expect("GET", f"deployments/{deployment_id}", None, (200,))

    def start_rollback(self, *, version: str, digest: str | None, reason: str) -> dict[str, Any]:
        body = {"version": version, "digest": digest, "reason": reason}
        return _started(
            self.deploy_target_conn_id,
            "POST rollback",
            self._expect("POST", self._on("rollback"), body, (200, 201, 202)),
        )

    def set_traffic(self, weight: int) -> dict[str, Any]:
        """Send ``weight`` percent of live traffic to the idle colour (the canary)."""
        return self._expect("POST", "traffic", {"weight": int(weight)}, (200,))

    def promote(self) -> dict[str, Any]:
        """Make the idle colour live; promoting again switches back."""
        return self._expect("POST", "promote", {}, (200,))

    def abort(self) -> dict[str, Any]:
        """Take all traffic off the idle colour and discard it."""
        return self._expect("POST", "abort", {}, (200,))

    def get_health(self) -> tuple[int, Any]:
        return self._request("GET", self._on("health"))

    async def aget_deployment(self, deployment_id: str) -> dict[str, Any]:
        """Async twin of :meth:`get_deployment`, for triggers."""
        hook = HttpAsyncHook(method="GET", http_conn_id=self.deploy_target_conn_id, retry_limit=1)
        endpoint = f"deployments/{deployment_id}"
        try:
            async with hook.session() as session:
                response = await session.run(endpoint=endpoint, extra_options={"check_response": False})
                status, text = response.status, await response.text()
        except Exception as exc:
            raise DeployTargetError(
                f"deploy target {self.deploy_target_conn_id!r}: GET {endpoint} failed: {exc}"
            ) from exc
        payload = _json_or_text(text)
        if status != 200:
            raise DeployTargetError(
                f"deploy target {self.deploy_target_conn_id!r}: GET {endpoint} answered HTTP {status}: "
                f"{_short(payload)}"
            )
        return _contract(self.deploy_target_conn_id, f"GET {endpoint}", payload)


def _contract(conn_id: str, call: str, payload: Any) -> dict[str, Any]:
    """Every answer of the contract is a JSON object."""
    if not isinstance(payload, dict):
        raise DeployTargetError(
            f"deploy target {conn_id!r}: {call} answered {_short(payload)!r}, not a JSON object (see the "
            "deploy-target contract in the README)"
        )
    config = payload.get("config")
    if isinstance(config, dict) and "secrets" in config:
        # whatever a target says about its secrets (fingerprints, or worse) goes no further:
        # answers end up in trigger events, snapshots and evidence
        payload = {**payload, "config": {k: v for k, v in config.items() if k != "secrets"}}
    return payload


def _started(conn_id: str, call: str, payload: dict[str, Any]) -> dict[str, Any]:
    """A started deployment names its id, unless the target says it had nothing to do."""
    if payload.get("state") != "succeeded" and not payload.get("deployment_id"):
        raise DeployTargetError(
            f"deploy target {conn_id!r}: {call} answered without a deployment_id: {_short(payload)}"
        )
    return payload
