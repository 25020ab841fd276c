-- Mounted into /docker-entrypoint-initdb.d by docker-compose.yaml. The postgres image runs it once,
-- as the superuser POSTGRES_USER (airflow), when it initialises an empty data volume; to rerun it,
-- drop the postgres-db-volume (docker compose down -v) or run these statements by hand.
--
-- The MLflow tracking server keeps runs and the model registry in their own database and role, apart
-- from the Airflow metadata database. The credentials must match --backend-store-uri of the mlflow
-- service (tests/test_compose.py checks that they do); change both together.
CREATE ROLE mlflow WITH LOGIN PASSWORD 'mlflow';
CREATE DATABASE mlflow OWNER mlflow;
GRANT ALL PRIVILEGES ON DATABASE mlflow TO mlflow;
