"""Lock files into an SBOM (CycloneDX) and library conflicts across components (no Airflow)."""

from __future__ import annotations

import json

import pytest

from releasetrain.core.bundle import ComponentFiles, build_bundle, verify_archive
from releasetrain.core.sbom import (
    SBOM_NAME,
    Library,
    LockFileError,
    component_libraries,
    conflicts,
    cyclonedx,
    read_package_lock,
    read_requirements,
)


def test_pinned_requirements_are_read_with_extras_markers_hashes_and_comments():
    text = (
        "# pinned\nRequests[socks]==2.32.3 ; python_version >= '3.9' --hash=sha256:ab\n"
        "zope.interface==7.1  # ok\n--only-binary :all:\n"
    )
    assert [(lib.name, lib.version) for lib in read_requirements(text, "api", "requirements.txt")] == [
        ("requests", "2.32.3"),
        ("zope-interface", "7.1"),
    ]


@pytest.mark.parametrize("line", ["requests>=2.0", "requests", "git+https://example.com/x.git"])
def test_a_requirement_that_pins_nothing_is_named(line):
    with pytest.raises(LockFileError, match=r"component api: requirements.txt:1: .* is not pinned"):
        read_requirements(line, "api", "requirements.txt")


def test_package_locks_of_every_format_give_each_installed_package():
    v3 = {
        "packages": {
            "": {"name": "web"},
            "node_modules/a": {"version": "1.0.0"},
            "node_modules/a/node_modules/b": {"version": "2.0.0"},
            "node_modules/l": {"link": True},
        }
    }
    v1 = {"dependencies": {"a": {"version": "1.0.0", "dependencies": {"b": {"version": "2.0.0"}}}}}
    for data in (v3, v1):
        libs = read_package_lock(json.dumps(data), "web", "package-lock.json")
        assert [(lib.ecosystem, lib.name, lib.version) for lib in libs] == [
            ("npm", "a", "1.0.0"),
            ("npm", "b", "2.0.0"),
        ]
    with pytest.raises(LockFileError, match="component web: package-lock.json: not JSON"):
        read_package_lock("{", "web", "package-lock.json")


def test_lock_files_of_vendored_packages_are_not_the_components():
    files = {"requirements.txt": b"a==1.0\n", "node_modules/x/package-lock.json": b"{", "sub/package-lock.json": b"{}"}
    assert [lib.name for lib in component_libraries("web", files)] == ["a"]


def lib(component, name, version, ecosystem="pypi"):
    return Library(ecosystem, name, version, component, "requirements.txt")


@pytest.mark.parametrize(
    ("libraries", "lines"),
    [
        (
            [lib("web", "requests", "2.31.0"), lib("api", "requests", "2.32.3")],
            ["pypi requests: 2.32.3 in api, 2.31.0 in web"],
        ),
        ([lib("web", "requests", "2.32.3"), lib("api", "requests", "2.32.3")], []),
        ([lib("web", "six", "1.16"), lib("api", "six", "1.16.0")], []),  # the same version to pip (PEP 440)
        ([lib("web", "a", "1"), lib("web", "a", "2")], []),  # one component: npm nests versions
        ([lib("web", "a", "1", "npm"), lib("api", "a", "2")], []),  # other ecosystems
        ([lib("web", "a", "1"), lib("web", "a", "2"), lib("api", "a", "2")], ["pypi a: 2 in api, 1/2 in web"]),
    ],
)
def test_a_conflict_is_one_library_at_other_versions_in_two_components(libraries, lines):
    assert conflicts(libraries) == lines


def test_the_sbom_is_cyclonedx_deterministic_and_travels_in_the_bundle():
    libraries = [lib("web", "requests", "2.31.0"), lib("api", "urllib3", "2.2.3")]
    document = cyclonedx("shop", "1.0.0", {"web": "1.0.0", "api": "1.0.0"}, libraries)
    assert document == cyclonedx("shop", "1.0.0", {"web": "1.0.0", "api": "1.0.0"}, list(reversed(libraries)))
    data = json.loads(document)
    assert data["bomFormat"] == "CycloneDX" and data["metadata"]["component"]["name"] == "shop"
    assert {c.get("purl") for c in data["components"]} >= {"pkg:pypi/requests@2.31.0", "pkg:pypi/urllib3@2.2.3"}
    web = next(d for d in data["dependencies"] if d["ref"] == "component:web")
    assert web["dependsOn"] == ["pkg:pypi/requests@2.31.0"]
    parts = [ComponentFiles("web", "1.0.0", {"index.html": b"x"})]
    plain, with_sbom = build_bundle("shop", "1.0.0", parts), build_bundle("shop", "1.0.0", parts, {SBOM_NAME: document})
    assert "attachments" not in plain.manifest, "a bundle without an SBOM keeps the digest it always had"
    assert verify_archive(with_sbom.archive, with_sbom.digest)["attachments"][0]["path"] == SBOM_NAME
    assert plain.digest != with_sbom.digest


def test_a_refused_requirement_is_not_repeated_it_may_carry_credentials():
    with pytest.raises(LockFileError) as refused:
        read_requirements("lib @ git+https://oauth2:glpat-s3cret@gitlab.com/o/lib.git\n", "api", "requirements.txt")
    assert "glpat" not in str(refused.value) and "requirements.txt:1: the requirement is not pinned" in str(
        refused.value
    )
    with pytest.raises(LockFileError, match="includes, constraints and editable installs are not a lock"):
        read_requirements("a==1\n-r more.txt\n", "api", "requirements.txt")
    bom_and_tab = "\ufeffrequests==2.0\t# pinned\na==1 --hash sha256:ab\n--index-url https://pypi.example\n"
    assert [lib.name for lib in read_requirements(bom_and_tab, "api", "requirements.txt")] == ["requests", "a"]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("[]", "a package-lock.json is a JSON object"),
        ("[" * 100000, "not JSON"),
        ('{"dependencies": [1, 2]}', None),
        ('{"packages": {"x/node_modules/": {"version": "1"}, "node_modules/a": {"version": {"x": 1}}}}', None),
    ],
)
def test_a_malformed_package_lock_is_refused_by_name_or_yields_nothing(text, error):
    if error:
        with pytest.raises(LockFileError, match=f"component web: package-lock.json: {error}"):
            read_package_lock(text, "web", "package-lock.json")
    else:
        assert read_package_lock(text, "web", "package-lock.json") == []
