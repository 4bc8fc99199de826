"""Issue 15: docs/install.md, done exactly as written, into a new virtual environment that
holds nothing but Airflow 3.3, releases the storefront example end to end.

The test builds that environment (Airflow 3.3 on PostgreSQL, LocalExecutor, the simple
auth manager: the Airflow a reader already has), then runs every ``bash`` block of the
install doc in order, from a copy of the checkout, with the doc's ``ini`` block as the
``[releasetrain]`` section of ``airflow.cfg``. Only the doc's placeholders for the
reader's own values (``/opt/airflow``, the database server, the deploy target's address)
are replaced, each one checked to be in the doc. Then it starts Airflow's components and
the demo fleet (standing in for the reader's deploy target), ticks off the doc's
checklist, and releases storefront 2.0.0 to production through the REST API.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest
import requests

from releasetrain.client import AirflowAPIError, AirflowClient
from releasetrain.core.vocabulary import POOL_PREFIX, Event
from releasetrain.devstack import SIMPLE_AUTH_MANAGER
from tests.conftest import PROJECT_ROOT
from tests.pg import PG_ADMIN_DSN, admin, postgres_answers

pytestmark = pytest.mark.install

DOC = PROJECT_ROOT / "docs" / "install.md"
DAG = "release_storefront"
USERS = {"author": "user", "approver": "user", "admin": "admin"}


def doc_blocks(text: str) -> list[tuple[str, str]]:
    """The doc's fenced blocks, in order: (language, body); every fence is a block's."""
    blocks = [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```$", text, re.S | re.M)]
    assert len(re.findall(r"^\s*(```|~~~)", text, re.M)) == 2 * len(blocks), "a fence the test cannot read"
    return blocks


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(cmd, *, env, cwd, log: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    done = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    with log.open("a") as out:
        out.write(f"$ {cmd if isinstance(cmd, str) else ' '.join(map(str, cmd))}\n{done.stdout}{done.stderr}\n")
    return done


def fill_in(blocks: list[tuple[str, str]], values: dict[str, str]) -> list[tuple[str, str]]:
    """The reader's values in place of the doc's placeholders, inside the blocks only and as
    whole words; every placeholder must be used."""
    used = dict.fromkeys(values, 0)
    filled = []
    for lang, body in blocks:
        for placeholder, value in values.items():
            body, count = re.subn(rf"(?<![\w.-]){re.escape(placeholder)}(?![\w-])", value, body)
            used[placeholder] += count
        filled.append((lang, body))
    unused = [p for p, n in used.items() if not n]
    assert not unused, f"docs/install.md no longer says {unused}: update the install test"
    return filled


@pytest.fixture(scope="module")
def install(tmp_path_factory):
    """The reader's Airflow (a new venv with Airflow 3.3 only), the doc's blocks run in it,
    its components and the deploy target started; yields what the checks need."""
    if not postgres_answers():
        pytest.fail(f"no PostgreSQL at {PG_ADMIN_DSN}: the install test's Airflow and ledger run on it")
    base = tmp_path_factory.mktemp("install")
    home, venv, checkout, log = base / "airflow", base / "venv", base / "checkout", base / "install.log"
    home.mkdir()
    # a copy of the checkout (tracked and new files), where the doc's commands are run
    listed = (
        subprocess.run(
            ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=PROJECT_ROOT, capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        if (PROJECT_ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(PROJECT_ROOT / name, checkout / name)

    tag = uuid.uuid4().hex[:8]
    metadata_db, ledger_db, writer = f"rt_install_af_{tag}", f"rt_install_ledger_{tag}", f"rt_install_writer_{tag}"
    api_port, fleet_port = free_port(), free_port()
    api_url, fleet_url = f"http://127.0.0.1:{api_port}", f"http://127.0.0.1:{fleet_port}"
    pg = urlparse(PG_ADMIN_DSN)
    pg_base = f"{pg.scheme}://{pg.netloc}"  # postgresql://postgres@127.0.0.1:5432

    fleet_password, jwt = "-" + secrets.token_urlsafe(18), secrets.token_urlsafe(32)
    from cryptography.fernet import Fernet

    # the reader's shell: none of this checkout's or this venv's settings
    drop = ("AIRFLOW", "RELEASETRAIN", "VIRTUAL_ENV", "PYTHONPATH", "PIP_CONSTRAINT", "PG", "CONDA")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(
        {
            "PATH": f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
            "VIRTUAL_ENV": str(venv),
            "PIP_CONSTRAINT": str(PROJECT_ROOT / "constraints.txt"),  # the doc: install with constraints
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__FERNET_KEY": Fernet.generate_key().decode(),
            "AIRFLOW__CORE__AUTH_MANAGER": SIMPLE_AUTH_MANAGER,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in USERS.items()),
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{api_url}/execution/",
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"postgresql+psycopg2://{pg.netloc}/{metadata_db}",
            "AIRFLOW__API__BASE_URL": api_url,
            "AIRFLOW__API__HOST": "127.0.0.1",
            "AIRFLOW__API__PORT": str(api_port),
            "AIRFLOW__API__WORKERS": "1",
            "AIRFLOW__API_AUTH__JWT_SECRET": jwt,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            # the values the doc's commands take from the reader's environment
            # (each starting with "-", as a generated secret may: seen failing the doc's commands)
            "LEDGER_PASSWORD": "-" + secrets.token_urlsafe(12),
            "FLEET_PASSWORD": fleet_password,
            "STOREFRONT_DB_PASSWORD": "-" + secrets.token_urlsafe(12),
            "PAYMENT_API_KEY": "-" + secrets.token_urlsafe(12),
        }
    )
    (home / "passwords.json").write_text(json.dumps({u: f"{u}-{tag}" for u in USERS}))

    text = DOC.read_text()
    blocks = fill_in(
        doc_blocks(text),
        {
            "postgresql://postgres@db.example.internal:5432": pg_base,
            "db.example.internal": pg.hostname or "127.0.0.1",
            "5432": str(pg.port or 5432),
            "release_ledger": ledger_db,
            "airflow_ledger": writer,
            "https://deploy.example.internal": fleet_url,
            "/opt/airflow": str(home),
        },
    )
    # the blocks before "5. Start, and release" are run before Airflow starts, the others after
    before_start = len(doc_blocks(text[: text.index("## 5. Start")]))
    assert [lang for lang, _ in blocks].count("ini") == 1 and len(blocks) - before_start == 2
    outputs: list[str] = []

    def follow(lang: str, body: str) -> None:
        if lang == "ini":  # added to airflow.cfg
            with (home / "airflow.cfg").open("a") as cfg:
                cfg.write("\n" + body)
            return
        assert lang == "bash", f"docs/install.md: a ```{lang} block the test cannot follow"
        done = run(["bash", "-euo", "pipefail", "-c", body], env=env, cwd=checkout, log=log, timeout=1200)
        assert done.returncode == 0, (
            f"docs/install.md: a block failed:\n{body}\n{done.stdout[-2000:]}{done.stderr[-3000:]}"
        )
        outputs.append(done.stdout + done.stderr)

    processes: list[subprocess.Popen] = []
    logs: list = []
    try:
        admin(f"CREATE DATABASE {metadata_db}")
        # the reader's Airflow: a new venv with Airflow 3.3 (on PostgreSQL) and nothing else
        assert run([sys.executable, "-m", "venv", str(venv)], env=env, cwd=base, log=log).returncode == 0
        done = run(
            ["pip", "install", "--quiet", "apache-airflow[postgres]==3.3.2"], env=env, cwd=base, log=log, timeout=1200
        )
        assert done.returncode == 0, done.stderr[-3000:]
        done = run(["airflow", "db", "migrate"], env=env, cwd=base, log=log)
        assert done.returncode == 0, done.stderr[-3000:]

        for lang, body in blocks[:before_start]:
            follow(lang, body)

        # "Restart Airflow's components": here they start for the first time, with the deploy target
        stack_logs = home / "logs" / "stack"
        stack_logs.mkdir(parents=True)
        fleet_env = {
            "PATH": env["PATH"],
            "FLEET_USER": "deployer",
            "FLEET_PASSWORD": fleet_password,
            "FLEET_BUNDLE_PUBLIC_KEY": (home / "keys" / "bundle.pub.pem").read_text(),
            "FLEET_BUNDLE_ROOT": str(home / "bundles"),
        }
        seed = "dev=1.0.0,staging=1.0.0,prod=1.0.0"
        fleet_cmd = [sys.executable, str(PROJECT_ROOT / "include/demo_fleet/fleet.py"), "--port", str(fleet_port)]
        for name, cmd, process_env in [
            ("fleet", [*fleet_cmd, "--seed", seed, "--deploy-seconds", "0.5"], fleet_env),
            ("api-server", ["airflow", "api-server"], env),
            ("scheduler", ["airflow", "scheduler"], env),
            ("dag-processor", ["airflow", "dag-processor"], env),
            ("triggerer", ["airflow", "triggerer"], env),
        ]:
            logs.append((stack_logs / f"{name}.log").open("a"))
            processes.append(
                subprocess.Popen(
                    cmd, env=process_env, cwd=home, stdout=logs[-1], stderr=subprocess.STDOUT, start_new_session=True
                )
            )
        deadline = time.monotonic() + 300
        while True:
            try:
                health = requests.get(f"{api_url}/api/v2/monitor/health", timeout=5).json()
                states = {k: (v or {}).get("status") for k, v in health.items()}
                if all(s == "healthy" for s in states.values()) and {"scheduler", "triggerer", "dag_processor"} <= set(
                    states
                ):
                    break
            except (requests.RequestException, ValueError):
                pass
            if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                pytest.fail(f"the installed Airflow did not come up; see {stack_logs}")
            time.sleep(2)
        # "once release_storefront shows in the UI, unpause it"
        watcher = AirflowClient(api_url, "admin", f"admin-{tag}")
        deadline = time.monotonic() + 180
        while DAG not in watcher.dag_ids():
            assert time.monotonic() < deadline, f"{DAG} never appeared; import errors: {watcher.import_errors()}"
            time.sleep(3)
        assert watcher.request("GET", f"/dags/{DAG}")["is_paused"], "Airflow pauses a new DAG (the doc says so)"
        follow(*blocks[before_start])
        yield {
            "home": home,
            "env": env,
            "api_url": api_url,
            "fleet_url": fleet_url,
            "fleet_password": fleet_password,
            "password": lambda user: f"{user}-{tag}",
            "outputs": outputs,
            "ledger_dsn": f"{pg_base}/{ledger_db}",
            "writer": writer,
            "checkout": checkout,
            "after_release": lambda: follow(*blocks[before_start + 1]),
        }
    finally:
        for process in processes:
            try:
                os.killpg(process.pid, 15)
            except ProcessLookupError:
                pass
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, 9)
        for out in logs:
            out.close()
        for db in (metadata_db, ledger_db):
            admin(f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
        admin(f"DROP ROLE IF EXISTS {writer}")


def client(install, user: str) -> AirflowClient:
    return AirflowClient(install["api_url"], user, install["password"](user))


def airflow(install, *args: str) -> str:
    done = subprocess.run(["airflow", *args], env=install["env"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_the_checklist_holds(install):
    # releasetrain is a provider of the new venv (installed from the wheel, not this checkout)
    providers = airflow(install, "providers", "list", "--output", "json")
    listed = json.loads(providers[providers.index("[") :])
    assert [p["package_name"] for p in listed].count("releasetrain") == 1
    plugins = airflow(install, "plugins", "--output", "json")
    assert [p["name"] for p in json.loads(plugins[plugins.index("[") :])].count("releasetrain") == 1
    location = subprocess.run(
        ["python", "-c", "import releasetrain; print(releasetrain.__file__)"],
        env=install["env"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "site-packages" in location and str(PROJECT_ROOT) not in location, location

    config = airflow(install, "config", "list", "--section", "releasetrain", "--show-values")
    home = install["home"]
    assert f"spec_dirs = {home}/include/releases" in config
    assert f"artifact_store = file://{home}/bundles" in config

    assert any(re.search(r": ready \(0 events\)", out) for out in install["outputs"]), "ledger init did not report"
    admin_ = client(install, "admin")
    connections = {c["connection_id"]: c for c in admin_.request("GET", "/connections?limit=100")["connections"]}
    ledger = connections["releasetrain_ledger"]
    assert (ledger["conn_type"], ledger["login"], ledger["schema"]) == (
        "postgres",
        install["writer"],
        install["ledger_dsn"].rsplit("/", 1)[1],
    )
    keys = {}
    for conn_id, pub in (
        ("releasetrain_signing", "bundle"),
        ("releasetrain_evidence_signing", "evidence"),
        ("releasetrain_ledger_signing", "ledger"),
    ):
        assert connections[conn_id]["conn_type"] == "releasetrain_signing"
        pinned = json.loads(connections[conn_id]["extra"])["public_key"]
        assert pinned == (home / "keys" / f"{pub}.pub.pem").read_text()
        keys[conn_id] = pinned
    assert len(set(keys.values())) == 3, "the three keys must differ"
    for env in ("dev", "staging", "prod"):
        target = connections[f"fleet_{env}"]
        assert target["conn_type"] == "releasetrain_deploy_target"
        assert target["host"] == f"{install['fleet_url']}/environments/{env}"
    pools = {p["name"]: p for p in admin_.request("GET", "/pools?limit=100")["pools"]}
    for env in ("dev", "staging", "prod"):  # one deploy at a time per target
        assert pools[f"{POOL_PREFIX}fleet_{env}"]["slots"] == 1

    assert DAG in admin_.dag_ids() and not admin_.request("GET", f"/dags/{DAG}")["is_paused"]
    assert admin_.import_errors() == []
    [plugin] = [p for p in admin_.request("GET", "/plugins")["plugins"] if p["name"] == "releasetrain"]
    assert "Releases" in [view["name"] for view in plugin["external_views"]]
    cockpit = requests.get(f"{install['api_url']}/releasetrain/cockpit/", timeout=30)
    assert cockpit.status_code == 401
    cockpit = admin_._session.get(f"{install['api_url']}/releasetrain/cockpit/", timeout=30)
    assert cockpit.status_code == 200 and "Releases" in cockpit.text


def test_the_storefront_release_reaches_production_after_a_non_author_approves(install):
    author, approver = client(install, "author"), client(install, "approver")
    run_id = author.trigger(DAG, {"version": "2.0.0", "change_summary": "installed from the wheel"})["dag_run_id"]
    author.wait_for_approval(DAG, run_id, "prod.approve")
    with pytest.raises(AirflowAPIError) as refused:
        author.respond(DAG, run_id, "prod.approve", "Approve")
    assert refused.value.status_code == 403
    assert approver.answer(DAG, run_id, "prod.approve", "Approve") == "success"
    author.wait_for_approval(DAG, run_id, "closure")
    assert author.answer(DAG, run_id, "closure", "OK", params_input={"runbook_update": "not needed"}) == "success"
    run = author.wait_for_run(DAG, run_id)
    assert run["state"] == "success", author.task_states(DAG, run_id)

    fleet = requests.get(
        f"{install['fleet_url']}/environments/prod", auth=("deployer", install["fleet_password"]), timeout=30
    ).json()
    packaged = author.xcom(DAG, run_id, "package")
    assert (fleet["version"], fleet["digest"], fleet["previous_version"]) == ("2.0.0", packaged["digest"], "1.0.0")
    # the bundle is in the configured artifact store, the run's events in the PostgreSQL ledger
    assert list((install["home"] / "bundles" / "storefront" / "2.0.0").glob("bundle*"))
    from releasetrain.hooks.ledger import store_from_url

    store = store_from_url(install["ledger_dsn"])
    try:
        kinds = [e.kind for e in store.events(release="storefront", run_id=run_id)]
        assert store.verify().ok
    finally:
        store.close()
    assert kinds.count(Event.DEPLOYED) == 3 and Event.APPROVAL_GIVEN in kinds, kinds
    # the doc's last block: the ledger anchored by a signed checkpoint, and verified so
    install["after_release"]()
    assert re.search(r"checkpoint of event \d+ .* written to \S+", install["outputs"][-1]), install["outputs"][-1]
    assert "anchored up to event" in install["outputs"][-1], install["outputs"][-1]
    assert list((install["home"] / "ledger-checkpoints").glob("*.json"))
    overview = author._session.get(f"{install['api_url']}/releasetrain/cockpit/api/overview", timeout=30).json()
    assert "2.0.0" in json.dumps(overview)
