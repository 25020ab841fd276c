"""The champion's bundle, cached by version: a new champion is picked up without a restart.

The alias is re-read at most every ``serving_alias_ttl_s`` seconds (one small registry query) and a
bundle is loaded only when the version changes; requests in between use the cached bundle.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from datetime import datetime, timezone

from tasks.core import tracking
from tasks.core.settings import Settings
from tasks.registry import ledger

log = logging.getLogger(__name__)
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


class NoChampion(RuntimeError):
    pass


class ChampionCache:
    """The champion's bundle, reloaded only when the alias points at another version.

    The alias is read at most every ``ttl_s`` seconds; a request in between uses the cached bundle.
    """

    def __init__(self, settings: Settings, ttl_s: float | None = None):
        self.settings = settings
        self.ttl_s = settings.serving_alias_ttl_s if ttl_s is None else ttl_s
        self._lock = threading.Lock()
        self._checked = float("-inf")
        self.version: str | None = None
        self.bundle = None
        self.info: dict = {}
        self.loads = 0
        self._client = None

    def _c(self):
        if self._client is None:
            self._client = tracking.client(self.settings)
        return self._client

    def get(self):
        """(version, bundle, info) of the champion now; raises NoChampion."""
        if self.bundle is not None and time.monotonic() - self._checked < self.ttl_s:
            return self.version, self.bundle, self.info
        with self._lock:
            if self.bundle is None or time.monotonic() - self._checked >= self.ttl_s:
                self._refresh()
        if self.bundle is None:
            raise NoChampion(f"model {self.settings.model_name!r} has no champion yet")
        return self.version, self.bundle, self.info

    def _refresh(self) -> None:
        c = self._c()
        mv = tracking.champion_version(c, self.settings.model_name)
        self._checked = time.monotonic()
        if mv is None or str(mv.version) == self.version:
            return
        bundle = load_bundle(c, self.settings.model_name, str(mv.version), self.settings.lake_uri)
        metrics = held_out_metrics(c, mv.run_id)
        event = ledger.latest_for(self.settings, str(mv.version))
        self.info = champion_info(self.settings.model_name, mv, metrics, bundle, event)
        self.version, self.bundle = str(mv.version), bundle
        self.loads += 1
        log.info("serving %s v%s", self.settings.model_name, self.version)


def load_bundle(client, model_name: str, version: str, lake_uri: str):
    """The ``ModelBundle`` of a registered version (downloaded to a temporary folder, then removed);
    ``lake_uri``: where it finds the history of validated sales if its features need it."""
    from tasks.model.bundle import ModelBundle

    tmp = tempfile.mkdtemp(prefix="homeworth-serving-")
    try:
        return ModelBundle.load(tracking.download_model(client, model_name, version, tmp), lake_uri=lake_uri)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def held_out_metrics(client, run_id: str | None) -> dict:
    """The ``test/*`` metrics of a training run, without the prefix."""
    if not run_id:
        return {}
    return {k.removeprefix("test/"): v for k, v in client.get_run(run_id).data.metrics.items()
            if k.startswith("test/")}


def champion_info(model_name: str, mv, metrics: dict, bundle, event) -> dict:
    """What ``GET /model`` says of the champion: version, test metrics, data window, why it is live."""
    return {
        "model_name": model_name, "model_version": str(mv.version), "test_metrics": metrics,
        "data_window": {"start": mv.tags.get("data.window_start"), "end": mv.tags.get("data.window_end")},
        "preprocessing_sha256": mv.tags.get("preprocessing.sha256"), "mlflow_run_id": mv.run_id,
        "model_config": bundle.describe(),
        "live_since": event.at.isoformat() if event else None, "live_by": event.who() if event else None,
        "reason": event.reason if event else mv.tags.get("promotion.reason"),
        "ledger_event": event.event_id if event else None,
        "loaded_at": datetime.now(timezone.utc).isoformat(),
    }
