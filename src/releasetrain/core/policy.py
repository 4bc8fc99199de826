"""What a release spec may reach, decided by the deployment, never by the spec.

A spec is data that release managers edit; the people who run Airflow are trusted, spec
authors are not trusted with code. So a spec may name:

- **notifiers** only from an allow-list of Airflow notifier classes, configured by the
  deployment (``AIRFLOW__RELEASETRAIN__ALLOWED_NOTIFIERS`` or ``RELEASETRAIN_ALLOWED_NOTIFIERS``,
  comma-separated import paths; default: :data:`DEFAULT_NOTIFIERS`);
- **component sources** as paths inside the project, or URLs under a configured root
  (``..._SOURCE_ROOTS``, comma-separated URL prefixes such as ``s3://artifacts/``;
  default: none, so ``file:///proc/self/environ`` is refused);
- **an artifact store** only under a configured root (``..._ARTIFACT_ROOTS``; default: none,
  so a spec keeps the deployment's store and cannot write bundles over another's);
- **no templates**: no string anywhere in a spec may hold Jinja markers (``{{``, ``{%``),
  since some reach paths and stores that Airflow would render with the task context
  (connections, variables).

:func:`check_policy` returns ``(field path, reason)`` problems; the spec loader turns
them into a :class:`~releasetrain.core.spec.ReleaseSpecError`. Nothing here imports Airflow.
"""

from __future__ import annotations

import posixpath
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

DEFAULT_NOTIFIERS = (
    "airflow.providers.slack.notifications.slack.SlackNotifier",
    "airflow.providers.slack.notifications.slack_webhook.SlackWebhookNotifier",
    "airflow.providers.smtp.notifications.smtp.SmtpNotifier",
    "airflow.providers.apprise.notifications.apprise.AppriseNotifier",
    "releasetrain.notifiers.webhook.WebhookNotifier",
)
TEMPLATE_MARKERS = ("{{", "{%", "{#")
# Notifier arguments that read files or pick connections: the deployment's, never a spec's.
DENIED_NOTIFIER_ARGS = frozenset({"files", "file", "template", "attach", "attachments", "attachment", "http_conn_id"})
# Connections no spec may point a check or a notification at.
TRUSTED_CONNECTIONS = frozenset(
    {
        "releasetrain_ledger",
        "releasetrain_signing",
        "releasetrain_evidence_signing",
        "releasetrain_ledger_signing",
        "releasetrain_artifacts",
    }
)


def _setting(name: str) -> str | None:
    """An option of the ``[releasetrain]`` section (see :mod:`releasetrain.core.settings`)."""
    from releasetrain.core.settings import setting

    return setting(name)


def _items(value: str | None) -> tuple[str, ...]:
    return tuple(item.strip() for item in (value or "").split(",") if item.strip())


@dataclass(frozen=True)
class Policy:
    """The deployment's limits on specs."""

    allowed_notifiers: tuple[str, ...] = DEFAULT_NOTIFIERS
    source_roots: tuple[str, ...] = ()
    artifact_roots: tuple[str, ...] = ()
    # fnmatch patterns of the connections and variables a profile may refer to (empty: any
    # but releasetrain's own and the deploy targets')
    secret_references: tuple[str, ...] = ()

    @classmethod
    def from_environment(cls) -> Policy:
        notifiers = _setting("ALLOWED_NOTIFIERS")
        return cls(
            allowed_notifiers=_items(notifiers) if notifiers is not None else DEFAULT_NOTIFIERS,
            source_roots=_items(_setting("SOURCE_ROOTS")),
            artifact_roots=_items(_setting("ARTIFACT_ROOTS")),
            secret_references=_items(_setting("SECRET_REFERENCES")),
        )

    def secret_reference_problem(self, name: str, targets: set[str]) -> str | None:
        """Why a profile may not refer to connection or variable ``name`` (None: it may)."""
        import fnmatch

        if name in targets or name in TRUSTED_CONNECTIONS or name.startswith("releasetrain_"):
            return f"{name} is not a profile's to read (releasetrain's own and the deploy targets' are never sent)"
        if self.secret_references and not any(fnmatch.fnmatchcase(name, p) for p in self.secret_references):
            return (
                f"{name} is not among the references the deployment allows ({', '.join(self.secret_references)}; "
                "AIRFLOW__RELEASETRAIN__SECRET_REFERENCES)"
            )
        return None

    def notifier_allowed(self, path: str) -> bool:
        return path in self.allowed_notifiers

    def source_problem(self, source: str) -> str | None:
        """Why a component source URL may not be read ("" / None: it may)."""
        if "://" not in source:
            parts = source.replace("\\", "/").split("/")
            if source.startswith(("/", "~")) or ".." in parts or ":" in parts[0]:
                return "a source path must be relative and stay inside the project (no '/', '~' or '..')"
            return None
        return _url_problem(source, self.source_roots, "source", "SOURCE_ROOTS")

    def artifact_store_problem(self, url: str) -> str | None:
        """Why a spec's ``artifact_store`` may not be used (None: it may)."""
        if "://" not in url:
            return "an artifact store is a URL (file://, s3://, ...) under a configured artifact root"
        if "_ledger" in urlsplit(url).path.split("/"):
            return "an artifact store may not lie in the ledger's folder (_ledger): checkpoints are kept there"
        return _url_problem(url, self.artifact_roots, "artifact store", "ARTIFACT_ROOTS")


def under_root(url: str, root: str) -> bool:
    """Whether a URL lies at or below a root URL (same scheme and host, path prefix by segment)."""
    parts, r = urlsplit(url), urlsplit(root)
    normal = f"{parts.scheme}://{parts.netloc}{posixpath.normpath(parts.path or '/')}"
    base = f"{r.scheme}://{r.netloc}{posixpath.normpath(r.path or '/')}".rstrip("/")
    return normal == base or normal.startswith(base + "/")


def _url_problem(url: str, roots: tuple[str, ...], what: str, setting: str) -> str | None:
    parts = urlsplit(url)
    if parts.username or parts.password:
        return f"a {what} URL may not carry credentials (use a connection)"
    # what urlsplit would cut off or decode, a storage path may still follow ('#/../..' is a
    # file name to ObjectStoragePath): no fragment, query, escape or backslash anywhere
    odd = [c for c in ("#", "?", "%", "\\") if c in url]
    if odd:
        return f"a {what} URL may not contain {' '.join(repr(c) for c in odd)}"
    segments = parts.path.split("/")
    if any(s.split(";")[0] in (".", "..") for s in segments):
        return f"a {what} URL may not contain '.' or '..' segments"
    if any(under_root(url, root) for root in roots):
        return None
    return (
        f"{url} is not under a configured {what} root ({', '.join(roots) or 'none are configured'}); "
        f"the deployment sets them with AIRFLOW__RELEASETRAIN__{setting}"
    )


def _strings(data: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(data, str):
        yield path, data
    elif isinstance(data, Mapping):
        for key, value in data.items():
            yield from _strings(key, path)
            yield from _strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            yield from _strings(value, f"{path}[{i}]")


def template_problems(data: Any) -> list[tuple[str, str]]:
    """Every string of the raw spec that holds a Jinja marker, by field path."""
    return [
        (path, f"templates are not allowed in a spec ({marker!r} found): a spec is data")
        for path, text in _strings(data)
        for marker in TEMPLATE_MARKERS
        if marker in text
    ][:20]


def check_policy(spec: Any, raw: Any, policy: Policy | None = None) -> list[tuple[str, str]]:
    """Problems of a parsed spec (and its raw data) against the deployment's policy."""
    policy = policy or Policy.from_environment()
    problems = template_problems(raw)
    targets = {env.deploy_target for env in spec.environments}
    for i, notification in enumerate(spec.notifications):
        if notification.conn_id in targets | TRUSTED_CONNECTIONS:
            problems.append((f"notifications[{i}].conn_id", f"{notification.conn_id} is not a notification's to use"))
        for name, value in (notification.args or {}).items():
            named = isinstance(value, str) and value in targets | TRUSTED_CONNECTIONS
            if name in DENIED_NOTIFIER_ARGS or "conn_id" in name or named:
                problems.append(
                    (
                        f"notifications[{i}].args.{name}",
                        "a spec cannot set a notifier's files, templates, attachments or connections "
                        "(the deployment configures them)",
                    )
                )
        if notification.kind == "notifier" and not policy.notifier_allowed(notification.notifier or ""):
            problems.append(
                (
                    f"notifications[{i}].notifier",
                    f"{notification.notifier} is not an allowed notifier (allowed: "
                    f"{', '.join(policy.allowed_notifiers) or 'none'}); the deployment sets the list with "
                    "AIRFLOW__RELEASETRAIN__ALLOWED_NOTIFIERS",
                )
            )
    for e, env in enumerate(spec.environments):
        for key, ref in (env.config.secrets if env.config else {}).items():
            problem = policy.secret_reference_problem(ref.connection or ref.variable or "", targets)
            if problem:
                problems.append((f"environments[{e}].config.secrets.{key}", problem))
        checks = [(f"environments[{e}].smoke_checks[{i}]", c) for i, c in enumerate(env.smoke_checks)]
        if env.health_checks is not None:
            checks += [
                (f"environments[{e}].health_checks.checks[{i}]", c) for i, c in enumerate(env.health_checks.checks)
            ]
        for where, check in checks:
            if check.conn_id in targets | TRUSTED_CONNECTIONS:
                problems.append(
                    (
                        f"{where}.conn_id",
                        f"{check.conn_id} is a deploy target: application checks never use the deploy credentials "
                        "(leave conn_id out to reach the application on the target's base URL, or name the "
                        "application's own connection)",
                    )
                )
    if spec.artifact_store:
        problem = policy.artifact_store_problem(spec.artifact_store)
        if problem:
            problems.append(("artifact_store", problem))
    for i, component in enumerate(spec.components):
        problem = policy.source_problem(component.source)
        if problem:
            problems.append((f"components[{i}].source", problem))
    return problems
