"""The champion's bundle, cached by version: a new champion is picked up without a restart.

The alias is re-read at most every ``serving_alias_ttl_s`` seconds (one small registry query) and a
bundle is loaded only when the version changes; requests in between use the cached bundle.

The refresh runs in a background thread. A request waits for it a bounded time (``wait_s``, counted
from the refresh's start) while the registry is healthy, so a new champion is served on the next
request; once a refresh has failed, or has run past that bound (MLflow down, waiting out its retry
budget), requests get the cached champion at once and the refresh goes on in the background. A
version whose artifacts are refused (a feature module off the allowlist, an oversize configuration:
``tasks.features.preprocessing.ArtifactRefused``, ``tasks.model.networks.check_size``) is never
served: the previous champion stays in service and ``GET /model`` names the refused version and why.
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


def _utc(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, timezone.utc).isoformat() if ts is not None else None


class ChampionCache:
    """The champion's bundle, reloaded only when the alias points at another version.

    The alias is read at most every ``ttl_s`` seconds; a request in between uses the cached bundle.
    ``wait_s``: how long requests wait for a refresh in flight while a champion is cached (from the
    refresh's start); ``first_wait_s``: the same before any champion is loaded. With ``background_swap``
    (the endpoint with a positive TTL) a request never waits once a champion is cached: the refresh
    loads the new version and builds its comps index (``ModelBundle.warm``) in the background and
    swaps it in with one assignment, so a new champion or new sales cause no latency spike.
    """

    def __init__(self, settings: Settings, ttl_s: float | None = None, wait_s: float = 10.0,
                 first_wait_s: float = 60.0, background_swap: bool = False):
        self.settings = settings
        self.background_swap = background_swap
        self.ttl_s = settings.serving_alias_ttl_s if ttl_s is None else ttl_s
        self.wait_s, self.first_wait_s = wait_s, first_wait_s
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._checked = float("-inf")  # monotonic start of the last refresh
        self._current: tuple[str | None, object, dict] = (None, None, {})
        self.loads = 0
        self.refreshed_at: float | None = None  # wall clock of the last successful alias check
        self._refreshed_mono: float | None = None
        self.last_error: str | None = None
        self.last_error_at: float | None = None
        self.refused: dict[str, str] = {}  # version -> why its artifacts were refused
        self._client = None

    @property
    def version(self) -> str | None:
        return self._current[0]

    @property
    def bundle(self):
        return self._current[1]

    @property
    def info(self) -> dict:
        return self._current[2]

    def _c(self):
        if self._client is None:
            self._client = tracking.client(self.settings)
        return self._client

    def get(self):
        """(version, bundle, info) of the champion now; raises NoChampion."""
        self._maybe_refresh()
        version, bundle, info = self._current
        if bundle is None:
            why = f"; last refresh failed: {self.last_error}" if self.last_error else ""
            raise NoChampion(f"model {self.settings.model_name!r} has no champion that can be served{why}")
        return version, bundle, info

    def _maybe_refresh(self) -> None:
        if self.bundle is not None and time.monotonic() - self._checked < self.ttl_s:
            return
        with self._lock:
            thread = self._thread
            if thread is None or not thread.is_alive():
                if self.bundle is not None and time.monotonic() - self._checked < self.ttl_s:
                    return
                self._checked = time.monotonic()
                thread = self._thread = threading.Thread(target=self._refresh_safely, daemon=True,
                                                         name="homeworth-champion-refresh")
                thread.start()
            started = self._checked
        if self.bundle is not None and self.background_swap:
            return  # the cached champion answers; a new one is swapped in when loaded and warmed
        if self.last_error is None:  # healthy so far: a new champion is served on this request
            bound = self.wait_s if self.bundle is not None else self.first_wait_s
            thread.join(max(0.0, started + bound - time.monotonic()))

    def _refresh_safely(self) -> None:
        try:
            self._refresh()
        except Exception as exc:  # noqa: BLE001 - recorded for /model; the cached champion keeps serving
            self.last_error, self.last_error_at = f"{type(exc).__name__}: {str(exc)[:500]}", time.time()
            log.warning("champion refresh failed (serving v%s): %s", self.version, self.last_error)

    def _refresh(self) -> None:
        c = self._c()
        mv = tracking.champion_version(c, self.settings.model_name, strict=True)
        if mv is not None and str(mv.version) != self.version:
            version = str(mv.version)
            if version in self.refused:
                raise ArtifactsRefused(f"v{version} refused: {self.refused[version]}")
            try:
                bundle = load_bundle(c, self.settings.model_name, version, self.settings.lake_uri)
            except ValueError as exc:  # deterministic: the artifacts themselves (pydantic errors are ValueErrors)
                self.refused[version] = str(exc)[:1000]
                raise ArtifactsRefused(f"v{version} refused: {self.refused[version]}") from exc
            bundle.index_ttl_s = self.ttl_s
            bundle.warm()  # its comps index is built here, in the background, before it serves a request
            metrics = held_out_metrics(c, mv.run_id)
            event = ledger.latest_for(self.settings, version)
            info = champion_info(self.settings.model_name, mv, metrics, bundle, event)
            self._current = (version, bundle, info)
            self.loads += 1
            log.info("serving %s v%s", self.settings.model_name, version)
        self.refreshed_at, self._refreshed_mono = time.time(), time.monotonic()
        self.last_error = self.last_error_at = None

    def status(self) -> dict:
        """How fresh the served champion is: what ``GET /model`` reports under ``serving``."""
        age = None if self._refreshed_mono is None else round(time.monotonic() - self._refreshed_mono, 3)
        thread = self._thread
        return {"alias_ttl_s": self.ttl_s, "last_refresh_ok_at": _utc(self.refreshed_at),
                "last_refresh_age_s": age, "stale": self.last_error is not None,
                "last_error": self.last_error, "last_error_at": _utc(self.last_error_at),
                "refresh_in_flight": bool(thread and thread.is_alive()), "refused_versions": dict(self.refused)}


class ArtifactsRefused(RuntimeError):
    """The champion alias points at a version whose artifacts are refused; the previous one keeps serving."""


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
