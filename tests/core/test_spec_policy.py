"""Issue 11, findings 4 and 5: a spec is data. It cannot import and call a class, read a file
outside the configured roots, be rendered as a template, or make DAG parsing time out with
a calendar that repeats every second."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from releasetrain.core.policy import DEFAULT_NOTIFIERS, Policy, template_problems
from releasetrain.core.spec import ReleaseSpecError, load_spec
from tests.conftest import PROJECT_ROOT

UNSAFE = PROJECT_ROOT / "tests" / "fixtures" / "unsafe"


def validate(*paths: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "releasetrain", "validate", *paths],
        capture_output=True,
        text=True,
        cwd=PROJECT_ROOT,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


@pytest.mark.parametrize(
    "spec, field, reason",
    [
        ("popen", "notifications[0].notifier", "subprocess.Popen is not an allowed notifier"),
        ("environ", "components[0].source", "file:///proc/self/environ is not under a configured source root"),
        ("environ", "components[1].source", "must be relative and stay inside the project"),
        ("templated", "artifact_store", "templates are not allowed in a spec"),
        ("otherstore", "artifact_store", "may not lie in the ledger's folder"),
        ("foreignstore", "artifact_store", "is not under a configured artifact store root"),
        ("secondly", "calendar.blackouts[0].ics", "repeats SECONDLY"),
        ("deploycreds", "environments[0].smoke_checks[0].conn_id", "fleet_dev is a deploy target"),
        ("smtpfiles", "notifications[0].args.files", "cannot set a notifier's files"),
        ("smtpfiles", "notifications[0].args.smtp_conn_id", "connections"),
        ("smtpfiles", "notifications[1].conn_id", "fleet_dev is not a notification's to use"),
        ("journeyescape", "environments[0].journeys[0]", "String should match pattern"),
    ],
)
def test_validate_refuses_a_spec_that_would_run_code_or_read_secrets(spec, field, reason):
    started = time.monotonic()
    done = validate(f"tests/fixtures/unsafe/{spec}.yaml")
    assert done.returncode == 1
    assert f"tests/fixtures/unsafe/{spec}.yaml: {field}: " in done.stderr and reason in done.stderr, done.stderr
    assert time.monotonic() - started < 60, "refused quickly, not by a timeout"
    assert not Path("/tmp/releasetrain-pwned").exists()


def test_the_deployment_not_the_spec_widens_the_limits():
    roots = {"AIRFLOW__RELEASETRAIN__SOURCE_ROOTS": "file:///proc/self"}
    assert validate("tests/fixtures/unsafe/popen.yaml", env={"RELEASETRAIN_ALLOWED_NOTIFIERS": "x.Y"}).returncode == 1
    done = validate("tests/fixtures/unsafe/environ.yaml", env=roots)
    assert "components[0].source" not in done.stderr and "components[1].source" in done.stderr


def test_source_roots_are_prefixes_of_whole_path_segments():
    policy = Policy(source_roots=("s3://artifacts/releases/",))
    assert policy.source_problem("s3://artifacts/releases/web/1.0") is None
    assert policy.source_problem("include/demo_fleet/artifacts/web") is None
    for bad in (
        "s3://artifacts/releases-evil/web",
        "s3://artifacts/releases/../secrets",
        "s3://artifacts/releases/a#/../../secrets",
        "FILE:///proc/self/environ",
        "s3://user:pw@artifacts/releases/web",
        "file:///etc/passwd",
        "/etc/passwd",
        "~/.ssh",
        "C:/Windows",
    ):
        assert policy.source_problem(bad), bad


def test_a_spec_store_only_under_the_deployment_artifact_roots():
    policy = Policy(artifact_roots=("s3://bucket/releases", "file:///srv/artifacts"))
    assert policy.artifact_store_problem("s3://bucket/releases/team-a") is None
    assert policy.artifact_store_problem("file:///srv/artifacts") is None
    for bad in (
        "s3://bucket/releases-other",
        "s3://bucket/releases/../ledger",
        "s3://bucket/releases/..;/ledger",
        "s3://bucket/releases/%2e%2e/ledger",
        "s3://bucket/releases/x?versionId=1",
        "s3://bucket/releases/a#/../../x",
        "file:///srv/artifacts/x#/../../../escaped",
        "file:///srv/artifacts\\..\\..\\etc",
        "file:///srv/artifacts/_ledger",
        "/srv/artifacts",
        "file:///srv",
    ):
        assert policy.artifact_store_problem(bad), bad
    assert Policy().artifact_store_problem("s3://bucket/releases"), "none configured: a spec keeps the default"
    # the fixture points into the ledger's checkpoints: refused even under a configured root
    done = validate("tests/fixtures/unsafe/otherstore.yaml", env={"RELEASETRAIN_ARTIFACT_ROOTS": "file:///tmp/airflow"})
    assert "artifact_store: an artifact store may not lie in the ledger's folder" in done.stderr, done.stderr


def test_notifiers_come_from_the_allow_list(monkeypatch):
    monkeypatch.delenv("RELEASETRAIN_ALLOWED_NOTIFIERS", raising=False)
    monkeypatch.delenv("AIRFLOW__RELEASETRAIN__ALLOWED_NOTIFIERS", raising=False)
    assert Policy.from_environment().allowed_notifiers == DEFAULT_NOTIFIERS
    monkeypatch.setenv("AIRFLOW__RELEASETRAIN__ALLOWED_NOTIFIERS", "a.B, c.D")
    assert Policy.from_environment().allowed_notifiers == ("a.B", "c.D")


def test_templates_are_found_anywhere_in_the_raw_spec():
    raw = {"environments": [{"smoke_checks": [{"endpoint": "app/{% if 1 %}x{% endif %}"}]}], "ok": "${version}"}
    assert [p for p, _ in template_problems(raw)] == ["environments[0].smoke_checks[0].endpoint"]


def test_the_runtime_refuses_what_the_loader_refuses(monkeypatch):
    """Defence in depth: a spec object built some other way still cannot run a class."""
    from releasetrain.notifiers.routes import build_notifier as _build_notifier

    with pytest.raises(ValueError, match="subprocess.Popen is not an allowed notifier"):
        _build_notifier({"notifier": "subprocess.Popen", "args": {"args": ["true"]}}, {"text": "x"})
    monkeypatch.setenv("RELEASETRAIN_ALLOWED_NOTIFIERS", "subprocess.Popen")
    with pytest.raises(ValueError, match="is not an Airflow notifier"):
        _build_notifier({"notifier": "subprocess.Popen", "args": {"args": ["true"]}}, {"text": "x"})


def test_nothing_from_a_spec_is_rendered_as_a_template():
    from releasetrain.notifiers.webhook import WebhookNotifier
    from releasetrain.operators.package import BundlePackageOperator
    from releasetrain.operators.verify import BundleVerifyOperator

    for cls in (BundlePackageOperator, BundleVerifyOperator, WebhookNotifier):
        assert tuple(cls.template_fields) == (), cls


def test_a_calendar_repeating_every_second_is_refused_without_expanding_it():
    started = time.monotonic()
    with pytest.raises(ReleaseSpecError, match="repeats SECONDLY"):
        load_spec(UNSAFE / "secondly.yaml", display_root=PROJECT_ROOT)
    assert time.monotonic() - started < 10
