"""Environment configuration: what a bundle never carries.

Each environment has a versioned profile in the spec (``environments[].config``): plain
values, and secrets *by reference* (an Airflow connection's password or login, or a
secrets-backend variable), resolved only by the deploy task, at deploy time. The profile's
digest covers its version, values and references, never a resolved secret: it is what the
ledger, XCom and the evidence show.

Also here: the rules that keep configuration out of bundles (file names made for one
environment) and literal secrets out of specs. No Airflow import.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from pathlib import PurePosixPath
from typing import Any

# A key that names a secret: its value must be a reference, never a literal (camelCase keys
# are split first: dbPassword -> db_Password).
SECRET_KEY = re.compile(
    r"(^|[^a-z])(pass(word|wd|phrase)?|secret|token|api[_-]?key|private[_-]?key|credentials?|pwd|auth(orization)?|"
    r"bearer)([^a-z]|$)",
    re.I,
)
# ... unless the key says the value is about a secret, not one (PASSWORD_MIN_LENGTH, TOKEN_URL)
NOT_A_SECRET = re.compile(
    r"[_.-](length|len|min|max|ttl|seconds|minutes|hours|days|url|uri|endpoint|file|path|dir|region|"
    r"name|id|header|type|mode|enabled|policy|rotation|expiry|expires)$",
    re.I,
)
# Values that are secrets whatever their key says.
SECRET_VALUES = (
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "a private key"),
    (re.compile(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b"), "an AWS access key id"),
    (re.compile(r"\b(gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,})"), "a GitHub token"),
    (re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}"), "a Slack token"),
    (re.compile(r"\b[rs]k_live_[A-Za-z0-9]{10,}"), "a Stripe key"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]+"), "a JSON web token"),
    (re.compile(r"\bbearer\s+[A-Za-z0-9._~+/=-]{12,}", re.I), "a bearer token"),
    (re.compile(r"\b[a-z][a-z0-9+.-]*://[^/\s:@]*:[^/\s@]+@", re.I), "a URL with a password in it"),
)
# Names of files made for one environment ({environment}: each of the release's
# environments), matched case-insensitively against every part of a path inside a
# component's artifacts. Names with an environment in them count only for configuration
# file types (react-dom.production.min.js is code).
CONFIG_SUFFIXES = ("yml", "yaml", "json", "properties", "ini", "toml", "conf", "cfg", "xml", "env")
DEFAULT_CONFIG_PATTERNS = (
    ".env",
    "*.env",
    ".env.*",
    "{environment}.env*",
    *(f"{{environment}}.{x}" for x in CONFIG_SUFFIXES),
    *(f"*.{{environment}}.{x}" for x in CONFIG_SUFFIXES),
    *(f"*-{{environment}}.{x}" for x in CONFIG_SUFFIXES),
    *(f"*_{{environment}}.{x}" for x in CONFIG_SUFFIXES),
)
# examples and templates of .env files carry no environment's values
NOT_CONFIG = (".env.example", ".env.sample", ".env.template", ".env.dist")


def literal_secret(key: str, value: Any) -> str | None:
    """Why ``value`` (under ``key``) is a literal secret, or None."""
    if isinstance(value, bool) or value is None or isinstance(value, (dict, list)):
        return None
    text = str(value)
    if not text:
        return None
    for pattern, what in SECRET_VALUES:
        if pattern.search(text):
            return f"holds {what}"
    words = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", key)
    if SECRET_KEY.search(words) and not NOT_A_SECRET.search(words):
        return "names a secret but holds a literal value"
    return None


def literal_secrets(values: Mapping[str, Any], where: str) -> list[str]:
    """Every literal secret in ``values`` (nested mappings and lists too), as
    ``"<where>.<key>: <why>; refer to it ..."``."""
    found: list[str] = []

    def walk(node: Any, path: str, key: str) -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                walk(v, f"{path}.{k}", str(k))
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]", key)
        else:
            why = literal_secret(key, node)
            if why:
                found.append(
                    f"{path}: {why}; secrets are referred to, never written in a spec "
                    "(config.secrets: {NAME: {connection: CONN_ID}} or {variable: PATH})"
                )

    for k, v in values.items():
        walk(v, f"{where}.{k}", str(k))
    return found


def profile_digest(version: str, values: Mapping[str, Any], secrets: Mapping[str, Mapping[str, Any]]) -> str:
    """The profile's identity: its version, values and secret *references* (canonical JSON)."""
    document = {"version": version, "values": dict(values), "secrets": {k: dict(v) for k, v in secrets.items()}}
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def secret_fingerprint(value: str) -> str:
    """What may be shown of a resolved secret: a short hash, enough to tell two apart."""
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()[:16]


def environment_files(
    paths: Iterable[str], environments: Iterable[str], patterns: Iterable[str] = DEFAULT_CONFIG_PATTERNS
) -> list[tuple[str, str]]:
    """``(path, pattern)`` for each path (relative, ``/``-separated) with a part that
    matches a pattern: configuration for one environment, which a bundle must not carry."""
    concrete: list[str] = []
    for pattern in patterns:
        if "{environment}" in pattern:
            concrete.extend(pattern.replace("{environment}", env) for env in environments)
        else:
            concrete.append(pattern)
    concrete = [p.lower() for p in concrete]
    found = []
    for path in paths:
        parts = [part.lower() for part in PurePosixPath(path).parts if part.lower() not in NOT_CONFIG]
        hit = next((p for p in concrete if any(fnmatch.fnmatchcase(part, p) for part in parts)), None)
        if hit:
            found.append((path, hit))
    return found


def _show(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False)


def _same(a: Any, b: Any) -> bool:
    """Settings compared as a target holds them (environment variables are text: 800 == "800")."""

    def canon(v: Any) -> str:
        return json.dumps(v) if isinstance(v, bool) or v is None else str(v)

    return canon(a) == canon(b)


def config_drift(baseline: Mapping[str, Any], reported: Mapping[str, Any], hidden: Iterable[str] = ()) -> list[str]:
    """How an environment's reported settings differ from its baseline, one readable line per
    setting (sorted): changed, added on the target, missing on the target. Values of
    ``hidden`` settings, and of any that look like secrets, are never shown."""
    hidden = set(hidden)

    def show(key: str, value: Any) -> str:
        if key in hidden or literal_secret(key, value):
            return "a value not shown"
        return _show(value)

    lines = []
    for key in sorted(set(baseline) | set(reported)):
        if key not in reported:
            lines.append(f"{key}: {show(key, baseline[key])} in the baseline, missing on the target")
        elif key not in baseline:
            lines.append(f"{key}: {show(key, reported[key])} on the target, not in the baseline")
        elif not _same(baseline[key], reported[key]):
            lines.append(f"{key}: {show(key, baseline[key])} in the baseline, {show(key, reported[key])} on the target")
    return lines


def values_digest(values: Mapping[str, Any] | None) -> str:
    """A digest of settings as a target reports them (the deploy checks it again under the lock)."""
    canonical = json.dumps({k: str(v) for k, v in (values or {}).items()}, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def drift_report(
    reported: Mapping[str, Any] | None, profile: Mapping[str, Any], deployed: Iterable[Mapping[str, Any]]
) -> dict[str, Any]:
    """The environment's drift before a deploy.

    ``reported``: the configuration the target reports (``{version, sha256, values}``);
    ``profile``: the profile this release is about to deploy (the spec, in version control);
    ``deployed``: the configurations recorded with earlier deploys to the environment
    (``{version, sha256, values}``, oldest first). The baseline of the profile the target
    says it runs is the spec's when it is that profile, else the newest recorded deploy of
    it. A target that runs a profile no release deployed has drifted as a whole."""
    if not reported:
        if any(d.get("sha256") for d in deployed):  # a release put a profile there; it is gone
            return {
                "baseline": None,
                "reported": None,
                "drift": ["the target reports no configuration, but a release deployed one there"],
            }
        return {"baseline": None, "reported": None, "drift": [], "note": "the target reports no configuration yet"}
    sha = reported.get("sha256")
    values = dict(reported.get("values") or {})
    hidden = set(profile.get("secrets") or {})
    seen = {"sha256": sha, "values_digest": values_digest(values)}
    if sha == profile.get("sha256"):
        baseline = {"version": profile.get("version"), "sha256": sha, "values": dict(profile.get("values") or {})}
    else:
        known = [d for d in deployed if d.get("sha256") == sha and "values" in d]
        if not known:
            return {
                "baseline": None,
                "reported": seen,
                "drift": [
                    f"the target runs configuration {reported.get('version')!r} ({sha}), which no release deployed"
                ],
            }
        baseline = {"version": known[-1].get("version"), "sha256": sha, "values": dict(known[-1]["values"])}
    return {"baseline": baseline, "reported": seen, "drift": config_drift(baseline["values"], values, hidden)}


def parity(
    left: str,
    right: str,
    keys: Mapping[str, Iterable[str]],
    services: Iterable[Mapping[str, Any]],
) -> list[str]:
    """How ``right`` (production) differs from ``left`` (the environment before it) where they
    should match: the settings their profiles define (``keys``: environment -> names), and the
    versions of the shared services they run (``{release, versions: {env: version|None}}``)."""
    lines = []
    left_keys, right_keys = set(keys.get(left, ())), set(keys.get(right, ()))
    if left_keys - right_keys:
        lines.append(f"settings only in {left}'s profile: {', '.join(sorted(left_keys - right_keys))}")
    if right_keys - left_keys:
        lines.append(f"settings only in {right}'s profile: {', '.join(sorted(right_keys - left_keys))}")
    for service in services:
        versions = service["versions"]
        a, b = versions.get(left), versions.get(right)
        if a != b:
            lines.append(
                f"shared service {service['release']}: {a or 'nothing'} in {left}, {b or 'nothing'} in {right}"
            )
    return lines


def _reference(ref: Mapping[str, Any]) -> str:
    if ref.get("connection"):
        field = ref.get("field") or "password"
        return f"connection {ref['connection']}" + ("" if field == "password" else f" ({field})")
    return f"variable {ref.get('variable')}"


def profile_changes(before: Mapping[str, Any] | None, after: Mapping[str, Any]) -> list[str]:
    """What a change to an environment's profile changes, for the change advisory board: one
    line per setting (sorted) against the last approved baseline (``before``; None: there is
    none, every setting is new). Profiles are plans (``{version, sha256, values, secrets}``);
    secrets are shown by reference only, values that look like secrets not at all."""

    def show(key: str, value: Any) -> str:
        return "a value not shown" if literal_secret(key, value) else _show(value)

    old_values = dict((before or {}).get("values") or {})
    new_values = dict(after.get("values") or {})
    old_refs = dict((before or {}).get("secrets") or {})
    new_refs = dict(after.get("secrets") or {})
    lines = []
    for key in sorted(set(old_values) | set(new_values)):
        if key not in old_values:
            lines.append(f"{key}: new, {show(key, new_values[key])}")
        elif key not in new_values:
            lines.append(f"{key}: removed (was {show(key, old_values[key])})")
        elif not _same(old_values[key], new_values[key]):
            lines.append(f"{key}: {show(key, new_values[key])}, was {show(key, old_values[key])}")
    for key in sorted(set(old_refs) | set(new_refs)):
        if key not in old_refs:
            lines.append(f"{key} (secret): new, from {_reference(new_refs[key])}")
        elif key not in new_refs:
            lines.append(f"{key} (secret): removed (was from {_reference(old_refs[key])})")
        elif _reference(old_refs[key]) != _reference(new_refs[key]):
            lines.append(f"{key} (secret): from {_reference(new_refs[key])}, was from {_reference(old_refs[key])}")
    return lines
