"""Helpers shared by the test tiers (imported as ``from tests.support import ...``; pytest runs from the root).

The session-wide isolation (a private Airflow home, homeworth state and MLflow store) is in tests/conftest.py;
these are for a module that needs a home of its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


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
