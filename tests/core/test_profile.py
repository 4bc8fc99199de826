"""Configuration profiles (issue 13, procedures 4.1 and 4.4): environment settings live in
versioned profiles, secrets only by reference, and bundles carry no environment's files."""

from __future__ import annotations

import pytest

from releasetrain.core.profile import (
    environment_files,
    literal_secret,
    literal_secrets,
    profile_digest,
    secret_fingerprint,
)
from releasetrain.core.spec import ReleaseSpecError, load_spec

ENVS = ["dev", "staging", "prod"]


@pytest.mark.parametrize(
    ("path", "pattern"),
    [
        ("config/.env", ".env"),
        ("deploy/prod.env", "*.env"),
        (".env.local", ".env.*"),
        ("settings/staging.yaml", "staging.yaml"),
        ("conf/prod.json", "prod.json"),
        ("app.prod.yml", "*.prod.yml"),
        ("application-prod.properties", "*-prod.properties"),
        ("settings_dev.ini", "*_dev.ini"),
        ("appsettings.Prod.json", "*.prod.json"),
    ],
)
def test_files_made_for_one_environment_are_found_with_the_rule_they_match(path, pattern):
    assert environment_files([path], ENVS) == [(path, pattern)]


@pytest.mark.parametrize(
    "path",
    [
        "index.html",
        "openapi.yaml",
        "src/devtools.py",
        "production.md",
        "environment.py",
        "docs/prod/readme.md",
        "vendor/react-dom.production.min.js",
        "vue.global.prod.js",
        "settings_dev.py",
        ".env.example",
    ],
)
def test_ordinary_files_are_not_environment_configuration(path):
    assert environment_files([path], ENVS) == []


def test_a_release_may_set_its_own_patterns_or_none():
    assert environment_files(["cfg/prod.ini"], ENVS, ["{environment}.ini"]) == [("cfg/prod.ini", "prod.ini")]
    assert environment_files(["prod.env"], ENVS, []) == []


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        ("DB_PASSWORD", "hunter2", "names a secret"),
        ("DB_PASSWORD", 12345678, "names a secret"),
        ("api_key", "abc", "names a secret"),
        ("SLACK_TOKEN", "x", "names a secret"),
        ("client-secret", "x", "names a secret"),
        ("dbPassword", "x", "names a secret"),
        ("stripeApiKey", "x", "names a secret"),
        ("Authorization", "x", "names a secret"),
        ("NOTE", "-----BEGIN PRIVATE KEY-----\nMIIE", "a private key"),
        ("AWS", "AKIAABCDEFGHIJKLMNOP", "an AWS access key id"),
        ("AWS", "ASIAABCDEFGHIJKLMNOP", "an AWS access key id"),
        ("DATABASE_URL", "postgresql://app:s3cret@db/app", "a URL with a password"),
        ("CACHE", "REDIS://:s3cret@cache:6379", "a URL with a password"),
        ("HEADERS", "Bearer abcdefghijklmnop", "a bearer token"),
        ("PAY", "sk_live_abcdefghijkl", "a Stripe key"),
        ("SESSION", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NSJ9.c2lnbmF0dXJl", "a JSON web token"),
    ],
)
def test_literal_secrets_are_named(key, value, why):
    assert why in literal_secret(key, value)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("LOG_LEVEL", "info"),
        ("TOKEN_TTL_SECONDS", 300),
        ("PASSWORD_MIN_LENGTH", "12"),
        ("TOKEN_TTL", "1h"),
        ("TOKEN_URL", "https://auth/token"),
        ("CREDENTIALS_FILE", "/run/secrets/db"),
        ("SECRET_MANAGER_REGION", "eu-west-1"),
        ("CART_URL", "http://cart/api"),
        ("FEATURE_ENABLED", True),
    ],
)
def test_ordinary_settings_are_not_secrets(key, value):
    assert literal_secret(key, value) is None


def test_literal_secrets_name_their_path_in_nested_values():
    [problem] = literal_secrets({"smtp": {"user": "x", "password": "p"}}, "args")
    assert problem.startswith("args.smtp.password: names a secret")


def test_the_digest_covers_version_values_and_references_never_a_resolved_secret():
    refs = {"DB_PASSWORD": {"connection": "db"}}
    base = profile_digest("1", {"A": 1}, refs)
    assert base.startswith("sha256:") and base == profile_digest("1", {"A": 1}, refs)
    assert len({base, profile_digest("2", {"A": 1}, refs), profile_digest("1", {"A": 2}, refs)}) == 3
    assert profile_digest("1", {"A": 1}, {"DB_PASSWORD": {"connection": "db2"}}) != base
    assert secret_fingerprint("hunter2") != secret_fingerprint("hunter3")
    assert "hunter2" not in secret_fingerprint("hunter2")


SPEC = """
name: shop
owner_team: t
components: [{name: web, source: include/demo_fleet/artifacts/storefront-web}]
environments:
  - name: dev
    deploy_target: fleet_dev
    config: %s
"""


def test_a_profile_with_secrets_by_reference_is_accepted_and_hashed(tmp_path):
    path = tmp_path / "shop.yaml"
    path.write_text(
        SPEC % "{version: '7', values: {LOG_LEVEL: info}, secrets: {DB_PASSWORD: {connection: shop_db}, "
        "KEY: {variable: shop/key}}}"
    )
    profile = load_spec(path).environments[0].config
    plan = profile.plan()
    assert plan["secrets"] == {"DB_PASSWORD": {"connection": "shop_db"}, "KEY": {"variable": "shop/key"}}
    assert plan["sha256"] == profile.digest.lower() and plan["values"] == {"LOG_LEVEL": "info"}


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            "{version: '1', values: {DB_PASSWORD: hunter2}}",
            "environments[0].config: values.DB_PASSWORD: names a secret but holds a literal value",
        ),
        ("{version: '1', secrets: {DB: {connection: a, variable: b}}}", "either a connection or a variable"),
        ("{version: '1', secrets: {DB: {}}}", "either a connection or a variable"),
        ("{version: '1', secrets: {DB: {variable: 'app/../../root'}}}", "may not start with '/' or contain '..'"),
        ("{version: '1', values: {DB: x}, secrets: {DB: {connection: a}}}", "['DB'] are both values and secrets"),
        ("{values: {A: x}}", "environments[0].config.version: field required"),
    ],
)
def test_a_bad_profile_is_refused_naming_file_and_field(tmp_path, config, message):
    path = tmp_path / "shop.yaml"
    path.write_text(SPEC % config)
    with pytest.raises(ReleaseSpecError) as info:
        load_spec(path)
    assert str(path) in str(info.value) or "shop.yaml" in str(info.value)
    assert message in str(info.value)


def test_a_notifier_with_a_literal_token_is_refused(tmp_path):
    path = tmp_path / "shop.yaml"
    path.write_text(
        (SPEC % "{version: '1'}")
        + "notifications:\n  - kind: notifier\n    notifier: a.b.Notifier\n    args: {token: xoxb-12345678901}\n"
    )
    with pytest.raises(ReleaseSpecError, match=r"notifications\[0\]: args.token"):
        load_spec(path)


# --- drift ------------------------------------------------------------------------------
from releasetrain.core.profile import config_drift, drift_report  # noqa: E402

PROFILE = {"version": "2", "sha256": "sha256:" + "2" * 64, "values": {"LOG_LEVEL": "info", "POOL": 8}}


def test_drift_lines_name_each_changed_added_and_missing_setting():
    lines = config_drift({"LOG_LEVEL": "info", "POOL": 8, "TZ": "UTC"}, {"LOG_LEVEL": "debug", "POOL": "8", "X": True})
    assert lines == [
        'LOG_LEVEL: "info" in the baseline, "debug" on the target',
        'TZ: "UTC" in the baseline, missing on the target',
        "X: true on the target, not in the baseline",
    ]
    assert config_drift({"A": 1}, {"A": 1}) == []


def test_a_target_running_the_spec_profile_unchanged_has_no_drift():
    report = drift_report({**PROFILE}, PROFILE, [])
    assert report["drift"] == [] and report["baseline"]["version"] == "2"


def test_the_baseline_of_an_older_profile_is_what_its_deploy_recorded():
    old = {"version": "1", "sha256": "sha256:" + "1" * 64, "values": {"LOG_LEVEL": "warning"}}
    edited = {**old, "values": {"LOG_LEVEL": "debug"}}
    report = drift_report(edited, PROFILE, [old])
    assert report["baseline"]["version"] == "1"
    assert report["drift"] == ['LOG_LEVEL: "warning" in the baseline, "debug" on the target']
    assert drift_report(old, PROFILE, [old])["drift"] == [], "the old profile as deployed: no drift"


def test_a_profile_no_release_deployed_is_drift_and_no_report_is_none():
    stranger = {"version": "9", "sha256": "sha256:" + "9" * 64, "values": {}}
    [line] = drift_report(stranger, PROFILE, [])["drift"]
    assert "which no release deployed" in line
    assert drift_report(None, PROFILE, [])["drift"] == []


# --- parity -----------------------------------------------------------------------------
from releasetrain.core.profile import parity  # noqa: E402


def test_parity_names_settings_defined_on_one_side_and_shared_services_at_other_versions():
    keys = {"staging": ["DB_PASSWORD", "LOG_LEVEL"], "prod": ["DB_PASSWORD", "LOG_LEVEL", "PAYMENTS_LIVE"]}
    services = [
        {"release": "svc", "versions": {"staging": "2.1.0", "prod": "2.0.0"}},
        {"release": "auth", "versions": {"staging": "1.0.0", "prod": "1.0.0"}},
        {"release": "cache", "versions": {"staging": "3.0.0", "prod": None}},
    ]
    assert parity("staging", "prod", keys, services) == [
        "settings only in prod's profile: PAYMENTS_LIVE",
        "shared service svc: 2.1.0 in staging, 2.0.0 in prod",
        "shared service cache: 3.0.0 in staging, nothing in prod",
    ]
    assert parity("staging", "prod", {"staging": ["A"], "prod": ["A"]}, []) == []


def test_drift_never_shows_a_secrets_value():
    lines = config_drift({"DB": "x"}, {"DB": "x", "DB_PASSWORD": "hunter2", "KEY": "s3"}, hidden=["KEY"])
    assert lines == [
        "DB_PASSWORD: a value not shown on the target, not in the baseline",
        "KEY: a value not shown on the target, not in the baseline",
    ]


def test_a_target_that_lost_the_profile_a_release_deployed_has_drifted():
    [line] = drift_report(None, PROFILE, [PROFILE])["drift"]
    assert "reports no configuration, but a release deployed one" in line


def test_a_profile_may_not_read_releasetrains_own_or_the_targets_connections_nor_outside_the_allowed(
    tmp_path, monkeypatch
):
    path = tmp_path / "shop.yaml"
    path.write_text(
        SPEC % "{version: '1', secrets: {A: {connection: releasetrain_signing}, B: {connection: fleet_dev}}}"
    )
    with pytest.raises(ReleaseSpecError) as info:
        load_spec(path)
    assert "config.secrets.A: releasetrain_signing is not a profile's to read" in str(info.value)
    assert "config.secrets.B: fleet_dev is not a profile's to read" in str(info.value)
    monkeypatch.setenv("AIRFLOW__RELEASETRAIN__SECRET_REFERENCES", "shop_*")
    path.write_text(SPEC % "{version: '1', secrets: {A: {connection: shop_db}, B: {variable: other_key}}}")
    with pytest.raises(ReleaseSpecError, match="config.secrets.B: other_key is not among the references"):
        load_spec(path)


# --- baselines under change control ------------------------------------------------------
from releasetrain.core.profile import profile_changes  # noqa: E402


@pytest.mark.parametrize(
    ("before", "after", "lines"),
    [
        (
            None,
            {"values": {"A": 1}, "secrets": {"PW": {"connection": "db"}}},
            ["A: new, 1", "PW (secret): new, from connection db"],
        ),
        ({"values": {"A": 1}}, {"values": {"A": "1"}}, []),  # as the target holds it: text
        ({"values": {"A": 1}}, {"values": {"A": 2}}, ["A: 2, was 1"]),
        ({"values": {"A": 1, "B": True}}, {"values": {"A": 1}}, ["B: removed (was true)"]),
        (
            {"secrets": {"PW": {"connection": "db"}}},
            {"secrets": {"PW": {"connection": "db", "field": "login"}}},
            ["PW (secret): from connection db (login), was from connection db"],
        ),
        ({"secrets": {"K": {"variable": "k"}}}, {"secrets": {}}, ["K (secret): removed (was from variable k)"]),
        (
            {"values": {"DB_PASSWORD": "x"}},
            {"values": {"DB_PASSWORD": "y"}},
            ["DB_PASSWORD: a value not shown, was a value not shown"],
        ),
    ],
)
def test_a_profile_change_is_shown_setting_by_setting(before, after, lines):
    assert profile_changes(before, after) == lines
