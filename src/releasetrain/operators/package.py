"""Package the release: a deterministic, signed bundle in the artifact store."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from airflow.sdk import BaseOperator, ObjectStoragePath
from airflow.sdk.exceptions import AirflowFailException

from releasetrain.core.bundle import (
    BundleError,
    ComponentFiles,
    build_bundle,
    component_claims,
    consistency_problem,
    read_archive,
    sign_bundle,
)
from releasetrain.core.gatekeeper import Decision
from releasetrain.core.vocabulary import PACKAGE, Event
from releasetrain.hooks.bundle_store import BundleStoreHook, SigningKeyHook
from releasetrain.operators._common import enforce, release_request


class BundlePackageOperator(BaseOperator):
    """Collect every component's files, build the bundle, sign it and store it.

    Versions are immutable: packaging a version that is already stored with the same
    digest reuses it (a re-run is a no-op); a different digest is refused. So are component
    versions, across releases and teams: the store's component index remembers the bytes of
    every component version, and a component version packaged again with other bytes is
    refused naming both digests.

    :param release: release name
    :param components: ``[{"name", "source", "version"}]`` from the spec
    :param project_root: folder that relative component sources are resolved against
    :param artifact_store: artifact store URL (None: the default store)
    :param signing_conn_id: connection holding the Ed25519 private key
    :param units: packaging modular: deploy unit -> its components; each unit gets its own
        signed bundle beside the release bundle (which stays the record approved and promoted)
    """

    template_fields = ()  # nothing from a spec is rendered: a spec is data
    ui_color = "#fef7e0"

    def __init__(
        self,
        *,
        release: str,
        components: list[dict[str, Any]],
        project_root: str,
        artifact_store: str | None = None,
        signing_conn_id: str = SigningKeyHook.default_conn_name,
        production: list[str] | None = None,
        environments: list[str] | None = None,
        config_patterns: list[str] | None = None,
        hotfix_task_id: str | None = None,
        units: dict[str, list[str]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.units = {u: list(names) for u, names in (units or {}).items()}
        if not components:
            raise ValueError("a release needs at least one component")
        self.release = release
        self.components = components
        self.project_root = project_root
        self.artifact_store = artifact_store
        self.signing_conn_id = signing_conn_id
        self.production = list(production or [])
        self.environments = list(environments or [])
        self.config_patterns = None if config_patterns is None else list(config_patterns)
        self.hotfix_task_id = hotfix_task_id

    def execute(self, context: Any) -> dict[str, Any]:
        request = release_request(context, self.release)
        version = request.version
        if request.hotfix:  # only what the hotfix policy allowed is packaged
            if not self.hotfix_task_id:
                enforce(
                    context,
                    Decision.refuse(PACKAGE, "this release has no hotfix_policy: no run is a hotfix"),
                    self.release,
                )
            from releasetrain.core import gatekeeper
            from releasetrain.operators._common import run_ledger

            planned = {c["name"]: c.get("version") or version for c in self.components}
            decision = gatekeeper.hotfix(run_ledger(context, self.release), self.hotfix_task_id, planned)
            enforce(context, decision, self.release)
        collected = [self._collect(c, version) for c in self.components]
        self._refuse_environment_config(context, collected)
        sbom, attachments = self._sbom(context, version, collected)
        try:
            bundle = build_bundle(self.release, version, collected, attachments)
        except BundleError as exc:
            raise AirflowFailException(f"packaging {self.release} {version}: {exc}") from None
        store = BundleStoreHook(self.artifact_store)
        location = store.location(self.release, version)
        existing = store.read_signature(self.release, version)
        if existing and existing.get("digest") != bundle.digest:
            raise AirflowFailException(
                f"{self.release} {version} is already packaged at {location} with digest {existing.get('digest')}; "
                f"these inputs give {bundle.digest}. Released versions are immutable: use a new version."
            )
        contracts = self._check_contracts(context, store, collected)  # before the index: a refusal claims nothing
        migrations = self._migrations(collected)
        self._claim_components(context, store, bundle.manifest)
        units = self._package_units(store, version, collected)  # before the release bundle's signature
        if existing:
            self.log.info(
                "Bundle %s %s already packaged with digest %s: reusing it", self.release, version, bundle.digest
            )
            archive_sha256 = existing.get("archive_sha256")
        else:
            signature = sign_bundle(bundle, self.release, version, SigningKeyHook(self.signing_conn_id).signer())
            store.write(self.release, version, bundle.archive, bundle.manifest, signature)
            archive_sha256 = bundle.archive_sha256
            self.log.info(
                "Packaged %s %s: digest %s, %d bytes, at %s",
                self.release,
                version,
                bundle.digest,
                len(bundle.archive),
                location,
            )
        result = {
            "release": self.release,
            "version": version,
            "digest": bundle.digest,
            "archive_sha256": archive_sha256,
            "location": str(location),
            "components": [
                {"name": c["component"], "version": c["version"], "digest": c["digest"]}
                for c in component_claims(bundle.manifest)
            ],
            "files": sum(len(c["files"]) for c in bundle.manifest["components"]),
        }
        if units:
            result["units"] = units
        if contracts:
            result["contracts"] = contracts
        if migrations:
            result["migrations"] = migrations
        if sbom:
            result["sbom"] = sbom
        from releasetrain.operators._common import record

        record(context, Event.PACKAGED, self.release, details=result)
        return result

    def _package_units(self, store: BundleStoreHook, version: str, collected: list[ComponentFiles]) -> list[dict]:
        """Packaging modular: each deploy unit's own signed bundle (written before the release
        bundle's signature, so a packaged release always has its units). A unit stored with
        other bytes is refused like a release bundle would be."""
        if not self.units:
            return []
        from releasetrain.core.bundle import build_unit_bundles

        try:
            bundles = build_unit_bundles(self.release, version, collected, self.units)
        except BundleError as exc:
            raise AirflowFailException(f"packaging {self.release} {version}: {exc}") from None
        signer = None
        units = []
        for unit, bundle in bundles.items():
            existing = store.read_signature(self.release, version, unit)
            if existing and existing.get("digest") != bundle.digest:
                raise AirflowFailException(
                    f"{self.release} {version} unit {unit} is already packaged at "
                    f"{store.location(self.release, version, unit)} with digest {existing.get('digest')}; these "
                    f"inputs give {bundle.digest}. Released versions are immutable: use a new version."
                )
            if not existing:
                signer = signer or SigningKeyHook(self.signing_conn_id).signer()
                signature = sign_bundle(bundle, self.release, version, signer)
                store.write(self.release, version, bundle.archive, bundle.manifest, signature, unit=unit)
            units.append(
                {
                    "unit": unit,
                    "components": self.units[unit],
                    "digest": bundle.digest,
                    "archive_sha256": bundle.archive_sha256,
                    "location": str(store.location(self.release, version, unit)),
                }
            )
            self.log.info("Packaged unit %s of %s %s: digest %s", unit, self.release, version, bundle.digest)
        return units

    def _migrations(self, collected: list[ComponentFiles]) -> dict[str, dict[str, Any]]:
        """Each migrating component's steps (read here: a bad folder stops packaging, named) and
        the schema range this version declares: what later releases' contract checks read."""
        from releasetrain.core.migration import MigrationError, folder_files, read_folder

        declared = {c["name"]: c["migrations"] for c in self.components if c.get("migrations")}
        found: dict[str, dict[str, Any]] = {}
        for component in (c for c in collected if c.name in declared):
            path = declared[component.name]["path"]
            files = folder_files(component.files, path)
            try:
                if not files:
                    raise MigrationError(f"{component.name}/{path}: the migrations folder is missing or empty")
                steps, compatible = read_folder(files, f"{component.name}/{path}")
            except MigrationError as exc:
                raise AirflowFailException(f"packaging {self.release}: {exc}") from None
            found[component.name] = {
                "path": path,
                "compatible": compatible,
                "steps": [s.record() for s in steps],
            }
        return found

    def _refuse_environment_config(self, context: Any, collected: list[ComponentFiles]) -> None:
        """A bundle carries no environment's configuration (that is the environment's profile):
        files named for one environment are refused, each named with the rule it broke."""
        from releasetrain.core.profile import DEFAULT_CONFIG_PATTERNS, environment_files

        patterns = DEFAULT_CONFIG_PATTERNS if self.config_patterns is None else self.config_patterns
        reasons = [
            f"component {c.name}: {path} is configuration for one environment (matches {pattern!r}); "
            "bundles carry none: put it in the environment's config profile"
            for c in collected
            for path, pattern in environment_files(sorted(c.files), self.environments, patterns)
        ]
        if reasons:
            enforce(context, Decision.refuse(PACKAGE, *reasons), self.release)

    def _sbom(
        self, context: Any, version: str, collected: list[ComponentFiles]
    ) -> tuple[dict[str, Any] | None, dict[str, bytes]]:
        """The components' lock files read into a CycloneDX SBOM, carried in the bundle; its
        libraries and their conflicts across components go to the ``packaged`` record (and
        from there the evidence). A lock file that pins nothing is refused, named."""
        from releasetrain.core.sbom import SBOM_NAME, LockFileError, component_libraries, conflicts, cyclonedx

        libraries, reasons = [], []
        for component in collected:
            try:
                libraries += component_libraries(component.name, component.files)
            except LockFileError as exc:
                reasons.append(str(exc))
        if reasons:
            enforce(context, Decision.refuse(PACKAGE, *reasons), self.release)
        if not libraries:
            return None, {}
        document = cyclonedx(self.release, version, {c.name: c.version for c in collected}, libraries)
        from releasetrain.core.bundle import sha256_hex

        summary = {
            "path": SBOM_NAME,
            "format": "CycloneDX 1.6",
            "sha256": sha256_hex(document),
            "libraries": [lib.to_dict() for lib in libraries],
            "conflicts": conflicts(libraries),
        }
        return summary, {SBOM_NAME: document}

    def _claim_components(self, context: Any, store: BundleStoreHook, manifest: dict[str, Any]) -> None:
        """One component version, the same bytes in every release: checked against the artifact
        store's component index (all components first, so a refusal indexes nothing), then
        indexed. A refusal is recorded in the ledger with both digests."""
        claims = component_claims(manifest)
        problems = [consistency_problem(c, store.component_record(c["component"], c["version"])) for c in claims]
        if not any(problems):
            problems = [consistency_problem(c, store.claim_component(c)) for c in claims]
        reasons = [p for p in problems if p]
        enforce(context, Decision.refuse(PACKAGE, *reasons) if reasons else Decision.allow(PACKAGE), self.release)

    def _check_contracts(
        self, context: Any, store: BundleStoreHook, collected: list[ComponentFiles]
    ) -> list[dict[str, Any]]:
        """Each component's declared version step against what its API contract's changes
        need, compared with the contract of the version live in production (from the ledger
        and that version's bundle). A smaller step is refused with the breaking changes."""
        contracts = {c["name"]: c["contract"] for c in self.components if c.get("contract")}
        if not contracts:
            return []
        from releasetrain.core.contract import (
            ContractError,
            class_problem,
            contract_class,
            diff_contracts,
            load_contract,
        )
        from releasetrain.core.incident import live_version
        from releasetrain.hooks.ledger import LedgerHook

        hook = LedgerHook()
        try:
            live = live_version(hook.events(release=self.release), self.production)
        finally:
            hook.close()
        live_files: dict[str, bytes] = {}
        live_versions: dict[str, str] = {}
        if live is not None:
            try:
                live_manifest, live_files = read_archive(store.read(self.release, live)[0])
            except BundleError as exc:
                reason = (
                    f"the contract cannot be compared: the bundle of {live}, live in production, is unreadable: {exc}"
                )
                enforce(context, Decision.refuse(PACKAGE, reason), self.release)
            live_versions = {c["name"]: c["version"] for c in live_manifest["components"]}
        results, problems = [], []
        for component in (c for c in collected if c.name in contracts):
            path = contracts[component.name]
            entry: dict[str, Any] = {"component": component.name, "contract": path, "version": component.version}
            old = live_files.get(f"{component.name}/{path}")
            entry.update(live_release=live, live_version=live_versions.get(component.name))
            try:
                if path not in component.files:
                    raise ContractError(f"component {component.name} declares contract {path}, but has no such file")
                new_doc = load_contract(component.files[path], f"{component.name}/{path}")
                if old is None:  # first release to production, or the live version had no contract
                    results.append({**entry, "class": None, "changes": []})
                    continue
                changes = diff_contracts(load_contract(old, f"{self.release} {live}: {component.name}/{path}"), new_doc)
            except ContractError as exc:
                problems.append(str(exc))
                continue
            results.append({**entry, "class": contract_class(changes), "changes": [c.what for c in changes]})
            problem = class_problem(component.name, entry["live_version"], component.version, changes)
            if problem:
                problems.append(problem)
        enforce(context, Decision.refuse(PACKAGE, *problems) if problems else Decision.allow(PACKAGE), self.release)
        return results

    def _collect(self, component: dict[str, Any], release_version: str) -> ComponentFiles:
        source = component["source"]
        name = component["name"]
        from releasetrain.core.policy import Policy

        policy = Policy.from_environment()
        problem = policy.source_problem(source)
        if problem:  # the spec loader refuses it too
            raise AirflowFailException(f"component {name!r}: {problem}")
        if urlsplit(source).scheme.lower() == "file":  # FILE:// too: links are resolved either way
            root: Any = self._local_source(name, source, policy)
        elif "://" in source:
            root = ObjectStoragePath(source)
        else:
            project = Path(self.project_root).resolve()
            root = (project / source).resolve()
            if not root.is_relative_to(project):
                raise AirflowFailException(
                    f"component {name!r}: source {source} lies outside the project ({project}); "
                    "use an object storage URL for artifacts kept elsewhere"
                )
        if not root.exists():
            raise AirflowFailException(f"component {name!r}: source {source} does not exist (looked at {root})")
        if root.is_file():
            files = {root.name: root.read_bytes()}
        else:
            files = {}
            for path in sorted(root.rglob("*"), key=str):
                if isinstance(path, Path) and path.is_symlink():
                    raise AirflowFailException(
                        f"component {name!r}: {path} is a symbolic link; bundles hold regular files only"
                    )
                if path.is_file():
                    rel = os.path.relpath(str(path), str(root)).replace(os.sep, "/")
                    files[rel] = path.read_bytes()
        return ComponentFiles(name=name, version=component.get("version") or release_version, files=files)

    @staticmethod
    def _local_source(name: str, source: str, policy: Any) -> Path:
        """A ``file://`` source as a local path, still under its root once links are resolved
        (a link inside a root may not lead out of it)."""
        from releasetrain.core.policy import under_root

        path = Path(unquote(urlsplit(source).path)).resolve()
        for root in policy.source_roots:
            if urlsplit(root).scheme.lower() == "file" and under_root(source, root):
                base = Path(unquote(urlsplit(root).path)).resolve()
                if path.is_relative_to(base):
                    return path
        raise AirflowFailException(
            f"component {name!r}: source {source} resolves to {path}, outside its source root "
            "(a symbolic link leads out of it)"
        )
