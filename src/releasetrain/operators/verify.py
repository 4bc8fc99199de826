"""Verify the bundle again, right before each deploy."""

from __future__ import annotations

from typing import Any

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from releasetrain.core.bundle import BundleError, verify_signed_bundle
from releasetrain.core.gatekeeper import Decision
from releasetrain.core.vocabulary import PACKAGE, Event
from releasetrain.hooks.bundle_store import BundleStoreHook, SigningKeyHook
from releasetrain.operators._common import enforce, record, run_ledger


class BundleVerifyOperator(BaseOperator):
    """Re-check every file's sha256, the bundle digest and the Ed25519 signature.

    A bundle changed after packaging fails this task, so nothing downstream deploys.

    :param release: release name
    :param environment: the environment about to receive the bundle
    :param notifications: the spec's routes: every one is told when the bundle fails verification
    :param units: packaging modular: the deploy units, each bundle verified too (content,
        digest as packaged, signature) and held against the release bundle's manifest
    """

    template_fields = ()  # nothing from a spec is rendered: a spec is data
    ui_color = "#e6f4ea"

    def __init__(
        self,
        *,
        release: str,
        environment: str,
        artifact_store: str | None = None,
        signing_conn_id: str = SigningKeyHook.default_conn_name,
        units: list[str] | None = None,
        notifications: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.units = list(units or [])
        self.notifications = list(notifications or [])
        self.release = release
        self.environment = environment
        self.artifact_store = artifact_store
        self.signing_conn_id = signing_conn_id

    def execute(self, context: Any) -> dict[str, Any]:
        run = run_ledger(context, self.release)
        packaged = run.last(Event.PACKAGED, task_id=PACKAGE)
        if packaged is None:
            refusal = Decision.refuse(self.task_id, run.missing(PACKAGE, "packaged bundle"))
            enforce(context, refusal, self.release, self.environment)
        version, digest = packaged.details["version"], packaged.details["digest"]  # type: ignore[union-attr]
        units: dict[str, str] = {}
        try:
            store, key = BundleStoreHook(self.artifact_store), SigningKeyHook(self.signing_conn_id).public_key()
            archive, signature = store.read(self.release, version)
            manifest = verify_signed_bundle(
                archive, signature, key, release=self.release, version=version, expected_digest=digest
            )
            units = self._verify_units(store, key, version, manifest, packaged.details)  # type: ignore[union-attr]
        except BundleError as exc:
            try:
                self._tell_tampered(context, version, exc)
            except Exception as telling:  # the refusal is what the task reports
                self.log.error("the failed verification could not be told: %s", telling)
            raise AirflowFailException(
                f"{self.environment}: bundle {self.release} {version} failed verification, "
                f"nothing will be deployed: {exc}"
            ) from None
        self.log.info(
            "Bundle %s %s verified for %s: digest %s, signature valid", self.release, version, self.environment, digest
        )
        result = {"environment": self.environment, "version": version, "digest": digest, "verified": True}
        if units:
            result["units"] = units
        record(context, Event.VERIFIED, self.release, environment=self.environment, details=result)
        return result

    def _tell_tampered(self, context: Any, version: str, error: BaseException) -> None:
        """Every audience hears of a bundle that failed verification (nothing of it is deployed)."""
        if not self.notifications:
            return
        from releasetrain.core.incident import tampered_payload
        from releasetrain.core.vocabulary import MOMENT_TAMPERED
        from releasetrain.notifiers.routes import tell
        from releasetrain.operators.rollback import told_reason

        payload = tampered_payload(
            release=self.release,
            run_id=context["run_id"],
            environment=self.environment,
            version=version,
            reason=told_reason(error),
        )
        tell(
            context,
            release=self.release,
            environment=self.environment,
            routes=self.notifications,
            moment=MOMENT_TAMPERED,
            payload=payload,
        )

    def _verify_units(
        self, store: BundleStoreHook, key: Any, version: str, manifest: dict[str, Any], packaged: dict[str, Any]
    ) -> dict[str, str]:
        """Each deploy unit's bundle: signed, its digest the packaged one, its components the
        release bundle's (whose digest the approvals and the promotion are about)."""
        if not self.units:
            return {}
        from releasetrain.core.bundle import unit_problem

        recorded = {u["unit"]: u["digest"] for u in packaged.get("units") or []}
        missing = [u for u in self.units if u not in recorded]
        if missing:
            raise BundleError(f"the packaging recorded no bundle for unit(s) {', '.join(missing)}")
        extra = sorted(set(recorded) - set(self.units))
        if extra:  # packaged under other units than this DAG deploys: nothing of it is deployed
            raise BundleError(f"the packaging recorded unit(s) {', '.join(extra)}, which this release does not deploy")
        covered: list[str] = []
        for unit in self.units:
            archive, signature = store.read(self.release, version, unit)
            unit_manifest = verify_signed_bundle(
                archive, signature, key, release=self.release, version=version, expected_digest=recorded[unit]
            )
            problem = unit_problem(manifest, unit, unit_manifest)
            if problem:
                raise BundleError(problem)
            covered += [c["name"] for c in unit_manifest["components"]]
        left = sorted({c["name"] for c in manifest["components"]} - set(covered))
        if left:
            raise BundleError(f"no unit bundle carries component(s) {', '.join(left)}")
        return {unit: recorded[unit] for unit in self.units}
