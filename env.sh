# Source this file (`source env.sh`) to work with homeworth by hand: it activates the venv made by
# `make venv` and points Airflow and homeworth at this checkout's embedded setup
# (SQLite metadata in .airflow/, LocalExecutor sized for 2 cores, local lake and MLflow store in .state/).
# Every value can be overridden by exporting it before sourcing.
HOMEWORTH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")" && pwd)"
export HOMEWORTH_ROOT
if [ -f "$HOMEWORTH_ROOT/.venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  . "$HOMEWORTH_ROOT/.venv/bin/activate"
fi

# homeworth's own settings (tasks/core/settings.py); everything else derives from HOMEWORTH_HOME.
export HOMEWORTH_HOME="${HOMEWORTH_HOME:-$HOMEWORTH_ROOT/.state}"

# Airflow, embedded: SQLite metadata, LocalExecutor, no examples, sized for a 2-core machine.
export AIRFLOW_HOME="${AIRFLOW_HOME:-$HOMEWORTH_ROOT/.airflow}"
export AIRFLOW__CORE__DAGS_FOLDER="${AIRFLOW__CORE__DAGS_FOLDER:-$HOMEWORTH_ROOT/dags}"
export AIRFLOW__CORE__PLUGINS_FOLDER="${AIRFLOW__CORE__PLUGINS_FOLDER:-$HOMEWORTH_ROOT/plugins}"
export AIRFLOW__CORE__LOAD_EXAMPLES="${AIRFLOW__CORE__LOAD_EXAMPLES:-False}"
export AIRFLOW__CORE__EXECUTOR="${AIRFLOW__CORE__EXECUTOR:-LocalExecutor}"
export AIRFLOW__CORE__PARALLELISM="${AIRFLOW__CORE__PARALLELISM:-2}"
export AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG="${AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG:-2}"
export AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION="${AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION:-True}"
export AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS="${AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS:-admin:admin}"
export AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL="${AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL:-10}"
# The embedded servers listen on the loopback only (Airflow's default is every interface): the demo's
# login is admin/admin. Export another address before sourcing to open it up (docs/security.md).
export AIRFLOW__API__HOST="${AIRFLOW__API__HOST:-127.0.0.1}"
export AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST="${AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST:-127.0.0.1}"
export AIRFLOW__API__PORT="${AIRFLOW__API__PORT:-8080}"
export AIRFLOW__API__BASE_URL="${AIRFLOW__API__BASE_URL:-http://127.0.0.1:$AIRFLOW__API__PORT}"
export AIRFLOW__CORE__EXECUTION_API_SERVER_URL="${AIRFLOW__CORE__EXECUTION_API_SERVER_URL:-http://127.0.0.1:$AIRFLOW__API__PORT/execution/}"
export AIRFLOW__API__WORKERS="${AIRFLOW__API__WORKERS:-1}"
export AIRFLOW__LOGGING__LOGGING_LEVEL="${AIRFLOW__LOGGING__LOGGING_LEVEL:-INFO}"

# Third parties: no analytics or telemetry (this machine has no network beyond package registries).
export GX_ANALYTICS_ENABLED=false
export MLFLOW_DISABLE_TELEMETRY=true
export DO_NOT_TRACK=true
export TQDM_DISABLE=1
