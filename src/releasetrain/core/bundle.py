"""Release bundles: a deterministic tar.gz of the components with a manifest, and its
Ed25519 signature.

- The *manifest* lists every component (name, version) and every file (path, size,
  sha256). The *bundle digest* is ``sha256:`` + the SHA-256 of the manifest's canonical
  JSON, so it names the content, not the archive's bytes.
- The archive is built deterministically (sorted entries, zero times and owners, a
  gzip header without a time stamp): the same inputs give the same bytes and digest.
- The *signature* is an Ed25519 signature over a canonical statement that binds
  release, version, digest and the archive's own SHA-256.
- Verification reads the archive in memory and refuses anything but regular files
  with safe relative names: nothing is ever extracted to disk here.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import tarfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

MANIFEST_NAME = "manifest.json"
MANIFEST_SCHEMA = "releasetrain.bundle/v1"
MAX_MEMBER_BYTES = 512 * 1024 * 1024
MAX_TOTAL_BYTES = 2 * 1024 * 1024 * 1024
MAX_MEMBERS = 100_000


class BundleError(ValueError):
    """A bundle that must not be deployed: tampered, unsigned, malformed."""


@dataclass(frozen=True)
class ComponentFiles:
    """One component's files, keyed by their path inside the component."""

    name: str
    version: str
    files: Mapping[str, bytes]


@dataclass(frozen=True)
class Bundle:
    archive: bytes
    manifest: dict[str, Any]
    digest: str
    archive_sha256: str = field(default="")


def canonical_json(data: Any) -> bytes:
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _safe_member_path(name: str) -> str:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or name != str(path):
        raise BundleError(f"unsafe path in bundle: {name!r}")
    return name


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "digest"}
    return "sha256:" + sha256_hex(canonical_json(body))


def build_manifest(
    release: str, version: str, components: list[ComponentFiles], attachments: Mapping[str, bytes] | None = None
) -> dict[str, Any]:
    """``attachments``: release-level documents beside the components (the SBOM), listed
    only when there are any (a bundle without them keeps the digest it always had)."""
    entries = []
    names = set()
    for component in sorted(components, key=lambda c: c.name):
        if component.name in names:
            raise BundleError(f"component {component.name!r} appears twice")
        names.add(component.name)
        if not component.files:
            raise BundleError(f"component {component.name!r} has no files")
        files = [
            {
                "path": _safe_member_path(f"{component.name}/{rel}"),
                "size": len(data),
                "sha256": sha256_hex(data),
            }
            for rel, data in sorted(component.files.items())
        ]
        entries.append({"name": component.name, "version": component.version, "files": files})
    manifest: dict[str, Any] = {
        "schema": MANIFEST_SCHEMA,
        "release": release,
        "version": version,
        "components": entries,
    }
    if attachments:
        manifest["attachments"] = [
            {"path": _safe_member_path(name), "size": len(data), "sha256": sha256_hex(data)}
            for name, data in sorted(attachments.items())
        ]
    manifest["digest"] = manifest_digest(manifest)
    return manifest


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def build_bundle(
    release: str, version: str, components: list[ComponentFiles], attachments: Mapping[str, bytes] | None = None
) -> Bundle:
    """Build the deterministic archive and its manifest."""
    manifest = build_manifest(release, version, components, attachments)
    by_path = {f"{c.name}/{rel}": data for c in components for rel, data in c.files.items()}
    by_path.update(attachments or {})
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        _add_member(tar, MANIFEST_NAME, canonical_json(manifest))
        for entry in manifest.get("attachments", []):
            _add_member(tar, entry["path"], by_path[entry["path"]])
        for component in manifest["components"]:
            for entry in component["files"]:
                _add_member(tar, entry["path"], by_path[entry["path"]])
    compressed = io.BytesIO()
    with gzip.GzipFile(fileobj=compressed, mode="wb", mtime=0, filename="") as gz:
        gz.write(raw.getvalue())
    archive = compressed.getvalue()
    return Bundle(archive=archive, manifest=manifest, digest=manifest["digest"], archive_sha256=sha256_hex(archive))


def read_archive(archive: bytes) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Read manifest and files from an archive, in memory, refusing unsafe members."""
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
            for member in tar:
                name = _safe_member_path(member.name)
                if not member.isreg():
                    raise BundleError(f"bundle member {name!r} is not a regular file")
                if member.size > MAX_MEMBER_BYTES:
                    raise BundleError(f"bundle member {name!r} is too large ({member.size} bytes)")
                if name in files:
                    raise BundleError(f"bundle member {name!r} appears twice")
                total += member.size
                if total > MAX_TOTAL_BYTES or len(files) >= MAX_MEMBERS:
                    raise BundleError(
                        f"bundle is larger than allowed ({MAX_MEMBERS} files, {MAX_TOTAL_BYTES} bytes unpacked)"
                    )
                extracted = tar.extractfile(member)
                files[name] = extracted.read() if extracted else b""
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise BundleError(f"bundle archive is unreadable: {exc}") from None
    if MANIFEST_NAME not in files:
        raise BundleError("bundle has no manifest.json")
    try:
        manifest = json.loads(files.pop(MANIFEST_NAME))
    except ValueError as exc:
        raise BundleError(f"manifest.json is not valid JSON: {exc}") from None
    return manifest, files


def verify_archive(archive: bytes, expected_digest: str | None = None) -> dict[str, Any]:
    """Check every file against the manifest and the manifest against its digest.

    :return: the manifest
    :raises BundleError: naming the first difference found
    """
    manifest, files = read_archive(archive)
    recorded = manifest.get("digest")
    computed = manifest_digest(manifest)
    if recorded != computed:
        raise BundleError(f"manifest digest mismatch: manifest says {recorded}, content gives {computed}")
    if expected_digest is not None and computed != expected_digest:
        raise BundleError(f"bundle digest {computed} differs from the packaged digest {expected_digest}")
    listed: dict[str, dict[str, Any]] = {e["path"]: e for e in manifest.get("attachments", [])}
    for component in manifest.get("components", []):
        for entry in component.get("files", []):
            listed[entry["path"]] = entry
    for path, entry in listed.items():
        if path not in files:
            raise BundleError(f"file {path} is listed in the manifest but missing from the bundle")
        actual = sha256_hex(files[path])
        if actual != entry["sha256"]:
            raise BundleError(f"file {path} was changed: sha256 {actual}, manifest says {entry['sha256']}")
    extra = sorted(set(files) - set(listed))
    if extra:
        raise BundleError(f"bundle contains files not in the manifest: {', '.join(extra)}")
    return manifest


# --- signatures -------------------------------------------------------------------------


def signing_statement(release: str, version: str, digest: str, archive_sha256: str) -> bytes:
    return canonical_json(
        {
            "schema": "releasetrain.signature/v1",
            "release": release,
            "version": version,
            "digest": digest,
            "archive_sha256": archive_sha256,
        }
    )


def load_private_key(pem: str | bytes) -> Ed25519PrivateKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"signing key is not a PEM private key: {exc}") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise BundleError(f"signing key must be Ed25519, got {type(key).__name__}")
    return key


def load_public_key(pem: str | bytes) -> Ed25519PublicKey:
    data = pem.encode() if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"verification key is not a PEM public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise BundleError(f"verification key must be Ed25519, got {type(key).__name__}")
    return key


def public_key_pem(private_key: Ed25519PrivateKey) -> str:
    return (
        private_key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def generate_private_key_pem() -> str:
    return (
        Ed25519PrivateKey.generate()
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )


def sign_bundle(bundle: Bundle, release: str, version: str, private_key: Ed25519PrivateKey) -> dict[str, str]:
    """Return the signature document stored next to the bundle."""
    statement = signing_statement(release, version, bundle.digest, bundle.archive_sha256)
    return {
        "release": release,
        "version": version,
        "digest": bundle.digest,
        "archive_sha256": bundle.archive_sha256,
        "algorithm": "ed25519",
        "signature": base64.b64encode(private_key.sign(statement)).decode(),
        "public_key": public_key_pem(private_key),
    }


def verify_signed_bundle(
    archive: bytes,
    signature_doc: Mapping[str, Any],
    public_key: Ed25519PublicKey,
    *,
    release: str,
    version: str,
    expected_digest: str,
) -> dict[str, Any]:
    """Verify content, digest and signature; return the manifest.

    ``public_key`` is the trusted key from the signing connection, never the key
    written into the signature document (that one is informational only).
    """
    manifest = verify_archive(archive, expected_digest=expected_digest)
    if (manifest.get("release"), manifest.get("version")) != (release, version):
        raise BundleError(
            f"bundle is for {manifest.get('release')} {manifest.get('version')}, expected {release} {version}"
        )
    archive_sha = sha256_hex(archive)
    if signature_doc.get("archive_sha256") != archive_sha:
        raise BundleError(
            f"archive sha256 {archive_sha} differs from the signed value {signature_doc.get('archive_sha256')}"
        )
    statement = signing_statement(release, version, manifest["digest"], archive_sha)
    try:
        public_key.verify(base64.b64decode(signature_doc.get("signature", "")), statement)
    except (InvalidSignature, ValueError):
        raise BundleError("signature does not match the bundle (wrong key or altered bundle)") from None
    return manifest


def manifest_diff(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """What changed from bundle ``old`` to bundle ``new``: component versions and files."""

    def files(manifest: Mapping[str, Any]) -> dict[str, str]:
        return {f["path"]: f["sha256"] for c in manifest.get("components", []) for f in c.get("files", [])}

    def versions(manifest: Mapping[str, Any]) -> dict[str, Any]:
        return {c["name"]: c.get("version") for c in manifest.get("components", [])}

    before, after = files(old), files(new)
    old_versions, new_versions = versions(old), versions(new)
    return {
        "from": old.get("version"),
        "to": new.get("version"),
        "components": {
            name: [old_versions.get(name), new_versions.get(name)]
            for name in sorted(set(old_versions) | set(new_versions))
            if old_versions.get(name) != new_versions.get(name) or (name in old_versions) != (name in new_versions)
        },
        "added": sorted(set(after) - set(before)),
        "removed": sorted(set(before) - set(after)),
        "changed": sorted(p for p in set(before) & set(after) if before[p] != after[p]),
    }


# --- component versions: one version, the same bytes everywhere ------------------------------
def component_digest(entry: Mapping[str, Any]) -> str:
    """What one component of a manifest is made of: its files (paths inside the component,
    sizes, hashes). The same files give the same digest in any release."""
    prefix = f"{entry['name']}/"
    files = [{"path": f["path"].removeprefix(prefix), "size": f["size"], "sha256": f["sha256"]} for f in entry["files"]]
    return "sha256:" + sha256_hex(canonical_json(files))


def component_claims(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One record per component for the artifact store's component index: which bytes this
    component version is, and which release version packaged it first."""
    return [
        {
            "component": entry["name"],
            "version": entry["version"],
            "digest": component_digest(entry),
            "release": manifest["release"],
            "release_version": manifest["version"],
        }
        for entry in manifest["components"]
    ]


def consistency_problem(claim: Mapping[str, Any], indexed: Mapping[str, Any] | None) -> str | None:
    """Why ``claim`` contradicts what the index holds for the same component version (None: it
    does not). Names both digests and who packaged the indexed one."""
    if indexed is None or indexed.get("digest") == claim["digest"]:
        return None
    return (
        f"component {claim['component']} {claim['version']} is already packaged with digest {indexed.get('digest')} "
        f"(first by release {indexed.get('release')} {indexed.get('release_version')}); these files give "
        f"{claim['digest']}. A component version means the same bytes in every release: give the component "
        "a new version"
    )


# --- packaging modular: a deploy unit's own bundle ---------------------------------------------
def build_unit_bundles(
    release: str, version: str, collected: list[ComponentFiles], units: Mapping[str, list[str]]
) -> dict[str, Bundle]:
    """One bundle per deploy unit, with only its components' files (the same entries as in
    the release bundle): deterministic, so packaging again gives the same digests."""
    by_name = {c.name: c for c in collected}
    missing = sorted({n for names in units.values() for n in names} - set(by_name))
    if missing:
        raise BundleError(f"deploy units name components that were not collected: {', '.join(missing)}")
    return {unit: build_bundle(release, version, [by_name[n] for n in names]) for unit, names in units.items()}


def unit_problem(release_manifest: Mapping[str, Any], unit: str, unit_manifest: Mapping[str, Any]) -> str | None:
    """A unit bundle belongs to its release bundle when it is the same release and version and
    each of its components is, file for file, the release bundle's entry for it (the release
    bundle's digest, which approvals and promotion are about, then covers the unit's bytes)."""
    if (unit_manifest.get("release"), unit_manifest.get("version")) != (
        release_manifest.get("release"),
        release_manifest.get("version"),
    ):
        return (
            f"unit {unit}'s bundle is {unit_manifest.get('release')} {unit_manifest.get('version')}, not "
            f"{release_manifest.get('release')} {release_manifest.get('version')}"
        )
    entries = {c["name"]: c for c in release_manifest.get("components", [])}
    for component in unit_manifest.get("components", []):
        if entries.get(component.get("name")) != component:
            return (
                f"unit {unit}'s bundle carries component {component.get('name')} {component.get('version')} "
                "with files the release bundle does not have: it is not this release's unit"
            )
    if not unit_manifest.get("components"):
        return f"unit {unit}'s bundle carries no component"
    return None
