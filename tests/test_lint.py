"""ruff (lint and format) is part of the suite: a style regression fails `make test`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

RUFF = Path(sys.executable).parent / "ruff"
TREES = ["src", "tests", "dags", "include", "benchmarks"]


def test_ruff_check():
    done = subprocess.run([str(RUFF), "check", *TREES], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format():
    done = subprocess.run([str(RUFF), "format", "--check", *TREES], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


# --- the container files: linted and checked here; no image can be pulled on this machine ------
def test_hadolint_passes_the_dockerfile():
    hadolint = Path(sys.executable).parent / "hadolint"
    done = subprocess.run([str(hadolint), "Dockerfile"], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def _compose() -> dict:
    import yaml

    return yaml.safe_load((PROJECT_ROOT / "docker-compose.yaml").read_text())


def test_the_compose_file_is_valid_against_the_compose_specification():
    import json

    import jsonschema

    schema = json.loads((PROJECT_ROOT / "tests" / "fixtures" / "compose-spec.json").read_text())
    errors = sorted(jsonschema.Draft201909Validator(schema).iter_errors(_compose()), key=str)
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]


def test_the_compose_file_is_the_distributed_shape_on_the_project_image():
    compose = _compose()
    services = compose["services"]
    airflow = {name: s for name, s in services.items() if name.startswith("airflow-")}
    for name, service in airflow.items():
        assert service["build"] == "." and "releasetrain" in service["image"], name
        env = service["environment"]
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        # secrets come from the operator's .env, never from the file
        for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW_CONN_RELEASETRAIN_SIGNING"):
            assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", env[key]), (name, key)
    for name in ("airflow-scheduler", "airflow-triggerer", "airflow-worker"):
        assert services[name]["deploy"]["replicas"] == 2, name
    assert "releasetrain ledger init" in "\n".join(services["airflow-init"]["command"])


def test_the_dockerfile_builds_on_the_airflow_version_the_project_pins():
    pinned = re.search(r"^apache-airflow==(\S+)$", (PROJECT_ROOT / "constraints.txt").read_text(), re.M).group(1)
    dockerfile = (PROJECT_ROOT / "Dockerfile").read_text()
    assert f"ARG AIRFLOW_VERSION={pinned}\n" in dockerfile
    assert "constraints-${AIRFLOW_VERSION}/constraints-${PYTHON_VERSION}.txt" in dockerfile


def test_the_wheel_the_dockerfile_installs_builds_and_registers_the_plugin(tmp_path):
    """The Dockerfile's first stage: a wheel from pyproject.toml, README.md and the package."""
    import shutil
    import zipfile

    for name in ("pyproject.toml", "README.md"):
        shutil.copy(PROJECT_ROOT / name, tmp_path / name)
    shutil.copytree(
        PROJECT_ROOT / "src" / "releasetrain",
        tmp_path / "src" / "releasetrain",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    done = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(tmp_path / "dist"), "."],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    [wheel] = (tmp_path / "dist").glob("releasetrain-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [entry_points] = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
        text = archive.read(entry_points).decode()
    assert "releasetrain = releasetrain.plugin:ReleaseTrainPlugin" in text
    assert "releasetrain/hooks/signing.py" in names and "releasetrain/devstack.py" in names
