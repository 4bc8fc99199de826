"""The ``releasetrain`` command (also ``python -m releasetrain``).

releasetrain validate SPEC...   validate release specs; exit 1 naming file, field and reason
releasetrain schema             print the release spec's JSON Schema
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from releasetrain.core.spec import ReleaseSpecError, json_schema_text, load_spec


def _validate(paths: list[str]) -> int:
    failed = 0
    for name in paths:
        try:
            spec = load_spec(Path(name))
        except ReleaseSpecError as exc:
            print(exc, file=sys.stderr)
            failed += 1
        else:
            envs = " -> ".join(e.name for e in spec.environments)
            print(f"{name}: ok ({spec.dag_id}: {len(spec.components)} components, {envs})")
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="releasetrain", description="Release management as Airflow DAGs.")
    commands = parser.add_subparsers(dest="command", required=True)
    validate = commands.add_parser("validate", help="validate release spec files")
    validate.add_argument("specs", nargs="+", metavar="SPEC")
    commands.add_parser("schema", help="print the release spec JSON Schema")
    args = parser.parse_args(argv)
    if args.command == "validate":
        return _validate(args.specs)
    print(json_schema_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
