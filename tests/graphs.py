"""What the DAG factory builds, as data: the golden graphs of every spec in the repository.

``fingerprint(dag)`` keeps everything a refactoring of the factory must not change: each
task's class, trigger rule, pool, group, downstream tasks and the arguments it was built
with, and the DAG's own fields (schedule, params, doc, tags). ``tests/fixtures/golden/
graphs.json`` holds them for the example specs and the test fixtures; ``test_factory``
compares. After an intended change of a graph: ``python -m tests.graphs --update``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

PROJECT_ROOT = Path(__file__).resolve().parent.parent
GOLDEN = PROJECT_ROOT / "tests" / "fixtures" / "golden" / "graphs.json"
SPEC_FOLDERS = [
    "include/releases",
    "tests/fixtures/releases",
    "tests/fixtures/distributed",
    "tests/fixtures/faults",
    "tests/fixtures/identity",
]
# trigger rule and pool are kept as the task has them, however they were given
_SKIPPED_KWARGS = {"dag", "task_group", "params", "default_args", "trigger_rule", "pool", "task_id"}


# the shared calendars the e2e stack writes at its start (with times of its own): fixed here
E2E_CALENDARS = {
    "e2e-gate": "name: e2e-gate\ntimezone: UTC\nblackouts: []\n",
    "e2e-windows": "name: e2e-windows\ntimezone: UTC\nwindows:\n- {start: '09:00:00', end: '17:00:00'}\n",
}


def _plain(value: Any, calendars: Path) -> Any:
    """JSON data with the checkout's paths replaced: the golden file holds for any clone."""
    text = json.dumps(value, sort_keys=True, default=repr)
    text = text.replace(str(calendars), "<e2e-calendars>").replace(str(PROJECT_ROOT), "<root>")
    return json.loads(text)


def fingerprint(dag: Any, calendars: Path) -> dict[str, Any]:
    from airflow.serialization.serialized_objects import LazyDeserializedDAG

    tasks = {}
    for task in sorted(dag.tasks, key=lambda t: t.task_id):
        kwargs = {k: val for k, val in task._BaseOperator__init_kwargs.items() if k not in _SKIPPED_KWARGS}
        tasks[task.task_id] = {
            "class": type(task).__name__,
            "trigger_rule": str(task.trigger_rule),
            "pool": task.pool,
            "group": task.task_group.group_id if task.task_group else None,
            "downstream": sorted(task.downstream_task_ids),
            "kwargs": kwargs,
        }
    data = LazyDeserializedDAG.from_dag(dag).data["dag"]
    return _plain(
        {
            "tasks": tasks,
            "dag": {k: data.get(k) for k in ("timetable", "params", "doc_md", "tags", "default_args", "description")},
            "task_group": data.get("task_group"),
        },
        calendars,
    )


def spec_files() -> list[Path]:
    return sorted(p for folder in SPEC_FOLDERS for p in (PROJECT_ROOT / folder).glob("*.yaml"))


def current() -> dict[str, Any]:
    """Fingerprints of the release and rollback DAG of every spec the golden file covers."""
    from releasetrain.core.spec import CALENDAR_DIRS_ENV, load_spec
    from releasetrain.factory import build_release_dag, build_rollback_dag

    graphs = {}
    saved = os.environ.get(CALENDAR_DIRS_ENV)
    with tempfile.TemporaryDirectory() as tmp:
        calendars = Path(tmp)
        for name, text in E2E_CALENDARS.items():
            (calendars / f"{name}.yaml").write_text(text)
        os.environ[CALENDAR_DIRS_ENV] = os.pathsep.join([tmp, str(PROJECT_ROOT / "include" / "calendars")])
        try:
            for path in spec_files():
                spec = load_spec(path, display_root=PROJECT_ROOT)
                where = str(path.relative_to(PROJECT_ROOT))
                release = build_release_dag(spec, project_root=PROJECT_ROOT, auto_register=False)
                rollback = build_rollback_dag(spec, project_root=PROJECT_ROOT, auto_register=False)
                graphs[f"{where}:release"] = fingerprint(release, calendars)
                graphs[f"{where}:rollback"] = fingerprint(rollback, calendars)
        finally:
            if saved is None:
                os.environ.pop(CALENDAR_DIRS_ENV, None)
            else:
                os.environ[CALENDAR_DIRS_ENV] = saved
    return graphs


def main(argv: list[str]) -> int:
    if argv != ["--update"]:
        print("usage: python -m tests.graphs --update", file=sys.stderr)
        return 2
    import tests.conftest  # noqa: F401 - a throw-away Airflow home, as in the tests

    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(current(), indent=1, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN.relative_to(PROJECT_ROOT)} ({os.path.getsize(GOLDEN)} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
