# releasetrain on the official Apache Airflow image, installed from its wheel with
# Airflow's own constraints for the image's Airflow version.
#   docker build -t releasetrain:latest .
# The package registers its plugin (`airflow.plugins`) and its provider info
# (`apache_airflow_provider`) through entry points; DAG files
# and release specs go where Airflow's image expects them. docker-compose.yaml runs it
# distributed (CeleryExecutor, PostgreSQL, Redis).
ARG AIRFLOW_VERSION=3.3.2
ARG PYTHON_VERSION=3.11

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION} AS wheel
WORKDIR /build
COPY --chown=airflow:root pyproject.toml README.md /build/
COPY --chown=airflow:root src/releasetrain /build/src/releasetrain
RUN pip wheel --no-cache-dir --no-deps --wheel-dir /build/dist /build

FROM apache/airflow:${AIRFLOW_VERSION}-python${PYTHON_VERSION}
ARG AIRFLOW_VERSION
ARG PYTHON_VERSION
COPY --from=wheel --chown=airflow:root /build/dist/ /opt/releasetrain/dist/
# Airflow pinned to the image's version; its dependencies to Airflow's constraints file;
# the celery and hsm extras for the distributed shape and PKCS#11 signing.
RUN pip install --no-cache-dir \
      "apache-airflow==${AIRFLOW_VERSION}" \
      --constraint "https://raw.githubusercontent.com/apache/airflow/constraints-${AIRFLOW_VERSION}/constraints-${PYTHON_VERSION}.txt" \
      "$(find /opt/releasetrain/dist -name 'releasetrain-*.whl')[celery,hsm,jira]"

COPY --chown=airflow:root dags/ /opt/airflow/dags/
# dags/releases.py reads specs and calendars from /opt/airflow/include (the project root)
COPY --chown=airflow:root include/ /opt/airflow/include/
