"""Helpers shared by the test tiers (imported as ``from tests.support import ...``; pytest runs from the root).

The session-wide isolation (a private Airflow home, homeworth state and MLflow store) is in tests/conftest.py;
these are for a module that needs a home of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tools.servers import free_port  # noqa: F401  (re-exported: tests import it from here)


@contextmanager
def private_home(path: Path) -> Iterator[Path]:
    """``HOMEWORTH_HOME`` pointed at ``path`` (settings re-read) for the block; the session's home after it."""
    from tasks.core.settings import get_settings

    old = os.environ["HOMEWORTH_HOME"]
    os.environ["HOMEWORTH_HOME"] = str(path)
    get_settings.cache_clear()
    try:
        yield path
    finally:
        os.environ["HOMEWORTH_HOME"] = old
        get_settings.cache_clear()


def local_airflow_env(root: Path, port: int, parallelism: int, **extra: str) -> dict[str, str]:
    """The environment of a private embedded Airflow below ``root`` (SQLite, LocalExecutor, the api-server on
    127.0.0.1:``port``, time-based scheduling off: only the runs a test asks for), homeworth's state beside it."""
    repo = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW_", "AIRFLOW__", "HOMEWORTH_"))}
    env.update({
        "AIRFLOW_HOME": str(root / "airflow"), "HOMEWORTH_HOME": str(root / "state"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(repo / "dags"), "AIRFLOW__CORE__PLUGINS_FOLDER": str(repo / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False", "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": str(parallelism), "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": str(parallelism),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{root / 'airflow' / 'airflow.db'}",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": "admin:admin",
        "AIRFLOW__SCHEDULER__USE_JOB_SCHEDULE": "False",
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "10",
        "AIRFLOW__API__PORT": str(port), "AIRFLOW__API__HOST": "127.0.0.1", "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "GX_ANALYTICS_ENABLED": "false", "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true",
        "TQDM_DISABLE": "1",
    })
    env.update(extra)
    return env
