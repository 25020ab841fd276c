"""Batch scoring: each day's new listings priced by the champion.

Listings are houses on the market, without a price: the feed drops
``<landing>/listings/<YYYY-MM-DD>/*.csv|*.parquet`` with the sales columns minus the target. They
take the same road as sales up to the model: ``tasks.ingest.read.read_landing_file`` and ``tasks.ingest.landing.coerce`` (with
a spec variant where the target is optional), then the dataset's Great Expectations suite without
the expectations on the target, row by row. Rows that fail go to
``<lake>/predictions_rejected/ds=<day>/part-0.parquet`` with every reason; the others are scored
with ``ModelBundle.predict`` (the saved preprocessing artifact, the same call the endpoint makes) and
written with the model version to ``<lake>/predictions/ds=<day>/part-0.parquet``. Both files are
written atomically and replaced whole, so re-running a day with the same model version gives the
same files.

    homeworth score --file listings.csv [--out scored.csv|.parquet] [--version N]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from datetime import date, timedelta
from typing import TYPE_CHECKING, Any

import polars as pl

from tasks.core import lake, storage, tracking
from tasks.core.faults import fault_point
from tasks.core.handoffs import ChampionRef, ScoreResult
from tasks.core.params import check_date_range
from tasks.core.settings import Settings
from tasks.core.spec import DatasetSpec
from tasks.ingest.landing import (
    COERCE_ERRORS,
    DS,
    SOURCE_FILE,
    SOURCE_ROW,
    coerce,
    days_in_interval,
    raw_schema,
)
from tasks.ingest.read import read_landing_file

if TYPE_CHECKING:
    from tasks.model.bundle import ModelBundle

log = logging.getLogger(__name__)

LISTINGS, PREDICTIONS, REJECTED = "listings", "predictions", "predictions_rejected"
MODEL_NAME, MODEL_VERSION = "model_name", "model_version"


def listings_spec(spec: DatasetSpec) -> DatasetSpec:
    """The spec with its target optional: a listing has every column of a sale but the price."""
    columns = dict(spec.columns)
    columns[spec.target] = columns[spec.target].model_copy(update={"required": False})
    return spec.model_copy(update={"columns": columns})


def prediction_column(spec: DatasetSpec) -> str:
    return f"predicted_{spec.target}"


def input_columns(spec: DatasetSpec) -> list[str]:
    """The columns a listing carries (every spec column but the target), in spec order."""
    return [c for c in spec.columns if c != spec.target]


def model_frame(spec: DatasetSpec, rows: pl.DataFrame) -> pl.DataFrame:
    """The exact frame handed to ``ModelBundle.predict``: every spec column, typed, the target null.

    Batch scoring and the endpoint both build their input with this, which is what makes their
    predictions the same.
    """
    from tasks.ingest.landing import POLARS_TYPES

    exprs = []
    for name, cs in spec.columns.items():
        dtype = POLARS_TYPES[cs.type]
        if name == spec.target or name not in rows.columns:
            exprs.append(pl.lit(None, dtype=dtype).alias(name))
        else:
            exprs.append(pl.col(name).cast(dtype))
    return rows.select(exprs)


def predict(bundle: "ModelBundle", spec: DatasetSpec, rows: pl.DataFrame) -> pl.Series:
    if rows.height == 0:
        return pl.Series(prediction_column(spec), [], dtype=pl.Float64)
    return pl.Series(prediction_column(spec), bundle.predict(model_frame(spec, rows)), dtype=pl.Float64)


# ---------------------------------------------------------------------------------------------
# Validation: the sales contract minus the target


def _touches(exp: Any, column: str) -> bool:
    cols = {getattr(exp, a, None) for a in ("column", "column_A", "column_B")}
    cols |= set(getattr(exp, "column_list", None) or [])
    return column in cols


def listings_suite(spec: DatasetSpec):
    """The dataset's suite without the expectations on the target column."""
    import great_expectations as gx

    from tasks.quality.validate import build_suite

    suite = build_suite(spec)
    kept = [e for e in suite.expectations if not _touches(e, spec.target)]
    return gx.ExpectationSuite(name=f"{suite.name}_listings", expectations=kept)


def validate_listings(spec: DatasetSpec, raw: pl.DataFrame, start: date, end: date) -> tuple[pl.DataFrame, pl.DataFrame, list]:
    """(accepted rows, rejected rows with ``_reasons``, expectation summary) of coerced listings.

    The same checks as ``tasks.quality.validate.validate_interval`` applies to sales (coercion errors,
    repeated (id, date), every row-level expectation), the target's expectations left out. A failed
    batch-level expectation raises ``ValidationFailed``.
    """
    import os

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    from tasks.quality.results import REASONS, ROW_ID, judge
    from tasks.quality.validate import ValidationFailed, expectation_parameters, gx_validate, precheck, tag_reasons

    lspec = listings_spec(spec)
    pre = precheck(lspec, raw.with_row_index(ROW_ID))
    result = gx_validate(lspec, pre.checked, lambda: listings_suite(lspec), expectation_parameters(lspec, start, end),
                         asset=f"{spec.name}_listings", batch="listings")
    judged = judge(result.results, pre.checked)
    if judged.failures:
        raise ValidationFailed(f"listings {start}..{end - timedelta(days=1)} ({pre.raw.height} rows) failed "
                               f"{len(judged.failures)} batch-level expectation(s):\n  - " + "\n  - ".join(judged.failures))
    tagged = tag_reasons(pre.raw, pre.reasons, judged.row_reasons).sort(ROW_ID)
    accepted = tagged.filter(pl.col(REASONS).is_null()).drop(ROW_ID, REASONS)
    rejected = tagged.filter(pl.col(REASONS).is_not_null()).drop(ROW_ID)
    return accepted, rejected, judged.summary


# ---------------------------------------------------------------------------------------------
# Reading and scoring


def read_listings(spec: DatasetSpec, uris: list[str], day: date) -> pl.DataFrame:
    """Landing files of listings, read and coerced as sales are (the target optional)."""
    lspec = listings_spec(spec)
    frames = []
    for uri in uris:
        typed, extra = coerce(read_landing_file(uri, lspec), lspec, uri, day)
        if extra:
            log.warning("%s: ignoring columns not in spec %r: %s", uri, spec.name, extra)
        frames.append(typed)
    schema = raw_schema(lspec)
    df = pl.concat(frames, how="vertical") if frames else pl.DataFrame(schema=schema)
    return df.select([pl.col(c).cast(t) for c, t in schema.items()])


def listing_files(landing_uri: str, day: date) -> list[str]:
    folder = storage.join(landing_uri, LISTINGS, day.isoformat())
    return [storage.join(folder, n) for n in storage.list_dir(folder) if not n.startswith((".", "_"))]


def scored_frame(spec: DatasetSpec, accepted: pl.DataFrame, preds: pl.Series, model_name: str, version: str) -> pl.DataFrame:
    return accepted.select(*input_columns(spec)).with_columns(
        preds.alias(prediction_column(spec)),
        pl.lit(model_name).alias(MODEL_NAME),
        pl.lit(str(version)).alias(MODEL_VERSION),
        accepted[DS], accepted[SOURCE_FILE], accepted[SOURCE_ROW],
    )


def load_version(settings: Settings, version: str, tmp: str) -> "ModelBundle":
    from tasks.model.bundle import ModelBundle

    c = tracking.client(settings)
    return ModelBundle.load(tracking.download_model(c, settings.model_name, str(version), tmp),
                            lake_uri=settings.lake_uri)


def champion(settings: Settings) -> ChampionRef:
    """The champion's version now (the scoring DAG pins it once per run, so retries use the same model)."""
    c = tracking.client(settings)
    mv = tracking.champion_version(c, settings.model_name)
    if mv is None:
        raise RuntimeError(f"model {settings.model_name!r} has no champion yet: nothing can score listings; "
                           "run price_model_retrain (or promote a version) first")
    return ChampionRef(model_name=settings.model_name, model_version=str(mv.version), run_id=mv.run_id)


def score_day(spec: DatasetSpec, settings: Settings, day: date, version: str, bundle: "ModelBundle | None" = None) -> dict:
    """Score one day's listings with model ``version``; (re)write the day's predictions and rejects."""
    files = listing_files(settings.landing_uri, day)
    raw = read_listings(spec, files, day)
    accepted, rejected, summary = validate_listings(spec, raw, day, day + timedelta(days=1))
    if accepted.height and bundle is None:
        with tempfile.TemporaryDirectory() as tmp:
            bundle = load_version(settings, version, tmp)
    preds = predict(bundle, spec, accepted) if accepted.height else pl.Series(prediction_column(spec), [], pl.Float64)
    out = scored_frame(spec, accepted, preds, settings.model_name, version)
    pred_uri = lake.partition_uri(settings.lake_uri, PREDICTIONS, day)
    rej_uri = lake.partition_uri(settings.lake_uri, REJECTED, day)
    result = {"day": day.isoformat(), "files": files, "rows": raw.height, "scored": out.height,
              "rejected": rejected.height, "model_version": str(version),
              "predictions_uri": pred_uri, "predictions_sha256": storage.write_parquet_atomic(out, pred_uri),
              "rejected_uri": rej_uri, "rejected_sha256": storage.write_parquet_atomic(rejected, rej_uri),
              "failing_expectations": [s["expectation"] for s in summary if not s["success"]]}
    if not files:
        log.warning("no listings for %s under %s: wrote empty partitions", day, settings.landing_uri)
    log.info("listings %s: %d scored with v%s, %d rejected", day, out.height, version, rejected.height)
    return result


def score_interval(spec: DatasetSpec, settings: Settings, start: date, end: date, version: str) -> ScoreResult:
    """Score every day of [start, end) with one model version; the model is downloaded once."""
    check_date_range(start, end, settings.max_bulk_days)  # first: a range out of bounds writes nothing
    fault_point("score", "start")
    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_version(settings, version, tmp)
        days = [score_day(spec, settings, d, version, bundle) for d in days_in_interval(start, end)]
        fault_point("score", "after_effect")
    return ScoreResult(start=start.isoformat(), end=end.isoformat(), model_version=str(version),
                       rows=sum(d["rows"] for d in days), scored=sum(d["scored"] for d in days),
                       rejected=sum(d["rejected"] for d in days),
                       days=[{k: d[k] for k in ("day", "rows", "scored", "rejected")} for d in days])


def score_file(spec: DatasetSpec, settings: Settings, path: str, version: str | None = None) -> tuple[pl.DataFrame, pl.DataFrame, str]:
    """(scored rows, rejected rows, model version) of a one-off listings file; nothing is written to the lake."""
    version = str(version) if version else champion(settings).model_version
    raw = read_listings(spec, [path], date.today())
    event_time = spec.event_time
    dates = raw[event_time].drop_nulls() if event_time else pl.Series([], dtype=pl.Date)
    start = dates.min() if len(dates) else date.today()
    end = (dates.max() if len(dates) else start) + timedelta(days=1)
    accepted, rejected, _ = validate_listings(spec, raw, start, end)
    with tempfile.TemporaryDirectory() as tmp:
        bundle = load_version(settings, version, tmp) if accepted.height else None
        preds = predict(bundle, spec, accepted) if accepted.height else pl.Series(prediction_column(spec), [], pl.Float64)
    return scored_frame(spec, accepted, preds, settings.model_name, version).drop(DS), rejected, version


def _write(df: pl.DataFrame, path: str | None) -> None:
    """Parquet or CSV by the file name; CSV on stdout without one (list columns joined with "; ")."""
    if path and path.endswith(".parquet"):
        df.write_parquet(path)
        return
    text = df.with_columns(pl.col(pl.List(pl.String)).list.join("; ")).write_csv()
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


def main(argv: list[str] | None = None, prog: str = "python -m tasks.serving.score") -> int:
    from tasks.core.settings import get_settings
    from tasks.core.spec import get_spec
    from tasks.ingest.read import BatchError
    from tasks.quality.validate import ValidationFailed

    p = argparse.ArgumentParser(prog=prog, description="Score a listings file with the champion.")
    p.add_argument("--file", required=True, help="a listings CSV or Parquet file (the sales columns without the target)")
    p.add_argument("--out", default=None, help="where to write the scored rows (.csv or .parquet); default: stdout as CSV")
    p.add_argument("--rejected", default=None, help="where to write rejected rows with their reasons (.csv or .parquet)")
    p.add_argument("--version", default=None, help="model version to use (default: the champion)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    spec, settings = get_spec(), get_settings()
    try:
        scored, rejected, version = score_file(spec, settings, args.file, args.version)
    except (BatchError, ValidationFailed, RuntimeError) as exc:
        print(f"cannot score {args.file}: {exc}", file=sys.stderr)
        return 2
    _write(scored, args.out)
    if args.rejected:
        _write(rejected.drop(COERCE_ERRORS), args.rejected)
    print(f"scored {scored.height} listings with {settings.model_name} v{version}; {rejected.height} rejected"
          + (f" (reasons in {args.rejected})" if args.rejected and rejected.height else ""), file=sys.stderr)
    for row in rejected.head(5).iter_rows(named=True):
        print(f"  rejected {row[SOURCE_FILE]} row {row[SOURCE_ROW]}: {'; '.join(row['_reasons'])}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
