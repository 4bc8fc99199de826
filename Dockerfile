# releasetrain on the official Apache Airflow image.
#   docker build -t releasetrain .
# The package is installed as a distribution (its `airflow.plugins` entry point registers
# the plugin once); DAG files and release specs go where Airflow's image expects them.
FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:root pyproject.toml README.md constraints.txt /opt/releasetrain/
COPY --chown=airflow:root plugins/releasetrain /opt/releasetrain/plugins/releasetrain
RUN pip install --no-cache-dir -c /opt/releasetrain/constraints.txt /opt/releasetrain

COPY --chown=airflow:root dags/ /opt/airflow/dags/
COPY --chown=airflow:root include/ /opt/airflow/include/
