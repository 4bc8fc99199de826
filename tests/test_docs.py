"""The README is the front door: short, its links and pictures there, and the commands it
shows (those that need no running demo) work as written."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

from tests.conftest import PROJECT_ROOT

README = (PROJECT_ROOT / "README.md").read_text()


def test_the_readme_is_at_most_150_lines():
    assert len(README.splitlines()) <= 150


def test_every_link_and_picture_in_the_readme_and_docs_exists():
    pages = [PROJECT_ROOT / "README.md", PROJECT_ROOT / "CONTRIBUTING.md", *(PROJECT_ROOT / "docs").glob("*.md")]
    missing = []
    for page in pages:
        for target in re.findall(r"\]\(([^)#\s]+)\)", page.read_text()):
            if target.startswith(("http://", "https://")):
                continue
            if not (page.parent / target).exists():
                missing.append(f"{page.relative_to(PROJECT_ROOT)} -> {target}")
    assert missing == []
    pictures = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", README)
    assert len(pictures) == 5, "each cockpit page"


def test_the_readmes_offline_commands_work_as_written():
    commands = [
        line.strip()
        for line in README.splitlines()
        if line.strip().startswith(".venv/bin/releasetrain ")
        and not {" ledger ", " evidence "} & {f" {word} " for word in line.split()}
    ]
    assert commands, "the README shows releasetrain commands"
    for command in commands:
        argv = shlex.split(command.split("#")[0])
        expanded = []
        for arg in argv[1:]:
            expanded += sorted(str(p) for p in PROJECT_ROOT.glob(arg)) if "*" in arg else [arg]
        done = subprocess.run(
            [sys.executable, "-m", "releasetrain", *expanded], capture_output=True, text=True, cwd=PROJECT_ROOT
        )
        assert done.returncode == 0, f"{command}: {done.stderr}"


def test_docs_name_the_cockpit_definitions_the_code_uses():
    from releasetrain.core import cockpit

    text = (PROJECT_ROOT / "docs" / "cockpit.md").read_text()
    for word in ("Lead time for changes", "Change failure rate", "Time to restore", "Last good"):
        assert word in text
    assert "to the rollback's record" in text and "to the rollback's record" in cockpit.__doc__


def test_the_docs_folder_has_what_the_readme_promises():
    for name in ("tour", "specs", "cockpit", "governance", "progressive", "incidents", "deploy-target", "operations",
                 "threat-model"):  # fmt: skip
        assert (PROJECT_ROOT / "docs" / f"{name}.md").is_file(), name
    assert Path(PROJECT_ROOT / "CONTRIBUTING.md").is_file()


def test_every_metric_is_documented_with_its_name():
    from releasetrain.core.telemetry import NAMES

    text = (PROJECT_ROOT / "docs" / "operations.md").read_text()
    for name in NAMES:
        assert f"`{name}`" in text, name


def test_the_spec_reference_is_generated_from_the_schema():
    import json

    from releasetrain.core.reference import spec_reference
    from releasetrain.core.spec import json_schema_text

    schema = json.loads(json_schema_text())
    committed = (PROJECT_ROOT / "docs" / "spec-reference.md").read_text()
    assert committed == spec_reference(schema), "run `make schema`"
    for field in schema["properties"]:
        assert f"| `{field}` |" in committed
    for name in schema["$defs"]:
        assert f"## {name}\n" in committed
