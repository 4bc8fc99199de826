"""Software bills of materials: each component's lock files (``requirements.txt``,
``package-lock.json``) read into one CycloneDX document for the bundle, and the libraries
two components of a release pin at different versions (conflicts, refused unless waived).

The CycloneDX document is built with the maintained ``cyclonedx-python-lib``; it is
deterministic (no timestamp, a serial number derived from the contents) so that the same
inputs give the same bundle digest. Nothing here imports Airflow.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

SBOM_NAME = "sbom.cdx.json"
LOCK_FILES = ("requirements.txt", "package-lock.json")
_REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*==\s*([A-Za-z0-9][A-Za-z0-9.+!_-]*)\s*$")


class LockFileError(ValueError):
    """A lock file that cannot be read (named with the component and path)."""


@dataclass(frozen=True, order=True)
class Library:
    ecosystem: str  # "pypi" | "npm"
    name: str  # normalised (PEP 503 for pypi)
    version: str
    component: str
    source: str  # the lock file, inside the component

    @property
    def purl(self) -> str:
        return f"pkg:{self.ecosystem}/{self.name}@{self.version}"

    def to_dict(self) -> dict[str, str]:
        return {
            "ecosystem": self.ecosystem,
            "name": self.name,
            "version": self.version,
            "component": self.component,
            "source": self.source,
        }


def _pypi_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def read_requirements(text: str, component: str, source: str) -> list[Library]:
    """Pinned requirements (``name==version``; extras, markers, hashes and comments allowed).
    A line that pins nothing is no lock: it is named in the error."""
    libraries = []
    for number, raw in enumerate(text.lstrip("\ufeff").splitlines(), 1):
        line = re.split(r"(?:^|\s)#", raw, maxsplit=1)[0].split(";", 1)[0].strip()
        line = re.sub(r"\s+--hash[=\s]\S+", "", line).rstrip("\\").strip()
        if not line:
            continue
        if line.startswith("-"):  # options: an include, a constraint or an editable install is no lock
            if line.split()[0] in ("-e", "--editable", "-r", "--requirement", "-c", "--constraint"):
                raise LockFileError(
                    f"component {component}: {source}:{number}: includes, constraints and editable installs are "
                    "not a lock: pin every library as name==version"
                )
            continue
        match = _REQUIREMENT.match(line)
        if not match:  # the line is not repeated: it may hold a URL with credentials
            raise LockFileError(
                f"component {component}: {source}:{number}: the requirement is not pinned (name==version)"
            )
        libraries.append(Library("pypi", _pypi_name(match.group(1)), match.group(3), component, source))
    return libraries


def read_package_lock(text: str, component: str, source: str) -> list[Library]:
    """npm's ``package-lock.json`` (lockfileVersion 1, 2 or 3): every installed package."""
    where = f"component {component}: {source}"
    try:
        data = json.loads(text.lstrip("\ufeff"))
    except (ValueError, RecursionError) as exc:
        raise LockFileError(f"{where}: not JSON ({str(exc)[:120]})") from None
    if not isinstance(data, dict):
        raise LockFileError(f"{where}: a package-lock.json is a JSON object")
    found: set[tuple[str, str]] = set()
    packages = data.get("packages")
    if isinstance(packages, dict):
        for key, entry in packages.items():
            if not isinstance(key, str) or "node_modules/" not in key or not isinstance(entry, dict):
                continue
            name = key.rsplit("node_modules/", 1)[1]
            if name and not entry.get("link") and isinstance(entry.get("version"), str) and entry["version"]:
                found.add((name, entry["version"]))
    else:

        def walk(deps: Any, depth: int = 0) -> None:
            if not isinstance(deps, dict) or depth > 200:
                return
            for name, entry in deps.items():
                if isinstance(entry, dict) and name and isinstance(entry.get("version"), str) and entry["version"]:
                    found.add((name, entry["version"]))
                    walk(entry.get("dependencies"), depth + 1)

        walk(data.get("dependencies"))
    return [Library("npm", name, version, component, source) for name, version in sorted(found)]


def lock_files(files: Mapping[str, bytes]) -> list[str]:
    """The lock files among a component's files (not those of its vendored packages)."""
    return sorted(
        path
        for path in files
        if PurePosixPath(path).name in LOCK_FILES and "node_modules" not in PurePosixPath(path).parts
    )


def component_libraries(component: str, files: Mapping[str, bytes]) -> list[Library]:
    libraries: list[Library] = []
    for path in lock_files(files):
        text = files[path].decode("utf-8", errors="replace")
        reader = read_requirements if PurePosixPath(path).name == "requirements.txt" else read_package_lock
        libraries += reader(text, component, path)
    return sorted(set(libraries))


def _normalised(version: str) -> str:
    """A Python version as PEP 440 compares it (``1.0`` and ``1.0.0`` are the same)."""
    from packaging.utils import canonicalize_version

    return str(canonicalize_version(version))


def conflicts(libraries: Iterable[Library]) -> list[str]:
    """Libraries two components of the release pin at different versions, one line each
    (sorted): ``pypi requests: 2.31.0 in web, 2.32.3 in api``."""
    by_library: dict[tuple[str, str], dict[str, dict[str, str]]] = {}  # -> component -> {canonical: as pinned}
    for lib in libraries:
        canonical = _normalised(lib.version) if lib.ecosystem == "pypi" else lib.version
        by_library.setdefault((lib.ecosystem, lib.name), {}).setdefault(lib.component, {})[canonical] = lib.version
    lines = []
    for (ecosystem, name), components in sorted(by_library.items()):
        if len(components) > 1 and len({frozenset(v) for v in components.values()}) > 1:
            where = ", ".join(f"{'/'.join(sorted(v.values()))} in {c}" for c, v in sorted(components.items()))
            lines.append(f"{ecosystem} {name}: {where}")
    return lines


def cyclonedx(release: str, version: str, components: Mapping[str, str], libraries: Iterable[Library]) -> bytes:
    """The release's SBOM as a CycloneDX 1.6 JSON document (deterministic).

    ``components``: the release's components and their versions."""
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    libraries = sorted(set(libraries))
    seed = json.dumps([release, version, sorted(components.items()), [lib.to_dict() for lib in libraries]])
    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"releasetrain:{seed}"))
    bom.metadata.timestamp = None
    root = Component(name=release, version=version, type=ComponentType.APPLICATION, bom_ref=f"release:{release}")
    bom.metadata.component = root
    parts = {}
    for name, part_version in sorted(components.items()):
        parts[name] = Component(
            name=name, version=part_version, type=ComponentType.APPLICATION, bom_ref=f"component:{name}"
        )
        bom.components.add(parts[name])
    bom.register_dependency(root, parts.values())
    refs: dict[str, Any] = {}
    for lib in libraries:
        if lib.purl not in refs:
            refs[lib.purl] = Component(
                name=lib.name,
                version=lib.version,
                type=ComponentType.LIBRARY,
                purl=PackageURL(lib.ecosystem, None, lib.name, lib.version),
                bom_ref=lib.purl,
            )
            bom.components.add(refs[lib.purl])
    for name, part in parts.items():
        bom.register_dependency(part, [refs[lib.purl] for lib in libraries if lib.component == name])
    return JsonV1Dot6(bom).output_as_string(indent=1).encode("utf-8")
