"""The pure release domain: spec model, versioning, bundle manifest and signatures,
check evaluation, promotion and approval rules. Nothing here imports Airflow."""

from __future__ import annotations
