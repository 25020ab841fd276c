"""Test isolation and tiers.

Isolation: every session gets its own Airflow home, homeworth state and MLflow store. The environment is
set here, before any test module imports Airflow, so nothing a test does can touch the checkout's
.airflow/ or .state/ (which `make demo` owns).

Tiers: a test's folder below tests/ (unit, dag, e2e, integration, browser) is its tier marker, unless the
test carries a tier marker of its own (a slow test in a unit file is marked ``e2e``).
`make test-fast` runs ``-m "unit or dag"``; `make test` runs every tier.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.kc import KC_SPEC_PATH

REPO = Path(__file__).resolve().parent.parent
_SESSION_TMP = Path(tempfile.mkdtemp(prefix="homeworth-tests-"))

os.environ.update(
    {
        "AIRFLOW_HOME": str(_SESSION_TMP / "airflow"),
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PLUGINS_FOLDER": str(REPO / "plugins"),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__UNIT_TEST_MODE": "False",
        "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
        "AIRFLOW__CORE__PARALLELISM": "2",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{_SESSION_TMP / 'airflow' / 'airflow.db'}",
        "HOMEWORTH_HOME": str(_SESSION_TMP / "state"),
        "GX_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
        "DO_NOT_TRACK": "true",
        "TQDM_DISABLE": "1",
    }
)
for key in [k for k in os.environ if k.startswith("HOMEWORTH_") and k != "HOMEWORTH_HOME"]:
    del os.environ[key]


TIERS = ("unit", "dag", "e2e", "integration", "browser", "faults")


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(item.get_closest_marker(t) for t in TIERS):
            continue
        tier = Path(str(item.fspath)).relative_to(REPO / "tests").parts[0]
        if tier not in TIERS:
            raise pytest.UsageError(f"{item.nodeid}: a test lives in one of tests/{{{','.join(TIERS)}}}/")
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def airflow_db() -> Path:
    """A migrated SQLite metadata database for this session (a few seconds, once)."""
    home = Path(os.environ["AIRFLOW_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "airflow", "db", "migrate"], check=True, capture_output=True,
                   env=dict(os.environ))
    return home


@pytest.fixture
def fresh_settings(tmp_path, monkeypatch):
    """Settings pointing at a private HOMEWORTH_HOME for one test."""
    from tasks.core.settings import get_settings

    monkeypatch.setenv("HOMEWORTH_HOME", str(tmp_path / "state"))
    get_settings.cache_clear()
    yield get_settings()
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def spec():
    from tasks.core.spec import load_spec

    return load_spec(KC_SPEC_PATH)
