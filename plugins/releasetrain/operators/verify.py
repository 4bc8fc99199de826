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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
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
        try:
            archive, signature = BundleStoreHook(self.artifact_store).read(self.release, version)
            verify_signed_bundle(
                archive,
                signature,
                SigningKeyHook(self.signing_conn_id).public_key(),
                release=self.release,
                version=version,
                expected_digest=digest,
            )
        except BundleError as exc:
            raise AirflowFailException(
                f"{self.environment}: bundle {self.release} {version} failed verification, "
                f"nothing will be deployed: {exc}"
            ) from None
        self.log.info(
            "Bundle %s %s verified for %s: digest %s, signature valid", self.release, version, self.environment, digest
        )
        result = {"environment": self.environment, "version": version, "digest": digest, "verified": True}
        record(context, Event.VERIFIED, self.release, environment=self.environment, details=result)
        return result
