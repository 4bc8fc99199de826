from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest

from releasetrain.core.bundle import (
    BundleError,
    ComponentFiles,
    build_bundle,
    generate_private_key_pem,
    load_private_key,
    read_archive,
    sign_bundle,
    verify_archive,
    verify_signed_bundle,
)

COMPONENTS = [
    ComponentFiles("web", "1.2.0", {"index.html": b"<h1>shop</h1>", "js/app.js": b"console.log(1)"}),
    ComponentFiles("api", "1.2.0", {"service.py": b"print('api')"}),
]


@pytest.fixture(scope="module")
def key():
    return load_private_key(generate_private_key_pem())


def test_same_inputs_same_bytes_and_digest():
    a = build_bundle("shop", "1.2.0", COMPONENTS)
    b = build_bundle("shop", "1.2.0", list(reversed(COMPONENTS)))
    assert a.digest == b.digest and a.archive == b.archive
    assert a.digest.startswith("sha256:") and len(a.digest) == 71


def test_manifest_lists_versions_and_file_hashes():
    bundle = build_bundle("shop", "1.2.0", COMPONENTS)
    manifest = bundle.manifest
    assert [c["name"] for c in manifest["components"]] == ["api", "web"]
    web = manifest["components"][1]
    assert web["version"] == "1.2.0"
    assert [f["path"] for f in web["files"]] == ["web/index.html", "web/js/app.js"]
    assert web["files"][0]["sha256"] == hashlib.sha256(b"<h1>shop</h1>").hexdigest()
    assert web["files"][0]["size"] == len(b"<h1>shop</h1>")


def test_different_content_gives_different_digest():
    changed = [
        ComponentFiles("web", "1.2.0", {"index.html": b"<h1>SHOP</h1>", "js/app.js": b"console.log(1)"}),
        COMPONENTS[1],
    ]
    assert build_bundle("shop", "1.2.0", changed).digest != build_bundle("shop", "1.2.0", COMPONENTS).digest


def test_signed_bundle_verifies(key):
    bundle = build_bundle("shop", "1.2.0", COMPONENTS)
    sig = sign_bundle(bundle, "shop", "1.2.0", key)
    manifest = verify_signed_bundle(
        bundle.archive, sig, key.public_key(), release="shop", version="1.2.0", expected_digest=bundle.digest
    )
    assert manifest["digest"] == bundle.digest


def _rewrite(archive: bytes, change) -> bytes:
    """Rebuild an archive with ``change(name, data) -> data | None`` applied to members."""
    src = tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as dst:
        for member in src:
            data = src.extractfile(member).read()
            data = change(member.name, data)
            if data is None:
                continue
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    return out.getvalue()


def test_changed_file_is_detected_naming_it(key):
    bundle = build_bundle("shop", "1.2.0", COMPONENTS)
    sig = sign_bundle(bundle, "shop", "1.2.0", key)
    tampered = _rewrite(bundle.archive, lambda n, d: b"evil" if n == "web/index.html" else d)
    with pytest.raises(BundleError, match="file web/index.html was changed"):
        verify_signed_bundle(
            tampered, sig, key.public_key(), release="shop", version="1.2.0", expected_digest=bundle.digest
        )


def test_rewritten_manifest_is_detected(key):
    bundle = build_bundle("shop", "1.2.0", COMPONENTS)
    sig = sign_bundle(bundle, "shop", "1.2.0", key)

    def forge(name, data):
        if name == "web/index.html":
            return b"evil"
        if name == "manifest.json":
            # an attacker who also rewrites the manifest (hash and digest) consistently
            from releasetrain.core.bundle import canonical_json, manifest_digest, sha256_hex

            manifest = json.loads(data)
            manifest["components"][1]["files"][0]["sha256"] = sha256_hex(b"evil")
            manifest["components"][1]["files"][0]["size"] = 4
            manifest["digest"] = manifest_digest(manifest)
            return canonical_json(manifest)
        return data

    forged = _rewrite(bundle.archive, forge)
    verify_archive(forged)  # internally consistent...
    with pytest.raises(BundleError, match="differs from the packaged digest"):
        verify_signed_bundle(
            forged, sig, key.public_key(), release="shop", version="1.2.0", expected_digest=bundle.digest
        )


def test_extra_file_is_detected():
    bundle = build_bundle("shop", "1.2.0", COMPONENTS)
    src = tarfile.open(fileobj=io.BytesIO(bundle.archive), mode="r:gz")
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as dst:
        for member in src:
            dst.addfile(member, src.extractfile(member))
        info = tarfile.TarInfo("web/backdoor.sh")
        info.size = 3
        dst.addfile(info, io.BytesIO(b"rm "))
    with pytest.raises(BundleError, match="not in the manifest: web/backdoor.sh"):
        verify_archive(out.getvalue())


def test_wrong_key_is_refused(key):
    bundle = build_bundle("shop", "1.2.0", COMPONENTS)
    sig = sign_bundle(bundle, "shop", "1.2.0", key)
    other = load_private_key(generate_private_key_pem())
    with pytest.raises(BundleError, match="signature does not match"):
        verify_signed_bundle(
            bundle.archive, sig, other.public_key(), release="shop", version="1.2.0", expected_digest=bundle.digest
        )


def test_bundle_for_another_version_is_refused(key):
    bundle = build_bundle("shop", "1.2.0", COMPONENTS)
    sig = sign_bundle(bundle, "shop", "1.2.0", key)
    with pytest.raises(BundleError, match="expected shop 1.3.0"):
        verify_signed_bundle(
            bundle.archive, sig, key.public_key(), release="shop", version="1.3.0", expected_digest=bundle.digest
        )


@pytest.mark.parametrize("name", ["../etc/passwd", "/abs/path", "a/../../b"])
def test_unsafe_member_names_are_refused(name):
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo(name)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(BundleError, match="unsafe path"):
        read_archive(out.getvalue())


def test_links_are_refused():
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        info = tarfile.TarInfo("web/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        tar.addfile(info)
    with pytest.raises(BundleError, match="not a regular file"):
        read_archive(out.getvalue())


def test_garbage_is_refused():
    with pytest.raises(BundleError, match="unreadable"):
        read_archive(b"not a tarball")


def test_non_ed25519_key_is_refused():
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(BundleError, match="must be Ed25519"):
        load_private_key(pem)


def test_a_components_digest_is_its_files_whatever_release_carries_it():
    from releasetrain.core.bundle import build_manifest, component_claims, component_digest, consistency_problem

    web = ComponentFiles(name="web", version="3.1.0", files={"index.html": b"<h1>hi</h1>"})
    in_a = build_manifest("storefront", "2.0.0", [web])
    in_b = build_manifest("checkout", "7.1.0", [web, ComponentFiles(name="api", version="1.0.0", files={"m": b"x"})])
    [claim_a] = component_claims(in_a)
    claim_b = {c["component"]: c for c in component_claims(in_b)}
    assert claim_a["digest"] == claim_b["web"]["digest"] == component_digest(in_a["components"][0])
    assert (claim_b["api"]["version"], claim_b["api"]["release_version"]) == ("1.0.0", "7.1.0")
    assert consistency_problem(claim_b["web"], claim_a) is None
    changed = build_manifest(
        "payments", "1.0.0", [ComponentFiles(name="web", version="3.1.0", files={"index.html": b"!"})]
    )
    [claim_c] = component_claims(changed)
    problem = consistency_problem(claim_c, claim_a)
    assert claim_a["digest"] in problem and claim_c["digest"] in problem and "storefront 2.0.0" in problem
    assert consistency_problem(claim_c, None) is None


# --- packaging modular: unit bundles ----------------------------------------------------------
def _unit_files(name: str, text: str = "v1", version: str = "2.0.0"):
    from releasetrain.core.bundle import ComponentFiles

    return ComponentFiles(name=name, version=version, files={"index.html": text.encode()})


def test_unit_bundles_carry_only_their_components_as_the_release_bundle_has_them():
    from releasetrain.core.bundle import build_bundle, build_unit_bundles, unit_problem

    collected = [_unit_files("web"), _unit_files("api"), _unit_files("worker")]
    release = build_bundle("shop", "2.0.0", collected)
    units = build_unit_bundles("shop", "2.0.0", collected, {"web": ["web"], "api": ["api", "worker"]})
    assert [c["name"] for c in units["api"].manifest["components"]] == ["api", "worker"]
    assert all(unit_problem(release.manifest, u, b.manifest) is None for u, b in units.items())
    again = build_unit_bundles("shop", "2.0.0", collected, {"web": ["web"], "api": ["api", "worker"]})
    assert again["api"].archive == units["api"].archive, "deterministic: the same inputs give the same bytes"


@pytest.mark.parametrize(
    "release, version, files, expected",
    [
        ("shop", "2.0.0", [_unit_files("web", "other bytes")], "carries component web 2.0.0 with files the release"),
        ("shop", "2.0.1", [_unit_files("web", version="2.0.1")], "is shop 2.0.1, not shop 2.0.0"),
        ("checkout", "2.0.0", [_unit_files("web")], "is checkout 2.0.0, not shop 2.0.0"),
        ("shop", "2.0.0", [_unit_files("cron")], "carries component cron 2.0.0 with files the release"),
    ],
)
def test_a_unit_bundle_that_is_not_the_release_bundles_unit_is_named(release, version, files, expected):
    from releasetrain.core.bundle import build_bundle, unit_problem

    shop = build_bundle("shop", "2.0.0", [_unit_files("web"), _unit_files("api")])
    assert expected in unit_problem(shop.manifest, "web", build_bundle(release, version, files).manifest)


def test_a_unit_naming_a_component_that_was_not_collected_is_refused():
    from releasetrain.core.bundle import BundleError, build_unit_bundles

    with pytest.raises(BundleError, match="not collected: cron"):
        build_unit_bundles("shop", "2.0.0", [_unit_files("web")], {"web": ["web", "cron"]})
