"""Synthetic King County house sales at any scale, priced by a known ground-truth function.

    homeworth synth --rows N --days D --seed S --out DIR [--start 2014-05-02] [--format parquet|csv]
                    [--sigma 0.15] [--chunk-rows 1000000] [--workers W]

(``python -m tasks.datasets.king_county.synth`` takes the same flags.) Writes
``DIR/<YYYY-MM-DD>/synth-<k>.parquet`` (or ``.csv``) for D consecutive days from ``--start``: the landing
layout ``tasks.ingest.landing`` reads, with the 21 columns of ``tasks/datasets/king_county/spec.yaml``.
Parquet columns carry the spec's types (id and zipcode String, date Date, ints Int64, floats Float64); CSV
files follow the public file's conventions (id, date, floors and zipcode quoted, the date as
``"20141013T000000"``, whole numbers without a decimal point). See docs/synthetic.md.

Scale and determinism. Rows are spread over the days by integer weights (a weekly pattern: fewer sales
at weekends; a seasonal one: more in spring and summer), exactly N in all. Days are packed in order
into chunks of at most ``chunk_rows`` rows (a day with more rows than that is split evenly over
several chunks, one file per part: synth-0, synth-1, ...). Each chunk is generated with vectorised
numpy from its own ``numpy.random.Generator`` seeded with ``SeedSequence([seed, chunk index])`` and
written straight to its day files, so memory stays bounded by the chunk size at any N, chunks can
run in any order or in parallel (``--workers``), and the same arguments give byte-identical files.
Every day gets at least one file (a day without rows gets an empty one). ``id`` is a 10-digit string,
a bijection of the sale's global row number (and the seed), so ids are unique over the whole run.
Each file is written to a hidden temporary name in its day folder (which ingest ignores) and then
given its name atomically; an existing landing file is never rewritten (it is skipped and counted in
``files_existing``, and a chunk whose files all exist is not generated at all, so an interrupted run
resumes where it stopped).

The market. Each sale picks one of the 70 King County zip codes (with the public data's sales
shares, ``zipcodes.py``); the zip code sets the point (normal around its centre, inside its bounding
box in the public data), the typical house size, lot size, grade, age, view and waterfront rates, and
the price level. Within a zip code a latent size factor s and a quality factor q (corr 0.75) drive a
log-normal sqft_living, grade (3..13), bedrooms, bathrooms and (with age) floors; lot size is
log-normal around the zip code's level; yr_built is the sale year minus a zip-code-typical age
(1900 .. sale year); old houses are more often renovated (yr_renovated between yr_built + 1 and
the sale year, else 0) and more often have a basement (sqft_above + sqft_basement = sqft_living);
sqft_living15 / sqft_lot15 are the house's own values pulled towards the zip code's.

Ground truth. ``ln(price) = f(row) + eps`` with ``eps ~ Normal(0, sigma^2)`` (``--sigma``, default
0.15): f, its coefficients and the price clip are in ``ground_truth.py``, and
``ground_truth_log_price(df)`` computes f for a frame of these columns. Changing sigma changes only the
prices: every other column is the same for the same seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from statistics import NormalDist

import numpy as np
import polars as pl

from tasks.datasets.king_county import ground_truth as gt
from tasks.datasets.king_county import zipcodes as zc
from tasks.datasets.king_county.ground_truth import PRICE_MAX, PRICE_MIN
from tasks.datasets.king_county.ground_truth import ground_truth_log_price as ground_truth_log_price  # re-exported
from tasks.datasets.king_county.landing_files import FORMATS, file_name, write_atomic
from tasks.datasets.king_county.zipcodes import ZIPCODES

DEFAULT_START = date(2014, 5, 2)
DEFAULT_SIGMA = 0.15
DEFAULT_CHUNK_ROWS = 1_000_000

# Columns in the spec's order with the spec's types (string, date, float -> Float64, int -> Int64).
# tests/unit/test_synth.py holds this to tasks/datasets/king_county/spec.yaml.
SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(), "date": pl.Date(), "price": pl.Float64(), "bedrooms": pl.Int64(),
    "bathrooms": pl.Float64(), "sqft_living": pl.Float64(), "sqft_lot": pl.Float64(), "floors": pl.Float64(),
    "waterfront": pl.Int64(), "view": pl.Int64(), "condition": pl.Int64(), "grade": pl.Int64(),
    "sqft_above": pl.Float64(), "sqft_basement": pl.Float64(), "yr_built": pl.Int64(), "yr_renovated": pl.Int64(),
    "zipcode": pl.String(), "lat": pl.Float64(), "long": pl.Float64(), "sqft_living15": pl.Float64(),
    "sqft_lot15": pl.Float64(),
}  # fmt: skip

# Ordered categories drawn by thresholding a latent normal (an ordered probit): the thresholds give the
# public data's shares for a latent of the stated standard deviation; the latent's other terms then move
# a house up or down the scale.
_ND = NormalDist()


def _thresholds(shares: list[float], sd: float, mean: float = 0.0) -> np.ndarray:
    cum = np.cumsum(shares)[:-1] / sum(shares)
    return np.array([mean + sd * _ND.inv_cdf(float(c)) for c in cum])


FLOOR_VALUES = np.array([1.0, 1.5, 2.0, 2.5, 3.0, 3.5])
_FLOOR_TH = _thresholds([0.494, 0.088, 0.381, 0.0075, 0.028, 0.0015], sd=math.sqrt(1.5))
_COND_TH = _thresholds([0.0015, 0.008, 0.649, 0.263, 0.0785], sd=math.sqrt(1.09))
_VIEW_SHARES = [0.902, 0.0154, 0.0446, 0.0236, 0.0148]
_VIEW_SD = math.sqrt(1 + 0.25**2)
_VIEW_TH = _thresholds(_VIEW_SHARES, sd=_VIEW_SD)
# Shift of the view latent per zip code so that P(view > 0) follows the zip code's mean view.
_MEAN_VIEW_IF_ANY = sum(i * s for i, s in enumerate(_VIEW_SHARES)) / (1 - _VIEW_SHARES[0])
_Z_VIEW_SHIFT = np.array([
    _VIEW_TH[0] - _VIEW_SD * _ND.inv_cdf(1 - min(max(v / _MEAN_VIEW_IF_ANY, 0.002), 0.6)) for v in zc.VIEW
])

# Sales volume: integer weights by weekday (Monday first) and month, so the split of N over days is exact
# integer arithmetic.
WEEKDAY_WEIGHTS = [100, 110, 110, 100, 95, 30, 25]
MONTH_WEIGHTS = [60, 70, 90, 105, 115, 110, 110, 100, 90, 90, 75, 70]

# id = 1e9 + (row * _ID_MULT + offset(seed)) mod 9e9: a bijection of the row number onto 10-digit ids.
_ID_SPACE = 9_000_000_000
_ID_MULT = 982_451_653  # prime, coprime to 9e9 = 2^9 3^2 5^9
MAX_ROWS = _ID_SPACE


# --- the plan: rows per day, chunks, files -------------------------------------------------------------


@dataclass
class Piece:
    """One landing file: ``count`` rows of day number ``day`` (0-based), part ``part`` of that day."""

    day: int
    part: int
    count: int


@dataclass
class Chunk:
    index: int
    first_row: int  # global row number of the chunk's first row (rows are numbered in day order)
    pieces: list[Piece] = field(default_factory=list)

    @property
    def rows(self) -> int:
        return sum(p.count for p in self.pieces)


def rows_per_day(rows: int, start: date, days: int) -> list[int]:
    """Split ``rows`` over ``days`` days from ``start`` by weekday and month weights; exact, integer only."""
    weights = [WEEKDAY_WEIGHTS[(start + timedelta(i)).weekday()] * MONTH_WEIGHTS[(start + timedelta(i)).month - 1]
               for i in range(days)]  # fmt: skip
    total = sum(weights)
    base = [rows * w // total for w in weights]
    remainders = [rows * w % total for w in weights]
    left = rows - sum(base)
    # The largest remainders get one more row (ties: the earlier day).
    for i in sorted(range(days), key=lambda i: (-remainders[i], i))[:left]:
        base[i] += 1
    return base


def plan_chunks(counts: list[int], chunk_rows: int) -> list[Chunk]:
    """Pack the days, in order, into chunks of at most ``chunk_rows`` rows.

    A day larger than ``chunk_rows`` is split into ``ceil(count / chunk_rows)`` near-equal parts, each a
    chunk of its own; other days share a chunk with their neighbours. A day without rows still gets a
    (empty) piece, so every day has a file.
    """
    chunks: list[Chunk] = []
    row = 0
    current: Chunk | None = None
    for day, count in enumerate(counts):
        if count > chunk_rows:
            parts = -(-count // chunk_rows)
            for part in range(parts):
                n = count // parts + (1 if part < count % parts else 0)
                chunks.append(Chunk(len(chunks), row, [Piece(day, part, n)]))
                row += n
            current = None
            continue
        if current is None or current.rows + count > chunk_rows:
            current = Chunk(len(chunks), row)
            chunks.append(current)
        current.pieces.append(Piece(day, 0, count))
        row += count
    return chunks


# --- generation ---------------------------------------------------------------------------------------
# Each helper computes some columns from the chunk's draws; generate_chunk makes every random draw itself,
# in one fixed order, so that the output depends only on (seed, chunk).


def _resample_outside(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, u: np.ndarray) -> np.ndarray:
    """x where it lies in [lo, hi], else a uniform draw in [lo, hi] (no pile-up at the edges)."""
    out = (x < lo) | (x > hi)
    return np.where(out, lo + u * (hi - lo), x)


def _chunk_days(chunk: Chunk, day_numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each row's day number, sale year and time effect; per-day values are computed once per piece."""
    piece_days = day_numbers[[p.day for p in chunk.pieces]].astype(np.int64)
    piece_counts = [p.count for p in chunk.pieces]
    days = np.repeat(piece_days, piece_counts)
    sale_year = np.repeat(gt.year_doy(piece_days)[0], piece_counts)
    time_effect = np.repeat(gt.time_effect(piece_days), piece_counts)
    return days, sale_year, time_effect


def _size(zi: np.ndarray, z: np.ndarray, s: np.ndarray, q: np.ndarray) -> dict[str, np.ndarray]:
    """sqft_living, grade, bedrooms and bathrooms from the zip code's typical size and the factors s, q."""
    zip_ln_liv = zc.LN_LIV[zi]
    size_level = zip_ln_liv - zc.MEAN_LN_LIV
    return {
        "sqft_living": np.clip(np.rint(np.exp(zip_ln_liv + 0.38 * s) / 10) * 10, 400, 12_000),
        "grade": np.clip(np.rint(zc.GRADE[zi] + 0.95 * q), 3, 13).astype(np.int64),
        "bedrooms": np.clip(np.rint(3.37 + 1.2 * size_level + 0.6 * s + 0.65 * z[2]), 1, 10).astype(np.int64),
        "bathrooms": np.clip(np.rint(4 * (2.11 + 1.0 * size_level + 0.45 * s + 0.25 * q + 0.35 * z[3])) / 4,
                             0.75, 7.5),
    }  # fmt: skip


def _age(zi: np.ndarray, z: np.ndarray, u: np.ndarray, q: np.ndarray, sale_year: np.ndarray) -> np.ndarray:
    """Whole years from construction to sale: zip-code typical, never before 1900."""
    max_age = sale_year - 1900
    age = np.abs(zc.AGE[zi] + zc.SD_AGE[zi] * (-0.35 * q + 0.94 * z[4]))
    age = np.where(age > max_age, u[0] * max_age, age)
    return np.minimum(np.rint(age).astype(np.int64), max_age)


def _structure(z: np.ndarray, u: np.ndarray, q: np.ndarray, age: np.ndarray,
               living: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    """floors and sqft_basement: better houses have more floors, old ones fewer and more basements."""
    floors = FLOOR_VALUES[np.searchsorted(_FLOOR_TH, 0.5 * q - 0.5 * (age - 40) / 30 + z[5])]
    has_basement = u[1] < np.clip(0.22 + 0.0045 * age - 0.15 * (floors >= 2.5), 0.0, 0.75)
    basement = np.where(has_basement, np.rint((0.15 + 0.30 * u[2]) * living / 10) * 10, 0.0)
    return {"floors": floors, "sqft_basement": basement}


def _lot_and_history(zi: np.ndarray, z: np.ndarray, u: np.ndarray, s: np.ndarray, age: np.ndarray,
                     sale_year: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    """sqft_lot, yr_built, yr_renovated (old houses more often) and condition (worse with age)."""
    yr_built = sale_year - age
    lot = np.clip(np.rint(np.exp(zc.LN_LOT[zi] + 0.25 * s + 0.75 * z[6])), 520, 1_650_000)
    renovated = u[3] < np.clip(0.0012 * (age - 10), 0.0, 0.25)
    yr_renovated = np.where(renovated, yr_built + 1 + np.floor(u[4] * age).astype(np.int64), 0)
    yr_renovated = np.minimum(yr_renovated, sale_year)
    condition = 1 + np.searchsorted(_COND_TH, 0.01 * (age - 40) + z[7])
    return {"sqft_lot": lot, "yr_built": yr_built, "yr_renovated": yr_renovated, "condition": condition}


def _view_and_water(zi: np.ndarray, z: np.ndarray, u: np.ndarray, q: np.ndarray) -> dict[str, np.ndarray]:
    """view (0..4) and waterfront (a waterfront house has a view of 3 or 4) at the zip code's rates."""
    view = np.searchsorted(_VIEW_TH, _Z_VIEW_SHIFT[zi] + 0.25 * q + z[8])
    water_p = zc.WATER[zi]
    waterfront = (u[5] < water_p).astype(np.int64)
    view = np.where(waterfront == 1, np.maximum(view, np.where(u[5] < 0.7 * water_p, 4, 3)), view)
    return {"view": view, "waterfront": waterfront}


def _surroundings(zi: np.ndarray, z: np.ndarray, u: np.ndarray, living: np.ndarray,
                  lot: np.ndarray) -> dict[str, np.ndarray]:  # fmt: skip
    """sqft_living15 and sqft_lot15 (the house pulled towards its zip code), lat and long inside its box."""
    living15 = np.clip(np.rint(np.exp(0.45 * np.log(living) + 0.55 * zc.LN_LIV[zi] + 0.2 * z[9]) / 10) * 10, 460,
                       6_200)  # fmt: skip
    lot15 = np.clip(np.rint(np.exp(0.75 * np.log(lot) + 0.25 * zc.LN_LOT[zi] + 0.35 * z[10])), 650, 870_000)
    lat = np.round(_resample_outside(zc.LAT[zi] + zc.SD_LAT[zi] * z[11], zc.LAT_LO[zi], zc.LAT_HI[zi], u[6]), 4)
    long = np.round(_resample_outside(zc.LONG[zi] + zc.SD_LONG[zi] * z[12], zc.LONG_LO[zi], zc.LONG_HI[zi], u[7]), 3)
    return {"sqft_living15": living15, "sqft_lot15": lot15, "lat": lat, "long": long}


def _price(zi: np.ndarray, c: dict[str, np.ndarray], sale_year: np.ndarray, time_effect: np.ndarray,
           sigma: float, eps: np.ndarray) -> tuple[np.ndarray, int]:  # fmt: skip
    """round(exp(f + sigma eps)) clipped to [PRICE_MIN, PRICE_MAX], and how many prices the clip moved."""
    f = gt.log_price(zi, c["sqft_living"], c["sqft_lot"], c["sqft_living15"], c["grade"], c["condition"], c["view"],
                     c["waterfront"], c["bathrooms"], c["bedrooms"], c["floors"], c["sqft_basement"], c["yr_built"],
                     c["yr_renovated"], sale_year, time_effect)  # fmt: skip
    f += sigma * eps
    price = np.rint(np.exp(f, out=f), out=f)
    clipped = int(np.count_nonzero((price < PRICE_MIN) | (price > PRICE_MAX)))
    np.clip(price, PRICE_MIN, PRICE_MAX, out=price)
    return price, clipped


def _ids(first_row: int, n: int, seed: int) -> np.ndarray:
    """The 10-digit ids of global rows first_row .. first_row + n - 1 (a bijection, see _ID_MULT)."""
    rows = np.arange(first_row, first_row + n, dtype=np.uint64)
    offset = np.uint64(int(np.random.SeedSequence([seed, 0x1D]).generate_state(1, np.uint64)[0]) % _ID_SPACE)
    rows *= np.uint64(_ID_MULT)
    rows += offset
    rows %= np.uint64(_ID_SPACE)
    rows += np.uint64(1_000_000_000)
    return rows


def generate_chunk(chunk: Chunk, seed: int, sigma: float, day_numbers: np.ndarray) -> tuple[pl.DataFrame, int]:
    """The rows of one chunk (in day order) and how many prices hit the clip.

    ``day_numbers`` holds each plan day as days since 1970-01-01. Only (seed, chunk.index, the chunk's
    pieces and first row) decide the output.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, chunk.index]))
    n = chunk.rows
    days, sale_year, time_effect = _chunk_days(chunk, day_numbers)
    zi = rng.choice(len(ZIPCODES), size=n, p=zc.P)
    z = rng.standard_normal((13, n), dtype=np.float32)
    u = rng.random((8, n), dtype=np.float32)
    eps = rng.standard_normal(n)  # drawn last: sigma changes the prices only

    s = z[0]  # size
    q = 0.75 * s + 0.66 * z[1]  # quality, corr(s, q) = 0.75
    c = _size(zi, z, s, q)
    age = _age(zi, z, u, q, sale_year)
    c |= _structure(z, u, q, age, c["sqft_living"])
    c |= _lot_and_history(zi, z, u, s, age, sale_year)
    del age
    c |= _view_and_water(zi, z, u, q)
    c |= _surroundings(zi, z, u, c["sqft_living"], c["sqft_lot"])
    del z, u, s, q
    price, clipped = _price(zi, c, sale_year, time_effect, sigma, eps)
    del time_effect, sale_year, eps
    c |= {
        "id": pl.Series(_ids(chunk.first_row, n, seed)).cast(pl.String),
        "date": pl.Series(days.astype(np.int32)).cast(pl.Date),
        "price": price,
        "sqft_above": c["sqft_living"] - c["sqft_basement"],
        "zipcode": pl.Series(ZIPCODES, dtype=pl.String).gather(zi),
    }  # fmt: skip
    return pl.DataFrame({name: c[name] for name in SCHEMA}, schema=SCHEMA), clipped


# --- writing ---------------------------------------------------------------------------------------

def _run_chunk(chunk: Chunk, seed: int, sigma: float, fmt: str, out: Path, day_numbers: np.ndarray,
               day_names: list[str]) -> tuple[int, int, int]:  # fmt: skip
    """Generate and write one chunk. Returns (files written, files already there, prices clipped)."""
    paths = [out / day_names[p.day] / file_name(p.part, fmt) for p in chunk.pieces]
    todo = [not path.exists() for path in paths]
    if not any(todo):
        return 0, len(paths), 0
    df, clipped = generate_chunk(chunk, seed, sigma, day_numbers)
    offset = written = 0
    for piece, path, needed in zip(chunk.pieces, paths, todo):
        if needed:
            path.parent.mkdir(parents=True, exist_ok=True)
            written += write_atomic(df.slice(offset, piece.count), path, fmt)
        offset += piece.count
    return written, len(paths) - written, clipped


def _check_arguments(rows: int, days: int, seed: int, start: date, sigma: float, fmt: str, chunk_rows: int) -> None:
    if rows < 0 or rows > MAX_ROWS:
        raise ValueError(f"rows must be in 0..{MAX_ROWS:,}, got {rows}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not (sigma >= 0 and math.isfinite(sigma)):
        raise ValueError(f"sigma must be a finite number >= 0, got {sigma}")
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if chunk_rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {chunk_rows}")
    if start.year < 1901:
        raise ValueError(f"start must be in 1901 or later (houses are built from 1900 on), got {start}")


def _run_chunks(chunks: list[Chunk], workers: int, *args) -> tuple[int, int, int]:
    """``_run_chunk(chunk, *args)`` for every chunk; (files written, files already there, prices clipped)."""
    written = existing = clipped = 0
    if workers == 1:
        for chunk in chunks:
            w, e, c = _run_chunk(chunk, *args)
            written, existing, clipped = written + w, existing + e, clipped + c
        return written, existing, clipped
    # At most ``workers`` chunks in flight: memory stays bounded by workers x chunk_rows.
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synth") as pool:
        pending: deque[Future] = deque()
        for chunk in chunks:
            if len(pending) >= workers:
                w, e, c = pending.popleft().result()
                written, existing, clipped = written + w, existing + e, clipped + c
            pending.append(pool.submit(_run_chunk, chunk, *args))
        while pending:
            w, e, c = pending.popleft().result()
            written, existing, clipped = written + w, existing + e, clipped + c
    return written, existing, clipped


def generate(
    rows: int,
    days: int,
    seed: int,
    out: str | Path,
    start: date = DEFAULT_START,
    sigma: float = DEFAULT_SIGMA,
    fmt: str = "parquet",
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    workers: int | None = None,
) -> dict:
    """Write ``rows`` synthetic sales over ``days`` days from ``start`` under ``out``. Returns a summary.

    The files depend on (rows, days, seed, start, sigma, fmt, chunk_rows) only, not on ``workers``.
    """
    _check_arguments(rows, days, seed, start, sigma, fmt, chunk_rows)
    t0 = time.perf_counter()
    out = Path(out)
    counts = rows_per_day(rows, start, days)
    chunks = plan_chunks(counts, chunk_rows)
    first = (start - date(1970, 1, 1)).days
    day_numbers = np.arange(first, first + days, dtype=np.int64)
    day_names = [(start + timedelta(i)).isoformat() for i in range(days)]
    workers = workers or min(4, os.cpu_count() or 1)
    written, existing, clipped = _run_chunks(chunks, workers, seed, sigma, fmt, out, day_numbers, day_names)
    seconds = time.perf_counter() - t0
    return {
        "rows": rows,
        "days": days,
        "first_day": day_names[0],
        "last_day": day_names[-1],
        "files": written + existing,
        "files_written": written,
        "files_existing": existing,
        "chunks": len(chunks),
        "format": fmt,
        "seed": seed,
        "sigma": sigma,
        "prices_clipped": clipped,
        "out": str(out),
        "seconds": round(seconds, 3),
        "rows_per_second": round(rows / seconds) if seconds > 0 else None,
    }


def main(argv: list[str] | None = None, prog: str = "python -m tasks.datasets.king_county.synth") -> dict:
    p = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=int, required=True, help="number of sales in all")
    p.add_argument("--days", type=int, required=True, help="number of consecutive sale days")
    p.add_argument("--seed", type=int, required=True, help="random seed (>= 0)")
    p.add_argument("--out", type=Path, required=True, help="landing folder; day folders are created in it")
    p.add_argument("--start", type=date.fromisoformat, default=DEFAULT_START, help="first sale day (ISO)")
    p.add_argument("--format", choices=FORMATS, default="parquet", dest="fmt")
    p.add_argument("--sigma", type=float, default=DEFAULT_SIGMA, help="sd of the noise on ln(price)")
    p.add_argument("--chunk-rows", type=int, default=DEFAULT_CHUNK_ROWS, help="rows generated at a time")
    p.add_argument("--workers", type=int, default=None, help="chunks generated at once (default: min(4, CPUs))")
    args = p.parse_args(argv)
    summary = generate(args.rows, args.days, args.seed, args.out, start=args.start, sigma=args.sigma,
                       fmt=args.fmt, chunk_rows=args.chunk_rows, workers=args.workers)  # fmt: skip
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
