"""A local release stack on real processes: the demo fleet, and Airflow's API server,
scheduler, dag-processor and triggerer, configured for releasetrain.

Used by ``make demo`` (embedded SQLite, ``AIRFLOW_HOME=.airflow`` in the project) and by
the end-to-end tests (a throw-away home, PostgreSQL). All configuration is passed as
environment variables; secrets (Ed25519 signing key, fleet credentials, JWT secret,
Fernet key) are generated once per home into ``<home>/secrets.json`` and reach Airflow
as connections through the environment secrets backend.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

DEMO_USERS = {
    "author": "user",
    "approver": "user",
    "admin": "admin",
    # more people for approval groups (include/groups.yaml): quorums and readiness reviews
    "approver2": "user",
    "secops": "user",
    "ops": "user",
}
SIMPLE_AUTH_MANAGER = "airflow.api_fastapi.auth.managers.simple.simple_auth_manager.SimpleAuthManager"
FAB_AUTH_MANAGER = "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
FAB_ROLES = {"viewer": "Viewer", "user": "User", "op": "Op", "admin": "Admin"}


def fleet_conn_id(environment: str) -> str:
    return "fleet_" + environment.replace("-", "_")


@dataclass
class StackConfig:
    project_root: Path
    home: Path
    api_port: int = 8080
    fleet_port: int = 8799
    db_url: str | None = None
    spec_dirs: list[Path] | None = None
    dags_folder: Path | None = None  # default: the project's dags/
    calendar_dirs: list[Path] | None = None
    fleet_environments: list[str] = field(
        default_factory=lambda: [
            "dev",
            "staging",
            "prod",
            "billing-staging",
            "billing-prod",
            "payments-staging",
            "payments-prod",
            "backoffice-staging",
            "backoffice-prod",
        ]
    )
    fleet_seed: dict[str, str] = field(default_factory=dict)
    fleet_deploy_seconds: float = 1.5
    # synthetic requests per second to every environment of the fleet (metrics for canary analysis)
    fleet_traffic: float = 0.0
    parallelism: int = 8
    # kept in Airflow's metastore, as operators usually keep connections; None: the
    # default SQLite ledger in the Airflow home
    ledger_conn: dict[str, Any] | None = None
    # more connections for the Airflow processes (conn id -> connection as a dict)
    connections: dict[str, dict[str, Any]] = field(default_factory=dict)
    # "simple" (user ids are names) or "fab" (FAB auth manager: numeric user ids; the demo
    # users are created in DEMO_USERS order and the people directory maps their ids to names)
    auth_manager: str = "simple"
    # "connection": the demo's keys in connections; "pkcs11": keys generated on a SoftHSM2
    # token in the stack's home, which no Airflow process can read (connections hold the PIN)
    signing: str = "connection"
    # "local": LocalExecutor, one scheduler and one triggerer. "celery": Airflow's distributed
    # shape, CeleryExecutor with a Redis broker and `workers` Celery workers, `schedulers`
    # schedulers and `triggerers` triggerers (needs db_url on PostgreSQL)
    executor: str = "local"
    schedulers: int = 1
    triggerers: int = 1
    workers: int = 2
    worker_concurrency: int = 4
    broker_url: str = "redis://127.0.0.1:6379/0"
    # more Airflow configuration for every process (``AIRFLOW__SECTION__KEY`` -> value)
    airflow_config: dict[str, str] = field(default_factory=dict)

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def fleet_url(self) -> str:
        return f"http://127.0.0.1:{self.fleet_port}"


class DevStack:
    def __init__(self, config: StackConfig):
        self.config = config
        self.processes: dict[str, subprocess.Popen] = {}
        self._launch: dict[str, tuple[list[str], dict[str, str] | None]] = {}
        self.logs = config.home / "logs" / "stack"

    # --- configuration ----------------------------------------------------------------
    def secrets(self) -> dict[str, str]:
        path = self.config.home / "secrets.json"
        if path.exists():
            return json.loads(path.read_text())
        from cryptography.fernet import Fernet

        from releasetrain.core.bundle import generate_private_key_pem

        values = {
            "signing_key": generate_private_key_pem(),
            "evidence_key": generate_private_key_pem(),
            "ledger_key": generate_private_key_pem(),
            "fleet_user": "deployer",
            "fleet_password": secrets.token_urlsafe(18),
            "jwt_secret": secrets.token_urlsafe(32),
            "fernet_key": Fernet.generate_key().decode(),
            "pkcs11_pin": secrets.token_hex(8),
        }
        self.config.home.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(json.dumps(values, indent=2))
        return values

    def env(self) -> dict[str, str]:
        cfg, sec = self.config, self.secrets()
        home = cfg.home.resolve()
        db_url = cfg.db_url or f"sqlite:///{home / 'airflow.db'}"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW__", "AIRFLOW_CONN_"))}
        # every task's process imports the package: without bytecode caches each one compiles
        # its modules again (measured: 0.16 s of CPU per task, a seventh of a task's process);
        # the caches go to the stack's home, never beside the DAG files or a component's sources
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(home / "pycache")
        env.update(
            {
                "AIRFLOW_HOME": str(home),
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                "AIRFLOW__CORE__DAGS_FOLDER": str(cfg.dags_folder or cfg.project_root / "dags"),
                "AIRFLOW__CORE__PLUGINS_FOLDER": str(cfg.project_root / "plugins"),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION": "False",
                "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor" if cfg.executor == "celery" else "LocalExecutor",
                "AIRFLOW__CORE__PARALLELISM": str(cfg.parallelism),
                "AIRFLOW__CORE__FERNET_KEY": sec["fernet_key"],
                "AIRFLOW__CORE__AUTH_MANAGER": FAB_AUTH_MANAGER if cfg.auth_manager == "fab" else SIMPLE_AUTH_MANAGER,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(f"{u}:{r}" for u, r in DEMO_USERS.items()),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(home / "passwords.json"),
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{cfg.api_url}/execution/",
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": db_url,
                "AIRFLOW__API__BASE_URL": cfg.api_url,
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(cfg.api_port),
                "AIRFLOW__API__WORKERS": "1",
                "AIRFLOW__API_AUTH__JWT_SECRET": sec["jwt_secret"],
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
                "AIRFLOW__DAG_PROCESSOR__MIN_FILE_PROCESS_INTERVAL": "30",
                "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "True",
                "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
            }
        )
        # a key per purpose, each with its public key pinned for verifiers
        if cfg.executor == "celery":
            if not db_url.startswith("postgresql"):
                raise ValueError("the celery stack runs on PostgreSQL: set db_url to a postgresql:// URL")
            backend = (
                db_url
                if "+" in db_url.split("://")[0]
                else db_url.replace("postgresql://", "postgresql+psycopg2://", 1)
            )
            env.update(
                {
                    "AIRFLOW__CELERY__BROKER_URL": cfg.broker_url,
                    "AIRFLOW__CELERY__RESULT_BACKEND": f"db+{backend}",
                    "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(cfg.worker_concurrency),
                    # a queue of this stack's own: stacks sharing a Redis never take each other's tasks
                    "AIRFLOW__OPERATORS__DEFAULT_QUEUE": self.queue,
                    "AIRFLOW__CELERY__WORKER_ENABLE_REMOTE_CONTROL": "False",
                }
            )
        for conn_id, name in SIGNING_KEYS:
            if cfg.signing == "pkcs11":
                env["SOFTHSM2_CONF"] = str(home / "softhsm2.conf")
                env[f"AIRFLOW_CONN_{conn_id}"] = pkcs11_connection(sec["pkcs11_pin"], name, self.public_key(name))
            elif name in sec:  # a home made before keys were kept apart has the bundle key only
                env[f"AIRFLOW_CONN_{conn_id}"] = signing_connection(sec[name])
        env.update(cfg.airflow_config)
        for conn_id, conn in cfg.connections.items():
            env[f"AIRFLOW_CONN_{conn_id.upper()}"] = json.dumps(conn)
        if cfg.spec_dirs:
            env["AIRFLOW__RELEASETRAIN__SPEC_DIRS"] = os.pathsep.join(str(p) for p in cfg.spec_dirs)
        if cfg.calendar_dirs:
            env["AIRFLOW__RELEASETRAIN__CALENDAR_DIRS"] = os.pathsep.join(str(p) for p in cfg.calendar_dirs)
        if cfg.auth_manager == "fab":
            env["AIRFLOW__RELEASETRAIN__GROUPS_FILE"] = str(home / "groups.yaml")
        # the fleet's JSON statistics, for the generic JSON metrics provider
        env["AIRFLOW_CONN_FLEET_METRICS"] = json.dumps(
            {"conn_type": "http", "host": cfg.fleet_url, "login": sec["fleet_user"], "password": sec["fleet_password"]}
        )
        # the storefront application's own secrets, which its config profiles refer to (and
        # the only ones a profile may name)
        env.setdefault("AIRFLOW__RELEASETRAIN__SECRET_REFERENCES", "storefront_*")
        for name, value in self.app_secrets().items():
            if name.startswith("storefront_db_"):
                env[f"AIRFLOW_CONN_{name.upper()}"] = json.dumps(
                    {"conn_type": "generic", "login": "storefront", "password": value}
                )
            else:
                env[f"AIRFLOW_VAR_{name.upper()}"] = value
        for environment in cfg.fleet_environments:
            env[f"AIRFLOW_CONN_{fleet_conn_id(environment).upper()}"] = json.dumps(
                {
                    "conn_type": "http",
                    "host": f"{cfg.fleet_url}/environments/{environment}",
                    "login": sec["fleet_user"],
                    "password": sec["fleet_password"],
                }
            )
        return env

    def public_key(self, name: str = "signing_key") -> str:
        """A key's public half (PEM), e.g. for the fleet, which verifies bundles."""
        from releasetrain.core.bundle import load_private_key, public_key_pem

        if self.config.signing == "pkcs11":  # generated on the token by prepare()
            path = self.config.home / "keys" / f"{name}.pub.pem"
            return path.read_text() if path.exists() else ""
        return public_key_pem(load_private_key(self.secrets()[name]))

    def _token(self) -> None:
        """A SoftHSM2 token in the stack's home with one non-extractable key per purpose."""
        home = self.config.home.resolve()
        if (home / "keys").exists():
            return
        if not Path(SOFTHSM_MODULE).exists():
            raise RuntimeError(f"signing='pkcs11' needs SoftHSM2 ({SOFTHSM_MODULE}): apt-get install softhsm2")
        (home / "softhsm").mkdir(parents=True, exist_ok=True)
        (home / "softhsm2.conf").write_text(
            f"directories.tokendir = {home / 'softhsm'}\nobjectstore.backend = file\nlog.level = ERROR\n"
        )
        env = {**self.env(), "RELEASETRAIN_PKCS11_PIN": self.secrets()["pkcs11_pin"]}
        self._command(
            ["softhsm2-util", "--init-token", "--free", "--label", PKCS11_TOKEN,
             "--pin", self.secrets()["pkcs11_pin"], "--so-pin", secrets.token_hex(8)],
            log="softhsm-init",
        )  # fmt: skip
        (home / "keys").mkdir()
        for _, name in SIGNING_KEYS:
            done = subprocess.run(
                [sys.executable, "-m", "releasetrain", "key", "generate-pkcs11", "--module", SOFTHSM_MODULE,
                 "--token", PKCS11_TOKEN, "--label", name, "--out", str(home / "keys" / f"{name}.pub.pem")],
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            if done.returncode != 0:
                raise RuntimeError(f"generating {name} on the token failed: {done.stderr[-2000:]}")

    def fleet_env(self) -> dict[str, str]:
        """The fleet sees its own credentials only, none of Airflow's secrets."""
        user, password = self.fleet_auth()
        keep = {"PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR"}
        return {
            **{k: v for k, v in os.environ.items() if k in keep},
            "FLEET_USER": user,
            "FLEET_PASSWORD": password,
            # the target verifies every bundle against the pinned public key (never a private one)
            "FLEET_BUNDLE_PUBLIC_KEY": self.public_key("signing_key"),
            "FLEET_BUNDLE_ROOT": str(self.config.home.resolve() / "artifacts"),  # the stack's artifact store
        }

    def app_secrets(self) -> dict[str, str]:
        """The demo application's secrets (database passwords per environment, a payment API
        key): derived from the stack's own secrets, held in connections and variables."""
        seed = self.secrets()["jwt_secret"]

        def derive(name: str) -> str:
            return hashlib.sha256(f"{name}:{seed}".encode()).hexdigest()[:24]

        names = [f"storefront_db_{e}" for e in ("dev", "staging", "prod")] + ["storefront_payment_api_key"]
        return {name: derive(name) for name in names}

    def fleet_auth(self) -> tuple[str, str]:
        sec = self.secrets()
        return sec["fleet_user"], sec["fleet_password"]

    def prepare(self) -> None:
        """Create the home, the demo users' passwords and the metadata database."""
        home = self.config.home
        (home / "logs").mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        (home / "passwords.json").write_text(json.dumps({u: u for u in DEMO_USERS}))
        if self.config.signing == "pkcs11":
            self._token()
        self._airflow("db", "migrate", log="db-migrate")
        if self.config.auth_manager == "fab":
            self._fab_users()
        # One pool per deploy target: two runs never deploy to the same target at once.
        from releasetrain.cli import POOL_PREFIX

        pools = {
            f"{POOL_PREFIX}{fleet_conn_id(env)}": {
                "slots": 1,
                "include_deferred": True,
                "description": f"releasetrain: one deploy at a time to {env}",
            }
            for env in self.config.fleet_environments
        }
        (home / "pools.json").write_text(json.dumps(pools, indent=2))
        self._airflow("pools", "import", str(home / "pools.json"), log="pools-import")
        if self.config.ledger_conn:
            self._airflow(
                "connections",
                "add",
                "releasetrain_ledger",
                "--conn-json",
                json.dumps(self.config.ledger_conn),
                log="ledger-connection",
            )
        self._releasetrain("ledger", "init", log="ledger-init")  # never created implicitly
        # the ledger key's public half, pinned for auditors' `ledger verify --public-key`
        (home / "ledger-public-key.pem").write_text(self.public_key("ledger_key"))

    def _releasetrain(self, *args: str, log: str) -> None:
        self._command([sys.executable, "-m", "releasetrain", *args], log=log)

    def _fab_users(self) -> None:
        """FAB's tables and the demo users (password = name); their numeric ids go into the
        people directory (``users:`` of the stack's groups file)."""
        import yaml

        self._airflow("fab-db", "migrate", log="fab-db-migrate")
        for user, role in DEMO_USERS.items():
            self._airflow(
                "users", "create", "--username", user, "--password", user, "--role", FAB_ROLES[role],
                "--email", f"{user}@example.com", "--firstname", user, "--lastname", "demo",
                log=f"fab-user-{user}",
            )  # fmt: skip
        listing = subprocess.run(
            [str(Path(sys.executable).parent / "airflow"), "users", "list", "--output", "json"],
            env=self.env(),
            cwd=self.config.home,
            capture_output=True,
            text=True,
            check=True,
        )
        rows = next(line for line in listing.stdout.splitlines() if line.startswith("[{"))  # past the warnings
        users = {str(u["id"]): u["username"] for u in json.loads(rows)}
        self.fab_ids = {name: uid for uid, name in users.items()}
        source = self.config.project_root / "include" / "groups.yaml"
        groups = yaml.safe_load(source.read_text()).get("groups", {}) if source.is_file() else {}
        ids = {name: [self.fab_ids.get(u, u) for u in members] for name, members in groups.items()}
        (self.config.home / "groups.yaml").write_text(yaml.safe_dump({"groups": ids, "users": users}))

    def _airflow(self, *args: str, log: str) -> None:
        self._command([str(Path(sys.executable).parent / "airflow"), *args], log=log)

    def _command(self, cmd: list[str], *, log: str) -> None:
        """Run a setup command in the stack's environment; its output goes to ``<log>.log``."""
        with open(self.logs / f"{log}.log", "w") as out:
            done = subprocess.run(cmd, env=self.env(), cwd=self.config.home, stdout=out, stderr=subprocess.STDOUT)
        if done.returncode:
            # the program and its sub-command only: arguments can hold a PIN
            what = " ".join(Path(c).name for c in cmd[:3])
            raise RuntimeError(f"`{what} ...` failed; see {self.logs / f'{log}.log'}")

    # --- processes --------------------------------------------------------------------
    def _spawn(self, name: str, cmd: list[str], env: dict[str, str] | None = None) -> None:
        self._launch[name] = (cmd, env)
        out = open(self.logs / f"{name}.log", "a")  # noqa: SIM115 - lives as long as the process
        self.processes[name] = subprocess.Popen(
            cmd,
            env=env or self.env(),
            cwd=self.config.home,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def start(self, *, timeout: float = 240) -> None:
        cfg = self.config
        seed = ",".join(f"{k}={v}" for k, v in cfg.fleet_seed.items())
        self._spawn(
            "fleet",
            [
                sys.executable,
                str(cfg.project_root / "include" / "demo_fleet" / "fleet.py"),
                "--port",
                str(cfg.fleet_port),
                "--seed",
                seed,
                "--deploy-seconds",
                str(cfg.fleet_deploy_seconds),
                "--traffic",
                str(cfg.fleet_traffic),
            ],
            env=self.fleet_env(),
        )
        for name, cmd, extra in self.airflow_processes():
            self._spawn(name, cmd, env={**self.env(), **extra})
        self.wait_ready(timeout=timeout)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Kill a process of the stack and everything it started (its session), as a crash
        or an OOM kill would: no clean shutdown."""
        proc = self.processes[name]
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass
        proc.wait(timeout=30)

    def restart(self, name: str) -> None:
        """Start a process again with its first command and environment (a supervisor's job)."""
        proc = self.processes.get(name)
        if proc is not None and proc.poll() is None:
            raise RuntimeError(f"{name} is still running")
        cmd, env = self._launch[name]
        self._spawn(name, cmd, env)

    def exited(self) -> dict[str, int]:
        """The stack's processes that are no longer running, with their exit codes."""
        return {name: proc.returncode for name, proc in self.processes.items() if proc.poll() is not None}

    @property
    def queue(self) -> str:
        return "releasetrain-" + hashlib.sha256(str(self.config.home.resolve()).encode()).hexdigest()[:10]

    def airflow_processes(self) -> list[tuple[str, list[str], dict[str, str]]]:
        """(name, command, environment overrides) of every Airflow process of the stack. Each
        scheduler, triggerer and worker serves its health check or logs on a port of its own."""
        cfg, airflow = self.config, str(Path(sys.executable).parent / "airflow")
        processes = [("api-server", [airflow, "api-server"], {}), ("dag-processor", [airflow, "dag-processor"], {})]
        local = cfg.executor != "celery"
        for i in range(1 if local else cfg.schedulers):
            port = {} if local else {"AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port())}
            processes.append((_nth("scheduler", i), [airflow, "scheduler"], port))
        for i in range(1 if local else cfg.triggerers):
            port = {} if local else {"AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port())}
            processes.append((_nth("triggerer", i), [airflow, "triggerer"], port))
        for i in range(0 if local else cfg.workers):
            cmd = [
                *(airflow, "celery", "worker", "--queues", self.queue),
                *("--concurrency", str(cfg.worker_concurrency), "--celery-hostname", f"worker{i + 1}-{self.queue}@%h"),
                *("--without-mingle", "--without-gossip"),
            ]
            processes.append((f"worker-{i + 1}", cmd, {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port())}))
        return processes

    def wait_ready(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last = "not started"
        while time.monotonic() < deadline:
            for name, proc in self.processes.items():
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}; see {self.logs / (name + '.log')}")
            try:
                requests.get(f"{self.config.fleet_url}/healthz", timeout=2).raise_for_status()
                health = requests.get(f"{self.config.api_url}/api/v2/monitor/health", timeout=5).json()
                states = {k: (v or {}).get("status") for k, v in health.items()}
                last = json.dumps(states)
                if all(s == "healthy" for s in states.values()) and {"scheduler", "triggerer", "dag_processor"} <= set(
                    states
                ):
                    return
            except (requests.RequestException, ValueError) as exc:
                last = str(exc)
            time.sleep(2)
        raise TimeoutError(f"the stack did not become healthy in {timeout}s: {last}; logs in {self.logs}")

    def stop(self) -> None:
        for proc in self.processes.values():
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 20
        for proc in self.processes.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.processes.clear()


def _nth(name: str, i: int) -> str:
    return name if i == 0 else f"{name}-{i + 1}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


SIGNING_KEYS = (
    ("RELEASETRAIN_SIGNING", "signing_key"),
    ("RELEASETRAIN_EVIDENCE_SIGNING", "evidence_key"),
    ("RELEASETRAIN_LEDGER_SIGNING", "ledger_key"),
)
SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
PKCS11_TOKEN = "releasetrain"


def pkcs11_connection(pin: str, label: str, public_pem: str) -> str:
    """A signing key connection for a key on the stack's token: the PIN, never the key."""
    extra = {"pkcs11": {"module": SOFTHSM_MODULE, "token": PKCS11_TOKEN, "key": label}, "public_key": public_pem}
    return json.dumps({"conn_type": "generic", "password": pin, "extra": extra})


def signing_connection(private_pem: str) -> str:
    """A signing key connection (as an ``AIRFLOW_CONN_`` value)."""
    from releasetrain.hooks.signing import pem_key_connection

    return json.dumps(pem_key_connection(private_pem, "generic"))
