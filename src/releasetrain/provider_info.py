"""Provider information: what ``airflow providers`` shows of releasetrain (the
``apache_airflow_provider`` entry point). Airflow reads it without importing our hooks:
the connection types (with their form fields), the notifier, the triggers and the
``[releasetrain]`` configuration section."""

from __future__ import annotations

from typing import Any

from releasetrain import __version__
from releasetrain.core.settings import OPTIONS, SECTION

DEPLOY_TARGET = "releasetrain_deploy_target"
SIGNING = "releasetrain_signing"
TRIGGER_MODULES = [
    "releasetrain.triggers.alerts",
    "releasetrain.triggers.analysis",
    "releasetrain.triggers.dependency",
    "releasetrain.triggers.deployment",
    "releasetrain.triggers.health",
    "releasetrain.triggers.lock",
    "releasetrain.triggers.phase",
    "releasetrain.triggers.train",
    "releasetrain.triggers.window",
]


def get_provider_info() -> dict[str, Any]:
    return {
        "package-name": "releasetrain",
        "name": "releasetrain",
        "description": "Release management as Airflow DAGs: signed bundles, gated promotion, approvals with "
        "segregation of duties, canary analysis, rollbacks and a tamper-evident release ledger.",
        "versions": [__version__],
        "integrations": [
            {
                "integration-name": "releasetrain",
                "external-doc-url": "https://github.com/releasetrain/releasetrain/tree/main/docs",
                "tags": ["software"],
            }
        ],
        # (no "plugins": the plugin loads through its own `airflow.plugins` entry point, which
        # Airflow 3.3 reads whatever [core] lazy_discover_providers says; listed here too, it
        # would load twice, and the second time is an import error, with that option off)
        "notifications": ["releasetrain.notifiers.webhook.WebhookNotifier"],
        "triggers": [{"integration-name": "releasetrain", "python-modules": TRIGGER_MODULES}],
        "connection-types": [
            {
                "connection-type": DEPLOY_TARGET,
                "hook-class-name": "releasetrain.hooks.deploy_target.DeployTargetHook",
                "hook-name": "releasetrain deploy target",
                "ui-field-behaviour": {
                    "hidden-fields": ["schema", "port", "extra"],
                    "relabeling": {"host": "Base URL", "login": "User", "password": "Password"},
                    "placeholders": {
                        "host": "https://deploy.example.com/environments/prod",
                        "login": "deployer",
                    },
                },
            },
            {
                "connection-type": SIGNING,
                "hook-class-name": "releasetrain.hooks.bundle_store.SigningKeyHook",
                "hook-name": "releasetrain signing key",
                "ui-field-behaviour": {
                    "hidden-fields": ["host", "schema", "login", "port", "extra"],
                    "relabeling": {"password": "Private key (PEM)"},
                    "placeholders": {"password": "-----BEGIN PRIVATE KEY----- ..."},
                },
                "conn-fields": {
                    "public_key": {
                        "label": "Public key (PEM), pinned for verifiers",
                        "description": "The public half of the key; verifiers (the deploy, the fleet, "
                        "`releasetrain evidence verify --key-conn`) check signatures against it.",
                        "schema": {"type": ["string", "null"]},
                    },
                    "pkcs11": {
                        "label": "PKCS#11 key (JSON: module, token, label)",
                        "description": "Instead of a PEM private key: the key on a token, which never leaves it "
                        "(the PIN goes in the password field).",
                        "schema": {"type": ["string", "null"]},
                    },
                },
            },
        ],
        "config": {
            SECTION: {
                "description": "releasetrain: where specs, calendars and bundles live, and what specs may use. "
                "Each option can also be set as AIRFLOW__RELEASETRAIN__<OPTION>.",
                "options": {
                    name: {
                        "description": description,
                        "version_added": "0.1.0",
                        "type": "string",
                        "example": example,
                        "default": None,
                    }
                    for name, (description, example) in OPTIONS.items()
                },
            }
        },
    }
