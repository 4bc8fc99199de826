"""releasetrain: release management as Apache Airflow DAGs.

``releasetrain.core`` is the pure domain (no Airflow import). Everything else is a thin
Airflow adapter around it: hooks, operators, triggers, the DAG factory and the plugin.
"""

from __future__ import annotations

__version__ = "0.1.0"
