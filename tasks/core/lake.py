"""Every path of the lake (and of the reports folder), in one place.

The lake is Parquet, hive-style, below ``lake_uri`` (a local folder or an object-store URI):

| table / folder | path |
|---|---|
| raw | ``<lake>/raw/ds=<YYYY-MM-DD>/part-0.parquet`` |
| validated, quarantine | ``<lake>/<table>/ds=<day>/part-<16 hex>.parquet``, published by ``validated/ds=<day>/_manifest.json`` |
| validation summaries, Data Docs | ``<lake>/_validation/<start>_<end>.json``, ``<lake>/_validation/ds=<day>/`` |
| features | ``<lake>/features/window=<start>_<end>/inputs=<key>/part-0.parquet`` and ``manifest.json`` beside it |
| preprocessing artifacts | ``<lake>/artifacts/preprocessing/<sha256>.json`` |
| evaluations | ``<lake>/evaluations/window=<start>_<end>/model_version=<v>/predictions.parquet`` |
| the promotion ledger | ``<lake>/ledger/`` |
| evaluation reports | ``<reports>/window=<start>_<end>_model_version=<v>/report.html`` |

A day's validation result is one unit: its validated and quarantine files are named by their content
(``part-<16 hex of their sha256>.parquet``) and published together by the day's manifest, written last
(:func:`published_day`; readers go through :func:`day_file`). ``part-0.parquet`` beside them is kept as a
link to the published files for readers of the older layout.

A feature table is keyed by its inputs (``<key>``: 16 hex of a sha256, ``tasks.features.build.inputs_key``)
and never replaced once written; :func:`find_features_uri` finds a window's table for a reader that knows
only the window.

Listings scoring (``tasks.serving.score``) keeps its own tables (``listings``, ``predictions``,
``predictions_rejected``) in the same day layout, through :func:`partition_uri`.
"""

from __future__ import annotations

import json
import re
from datetime import date

from tasks.core import storage
from tasks.core.storage import PART_FILE, join

RAW, VALIDATED, QUARANTINE = "raw", "validated", "quarantine"
FEATURES, ARTIFACTS, EVALUATIONS, LEDGER = "features", "artifacts", "evaluations", "ledger"
# Validation summaries and Data Docs (written by tasks.quality, served by plugins/homeworth_datadocs.py).
VALIDATION_DIR = "_validation"
MANIFEST = "manifest.json"
INPUTS_PREFIX = "inputs="
DAY_MANIFEST = "_manifest.json"
PREDICTIONS_FILE = "predictions.parquet"
REPORT_FILE = "report.html"


def partition_uri(lake_uri: str, table: str, day: date) -> str:
    """One day's partition file of a day-partitioned table."""
    return join(lake_uri, table, f"ds={day.isoformat()}", PART_FILE)


def partition_dir(lake_uri: str, table: str, day: date | str) -> str:
    """One day's folder of a day-partitioned table."""
    return join(lake_uri, table, f"ds={day}")


def addressed_part_uri(lake_uri: str, table: str, day: date | str, sha256: str) -> str:
    """A day's file named by its content: ``<table>/ds=<day>/part-<16 hex of its sha256>.parquet``."""
    return join(partition_dir(lake_uri, table, day), f"part-{sha256[:16]}.parquet")


def day_manifest_uri(lake_uri: str, day: date | str) -> str:
    """The manifest that publishes a day's validation result (validated + quarantine), written last."""
    return join(partition_dir(lake_uri, VALIDATED, day), DAY_MANIFEST)


def published_day(lake_uri: str, day: date | str) -> dict | None:
    """A day's published validation result: its manifest (``validated`` and ``quarantine``: uri, sha256,
    rows; the ``raw`` file it came from; ``run_id``), or None when the day has none. A day validated
    before manifests existed has none: :func:`day_file` then reads its ``part-0.parquet``."""
    uri = day_manifest_uri(lake_uri, day)
    return json.loads(storage.read_bytes(uri)) if storage.exists(uri) else None


def day_file(lake_uri: str, table: str, day: date | str) -> str | None:
    """The file a reader reads for one day of a table, or None when the day has none.

    validated / quarantine: the file the day's manifest names (both from one validation), else (a day
    validated before manifests) ``part-0.parquet``. Other tables: ``part-0.parquet``."""
    if table in (VALIDATED, QUARANTINE) and (published := published_day(lake_uri, day)) is not None:
        return published[table]["uri"]
    uri = partition_uri(lake_uri, table, date.fromisoformat(str(day)))
    return uri if storage.exists(uri) else None


def table_uri(lake_uri: str, table: str) -> str:
    """The folder of a table (its ``ds=`` partitions below it)."""
    return join(lake_uri, table)


def validation_dir(lake_uri: str) -> str:
    return join(lake_uri, VALIDATION_DIR)


def validation_summary_uri(lake_uri: str, start: date, end: date) -> str:
    """The JSON summary of one validated interval [start, end]."""
    return join(lake_uri, VALIDATION_DIR, f"{start.isoformat()}_{end.isoformat()}.json")


def data_docs_day_dir(lake_uri: str, day: date | str) -> str:
    return join(lake_uri, VALIDATION_DIR, f"ds={day}")


def window_key(window_start: date | str, window_end: date | str) -> str:
    return f"window={window_start}_{window_end}"


def features_dir(lake_uri: str, window_start: date | str, window_end: date | str) -> str:
    """The folder of a training window's feature tables (one ``inputs=<key>`` folder per set of inputs)."""
    return join(lake_uri, FEATURES, window_key(str(window_start), str(window_end)))


def features_uri(lake_uri: str, window_start: date | str, window_end: date | str, inputs: str | None = None) -> str:
    """The feature table of a training window built from the inputs keyed ``inputs``:
    ``<lake>/features/window=<start>_<end>/inputs=<key>/part-0.parquet``.

    Without ``inputs``: the layout before tables were keyed, ``window=<start>_<end>/part-0.parquet`` (still
    found by :func:`find_features_uri`, never written)."""
    folder = features_dir(lake_uri, window_start, window_end)
    return join(folder, f"{INPUTS_PREFIX}{inputs}", PART_FILE) if inputs else join(folder, PART_FILE)


def find_features_uri(lake_uri: str, window_start: date | str, window_end: date | str,
                      features_sha256: str | None = None) -> str:
    """The feature table of a window for a reader that knows only the window (drift's reference).

    Among the window's complete tables (an ``inputs=`` folder with its manifest, written last): the one whose
    manifest records ``features_sha256`` when given and found, else the newest (by its manifest's
    modification time). Else the unkeyed layout's path, which may not exist: the caller checks."""
    folder = features_dir(lake_uri, window_start, window_end)
    complete = []
    for name in storage.list_dir(folder):
        if not name.startswith(INPUTS_PREFIX):
            continue
        table, manifest = join(folder, name, PART_FILE), join(folder, name, MANIFEST)
        mtime = storage.file_mtime_ns(manifest)
        if mtime is None or not storage.exists(table):
            continue
        if features_sha256:
            try:
                recorded = json.loads(storage.read_bytes(manifest)).get("metadata", {}).get("features_sha256")
            except (OSError, ValueError, AttributeError):
                recorded = None
            if recorded == features_sha256:
                return table
        complete.append((mtime, name, table))
    return max(complete)[2] if complete else features_uri(lake_uri, window_start, window_end)


def manifest_uri(features_uri: str) -> str:
    """The lineage manifest written beside a feature table."""
    return join(features_uri.rsplit("/", 1)[0], MANIFEST)


def preprocessing_uri(lake_uri: str, sha256: str) -> str:
    """A fitted preprocessing artifact, keyed by the sha256 of its content."""
    return join(lake_uri, ARTIFACTS, "preprocessing", f"{sha256}.json")


def evaluation_key(window_start: str, window_end: str, model_version: str) -> str:
    """The key of one evaluation: the window and the model version."""
    return f"{window_key(window_start, window_end)}/model_version={model_version}"


def evaluation_predictions_uri(lake_uri: str, key: str) -> str:
    return join(lake_uri, EVALUATIONS, key, PREDICTIONS_FILE)


def report_name(key: str) -> str:
    """The report folder's name for an evaluation key (one path segment, safe in a URL)."""
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", key)


def report_uri(reports_uri: str, key: str) -> str:
    return join(reports_uri, report_name(key), REPORT_FILE)


def ledger_dir(lake_uri: str) -> str:
    return join(lake_uri, LEDGER)
