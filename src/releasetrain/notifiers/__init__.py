"""Notifiers (Airflow ``BaseNotifier``): usable as callbacks on any DAG or task, and by releasetrain."""

from releasetrain.notifiers.webhook import WebhookNotifier

__all__ = ["WebhookNotifier"]
