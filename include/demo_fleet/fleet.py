"""The demo fleet: one small HTTP service playing dev, staging and prod (and any other
environment it is asked about), implementing the releasetrain deploy-target contract.

Run: ``python include/demo_fleet/fleet.py --port 8799``. Standard library only.

Deploy-target contract (per environment, under ``/environments/{env}/``):
  GET  status                 current version, digest, previous version, state, health
  POST deployments            {release, version, digest, run_id, bundle: {url, signature},
                              config?: {version, sha256, values, secrets}}
                              -> 202 {deployment_id} (200 {state: succeeded, noop: true} if
                              already live; 409 if busy). The environment keeps the config
                              it was deployed with; status shows it, each secret only as a
                              fingerprint (sha256:<16 hex>). With a pinned bundle key
                              (--bundle-public-key / FLEET_BUNDLE_PUBLIC_KEY) the fleet fetches
                              the bundle and verifies content, digest and signature first:
                              422 "bundle refused: ..." for an unsigned or re-signed one
  GET  deployments/{id}       {deployment_id, state: in_progress|succeeded|failed, ...}
  POST rollback               {version, digest, reason} -> 202 {deployment_id}
                              (409 if that version never ran there)
  GET  health                 200 {healthy: true} / 503 {healthy: false}
Progressive delivery (two colours per environment, blue and green):
  POST deployments            with {"slot": "idle"}: deploys to the idle colour, which gets
                              no traffic (status "idle": {colour, version, digest, weight})
  POST traffic                {weight: 0..100}: share of application traffic for the idle colour
  POST promote                the idle colour becomes live (100%); the old live colour stays,
                              idle, for a switch back (promote again)
  POST abort                  the idle colour gets no traffic and is discarded
Deploy units (releases packaged modular): the same status, deployments, rollback and health
under /environments/{env}/components/{unit}/ (each unit its own version, digest and history;
faults name the environment "{env}/{unit}"); deployment ids are target-wide; an environment's
status lists its units under "components"; the application of a unit is under
/environments/{env}/components/{unit}/app/...
Configuration:
  POST config                 {values: {KEY: value|null}}: a change made by hand in the
                              environment, outside any release (status reports it: drift)
The contract as an OpenAPI document: GET /openapi.yaml (deploy-target.openapi.yaml beside this file).
Demo extras:
  GET  /environments/{env}    same as status (version, previous_version, healthy, ...)
  GET|POST /environments/{env}/app/...   the "application" (live traffic, split between the
                              colours by weight): serves its version, fails with the fault's
                              error rate, counts requests per environment, version and route
  GET|POST /environments/{env}/preview/...   the idle colour only (blue-green pre-promotion)
  POST /faults                {environment, version, error_rate, fail_deploy?, latency_ms?,
                              scope: all|live, deploy_seconds?, accept_delay_seconds?,
                              deploy_status?, conversion?}: that version is unhealthy (and its requests
                              fail) once deployed there; scope "live" spares preview traffic;
                              deploy_seconds: its deployments take that long; accept_delay:
                              a deployment of it starts at once, its 202 comes that much later
                              (a caller killed meanwhile never hears of it); deploy_status:
                              deploying it is answered with that HTTP status (e.g. 500), and
                              nothing starts; conversion: the share of its sessions that reach
                              checkout (default 0.5)
  --traffic RPS               synthetic traffic: RPS live requests per second to every
                              environment, and as many to its idle colour's preview
  DELETE /faults              clear all faults
  GET  /stats?query=...&start=&end=&step=   JSON {"values": [...]}, one value per step for
                              "error_rate|requests|latency_ms environment=E version=V route=R"
                              (the generic JSON metrics provider reads it; no Prometheus needed)
  GET  /metrics               Prometheus text: requests per environment, version, route (app|preview) and
                              code; user sessions (every application request) started and reaching
                              checkout; a latency histogram per environment and version; the idle
                              colour's traffic weight
Basic auth is required on everything but /metrics, /healthz and the application itself
(``/environments/{env}/app/...``, ``/preview/...`` and ``GET .../health``, which a user of the
application reaches without the deploy credentials) when --user/--password (or
FLEET_USER/FLEET_PASSWORD) are set.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import json
import os
import random
import re
import threading
import time
import uuid
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

ENV_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
UNHEALTHY_ERROR_RATE = 0.05
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
CONVERSION = 0.5  # the share of a healthy version's sessions that reach checkout
COLOURS = ("blue", "green")
CONTRACT = Path(__file__).with_name("deploy-target.openapi.yaml")


MAX_BUNDLE_BYTES = 256 * 1024 * 1024


def _config(raw: Any) -> tuple[dict[str, Any] | None, str | None]:
    """A deployment's configuration profile, as the environment keeps it: secrets only as
    fingerprints (an application would read them; the fleet shows none)."""
    if raw is None:
        return None, None
    if not isinstance(raw, dict):
        return None, "'config' must be an object"
    version, sha256 = raw.get("version"), raw.get("sha256")
    values, secrets = raw.get("values", {}), raw.get("secrets", {})
    if not isinstance(version, str) or not isinstance(sha256, str) or not sha256.startswith("sha256:"):
        return None, "'config' needs version and a sha256: digest"
    if not isinstance(values, dict) or not isinstance(secrets, dict):
        return None, "'config.values' and 'config.secrets' must be objects"
    if not all(isinstance(v, str) and v for v in secrets.values()):
        return None, "'config.secrets' must map names to resolved (non-empty) values"
    return {
        "version": version,
        "sha256": sha256,
        "values": values,
        "secrets": {k: "sha256:" + hashlib.sha256(v.encode()).hexdigest()[:16] for k, v in sorted(secrets.items())},
    }, None


def _application(raw_path: str) -> bool:
    """The application's routes (anonymous, like any user of the application)."""
    parts = [p for p in raw_path.split("?", 1)[0].split("/") if p]
    if len(parts) >= 5 and parts[0] == "environments" and parts[2] == "components":  # a deploy unit's application
        parts = [parts[0], f"{parts[1]}/{parts[3]}", *parts[4:]]
    return (
        len(parts) >= 3 and parts[0] == "environments" and (parts[2] in ("app", "preview") or parts[2:] == ["health"])
    )


class Fleet:
    def __init__(
        self,
        deploy_seconds: float = 1.5,
        seed: dict[str, str] | None = None,
        bundle_key: str | None = None,
        bundle_root: str | None = None,
    ):
        self.deploy_seconds = deploy_seconds
        # the pinned public key bundles must be signed with (PEM); None: bundles are not checked
        self.bundle_key = bundle_key
        # the folder bundles may be read from (the demo's artifact store); None: none
        self.bundle_root = bundle_root
        self.refused: list[dict[str, Any]] = []
        self.lock = threading.RLock()
        self.environments: dict[str, dict[str, Any]] = {}
        self.deployments: dict[str, dict[str, Any]] = {}
        self.faults: dict[tuple[str, str], dict[str, Any]] = {}
        self.requests: dict[tuple[str, str, str, int], int] = {}
        # every application request is a user session: started, and reaching checkout
        # when it succeeds and the version converts (fault "conversion", default CONVERSION)
        self.sessions: dict[tuple[str, str, str, str], int] = {}
        self.latency_sum: dict[tuple[str, str], float] = {}
        self.latency_buckets: dict[tuple[str, str], list[int]] = {}
        # per second: (environment, version, route) -> {second: [requests, errors, latency_sum]}
        self.seconds: dict[tuple[str, str, str], dict[int, list[float]]] = {}
        self.traffic_thread: threading.Thread | None = None
        for env, version in (seed or {}).items():
            state = self.env(env)
            digest = "sha256:" + hashlib.sha256(f"seed {env} {version}".encode()).hexdigest()
            state.update(version=version, digest=digest, release="seed")
            state["history"].append({"version": version, "digest": digest, "at": time.time(), "kind": "seed"})

    # --- state -------------------------------------------------------------------------
    def env(self, name: str) -> dict[str, Any]:
        if name not in self.environments:
            self.environments[name] = {
                "environment": name,
                "release": None,
                "version": None,
                "digest": None,
                "previous_version": None,
                "previous_digest": None,
                "deployment_id": None,
                "run_id": None,
                "active_colour": COLOURS[0],
                "idle": None,
                "config": None,
                "history": [],
            }
        return self.environments[name]

    def advance(self) -> None:
        """Finish deployments whose time has come (lazily, on every request)."""
        now = time.time()
        for dep in self.deployments.values():
            if dep["state"] != "in_progress" or now < dep["finish_at"]:
                continue
            env = self.env(dep["environment"])
            env["deployment_id"] = None
            fault = self.faults.get((dep["environment"], dep["version"]), {})
            if fault.get("fail_deploy"):
                dep.update(state="failed", message=f"{dep['version']} failed to start in {dep['environment']}")
                continue
            if dep["kind"] == "deploy_idle":
                colour = COLOURS[1] if env["active_colour"] == COLOURS[0] else COLOURS[0]
                env["idle"] = {
                    "colour": colour,
                    "version": dep["version"],
                    "digest": dep["digest"],
                    "weight": 0,
                    "run_id": dep.get("run_id"),
                }
                env["history"].append(
                    {"version": dep["version"], "digest": dep["digest"], "at": now, "kind": "deploy_idle"}
                )
                dep.update(state="succeeded", message=f"{dep['environment']} {colour} (idle) runs {dep['version']}")
                continue
            if env["version"] != dep["version"] or env["digest"] != dep["digest"]:
                env["previous_version"], env["previous_digest"] = env["version"], env["digest"]
            env.update(
                version=dep["version"],
                digest=dep["digest"],
                release=dep.get("release") or env["release"],
                run_id=dep.get("run_id"),
            )
            if dep.get("config"):
                env["config"] = dep["config"]
            env["history"].append({"version": dep["version"], "digest": dep["digest"], "at": now, "kind": dep["kind"]})
            dep.update(state="succeeded", message=f"{dep['environment']} runs {dep['version']}")

    def error_rate(self, env: str, version: str | None, route: str = "app") -> float:
        fault = self.faults.get((env, version or ""))
        if not fault or (route == "preview" and fault.get("scope") == "live"):
            return 0.0
        return float(fault["error_rate"])

    def view(self, name: str) -> dict[str, Any]:
        env = self.env(name)
        rate = self.error_rate(name, env["version"])
        running = self.deployments.get(env["deployment_id"] or "")
        return {
            "in_progress": {k: running[k] for k in ("deployment_id", "version", "digest", "run_id", "kind")}
            if running
            else None,
            **{k: v for k, v in env.items() if k != "history"},
            "state": "deploying" if env["deployment_id"] else "idle",
            "healthy": env["version"] is not None and rate < UNHEALTHY_ERROR_RATE,
            "error_rate": rate,
            "history": env["history"][-20:],
            **(
                {"components": {n.split("/", 1)[1]: self.view(n) for n in sorted(self.environments) if n in units}}
                if (units := [n for n in self.environments if n.startswith(f"{name}/")])
                else {}
            ),
        }

    def start(self, name: str, body: dict[str, Any], kind: str) -> tuple[int, dict[str, Any]]:
        env = self.env(name)
        version, digest = body.get("version"), body.get("digest")
        slot = body.get("slot", "live")
        if slot not in ("live", "idle"):
            return 400, {"error": "'slot' must be live or idle"}
        if kind == "deploy" and slot == "idle":
            kind = "deploy_idle"
        idle = env["idle"]
        if not isinstance(version, str) or not version:
            return 400, {"error": "'version' is required"}
        config, problem = _config(body.get("config"))
        if problem:
            return 400, {"error": problem}
        if kind != "rollback" and (not isinstance(digest, str) or not digest.startswith("sha256:")):
            return 400, {"error": "'digest' must be a sha256: digest"}
        if env["deployment_id"]:
            return 409, {"error": f"deployment {env['deployment_id']} is in progress in {name}"}
        injected = self.faults.get((name, version), {}).get("deploy_status")
        if kind != "rollback" and injected:
            self.refused.append({"environment": name, "version": version, "digest": digest, "why": f"HTTP {injected}"})
            return int(injected), {"error": f"injected fault: HTTP {injected}"}
        if kind != "rollback" and self.bundle_key:
            problem = self.check_bundle(body, version, digest)
            if problem:
                self.refused.append({"environment": name, "version": version, "digest": digest, "why": problem})
                return 422, {"error": f"bundle refused: {problem}"}
        if kind != "deploy_idle" and idle and idle["weight"] > 0:
            return 409, {
                "error": f"{idle['version']} takes {idle['weight']}% of {name}'s traffic on {idle['colour']}: "
                "promote or abort it first"
            }
        if kind == "deploy_idle" and idle and (idle["version"], idle["digest"]) == (version, digest):
            return 200, {
                "deployment_id": None,
                "state": "succeeded",
                "noop": True,
                "message": f"{name} {idle['colour']} (idle) already runs {version}",
            }
        if kind == "rollback":
            known = {h["version"]: h["digest"] for h in env["history"]}
            if version not in known:
                return 409, {"error": f"{version} never ran in {name}: cannot roll back to it"}
            if digest and digest != known[version]:  # only the bytes that ran here before
                return 409, {"error": f"{version} ran in {name} as {known[version]}, not {digest}"}
            digest = known[version]
        same_config = config is None or (env["config"] or {}).get("sha256") == config["sha256"]
        if kind != "deploy_idle" and env["version"] == version and env["digest"] == digest and same_config:
            return 200, {
                "deployment_id": None,
                "run_id": None,
                "state": "succeeded",
                "noop": True,
                "message": f"{name} already runs {version}",
            }
        dep_id = uuid.uuid4().hex[:12]
        self.deployments[dep_id] = {
            "deployment_id": dep_id,
            "environment": name,
            "kind": kind,
            "version": version,
            "digest": digest,
            "release": body.get("release"),
            "run_id": body.get("run_id"),
            "reason": body.get("reason"),
            "config": config,
            "state": "in_progress",
            "message": "",
            "started_at": time.time(),
            "finish_at": time.time()
            + float(self.faults.get((name, version), {}).get("deploy_seconds", self.deploy_seconds)),
        }
        env["deployment_id"] = dep_id
        return 202, {"deployment_id": dep_id, "state": "in_progress"}

    def edit_config(self, name: str, values: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        """A change made in the environment by hand, outside any release: settings set (None
        removes one). The environment reports it as its configuration: drift."""
        env = self.env(name)
        config = dict(env["config"] or {"version": None, "sha256": None, "values": {}, "secrets": {}})
        merged = {**config["values"], **values}
        config["values"] = {k: v for k, v in merged.items() if v is not None}
        env["config"] = config
        return 200, {"environment": name, "config": config}

    def traffic(self, name: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        env, idle = self.env(name), self.env(name)["idle"]
        weight = body.get("weight")
        if not isinstance(weight, int) or isinstance(weight, bool) or not 0 <= weight <= 100:
            return 400, {"error": "'weight' must be an integer from 0 to 100"}
        if idle is None:
            return 409, {"error": f"{name} has no idle colour to send traffic to: deploy with slot idle first"}
        idle["weight"] = weight
        env["history"].append({"version": idle["version"], "at": time.time(), "kind": "traffic", "weight": weight})
        return 200, {"state": "succeeded", "deployment_id": None, "idle": dict(idle), "version": env["version"]}

    def promote(self, name: str) -> tuple[int, dict[str, Any]]:
        env, idle = self.env(name), self.env(name)["idle"]
        if idle is None:
            return 409, {"error": f"{name} has no idle colour to promote"}
        if env["deployment_id"]:
            return 409, {"error": f"deployment {env['deployment_id']} is in progress in {name}"}
        old = {"colour": env["active_colour"], "version": env["version"], "digest": env["digest"]}
        env["previous_version"], env["previous_digest"] = env["version"], env["digest"]
        env.update(
            version=idle["version"], digest=idle["digest"], active_colour=idle["colour"], run_id=idle.get("run_id")
        )
        env["idle"] = {**old, "weight": 0, "run_id": None} if old["version"] else None
        env["history"].append(
            {"version": idle["version"], "digest": idle["digest"], "at": time.time(), "kind": "promote"}
        )
        return 200, {
            "state": "succeeded",
            "deployment_id": None,
            "message": f"{name} now serves {idle['version']} from {idle['colour']}",
            "version": env["version"],
        }

    def abort(self, name: str) -> tuple[int, dict[str, Any]]:
        env, idle = self.env(name), self.env(name)["idle"]
        if idle is None:
            return 200, {
                "state": "succeeded",
                "deployment_id": None,
                "noop": True,
                "message": f"{name} has no idle colour",
            }
        env["idle"] = None
        env["history"].append({"version": idle["version"], "at": time.time(), "kind": "abort"})
        return 200, {
            "state": "succeeded",
            "deployment_id": None,
            "message": f"{idle['version']} on {idle['colour']} discarded; {name} serves only {env['version']}",
            "version": env["version"],
        }

    def app_request(self, name: str, path: str, route: str = "app", method: str = "GET") -> tuple[int, dict[str, Any]]:
        env, idle = self.env(name), self.env(name)["idle"]
        if route == "preview":
            version, digest = (idle["version"], idle["digest"]) if idle else (None, None)
        elif idle and idle["weight"] > 0 and random.random() * 100 < idle["weight"]:
            version, digest = idle["version"], idle["digest"]
        else:
            version, digest = env["version"], env["digest"]
        label = version or "none"
        fault = self.faults.get((name, label), {})
        latency = random.uniform(0.004, 0.012) + float(fault.get("latency_ms", 0)) / 1000
        if version is None:
            code, body = (
                503,
                {"error": f"nothing is deployed in {name}" + (" (idle colour)" if route == "preview" else "")},
            )
        elif path == "version":
            code, body = 200, {"environment": name, "version": version, "digest": digest}
        elif random.random() < self.error_rate(name, version, route):
            code, body = 500, {"error": "injected fault", "version": label}
        else:
            code, body = 200, {"environment": name, "version": label, "path": path, "ok": True}
            if method == "POST":
                body["id"] = uuid.uuid4().hex[:12]
        key = (name, label, route, code)
        self.requests[key] = self.requests.get(key, 0) + 1
        if version is not None:
            reached = code < 500 and random.random() < float(fault.get("conversion", CONVERSION))
            for outcome in ("started", "checkout") if reached else ("started",):
                session = (name, label, route, outcome)
                self.sessions[session] = self.sessions.get(session, 0) + 1
        now = int(time.time())
        series = self.seconds.setdefault((name, label, route), {})
        second = series.setdefault(now, [0, 0, 0.0])
        second[0] += 1
        second[1] += code >= 500
        second[2] += latency
        if len(series) > 900:  # keep 15 minutes
            for old in [s for s in series if s < now - 900]:
                del series[old]
        self.latency_sum[(name, label)] = self.latency_sum.get((name, label), 0.0) + latency
        buckets = self.latency_buckets.setdefault((name, label), [0] * (len(LATENCY_BUCKETS) + 1))
        for i, bound in enumerate(LATENCY_BUCKETS):
            if latency <= bound:
                buckets[i] += 1
        buckets[-1] += 1
        return code, body

    def check_bundle(self, body: dict[str, Any], version: str, digest: str) -> str | None:
        """Fetch the bundle the deployment names and verify it against the pinned key: its
        content, its digest (the one asked for) and its signature. None: deploy it."""
        bundle = body.get("bundle") if isinstance(body.get("bundle"), dict) else {}
        url, signature = bundle.get("url"), bundle.get("signature")
        if not isinstance(url, str) or not isinstance(signature, dict):
            return "no signed bundle: the deployment must name the bundle's location and signature"
        if not url.startswith("file://") or not self.bundle_root:
            return f"{url} is not under the bundle store this target reads ({self.bundle_root or 'none set'})"
        path, root = os.path.realpath(url[len("file://") :]), os.path.realpath(self.bundle_root)
        if os.path.commonpath([path, root]) != root:
            return f"{url} is not under the bundle store this target reads ({self.bundle_root})"
        try:
            with open(path, "rb") as handle:
                archive = handle.read(MAX_BUNDLE_BYTES + 1)
        except OSError:
            return f"cannot read the bundle at {url}"
        if len(archive) > MAX_BUNDLE_BYTES:
            return f"the bundle at {url} is larger than {MAX_BUNDLE_BYTES} bytes"
        try:  # the verifier is releasetrain's own (cryptography is needed for Ed25519)
            from releasetrain.core.bundle import BundleError, load_public_key, verify_signed_bundle
        except ImportError:
            return "cannot verify bundles here: releasetrain (and cryptography) are not installed"
        try:
            verify_signed_bundle(
                archive,
                signature,
                load_public_key(self.bundle_key),
                release=str(body.get("release")),
                version=version,
                expected_digest=digest,
            )
        except BundleError as exc:
            return str(exc)
        return None

    def start_traffic(self, rps: float) -> None:
        """Synthetic users: ``rps`` live requests per second to every environment that runs
        something, and as many to the preview of its idle colour."""

        def loop() -> None:
            while True:
                time.sleep(1.0 / rps)
                with self.lock:
                    self.advance()
                    for name, env in list(self.environments.items()):
                        if env["version"]:
                            self.app_request(name, "synthetic")
                        if env["idle"]:
                            self.app_request(name, "synthetic", "preview")

        self.traffic_thread = threading.Thread(target=loop, name="synthetic-traffic", daemon=True)
        self.traffic_thread.start()

    def stats(self, query: str, start: float, end: float, step: float) -> tuple[int, dict[str, Any]]:
        """One value per ``step`` seconds from ``start`` to ``end``; steps without requests have none."""
        metric, *pairs = query.split()
        labels = dict(p.split("=", 1) for p in pairs if "=" in p)
        if metric not in ("error_rate", "requests", "latency_ms") or not {"environment", "version"} <= set(labels):
            return 400, {
                "error": "query is 'error_rate|requests|latency_ms environment=E version=V [route=app|preview]'"
            }
        if not 0 < step <= 3600 or end < start or (end - start) / step > 11000:
            return 400, {"error": "need start <= end and 0 < step, at most 11000 steps"}
        routes = [labels["route"]] if "route" in labels else ["app", "preview"]
        merged: dict[int, list[float]] = {}
        for route in routes:
            for sec, (count, errors, latency) in self.seconds.get(
                (labels["environment"], labels["version"], route), {}
            ).items():
                total = merged.setdefault(sec, [0, 0, 0.0])
                total[0] += count
                total[1] += errors
                total[2] += latency
        # a second S of the counters stands for [S, S+1): it counts in the step holding S + 0.5
        edges = [start + i * step for i in range(int((end - start) / step) + 1)]
        if edges[-1] < end:
            edges.append(end)
        values = []
        for low, high in zip(edges, edges[1:], strict=False):
            count = errors = latency = 0.0
            for sec in range(int(low) - 1, int(high) + 1):
                if low <= sec + 0.5 < high and sec in merged:
                    c, e, lat = merged[sec]
                    count, errors, latency = count + c, errors + e, latency + lat
            if count:
                values.append(
                    {"error_rate": errors / count, "requests": count, "latency_ms": 1000 * latency / count}[metric]
                )
        return 200, {"query": query, "values": values}

    def metrics(self) -> str:
        lines = [
            "# HELP fleet_requests_total Application requests by environment, version and status code.",
            "# TYPE fleet_requests_total counter",
        ]
        for (env, version, route, code), count in sorted(self.requests.items()):
            lines.append(
                f'fleet_requests_total{{environment="{env}",version="{version}",route="{route}",code="{code}"}} {count}'
            )
        lines += [
            "# HELP fleet_sessions_total User sessions by environment, version, route and outcome (started, checkout).",
            "# TYPE fleet_sessions_total counter",
        ]
        for (env, version, route, outcome), count in sorted(self.sessions.items()):
            lines.append(
                f'fleet_sessions_total{{environment="{env}",version="{version}",route="{route}",outcome="{outcome}"}} '
                f"{count}"
            )
        lines += [
            "# HELP fleet_request_seconds_sum Total time spent serving application requests.",
            "# TYPE fleet_request_seconds_sum counter",
        ]
        for (env, version), total in sorted(self.latency_sum.items()):
            lines.append(f'fleet_request_seconds_sum{{environment="{env}",version="{version}"}} {total:.6f}')
        lines += [
            "# HELP fleet_request_duration_seconds Application request latency.",
            "# TYPE fleet_request_duration_seconds histogram",
        ]
        for (env, version), buckets in sorted(self.latency_buckets.items()):
            labels = f'environment="{env}",version="{version}"'
            for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), buckets, strict=True):
                lines.append(f'fleet_request_duration_seconds_bucket{{{labels},le="{bound}"}} {count}')
            lines.append(f"fleet_request_duration_seconds_sum{{{labels}}} {self.latency_sum[(env, version)]:.6f}")
            lines.append(f"fleet_request_duration_seconds_count{{{labels}}} {buckets[-1]}")
        lines += ["# HELP fleet_deployed_info Version running in each environment.", "# TYPE fleet_deployed_info gauge"]
        for name, env in sorted(self.environments.items()):
            if env["version"]:
                lines.append(f'fleet_deployed_info{{environment="{name}",version="{env["version"]}"}} 1')
        lines += ["# HELP fleet_traffic_weight Share of live traffic per colour.", "# TYPE fleet_traffic_weight gauge"]
        for name, env in sorted(self.environments.items()):
            idle = env["idle"]
            weight = idle["weight"] if idle else 0
            if env["version"]:
                lines.append(f'fleet_traffic_weight{{environment="{name}",version="{env["version"]}"}} {100 - weight}')
            if idle:
                lines.append(f'fleet_traffic_weight{{environment="{name}",version="{idle["version"]}"}} {weight}')
        return "\n".join(lines) + "\n"


def make_handler(fleet: Fleet, credentials: tuple[str, str] | None):
    class Handler(BaseHTTPRequestHandler):
        server_version = "releasetrain-demo-fleet/1"

        def log_message(self, fmt: str, *args: Any) -> None:  # quiet unless asked
            if os.environ.get("FLEET_VERBOSE"):
                super().log_message(fmt, *args)

        def _send(self, code: int, payload: Any, content_type: str = "application/json") -> None:
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any] | None:
            length = int(self.headers.get("Content-Length") or 0)
            if not length:
                return {}
            try:
                data = json.loads(self.rfile.read(length))
            except ValueError:
                return None
            return data if isinstance(data, dict) else None

        def _authorized(self) -> bool:
            if credentials is None or self.path in ("/metrics", "/healthz") or _application(self.path):
                return True
            header = self.headers.get("Authorization", "")
            expected = "Basic " + base64.b64encode(f"{credentials[0]}:{credentials[1]}".encode()).decode()
            if hmac.compare_digest(header, expected):
                return True
            self.send_response(HTTPStatus.UNAUTHORIZED)
            self.send_header("WWW-Authenticate", 'Basic realm="fleet"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return False

        def _route(self, method: str) -> None:
            if not self._authorized():
                return
            path = self.path.split("?", 1)[0].rstrip("/") or "/"
            parts = [p for p in path.split("/") if p]
            self.answer_delay = 0.0
            with fleet.lock:
                fleet.advance()
                code, payload = self._dispatch(method, path, parts)
            if self.answer_delay:
                time.sleep(self.answer_delay)  # outside the lock: the fleet goes on meanwhile
            if isinstance(payload, str):
                self._send(
                    code, payload, "application/yaml" if path == "/openapi.yaml" else "text/plain; version=0.0.4"
                )
            else:
                self._send(code, payload)

        def _dispatch(self, method: str, path: str, parts: list[str]) -> tuple[int, Any]:
            if path == "/healthz":
                return 200, {"ok": True}
            if path == "/openapi.yaml" and method == "GET":  # the deploy-target contract this fleet implements
                return 200, CONTRACT.read_text()
            if path == "/metrics" and method == "GET":
                return 200, fleet.metrics()
            if path == "/stats" and method == "GET":
                from urllib.parse import parse_qs, urlparse

                args = {k: v[-1] for k, v in parse_qs(urlparse(self.path).query).items()}
                try:
                    start, end = float(args["start"]), float(args["end"])
                    step = float(args.get("step", 1))
                except (KeyError, ValueError):
                    return 400, {"error": "start and end (epoch seconds) are required, step is optional"}
                return fleet.stats(args.get("query", ""), start, end, step)
            if path == "/faults":
                if method == "GET":
                    return 200, {
                        "faults": [{"environment": e, "version": v, **f} for (e, v), f in fleet.faults.items()]
                    }
                if method == "DELETE":
                    fleet.faults.clear()
                    return 200, {"faults": []}
                if method == "POST":
                    body = self._body()
                    if not body or not body.get("environment") or not body.get("version"):
                        return 400, {"error": "body must be {environment, version, error_rate}"}
                    try:
                        rate = float(body.get("error_rate", 1.0))
                    except (TypeError, ValueError):
                        return 400, {"error": "error_rate must be a number between 0 and 1"}
                    if not 0 <= rate <= 1:
                        return 400, {"error": "error_rate must be between 0 and 1"}
                    fault = {"error_rate": rate, "fail_deploy": bool(body.get("fail_deploy", False))}
                    if body.get("scope", "all") not in ("all", "live"):
                        return 400, {"error": "scope must be all or live"}
                    fault["scope"] = body.get("scope", "all")
                    try:
                        if body.get("deploy_status") is not None:
                            fault["deploy_status"] = int(body["deploy_status"])
                            if not 400 <= fault["deploy_status"] <= 599:
                                raise ValueError
                        for key in ("deploy_seconds", "latency_ms", "accept_delay_seconds"):
                            if body.get(key) is not None:
                                fault[key] = float(body[key])
                                if fault[key] < 0:
                                    raise ValueError
                        if body.get("conversion") is not None:
                            fault["conversion"] = float(body["conversion"])
                            if not 0 <= fault["conversion"] <= 1:
                                raise ValueError
                    except (TypeError, ValueError):
                        return 400, {
                            "error": "deploy_status must be an HTTP error status (400-599); "
                            "deploy_seconds, latency_ms and accept_delay_seconds non-negative numbers; "
                            "conversion a share from 0 to 1"
                        }
                    fleet.faults[(body["environment"], body["version"])] = fault
                    return 201, {"environment": body["environment"], "version": body["version"], **fault}
            if path == "/environments" and method == "GET":
                return 200, {"environments": [fleet.view(n) for n in sorted(fleet.environments)]}
            if len(parts) < 2 or parts[0] != "environments":
                return 404, {"error": f"no route {method} {path}"}
            name = parts[1]
            if not ENV_NAME.match(name):
                return 400, {"error": f"invalid environment name {name!r}"}
            rest = parts[2:]
            if rest[:1] == ["components"] and len(rest) >= 2:  # a deploy unit: its own state, as "<env>/<unit>"
                if not ENV_NAME.match(rest[1]):
                    return 400, {"error": f"invalid component name {rest[1]!r}"}
                name, rest = f"{name}/{rest[1]}", rest[2:]
            if method == "GET" and rest in ([], ["status"]):
                return 200, fleet.view(name)
            if method == "GET" and rest == ["health"]:
                view = fleet.view(name)
                body = {"healthy": view["healthy"], "version": view["version"], "error_rate": view["error_rate"]}
                return (200 if view["healthy"] else 503), body
            if method == "POST" and rest in (["deployments"], ["rollback"]):
                body = self._body()
                if body is None:
                    return 400, {"error": "body must be a JSON object"}
                code, answer = fleet.start(name, body, "deploy" if rest == ["deployments"] else "rollback")
                delay = fleet.faults.get((name, str(body.get("version"))), {}).get("accept_delay_seconds")
                if code == 202 and delay and rest == ["deployments"]:
                    self.answer_delay = float(delay)  # started already; the caller hears of it later
                return code, answer
            if method == "GET" and len(rest) == 2 and rest[0] == "deployments":
                dep = fleet.deployments.get(rest[1])
                # deployment ids are target-wide: a unit's deployment is found on its environment too
                if not dep or (dep["environment"] != name and not dep["environment"].startswith(f"{name}/")):
                    return 404, {"error": f"no deployment {rest[1]} in {name}"}
                return 200, {k: v for k, v in dep.items() if k != "finish_at"}
            if method == "POST" and rest == ["config"]:
                body = self._body()
                if body is None or not isinstance(body.get("values"), dict):
                    return 400, {"error": 'body must be {"values": {...}}'}
                return fleet.edit_config(name, body["values"])
            if method == "POST" and rest in (["traffic"], ["promote"], ["abort"]):
                body = self._body()
                if body is None:
                    return 400, {"error": "body must be a JSON object"}
                if rest == ["traffic"]:
                    return fleet.traffic(name, body)
                return fleet.promote(name) if rest == ["promote"] else fleet.abort(name)
            if method in ("GET", "POST") and rest[:1] in (["app"], ["preview"]):
                if method == "POST":
                    self._body()  # read (and ignore) the request body
                route = rest[0]  # "app" (live traffic) or "preview"
                return fleet.app_request(name, "/".join(rest[1:]), route, method)
            return 404, {"error": f"no route {method} {path}"}

        def do_GET(self) -> None:  # noqa: N802
            self._route("GET")

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._route("DELETE")

    return Handler


def serve(host: str, port: int, fleet: Fleet, credentials: tuple[str, str] | None) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer((host, port), make_handler(fleet, credentials))
    server.daemon_threads = True
    return server


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8799)
    parser.add_argument("--deploy-seconds", type=float, default=1.5, help="how long a deployment takes")
    parser.add_argument("--seed", default="", help="initial versions, e.g. dev=1.0.0,staging=1.0.0,prod=1.0.0")
    parser.add_argument("--user", default=os.environ.get("FLEET_USER"))
    parser.add_argument("--password", default=os.environ.get("FLEET_PASSWORD"))
    parser.add_argument("--traffic", type=float, default=0.0, help="synthetic requests per second per environment")
    parser.add_argument(
        "--bundle-public-key",
        metavar="PEM_FILE",
        help="deploy only bundles signed with this key (also FLEET_BUNDLE_PUBLIC_KEY, the PEM itself)",
    )
    parser.add_argument("--bundle-root", help="the folder bundles are read from (also FLEET_BUNDLE_ROOT)")
    args = parser.parse_args(argv)
    seed = dict(item.split("=", 1) for item in args.seed.split(",") if "=" in item)
    credentials = (args.user, args.password) if args.user and args.password else None
    key = os.environ.get("FLEET_BUNDLE_PUBLIC_KEY") or None
    if args.bundle_public_key:
        with open(args.bundle_public_key) as handle:
            key = handle.read()
    root = args.bundle_root or os.environ.get("FLEET_BUNDLE_ROOT") or None
    fleet = Fleet(args.deploy_seconds, seed, bundle_key=key, bundle_root=root)
    if args.traffic > 0:
        fleet.start_traffic(args.traffic)
    server = serve(args.host, args.port, fleet, credentials)
    print(f"demo fleet listening on http://{args.host}:{args.port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
