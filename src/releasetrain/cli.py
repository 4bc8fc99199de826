"""The ``releasetrain`` command (also ``python -m releasetrain``).

releasetrain validate SPEC...      validate release specs and shared calendars; exit 1
                                   naming file, field and reason
releasetrain calendar SPEC... [--environment ENV] [--from ISO8601] [--days N]
                                   [--json | --ics FILE]
                                   effective windows, blackouts and conflicts (UTC)
releasetrain pools [SPEC...]       the deploy-target pools, as JSON for `airflow pools import`
releasetrain schema                the release spec's JSON Schema
releasetrain ledger init [--conn CONN_ID | --url URL] [--writer-role ROLE]
                                   create the ledger (a missing ledger is never silently new);
                                   on PostgreSQL with its append-only trigger and grants
releasetrain ledger checkpoint [--key-conn CONN_ID] [--checkpoints URL]
                                   sign the chain's head with the ledger key, keep it outside
                                   the database
releasetrain ledger verify [--conn CONN_ID | --url URL] [--public-key PEM | --key-conn CONN_ID]
                                   check the hash chain and every checkpoint; exit 1 naming
                                   the first bad event (or when no checkpoint anchors it,
                                   unless --allow-unanchored), 2 when there is no ledger
releasetrain evidence RELEASE RUN_ID --out FILE [--dag-id DAG_ID] [--conn CONN_ID | --url URL]
                                   export a signed evidence bundle for one release run (runs are
                                   keyed by DAG id and run id; default DAG: release_<RELEASE>)
releasetrain evidence verify FILE (--public-key PEM_FILE | --key-conn CONN_ID)
                                   verify an evidence bundle offline against a pinned key;
                                   exit 1 naming problems (and without a pinned key)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
from pathlib import Path
from typing import Any

from releasetrain.core.spec import CalendarLibrary, ReleaseSpec, ReleaseSpecError, json_schema_text, load_spec
from releasetrain.core.vocabulary import POOL_PREFIX, release_dag_id  # noqa: E402
from releasetrain.core.windows import CalendarError, iso_z


def expand(paths: list[str]) -> tuple[list[str], list[str]]:
    """Files named, and every ``*.yaml``/``*.yml`` in folders named (a folder named
    ``calendars`` holds shared calendars); and what names neither."""
    files, errors = [], []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml") and p.is_file())
            if not found:
                errors.append(f"{name}: a folder with no .yaml or .yml file in it")
            files += [str(p) for p in found]
        elif path.exists():
            files.append(name)
        else:
            errors.append(f"{name}: no such file or folder")
    return files, errors


def _load(paths: list[str], root: Path) -> tuple[list[ReleaseSpec], list[str]]:
    library = CalendarLibrary(root)
    paths, errors = expand(paths)
    specs: list[ReleaseSpec] = []
    for name in paths:
        path = Path(name)
        try:
            if path.parent.name == "calendars":
                from releasetrain.core.spec import _load_shared

                _load_shared(path.resolve(), root.resolve())
                continue
            specs.append(load_spec(path, display_root=root if path.is_relative_to(root) else None, calendars=library))
        except (ReleaseSpecError, CalendarError) as exc:
            errors.append(str(exc))
    return specs, errors


def _validate(paths: list[str], root: Path) -> int:
    specs, errors = _load(paths, root)
    for spec in specs:
        envs = " -> ".join(e.name for e in spec.environments)
        print(f"{spec.name}: ok ({spec.dag_id}: {len(spec.components)} components, {envs})")
    for error in errors:
        print(error, file=sys.stderr)
    return 1 if errors else 0


def _parse_from(text: str | None) -> dt.datetime:
    if not text:
        return dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
    try:
        moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise SystemExit(f"--from: {text!r} is not an ISO 8601 date or time") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.UTC)


def _calendar(args: argparse.Namespace, root: Path) -> int:
    from releasetrain.core.planning import calendar_view, to_ics

    specs, errors = _load(args.specs, root)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    if args.environment and not any(args.environment in {e.name for e in s.environments} for s in specs):
        print(f"--environment: no given release has an environment {args.environment!r}", file=sys.stderr)
        return 1
    start = _parse_from(args.from_)
    view = calendar_view(specs, CalendarLibrary(root), start, start + dt.timedelta(days=args.days), args.environment)
    if args.ics:
        Path(args.ics).write_bytes(to_ics(view, args.environment or ", ".join(s.name for s in specs)))
        print(f"wrote {len(view.windows)} windows and {len(view.blackouts)} blackouts to {args.ics}")
    elif args.json:
        print(json.dumps(view.to_dict(), indent=2))
    else:
        print(f"{'kind':<10} {'start (UTC)':<21} {'end (UTC)':<21} name")
        rows = [("window", w.start, w.end, "") for w in view.windows]
        rows += [("blackout", b.start, b.end, b.name) for b in view.blackouts]
        for kind, begin, end, name in sorted(rows, key=lambda r: (r[1], r[0])):
            print(f"{kind:<10} {iso_z(begin):<21} {iso_z(end):<21} {name}")
        for conflict in view.conflicts:
            print(f"CONFLICT   {conflict['detail']}")
        for queue in view.queues:  # who gets a shared deploy target first when runs wait for it
            order = " > ".join(f"{e['release']}/{e['environment']} ({e['business_impact']})" for e in queue["order"])
            print(f"ORDER      {queue['target']}: {order}")
    return 0


def pool_definitions(specs: list[ReleaseSpec]) -> dict[str, dict]:
    targets = sorted({(env.deploy_target, f"{s.name}/{env.name}") for s in specs for env in s.environments})
    pools: dict[str, dict] = {}
    for target, user in targets:
        pool = pools.setdefault(
            f"{POOL_PREFIX}{target}", {"slots": 1, "include_deferred": True, "description": "", "users": []}
        )
        pool["users"].append(user)
    for pool in pools.values():
        pool["description"] = "releasetrain: one deploy at a time to this target (" + ", ".join(pool.pop("users")) + ")"
    return pools


def _pools(paths: list[str], root: Path) -> int:
    from releasetrain.core.spec import discover_specs

    files = paths or [str(p) for p in discover_specs([root / "include" / "releases"])]
    specs, errors = _load(files, root)
    if errors:
        print("\n".join(errors), file=sys.stderr)
        return 1
    print(json.dumps(pool_definitions(specs), indent=2, sort_keys=True))
    return 0


def _ledger_store(args: argparse.Namespace):
    """The ledger to read; a ledger that does not exist is an error, never an empty ledger."""
    from releasetrain.core.ledger import LedgerError
    from releasetrain.hooks.ledger import LedgerHook, SqliteLedgerStore, store_from_url

    store = store_from_url(args.url) if args.url else LedgerHook(args.conn).store
    if isinstance(store, SqliteLedgerStore) and not store.path.is_file():
        where = f"--url {args.url}" if args.url else f"connection {args.conn!r}, or the default when it is not defined"
        raise LedgerError(f"{store.missing()} ({where})")
    return store


def _ledger(args: argparse.Namespace) -> int:
    from releasetrain.core.ledger import LedgerError

    try:
        if args.action == "init":
            return _ledger_init(args)
        store = _ledger_store(args)
        if args.action == "checkpoint":
            from releasetrain.hooks.ledger import write_checkpoint

            written = write_checkpoint(store, args.key_conn or "releasetrain_ledger_signing", args.checkpoints)
            if written is None:
                print("ledger: empty, nothing to checkpoint")
            else:
                print(f"checkpoint of event {written[1]['seq']} ({written[1]['hash'][:16]}) written to {written[0]}")
            return 0
        result = store.verify()
        anchor = _anchor(args, store, result) if result.ok else []
    except LedgerError as exc:
        print(f"ledger: {exc}", file=sys.stderr)
        return 2
    if not result.ok:
        print(result.message(), file=sys.stderr)
        return 1
    if result.count and anchor[0].startswith("not anchored") and not args.allow_unanchored:
        # a checkpoint looked for in the wrong place must not let a rewritten ledger pass
        print(f"{result.message()}; {anchor[0]}: pass --allow-unanchored to accept that", file=sys.stderr)
        return 1
    for problem in anchor[1:]:
        print(f"ledger: {problem}", file=sys.stderr)
    if len(anchor) > 1:
        return 1
    print(f"{result.message()}; {anchor[0]}")
    return 0


def _ledger_init(args: argparse.Namespace) -> int:
    """Create the ledger explicitly (and, on PostgreSQL, its append-only trigger and grants)."""
    from releasetrain.hooks.ledger import LedgerHook, PostgresLedgerStore, store_from_url

    store = store_from_url(args.url) if args.url else LedgerHook(args.conn).store
    store.create = True
    if isinstance(store, PostgresLedgerStore):
        store.writer_role = args.writer_role
    seq, _ = store.head()
    store.close()
    print(f"{store.description}: ready ({seq} events)")
    return 0


def _anchor(args: argparse.Namespace, store, result) -> list[str]:
    """[how far the chain is anchored, *problems]: the chain against the newest checkpoint."""
    from releasetrain.core.ledger import anchor_problems, checkpoint_problems
    from releasetrain.hooks.ledger import CheckpointStore

    checkpoints = CheckpointStore(args.checkpoints)
    every = checkpoints.all()
    if not every:
        return [f"not anchored: no checkpoint in {checkpoints.url} (`releasetrain ledger checkpoint` writes one)"]
    checkpoint = every[-1]
    trusted, source = _trusted_key(args, default_conn="releasetrain_ledger_signing")
    if not trusted:
        return ["", "a checkpoint exists but no pinned ledger key to check it (--public-key or --key-conn)"]
    from releasetrain.core.bundle import load_public_key

    key = load_public_key(trusted)
    problems: list[str] = []
    for each in every:  # every checkpoint, not only the newest: a later one may anchor a rewrite
        problems += checkpoint_problems(each, key) or anchor_problems(result, each, store.hash_at(int(each["seq"])))
    if problems:
        return ["", *problems]
    behind = result.head_seq - int(checkpoint["seq"])
    return [
        f"anchored up to event {checkpoint['seq']} by the checkpoint of {checkpoint['at']} (signed with {source})"
        + (f"; the {behind} events after it are not anchored yet" if behind else "")
    ]


def _trusted_key(args: argparse.Namespace, default_conn: str | None = None) -> tuple[str | None, str]:
    """The pinned public key: a PEM file, or a connection's ``extra.public_key`` (never the file's own)."""
    if args.public_key:
        return Path(args.public_key).read_text(), f"the key in {args.public_key}"
    conn_id = args.key_conn or default_conn
    if conn_id:
        from releasetrain.core.bundle import BundleError
        from releasetrain.hooks.bundle_store import public_key_pem_of
        from releasetrain.hooks.ledger import signing_key_connection

        conn = signing_key_connection(conn_id)
        pem = conn.extra_dejson.get("public_key") if conn else None
        if not pem:
            if args.key_conn:
                raise ValueError(f"connection {conn_id!r} pins no public key (extra.public_key)")
            return None, ""
        from releasetrain.core.bundle import load_public_key

        try:
            return public_key_pem_of(load_public_key(pem)), f"the key pinned in {conn_id}"
        except BundleError as exc:
            raise ValueError(str(exc)) from None
    return None, ""


def _evidence(args: argparse.Namespace) -> int:
    from releasetrain.core.evidence import EvidenceError, verify_evidence
    from releasetrain.core.ledger import LedgerError

    if args.items[0] == "verify" and len(args.items) == 2:
        path = Path(args.items[1])
        try:
            document = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            print(f"{path}: cannot read the evidence bundle: {exc}", file=sys.stderr)
            return 1
        try:
            trusted, source = _trusted_key(args)
        except (OSError, ValueError) as exc:
            print(f"{path}: cannot read the trusted key: {exc}", file=sys.stderr)
            return 1
        problems = verify_evidence(document, trusted)
        for problem in problems:
            print(f"{path}: {problem}", file=sys.stderr)
        if problems:
            return 1
        print(
            f"{path}: intact: {len(document['events'])} events of {document['release']} {document['run_id']}, "
            f"one unbroken chain, signed with {source}"
        )
        return 0
    if len(args.items) != 2 or not args.out:
        print(
            "usage: releasetrain evidence RELEASE RUN_ID --out FILE | releasetrain evidence verify FILE",
            file=sys.stderr,
        )
        return 2
    release, run_id = args.items
    try:
        store = _ledger_store(args)
        document, earlier = export_evidence(
            store, release, run_id, args.dag_id or release_dag_id(release), args.signing_conn
        )
        if earlier:
            print(f"evidence: {earlier} events of an earlier, deleted run under this id are left out", file=sys.stderr)
    except (LedgerError, EvidenceError, ValueError) as exc:
        print(f"evidence: {exc}", file=sys.stderr)
        return 1
    events = document["events"]
    Path(args.out).write_text(json.dumps(document, indent=2, sort_keys=True))
    print(f"wrote {args.out}: {len(events)} events of {release} {run_id}")
    return 0


def export_evidence(store: Any, release: str, run_id: str, dag_id: str, signing_conn: str) -> tuple[dict, int]:
    """A run's signed evidence bundle out of an intact ledger, and how many events of an
    earlier, deleted run under the same id were left out (the CLI and the cockpit's download)."""
    from releasetrain.core.evidence import build_evidence
    from releasetrain.core.gatekeeper import current_incarnation
    from releasetrain.core.ledger import LedgerError
    from releasetrain.hooks.bundle_store import BUNDLE_KEY_CONN, LEDGER_KEY_CONN, SigningKeyHook, keys_apart

    head = store.head()
    # events written before runs were keyed by DAG id carry none
    events = [e for e in store.events(release=release, run_id=run_id) if e.dag_id in (dag_id, "")]
    earlier = len(events)
    events = current_incarnation(events)  # a deleted run under the same id is not this run
    earlier -= len(events)
    if not events:  # said before the whole chain is read
        raise LedgerError(f"the ledger holds no events of {dag_id} {run_id}")
    keys_apart(BUNDLE_KEY_CONN, LEDGER_KEY_CONN, signing_conn)
    intact = store.verify()  # never sign evidence out of a broken chain
    if not intact.ok:
        raise LedgerError(f"the ledger does not verify, no evidence is signed: {intact.message()}")
    chain = [e for e in store.events() if events and events[0].seq <= e.seq <= events[-1].seq]
    key = SigningKeyHook(signing_conn).signer()
    return build_evidence(release, run_id, events, head, key, chain), earlier


def _generate_key(args: argparse.Namespace) -> int:
    """``generate``: a PEM key into a connections file; ``generate-pkcs11``: a key on a token."""
    if args.action == "generate":
        return _generate_pem_key(args)
    missing = [f"--{name}" for name in ("module", "token", "label") if not getattr(args, name)]
    if missing:
        print(f"key generate-pkcs11: {', '.join(missing)} required", file=sys.stderr)
        return 2
    return _generate_pkcs11_key(args)


def _generate_pem_key(args: argparse.Namespace) -> int:
    """A new Ed25519 key as connection ``--conn-id`` in ``--connections`` (the file
    ``airflow connections import`` reads; 0600, other connections in it kept), and its
    public half in ``--out`` (never overwritten: a second run cannot leave a pinned key that
    differs from the stored one). The private key is never printed."""
    from releasetrain.core.bundle import generate_private_key_pem
    from releasetrain.hooks.signing import pem_key_connection

    if not args.conn_id or not args.connections:
        print("key generate: --conn-id and --connections are required", file=sys.stderr)
        return 2
    path, out = Path(args.connections), Path(args.out)
    try:
        existing = json.loads(path.read_text()) if path.exists() and path.stat().st_size else {}
    except (OSError, ValueError) as exc:
        print(f"key generate: {path}: not a connections file ({exc})", file=sys.stderr)
        return 1
    if not isinstance(existing, dict):
        print(f"key generate: {path}: not a connections file (a JSON object of connections)", file=sys.stderr)
        return 1
    if args.conn_id in existing:
        print(f"key generate: {path} already holds {args.conn_id!r}; a key is never replaced here", file=sys.stderr)
        return 1
    connection = pem_key_connection(generate_private_key_pem())
    public = connection["extra"]["public_key"]
    existing[args.conn_id] = {**connection, "extra": json.dumps(connection["extra"])}
    try:
        _write_new(out, public, mode=0o644)
    except OSError as exc:
        print(
            f"key generate: --out {out}: {exc.strerror or exc} (a public key file is never overwritten)",
            file=sys.stderr,
        )
        return 1
    try:  # the whole file at once: written beside it, then put in its place
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        _write_new(temporary, json.dumps(existing, indent=2), mode=0o600)
        os.replace(temporary, path)
    except OSError as exc:
        out.unlink(missing_ok=True)
        print(f"key generate: {path}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    print(f"{args.conn_id}: key added to {path} (import it with `airflow connections import {path}`, then delete it);")
    print(f"its public key, to pin where bundles or evidence are verified: {out}")
    return 0


def _write_new(path: Path, text: str, *, mode: int) -> None:
    """Create ``path`` (never through a link, never over an existing file), write, sync."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    except OSError:
        os.close(fd)
        path.unlink(missing_ok=True)
        raise
    os.close(fd)


def _generate_pkcs11_key(args: argparse.Namespace) -> int:
    """Generate the key on the token; print its public key (to pin) and the connection."""
    from releasetrain.core.bundle import BundleError
    from releasetrain.hooks.bundle_store import public_key_pem_of
    from releasetrain.hooks.signing import generate_pkcs11_key

    pin = os.environ.get(args.pin_env)
    if not pin:
        print(f"key: set the token's user PIN in ${args.pin_env} (never on the command line)", file=sys.stderr)
        return 2
    try:
        public = public_key_pem_of(generate_pkcs11_key(args.module, args.token, args.label, pin))
    except BundleError as exc:
        print(f"key: {exc}", file=sys.stderr)
        return 1
    extra = {"pkcs11": {"module": args.module, "token": args.token, "key": args.label}, "public_key": public}
    Path(args.out).write_text(public)
    print(f"wrote the public key to {args.out}; the key's connection (its password is the user PIN):")
    print(json.dumps({"conn_type": "generic", "extra": extra}))
    return 0


EXAMPLES = {
    "": """examples:
  releasetrain validate include/releases/
  releasetrain calendar include/releases/*.yaml --days 14
  releasetrain ledger verify --url sqlite:///.airflow/releasetrain-ledger.db --allow-unanchored
  releasetrain evidence storefront RUN_ID --out evidence.json""",
    "validate": """examples:
  releasetrain validate include/releases/                 # every spec in a folder
  releasetrain validate include/releases/storefront.yaml include/calendars/""",
    "calendar": """examples:
  releasetrain calendar include/releases/*.yaml --days 14
  releasetrain calendar include/releases/ --environment prod --from 2026-12-01T00:00:00Z --json
  releasetrain calendar include/releases/payments.yaml --ics payments.ics""",
    "pools": """examples:
  releasetrain pools include/releases/ > pools.json && airflow pools import pools.json""",
    "schema": """examples:
  releasetrain schema > release-spec.schema.json
  releasetrain schema --reference > docs/spec-reference.md""",
    "ledger": """examples:
  releasetrain ledger verify --url sqlite:///.airflow/releasetrain-ledger.db --allow-unanchored
  releasetrain ledger verify --conn releasetrain_ledger --public-key ledger-key.pem
  releasetrain ledger init --url postgresql://postgres@127.0.0.1:5432/ledger --writer-role airflow
  releasetrain ledger checkpoint --key-conn releasetrain_ledger_signing""",
    "evidence": """examples:
  releasetrain evidence storefront RUN_ID --out evidence.json
  releasetrain evidence storefront RUN_ID --dag-id rollback_storefront --out rollback.json
  releasetrain evidence verify evidence.json --public-key evidence-key.pem""",
    "key": """examples:
  releasetrain key generate --conn-id releasetrain_signing --connections keys.json --out bundle-key.pub.pem
  releasetrain key generate-pkcs11 --module /usr/lib/softhsm/libsofthsm2.so \\
      --token releasetrain --label evidence_key --out evidence-key.pem   # PIN in RELEASETRAIN_PKCS11_PIN""",
}


def shell_environment(root: Path) -> None:
    """Before anything imports Airflow, when neither ``AIRFLOW_HOME`` nor ``AIRFLOW_CONFIG`` is
    set: without a ``~/airflow``, a throw-away Airflow home, removed on exit (importing Airflow
    writes a default configuration into its home, and a read-only command such as ``ledger
    verify`` must leave nothing behind; a checkout's ``.airflow`` is never read for
    configuration or code); and, when ``make demo`` left its home in ``root``, the demo's
    connections (its ledger and keys), said on stderr, so the README's commands work from a
    shell as written."""
    if os.environ.get("AIRFLOW_HOME") or os.environ.get("AIRFLOW_CONFIG"):
        return
    from releasetrain.demo import shell_connections

    if not (Path.home() / "airflow").exists():  # the user's own default home is Airflow's to use
        import atexit
        import shutil
        import tempfile

        home = tempfile.mkdtemp(prefix="releasetrain-cli-")
        atexit.register(shutil.rmtree, home, True)
        os.environ["AIRFLOW_HOME"] = home
    connections = {k: v for k, v in shell_connections(root).items() if k not in os.environ}
    if connections:
        os.environ.update(connections)
        print(
            f"releasetrain: no AIRFLOW_HOME: using the connections of the demo in {root / '.airflow'}", file=sys.stderr
        )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("releasetrain")
    except PackageNotFoundError:
        from releasetrain import __version__

        return __version__


def main(argv: list[str] | None = None) -> int:
    raw = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="releasetrain",
        description="Release management as Airflow DAGs.",
        epilog=EXAMPLES[""],
        formatter_class=raw,
    )
    parser.add_argument("--version", action="version", version=f"releasetrain {_version()}")
    parser.add_argument("--project-root", default=".", help="what relative paths in specs are relative to")
    commands = parser.add_subparsers(dest="command", required=True)

    def command(name: str, help: str):
        return commands.add_parser(name, help=help, description=help, epilog=EXAMPLES[name], formatter_class=raw)

    validate = command("validate", "validate release specs and shared calendars (files or folders)")
    validate.add_argument("specs", nargs="+", metavar="SPEC")
    calendar = command("calendar", "effective windows, blackouts and conflicts")
    calendar.add_argument("specs", nargs="+", metavar="SPEC")
    calendar.add_argument("--environment", "-e")
    calendar.add_argument("--from", dest="from_", metavar="ISO8601")
    calendar.add_argument("--days", type=int, default=14)
    output = calendar.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true")
    output.add_argument("--ics", metavar="FILE")
    pools = command("pools", "pool definitions for `airflow pools import`")
    pools.add_argument("specs", nargs="*", metavar="SPEC")
    schema = command("schema", "print the release spec JSON Schema (or its Markdown reference)")
    schema.add_argument("--reference", action="store_true", help="the Markdown reference (docs/spec-reference.md)")
    ledger = command("ledger", "the release ledger: verify, init, checkpoint")
    ledger.add_argument("action", choices=["verify", "init", "checkpoint"])
    ledger.add_argument("--checkpoints", metavar="URL", help="where checkpoints are kept (default: see README)")
    ledger.add_argument("--writer-role", help="`ledger init` on PostgreSQL: the role tasks connect as")
    ledger.add_argument(
        "--allow-unanchored", action="store_true", help="`ledger verify` passes a ledger with no checkpoint"
    )
    ledger_key = ledger.add_mutually_exclusive_group()
    ledger_key.add_argument("--public-key", metavar="PEM_FILE", help="pinned ledger key for `ledger verify`")
    ledger_key.add_argument(
        "--key-conn", metavar="CONN_ID", help="ledger key connection (default releasetrain_ledger_signing)"
    )
    evidence = command("evidence", "export or verify a signed evidence bundle")
    evidence.add_argument("items", nargs="+", metavar="RELEASE RUN_ID | verify FILE")
    evidence.add_argument("--out", metavar="FILE")
    evidence.add_argument(
        "--dag-id", help="the run's DAG (default release_<RELEASE>; rollback_<RELEASE> for rollbacks)"
    )
    trusted = evidence.add_mutually_exclusive_group()
    trusted.add_argument("--public-key", metavar="PEM_FILE", help="pinned key for `evidence verify`")
    trusted.add_argument(
        "--key-conn", metavar="CONN_ID", help="`evidence verify` with the key pinned in this connection's public_key"
    )
    evidence.add_argument(
        "--signing-conn",
        default="releasetrain_evidence_signing",
        help="connection holding the evidence key (never the bundle signing key)",
    )
    key = command("key", "generate an Ed25519 signing key: into a connections file, or on a PKCS#11 token")
    key.add_argument("action", choices=["generate", "generate-pkcs11"])
    key.add_argument("--conn-id", help="`generate`: the connection the key becomes (e.g. releasetrain_signing)")
    key.add_argument(
        "--connections", metavar="JSON_FILE", help="`generate`: the file for `airflow connections import` (0600)"
    )
    key.add_argument("--module", help="`generate-pkcs11`: the PKCS#11 library (e.g. /usr/lib/softhsm/libsofthsm2.so)")
    key.add_argument("--token", help="`generate-pkcs11`: token label")
    key.add_argument("--label", help="`generate-pkcs11`: key label (one per key: bundle, evidence, ledger)")
    key.add_argument("--out", required=True, metavar="PEM_FILE", help="where the public key (to pin) is written")
    key.add_argument("--pin-env", default="RELEASETRAIN_PKCS11_PIN", help="environment variable holding the user PIN")
    for sub in (ledger, evidence):
        where = sub.add_mutually_exclusive_group()
        where.add_argument("--conn", default="releasetrain_ledger", metavar="CONN_ID", help="ledger connection id")
        where.add_argument("--url", help="ledger database: sqlite:///PATH or postgresql://USER@HOST:PORT/DB")
    args = parser.parse_args(argv)
    root = Path(args.project_root).resolve()
    shell_environment(root)
    if args.command == "validate":
        return _validate(args.specs, root)
    if args.command == "calendar":
        if args.days <= 0 or args.days > 3660:
            parser.error("--days must be between 1 and 3660")
        return _calendar(args, root)
    if args.command == "pools":
        return _pools(args.specs, root)
    if args.command == "ledger":
        return _ledger(args)
    if args.command == "evidence":
        return _evidence(args)
    if args.command == "key":
        return _generate_key(args)
    if args.reference:
        from releasetrain.core.reference import spec_reference

        print(spec_reference(json.loads(json_schema_text())), end="")
        return 0
    print(json_schema_text(), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
