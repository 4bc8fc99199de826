"""releasetrain installs like an Airflow provider: valid provider info that Airflow finds
(connection types with their forms, the [releasetrain] config section, notifier, triggers),
and settings read from that section of Airflow's configuration file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import jsonschema


def test_the_provider_info_is_what_airflow_validates():
    import airflow

    from releasetrain.provider_info import get_provider_info

    schema = json.loads((Path(airflow.__file__).parent / "provider_info.schema.json").read_text())
    jsonschema.validate(get_provider_info(), schema)


def test_airflow_finds_the_provider_its_connection_forms_and_config(tmp_path):
    from airflow.providers_manager import ProvidersManager

    manager = ProvidersManager()
    assert "releasetrain" in manager.providers
    behaviours = manager.field_behaviours
    assert behaviours["releasetrain_signing"]["relabeling"]["password"] == "Private key (PEM)"
    assert behaviours["releasetrain_deploy_target"]["relabeling"]["host"] == "Base URL"
    widgets = manager.connection_form_widgets
    assert "extra__releasetrain_signing__public_key" in widgets
    assert manager.hooks["releasetrain_deploy_target"].hook_class_name.endswith("DeployTargetHook")
    env = {**os.environ, "AIRFLOW_HOME": str(tmp_path)}
    listed = subprocess.run(
        [sys.executable, "-m", "airflow", "providers", "list", "--output", "json"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    [table] = [line for line in listed.stdout.splitlines() if line.startswith("[{")] or [listed.stderr[-2000:]]
    assert any(p["package_name"] == "releasetrain" for p in json.loads(table)), table
    config = subprocess.run(
        [sys.executable, "-m", "airflow", "config", "list", "--section", "releasetrain"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert "[releasetrain]" in config.stdout and "alert_window_minutes" in config.stdout, config.stderr[-2000:]


def test_settings_come_from_the_environment_then_airflow_cfg_then_the_old_names(tmp_path, monkeypatch):
    from releasetrain.core.settings import OPTIONS, setting

    cfg = tmp_path / "airflow.cfg"
    cfg.write_text("[releasetrain]\nspec_dirs = /from/the/file\nalert_window_minutes = 15\n")
    monkeypatch.setenv("AIRFLOW_CONFIG", str(cfg))
    monkeypatch.setenv("RELEASETRAIN_SPEC_DIRS", "/old/name")
    monkeypatch.delenv("AIRFLOW__RELEASETRAIN__SPEC_DIRS", raising=False)
    assert setting("SPEC_DIRS") == "/from/the/file"
    monkeypatch.setenv("AIRFLOW__RELEASETRAIN__SPEC_DIRS", "/from/the/env")
    assert setting("spec_dirs") == "/from/the/env"
    cfg.write_text("[releasetrain]\n")
    os.utime(cfg, (1, 1))  # a changed file is read again
    monkeypatch.delenv("AIRFLOW__RELEASETRAIN__SPEC_DIRS")
    assert setting("SPEC_DIRS") == "/old/name"
    assert {"artifact_store", "spec_dirs", "alert_window_minutes", "ledger_checkpoints"} <= set(OPTIONS)


def test_the_artifact_store_setting_replaces_the_variable(tmp_path, monkeypatch):
    from releasetrain.hooks.bundle_store import BundleStoreHook

    monkeypatch.setenv("AIRFLOW__RELEASETRAIN__ARTIFACT_STORE", f"file://{tmp_path}/bundles")
    assert str(BundleStoreHook().base()).rstrip("/").endswith(f"{tmp_path}/bundles")


def test_an_empty_option_in_the_file_is_set_to_nothing_and_paths_expand(tmp_path, monkeypatch):
    """``allowed_notifiers =`` allows none: it must not fall back to a default or an old name."""
    from releasetrain.core.policy import Policy
    from releasetrain.core.settings import setting

    home = tmp_path / "home"
    (home / "airflow").mkdir(parents=True)
    (home / "airflow" / "airflow.cfg").write_text("[releasetrain]\nallowed_notifiers =\n# spec_dirs = /commented\n")
    monkeypatch.delenv("AIRFLOW_CONFIG", raising=False)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("AIRFLOW_HOME", "~/airflow")
    monkeypatch.delenv("AIRFLOW__RELEASETRAIN__ALLOWED_NOTIFIERS", raising=False)
    monkeypatch.setenv("RELEASETRAIN_ALLOWED_NOTIFIERS", "airflow.providers.slack.notifications.slack.SlackNotifier")
    assert setting("ALLOWED_NOTIFIERS") == ""
    assert not Policy.from_environment().notifier_allowed("airflow.providers.slack.notifications.slack.SlackNotifier")
    monkeypatch.setenv("RELEASETRAIN_SPEC_DIRS", "/old")
    assert setting("SPEC_DIRS") == "/old", "a commented-out option is not set"


def test_an_unreadable_configuration_is_an_error_not_a_default(tmp_path, monkeypatch):
    import pytest

    from releasetrain.core.settings import SettingsError, setting

    cfg = tmp_path / "airflow.cfg"
    cfg.write_text("[releasetrain\nbroken")
    monkeypatch.setenv("AIRFLOW_CONFIG", str(cfg))
    monkeypatch.delenv("AIRFLOW__RELEASETRAIN__SOURCE_ROOTS", raising=False)
    with pytest.raises(SettingsError, match="cannot be parsed"):
        setting("SOURCE_ROOTS")
