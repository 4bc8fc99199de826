from __future__ import annotations

import json
import subprocess
import sys

from tests.conftest import PROJECT_ROOT


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "releasetrain", *args], capture_output=True, text=True, cwd=PROJECT_ROOT
    )


def test_validate_ok_and_broken():
    ok = run("validate", "include/releases/storefront.yaml")
    assert ok.returncode == 0 and "release_storefront" in ok.stdout and "dev -> staging -> prod" in ok.stdout
    bad = run("validate", "include/releases/storefront.yaml", "tests/fixtures/broken/broken.yaml")
    assert bad.returncode == 1
    assert "tests/fixtures/broken/broken.yaml: environments[1].deploy_target: field required" in bad.stderr


def test_schema_is_printed():
    done = run("schema")
    assert done.returncode == 0 and json.loads(done.stdout)["title"] == "ReleaseSpec"


def test_calendar_shows_who_gets_a_shared_target_first():
    """Issue 13 (prioritisation): releases that deploy to one target queue by business impact."""
    specs = [f"tests/fixtures/releases/locked-{x}.yaml" for x in "abc"]
    done = run("calendar", *specs)
    assert done.returncode == 0, done.stderr
    assert (
        "ORDER      fleet_shared: locked-c/shared (critical) > locked-a/shared (medium) > locked-b/shared (medium)"
        in (done.stdout)
    )
    view = json.loads(run("calendar", "--json", *specs).stdout)
    [queue] = view["queues"]
    assert [e["release"] for e in queue["order"]] == ["locked-c", "locked-a", "locked-b"]
    assert json.loads(run("calendar", "--json", specs[0]).stdout)["queues"] == [], "one release: no queue"


def test_version_and_examples_in_every_help():
    from releasetrain.cli import EXAMPLES

    done = run("--version")
    assert done.returncode == 0 and done.stdout.startswith("releasetrain ")
    for command in ["", *(c for c in EXAMPLES if c)]:
        shown = run(*([command] if command else []), "--help")
        assert shown.returncode == 0 and "examples:\n  releasetrain" in shown.stdout, command


def test_validate_takes_folders_and_names_what_is_missing(tmp_path):
    folder = run("validate", "include/releases/")
    assert folder.returncode == 0 and "release_storefront" in folder.stdout and "release_payments" in folder.stdout
    (tmp_path / "empty").mkdir()
    missing = run("validate", str(tmp_path / "empty"), str(tmp_path / "nope.yaml"))
    assert missing.returncode == 1
    assert f"{tmp_path / 'empty'}: a folder with no .yaml or .yml file in it" in missing.stderr
    assert f"{tmp_path / 'nope.yaml'}: no such file or folder" in missing.stderr


SPEC = """name: {name}
owner_team: qa
components:
  - {{name: web, source: include/demo_fleet/artifacts/storefront-web}}
environments:
  - name: {env}
    {target_key}: fleet_prod
{extra}"""


def test_unknown_fields_get_a_did_you_mean_and_yaml_surprises_a_hint(tmp_path):
    (tmp_path / "typo.yaml").write_text(SPEC.format(name="typo", env="prod", target_key="deploy_targt", extra=""))
    (tmp_path / "norway.yaml").write_text(
        SPEC.format(name="norway", env="NO", target_key="deploy_target", extra="version: 1.10\n")
    )
    done = run("validate", str(tmp_path))
    assert done.returncode == 1
    assert "environments[0].deploy_targt: unknown field: did you mean 'deploy_target'?" in done.stderr
    assert "environments[0].name: Input should be a valid string (YAML read an unquoted yes/no" in done.stderr
    assert "version: Input should be a valid string (YAML read an unquoted number as 1.1" in done.stderr
    assert 'quote it, e.g. "1.10"' in done.stderr


def _cli_env(root, home) -> tuple[str, str, str]:
    import os

    env = {k: v for k, v in os.environ.items() if k != "AIRFLOW_HOME" and not k.startswith("AIRFLOW_CONN_")}
    env["HOME"] = str(home)
    code = "import os, pathlib; from releasetrain.cli import shell_environment as s; " \
        f"s(pathlib.Path({str(root)!r})); print(os.environ['AIRFLOW_HOME']); " \
        "print(os.environ.get('AIRFLOW_CONN_RELEASETRAIN_LEDGER', ''))"  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    used, ledger = done.stdout.strip().splitlines() + [""] * (2 - len(done.stdout.strip().splitlines()))
    return used, ledger, done.stderr


def test_the_cli_reaches_the_demo_from_a_shell_and_leaves_no_airflow_home_behind(tmp_path):
    """After `make demo` (its home, .airflow, with its secrets) the CLI uses the demo's
    connections, said on stderr, in a throw-away home; it never writes ~/airflow, nor reads
    the checkout's .airflow for configuration or code."""
    home = tmp_path / "user"
    home.mkdir()
    used, ledger, said = _cli_env(tmp_path, home)
    assert used != str(home / "airflow") and not (home / "airflow").exists() and ledger == "" and said == ""
    (tmp_path / ".airflow").mkdir()
    (tmp_path / ".airflow" / "secrets.json").write_text(
        json.dumps({"fernet_key": "k", "jwt_secret": "j", "fleet_user": "u", "fleet_password": "p"})
    )
    used, ledger, said = _cli_env(tmp_path, home)
    assert used != str((tmp_path / ".airflow").resolve()), "the demo's home is never Airflow's home here"
    assert json.loads(ledger)["host"] == str((tmp_path / ".airflow" / "releasetrain-ledger.db").resolve())
    assert "using the connections of the demo" in said


def test_key_generate_writes_an_importable_connection_and_never_prints_the_key(tmp_path):
    """Issue 15 (install doc): three keys, one connections file for `airflow connections import`."""
    from airflow.secrets.local_filesystem import load_connections_dict

    from releasetrain.core.bundle import public_key_pem
    from releasetrain.hooks.signing import signer_from

    keys = tmp_path / "keys.json"
    outputs = []
    for conn_id in ("releasetrain_signing", "releasetrain_evidence_signing"):
        done = run(
            "key",
            "generate",
            "--conn-id",
            conn_id,
            "--connections",
            str(keys),
            "--out",
            str(tmp_path / f"{conn_id}.pub"),
        )
        assert done.returncode == 0, done.stderr
        outputs.append(done.stdout + done.stderr)
    assert oct(keys.stat().st_mode & 0o777) == "0o600"
    connections = load_connections_dict(str(keys))  # what `airflow connections import` reads
    assert set(connections) == {"releasetrain_signing", "releasetrain_evidence_signing"}
    for conn_id, conn in connections.items():
        assert conn.conn_type == "releasetrain_signing"
        assert conn.extra_dejson["public_key"] == (tmp_path / f"{conn_id}.pub").read_text()
        assert "PRIVATE KEY" in conn.password and all(conn.password not in out for out in outputs)
        assert public_key_pem(signer_from(conn, conn_id)) == conn.extra_dejson["public_key"]  # the pair matches
    assert connections["releasetrain_signing"].password != connections["releasetrain_evidence_signing"].password
    # a key in the file is never replaced, and a stranger's file is not taken for one
    again = run("key", "generate", "--conn-id", "releasetrain_signing", "--connections", str(keys), "--out", "x.pub")
    assert again.returncode == 1 and "never replaced" in again.stderr
    (tmp_path / "list.json").write_text("[1, 2]")
    wrong = run("key", "generate", "--conn-id", "a", "--connections", str(tmp_path / "list.json"), "--out", "x.pub")
    assert wrong.returncode == 1 and "not a connections file" in wrong.stderr
    # a pinned public key is never overwritten (it would no longer match the stored key)
    before = keys.read_text()
    pinned = run(
        "key",
        "generate",
        "--conn-id",
        "third",
        "--connections",
        str(keys),
        "--out",
        str(tmp_path / "releasetrain_signing.pub"),
    )
    assert pinned.returncode == 1 and "never overwritten" in pinned.stderr and keys.read_text() == before
    missing = run("key", "generate", "--out", "x.pub")
    assert missing.returncode == 2 and "--conn-id and --connections" in missing.stderr
