"""ruff (lint and format) is part of the suite: a style regression fails `make test`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

RUFF = Path(sys.executable).parent / "ruff"
TREES = ["plugins", "tests", "dags", "include", "benchmarks"]


def test_ruff_check():
    done = subprocess.run([str(RUFF), "check", *TREES], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_format():
    done = subprocess.run([str(RUFF), "format", "--check", *TREES], cwd=PROJECT_ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
