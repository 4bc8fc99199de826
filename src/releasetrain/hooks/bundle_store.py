"""Where release bundles live, and the key that signs them.

Bundles are stored through :class:`ObjectStoragePath`, so a local folder (the default),
S3 or GCS are a matter of configuration. The signing key comes from an Airflow
connection (or any secrets backend behind it), never from a file in the repository.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from typing import Any

from airflow.sdk import BaseHook, ObjectStoragePath, Variable
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from releasetrain.core.bundle import BundleError, load_private_key, load_public_key

ARTIFACT_STORE_VARIABLE = "releasetrain_artifact_store"


class BundleStoreHook(BaseHook):
    """Reads and writes bundles under ``<store>/<release>/<version>/``.

    :param artifact_store: base URL; default: the ``releasetrain_artifact_store`` Airflow
        variable, else ``$AIRFLOW_HOME/artifacts``
    :param conn_id: optional object-storage connection (S3, GCS, ...)
    """

    conn_name_attr = "conn_id"
    default_conn_name = "releasetrain_artifacts"
    hook_name = "Release bundle store"

    BUNDLE = "bundle.tar.gz"
    MANIFEST = "manifest.json"
    SIGNATURE = "bundle.sig.json"
    COMPONENTS = "_components"  # the component index: <component>/<version>.json
    UNITS = "units"  # packaging modular: <release>/<version>/units/<unit>/

    def __init__(self, artifact_store: str | None = None, conn_id: str | None = None) -> None:
        super().__init__()
        self.artifact_store = artifact_store
        self.conn_id = conn_id

    def base(self) -> ObjectStoragePath:
        from releasetrain.core.settings import setting

        url = self.artifact_store or setting("ARTIFACT_STORE") or Variable.get(ARTIFACT_STORE_VARIABLE, default=None)
        if not url:
            home = os.environ.get("AIRFLOW_HOME", os.path.expanduser("~/airflow"))
            url = f"file://{os.path.join(home, 'artifacts')}"
        return ObjectStoragePath(url, conn_id=self.conn_id) if self.conn_id else ObjectStoragePath(url)

    def location(self, release: str, version: str, unit: str | None = None) -> ObjectStoragePath:
        """``<release>/<version>/``; a deploy unit's own bundle (packaging: modular) in
        ``<release>/<version>/units/<unit>/``, beside the release bundle."""
        folder = self.base() / release / version
        return folder / self.UNITS / unit if unit else folder

    def incident_folder(self, release: str, run_id: str, environment: str) -> ObjectStoragePath:
        """Where a rollback's snapshot and postmortem draft go."""
        safe_run = "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
        return self.base() / release / "incidents" / safe_run / environment

    def read_signature(self, release: str, version: str, unit: str | None = None) -> dict[str, Any] | None:
        path = self.location(release, version, unit) / self.SIGNATURE
        if not path.exists():
            return None
        return json.loads(path.read_text())

    def write(
        self,
        release: str,
        version: str,
        archive: bytes,
        manifest: dict[str, Any],
        signature: dict[str, Any],
        unit: str | None = None,
    ) -> ObjectStoragePath:
        folder = self.location(release, version, unit)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / self.BUNDLE).write_bytes(archive)
        (folder / self.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
        # The signature is written last: a bundle without it is never considered packaged.
        (folder / self.SIGNATURE).write_text(json.dumps(signature, indent=2, sort_keys=True))
        return folder

    def component_record(self, component: str, version: str) -> dict[str, Any] | None:
        """What the component index holds for a component version (None: never packaged)."""
        path = self._component_path(component, version)
        if not path.exists():
            return None
        return _published_json(path)

    def claim_component(self, claim: dict[str, Any]) -> dict[str, Any] | None:
        """Index a component version as these bytes unless it is indexed already; returns the
        record that was there before (None when this claim created it). Local folders create
        the record exclusively (two packagings racing: one wins, the other sees its record)."""
        path = self._component_path(claim["component"], claim["version"])
        path.parent.mkdir(parents=True, exist_ok=True)
        data = json.dumps(claim, indent=2, sort_keys=True).encode()
        if path.protocol in ("file", "local"):  # published whole: written aside, then linked in place
            spare = f"{path.path}.{os.getpid()}.{uuid.uuid4().hex}.tmp"
            with open(spare, "xb") as out:
                out.write(data)
            try:
                os.link(spare, path.path)  # atomic, and refused when the record exists
                return None
            except FileExistsError:
                return _published_json(path)
            finally:
                os.unlink(spare)
        try:
            with path.open("xb") as out:
                out.write(data)
            return None
        except FileExistsError:
            return _published_json(path)
        except (ValueError, NotImplementedError):  # a store without exclusive create: look, then write
            if path.exists():
                return _published_json(path)
            path.write_bytes(data)
            return None

    def stored_bundles(self) -> dict[str, list[str]]:
        """release -> versions with a signed bundle in the store (the component index and the
        incident folders are not bundles)."""
        base = self.base()
        if not base.exists():
            return {}
        found: dict[str, list[str]] = {}
        for release in sorted(base.iterdir(), key=lambda p: p.name):
            if not release.is_dir() or release.name == self.COMPONENTS:
                continue
            versions = [v.name for v in release.iterdir() if v.is_dir() and (v / self.SIGNATURE).exists()]
            if versions:
                found[release.name] = sorted(versions)
        return found

    def delete(self, release: str, version: str) -> str | None:
        """Delete a stored bundle, its signature first (a half-deleted bundle is never taken
        for a packaged one); returns its digest, None when it was gone already."""
        folder = self.location(release, version)
        signature = self.read_signature(release, version)
        if signature is None:
            return None
        units = folder / self.UNITS  # the units first: none is left behind a deleted release bundle
        for unit in sorted(units.iterdir(), key=lambda p: p.name) if units.exists() else []:
            for name in (self.SIGNATURE, self.BUNDLE, self.MANIFEST):  # the unit bundles go with it
                if (unit / name).exists():
                    (unit / name).unlink()
            if unit.exists() and not any(unit.iterdir()):
                unit.rmdir()
        if units.exists() and not any(units.iterdir()):
            units.rmdir()
        for name in (self.SIGNATURE, self.BUNDLE, self.MANIFEST):
            if (folder / name).exists():
                (folder / name).unlink()
        if folder.exists() and not any(folder.iterdir()):
            folder.rmdir()
        return signature.get("digest")

    def _component_path(self, component: str, version: str) -> ObjectStoragePath:
        # release names start with a letter: no release folder is called _components
        return self.base() / self.COMPONENTS / component / f"{version}.json"

    def read(self, release: str, version: str, unit: str | None = None) -> tuple[bytes, dict[str, Any]]:
        folder = self.location(release, version, unit)
        bundle, signature = folder / self.BUNDLE, folder / self.SIGNATURE
        if not bundle.exists():
            raise BundleError(f"no bundle at {bundle}")
        if not signature.exists():
            raise BundleError(f"bundle at {bundle} is not signed ({signature} is missing)")
        try:
            return bundle.read_bytes(), json.loads(signature.read_text())
        except ValueError as exc:
            raise BundleError(f"signature file {signature} is not valid JSON: {exc}") from None


# One key per purpose, each in its own connection: bundles, evidence, ledger checkpoints.
BUNDLE_KEY_CONN = "releasetrain_signing"
EVIDENCE_KEY_CONN = "releasetrain_evidence_signing"
LEDGER_KEY_CONN = "releasetrain_ledger_signing"


def keys_apart(*conn_ids: str) -> None:
    """Refuse when two purposes share a key (one stolen key must not forge everything)."""
    seen: dict[str, str] = {}
    for conn_id in conn_ids:
        try:
            pem = public_key_pem_of(SigningKeyHook(conn_id).public_key())
        except BundleError:
            continue  # not configured here: nothing to compare
        if pem in seen:
            raise BundleError(f"connections {seen[pem]!r} and {conn_id!r} hold the same key: keep a key per purpose")
        seen[pem] = conn_id


def public_key_pem_of(key: Ed25519PublicKey) -> str:
    from cryptography.hazmat.primitives import serialization

    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode()


class SigningKeyHook(BaseHook):
    """An Ed25519 key pair: bundles (``releasetrain_signing``), evidence
    (``releasetrain_evidence_signing``) and ledger checkpoints (``releasetrain_ledger_signing``)
    each have their own.

    The connection's password (or ``extra.private_key``) holds the PEM private key, for the
    signer; ``extra.public_key`` pins the PEM public key, for verifiers (which need no
    private key, and never derive the public key from one). Both are masked in logs.

    :param signing_conn_id: connection id, default ``releasetrain_signing``
    """

    conn_type = "releasetrain_signing"  # the connection form (provider info): PEM key, pinned public key
    hook_name = "releasetrain signing key"
    conn_name_attr = "signing_conn_id"
    default_conn_name = "releasetrain_signing"

    def __init__(self, signing_conn_id: str = default_conn_name) -> None:
        super().__init__()
        self.signing_conn_id = signing_conn_id

    def _connection(self):
        try:
            return self.get_connection(self.signing_conn_id)
        except Exception as exc:
            raise BundleError(f"signing key connection {self.signing_conn_id!r} is not defined: {exc}") from None

    def signer(self) -> Any:
        """What signs: the PEM key in the connection, or its PKCS#11 key (``extra.pkcs11``),
        which never leaves the token (see :mod:`releasetrain.hooks.signing`)."""
        from releasetrain.hooks.signing import signer_from

        return signer_from(self._connection(), self.signing_conn_id)

    def private_key(self) -> Ed25519PrivateKey:
        """The connection's PEM private key (demo mode); a PKCS#11 connection has none."""
        conn = self._connection()
        from releasetrain.hooks.signing import extra_field

        pem = conn.password or extra_field(conn.extra_dejson, "private_key")
        if not pem or extra_field(conn.extra_dejson, "pkcs11"):
            raise BundleError(f"connection {self.signing_conn_id!r} holds no private key (password field)")
        return load_private_key(pem)

    def public_key(self) -> Ed25519PublicKey:
        """The pinned public key (``extra.public_key``): never derived from the private key,
        so a verifier's trust anchor is configured on its own."""
        from releasetrain.hooks.signing import extra_field

        conn = self._connection()
        pem = extra_field(conn.extra_dejson, "public_key")
        if not pem:
            raise BundleError(
                f"connection {self.signing_conn_id!r} pins no public key (extra.public_key): verification "
                "needs a trusted key configured on its own"
            )
        return load_public_key(pem)


def _published_json(path: ObjectStoragePath, attempts: int = 50) -> dict[str, Any]:
    """A record another packaging publishes: on stores without an atomic publish it may be
    read while still being written (empty or cut short); read again until it is whole."""
    for attempt in range(attempts):
        text = path.read_text()
        try:
            return json.loads(text)
        except ValueError:
            if attempt == attempts - 1:
                raise BundleError(f"the component index record {path} is not valid JSON") from None
            time.sleep(0.1)
    raise AssertionError("unreachable")
