"""Every path of the lake (and of the reports folder), in one place.

The lake is Parquet, hive-style, below ``lake_uri`` (a local folder or an object-store URI):

| table / folder | path |
|---|---|
| raw, validated, quarantine | ``<lake>/<table>/ds=<YYYY-MM-DD>/part-0.parquet`` |
| validation summaries, Data Docs | ``<lake>/_validation/<start>_<end>.json``, ``<lake>/_validation/ds=<day>/`` |
| features | ``<lake>/features/window=<start>_<end>/part-0.parquet`` and ``manifest.json`` beside it |
| preprocessing artifacts | ``<lake>/artifacts/preprocessing/<sha256>.json`` |
| evaluations | ``<lake>/evaluations/window=<start>_<end>/model_version=<v>/predictions.parquet`` |
| the promotion ledger | ``<lake>/ledger/`` |
| evaluation reports | ``<reports>/window=<start>_<end>_model_version=<v>/report.html`` |

Listings scoring (``tasks.serving.score``) keeps its own tables (``listings``, ``predictions``,
``predictions_rejected``) in the same day layout, through :func:`partition_uri`.
"""

from __future__ import annotations

import re
from datetime import date

from tasks.core.storage import PART_FILE, join

RAW, VALIDATED, QUARANTINE = "raw", "validated", "quarantine"
FEATURES, ARTIFACTS, EVALUATIONS, LEDGER = "features", "artifacts", "evaluations", "ledger"
# Validation summaries and Data Docs (written by tasks.quality, served by plugins/homeworth_datadocs.py).
VALIDATION_DIR = "_validation"
MANIFEST = "manifest.json"
PREDICTIONS_FILE = "predictions.parquet"
REPORT_FILE = "report.html"


def partition_uri(lake_uri: str, table: str, day: date) -> str:
    """One day's partition file of a day-partitioned table."""
    return join(lake_uri, table, f"ds={day.isoformat()}", PART_FILE)


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


def features_dir(lake_uri: str, window_start: date, window_end: date) -> str:
    return join(lake_uri, FEATURES, window_key(window_start.isoformat(), window_end.isoformat()))


def features_uri(lake_uri: str, window_start: date, window_end: date) -> str:
    """The feature table of a training window."""
    return join(features_dir(lake_uri, window_start, window_end), PART_FILE)


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
