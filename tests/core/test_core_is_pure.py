"""The core imports no Airflow: it must stay usable (and testable) without it."""

from __future__ import annotations

import pkgutil
import subprocess
import sys

import releasetrain.core


def test_core_modules_import_without_airflow():
    modules = [m.name for m in pkgutil.iter_modules(releasetrain.core.__path__, "releasetrain.core.")]
    assert "releasetrain.core.spec" in modules and len(modules) >= 6
    code = (
        "import importlib, sys\n"
        f"for name in {modules!r}: importlib.import_module(name)\n"
        "leaked = sorted(m for m in sys.modules if m == 'airflow' or m.startswith('airflow.'))\n"
        "print(leaked)\n"
        "sys.exit(1 if leaked else 0)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, f"the core imported airflow: {done.stdout} {done.stderr}"
