"""releasetrain's settings: the ``[releasetrain]`` section of Airflow's configuration.

Read as Airflow reads its own options, without importing Airflow (the core stays pure):
the environment variable ``AIRFLOW__RELEASETRAIN__<NAME>`` first, then the section in
Airflow's configuration file (``$AIRFLOW_CONFIG``, else ``$AIRFLOW_HOME/airflow.cfg``), then
the older ``RELEASETRAIN_<NAME>`` variable (still honoured), else nothing. The options, their
meaning and defaults are declared once, in :data:`OPTIONS` (the provider's ``config`` section
is built from it, so ``airflow config list`` shows them).
"""

from __future__ import annotations

import configparser
import os
from pathlib import Path

SECTION = "releasetrain"

# name -> (description, example); every option defaults to unset (the documented fallback applies)
OPTIONS: dict[str, tuple[str, str]] = {
    "spec_dirs": (
        "Folders of release specs, separated by the OS path separator (default: include/releases of the project).",
        "/opt/airflow/include/releases",
    ),
    "calendar_dirs": (
        "Folders of shared calendars (default: include/calendars of the project).",
        "/opt/airflow/include/calendars",
    ),
    "groups_file": (
        "The approver groups file (default: include/groups.yaml of the project).",
        "/opt/airflow/include/groups.yaml",
    ),
    "project_root": (
        "The project's root, for the cockpit's calendar (default: the parent of the DAGs folder).",
        "/opt/airflow",
    ),
    "artifact_store": (
        "Where bundles are stored, an ObjectStoragePath URL (replaces the releasetrain_artifact_store "
        "Airflow variable, which still works; default: $AIRFLOW_HOME/artifacts).",
        "s3://releases/bundles",
    ),
    "artifact_roots": (
        "Comma-separated URL prefixes a spec's own artifact_store must fall under (default: none allowed).",
        "s3://releases/",
    ),
    "source_roots": (
        "Comma-separated folders a component's source may be read from, beside the project (default: the project).",
        "/srv/builds",
    ),
    "secret_references": (
        "Comma-separated glob patterns of the connections and variables a configuration profile may name.",
        "storefront_*",
    ),
    "allowed_notifiers": (
        "Comma-separated notifier classes a spec's notifications may use besides the webhook.",
        "airflow.providers.slack.notifications.slack.SlackNotifier",
    ),
    "annotations_conn_id": (
        "Connection of the Grafana that deploy markers are published on (default: none).",
        "grafana_default",
    ),
    "alert_window_minutes": (
        "How long after a deploy an alert received on the webhook is attached to it (default: 60).",
        "60",
    ),
    "ledger_checkpoints": (
        "Where signed ledger checkpoints are kept, outside the ledger's database "
        "(default: $AIRFLOW_HOME/artifacts/_ledger/checkpoints).",
        "s3://audit/releasetrain/checkpoints",
    ),
}

_parsed: dict[str, tuple[float, configparser.ConfigParser]] = {}


class SettingsError(ValueError):
    """Airflow's configuration file exists but cannot be read: no setting is guessed."""


def _expand(value: str) -> str:
    return os.path.expanduser(os.path.expandvars(value))


def _config_file() -> Path:
    """Where Airflow reads its configuration (``~`` and ``$VARS`` expanded, as Airflow does)."""
    configured = os.environ.get("AIRFLOW_CONFIG")
    if configured:
        return Path(_expand(configured))
    home = os.environ.get("AIRFLOW_HOME") or "~/airflow"
    return Path(_expand(home)) / "airflow.cfg"


def _from_file(name: str) -> str | None:
    """The option in the file's section; an option written with an empty value is set (to
    nothing: e.g. ``allowed_notifiers =`` allows none), one absent or commented out is not."""
    path = _config_file()
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SettingsError(f"{path}: Airflow's configuration cannot be read: {exc.strerror}") from None
    cached = _parsed.get(str(path))
    if cached is None or cached[0] != mtime:
        parser = configparser.ConfigParser(interpolation=None)
        try:
            with open(path, encoding="utf-8") as handle:
                parser.read_file(handle)
        except OSError as exc:
            raise SettingsError(f"{path}: Airflow's configuration cannot be read: {exc.strerror}") from None
        except configparser.Error as exc:
            raise SettingsError(f"{path}: Airflow's configuration cannot be parsed: {exc}") from None
        cached = _parsed[str(path)] = (mtime, parser)
    value = cached[1].get(SECTION, name.lower(), fallback=None)
    return None if value is None else _expand(value.replace("%%", "%"))


def setting(name: str) -> str | None:
    """The option ``name`` (upper or lower case) of the ``[releasetrain]`` section, or None."""
    upper = name.upper()
    value = os.environ.get(f"AIRFLOW__RELEASETRAIN__{upper}")
    if value is not None:
        return value
    value = _from_file(name)
    if value is not None:
        return value
    return os.environ.get(f"RELEASETRAIN_{upper}")
