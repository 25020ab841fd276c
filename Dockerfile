# syntax=docker/dockerfile:1
# The homeworth image: the official Airflow 3.3.2 image plus the project's pinned requirements and code.
# docker-compose.yaml builds it once and runs every Airflow component *and* the MLflow tracking server
# from it, so the MLflow server and the MLflow client in the workers are always the same version.
# The tag must match the apache-airflow pin in requirements.txt (tests/unit/test_compose.py checks this).
FROM apache/airflow:3.3.2-python3.11

# Folders that docker-compose.yaml mounts named volumes on. Creating them here, owned by airflow and
# group 0 (the image's convention: any AIRFLOW_UID with gid 0 can write), means a fresh named volume
# starts with the right owner; airflow-init re-applies ownership for existing volumes.
USER root
RUN mkdir -p /opt/airflow/state /opt/airflow/config /opt/airflow/plugins /opt/mlflow/artifacts \
 && chown -R airflow:0 /opt/airflow/state /opt/airflow/config /opt/airflow/plugins /opt/mlflow \
 && chmod -R g+rwX /opt/airflow/state /opt/airflow/config /opt/airflow/plugins /opt/mlflow
USER airflow

# Pinned requirements (apache-airflow==3.3.2 is among them, so pip cannot move Airflow itself).
# Which build of torch==2.13.0 comes from TORCH_INDEX_URL, an extra index whose local version
# (2.13.0+cpu, 2.13.0+cu130) satisfies the ==2.13.0 pin and sorts above the plain PyPI 2.13.0, so pip takes
# it. The default is the CPU build (every service but the GPU worker); docker-compose.yaml's
# airflow-worker-gpu builds with https://download.pytorch.org/whl/cu130 (docs/production.md, "A GPU worker").
# A CUDA index must give a CUDA build: the check after the install fails the build otherwise.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY --chown=airflow:0 requirements.txt /requirements.txt
RUN pip install --no-cache-dir \
      --extra-index-url "${TORCH_INDEX_URL}" \
      -r /requirements.txt \
 && python -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda)" \
 && case "${TORCH_INDEX_URL}" in \
      */cu[0-9]*) python -c "import torch, sys; sys.exit(0 if torch.version.cuda else 'not a CUDA build of torch')" ;; \
      */cpu) python -c "import torch, sys; sys.exit(0 if torch.version.cuda is None else 'not the CPU build of torch')" ;; \
    esac

# The project: DAGs, the importable logic package (with the bundled dataset in tasks/datasets/), the GX
# suites and the plugins. Baked into the image so that every Celery worker runs exactly the same code as the
# scheduler and the dag-processor (no bind mounts in production). The package is installed in editable mode,
# as `make venv` does, so `import tasks` and `import expectations` work in every component with no PYTHONPATH.
COPY --chown=airflow:0 pyproject.toml README.md /opt/airflow/
COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 tasks/ /opt/airflow/tasks/
COPY --chown=airflow:0 expectations/ /opt/airflow/expectations/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e /opt/airflow

# HOMEWORTH_GIT_COMMIT is read by tasks/core/tracking.py (the image has no .git): pass
# `--build-arg GIT_COMMIT=$(git rev-parse HEAD)` or set GIT_COMMIT for docker compose build.
ARG GIT_COMMIT=unknown
ENV HOMEWORTH_GIT_COMMIT=${GIT_COMMIT} \
    GX_ANALYTICS_ENABLED=false \
    MLFLOW_DISABLE_TELEMETRY=true \
    DO_NOT_TRACK=true \
    TQDM_DISABLE=1
