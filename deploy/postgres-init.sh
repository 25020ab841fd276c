#!/usr/bin/env bash
# Mounted into /docker-entrypoint-initdb.d by docker-compose.yaml. The postgres image runs it once, as the
# superuser POSTGRES_USER (airflow), when it initialises an empty data volume; to rerun it, drop the
# postgres-db-volume (docker compose down -v) or run these statements by hand.
#
# The MLflow tracking server keeps runs and the model registry in their own database and role, apart from
# the Airflow metadata database. The role's password is MLFLOW_DB_PASSWORD (from .env, never a literal),
# the same variable the mlflow service's MLFLOW_BACKEND_STORE_URI uses; it reaches SQL as a psql variable
# (:'pw', quoted by psql), never pasted into the statement. No `set -u`/`exit` here: the entrypoint may
# source this file rather than run it.
: "${MLFLOW_DB_PASSWORD:?set MLFLOW_DB_PASSWORD (see .env.example)}"
psql -v ON_ERROR_STOP=1 -v pw="$MLFLOW_DB_PASSWORD" --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'EOSQL'
CREATE ROLE mlflow WITH LOGIN PASSWORD :'pw';
CREATE DATABASE mlflow OWNER mlflow;
GRANT ALL PRIVILEGES ON DATABASE mlflow TO mlflow;
EOSQL
