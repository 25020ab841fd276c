"""Synthetic King County house sales at any scale, priced by a known ground-truth function.

    python -m tasks.datasets.king_county.synth --rows N --days D --seed S --out DIR [--start 2014-05-02] [--format parquet|csv]
                          [--sigma 0.15] [--chunk-rows 1000000] [--workers W]

Writes ``DIR/<YYYY-MM-DD>/synth-<k>.parquet`` (or ``.csv``) for D consecutive days from ``--start``: the
landing layout ``tasks.ingest.landing`` reads, with the 21 columns of ``tasks/datasets/king_county/spec.yaml``. Parquet
columns carry the spec's types (id and zipcode String, date Date, ints Int64, floats Float64); CSV
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
shares); the zip code sets the point (normal around its centre, inside its bounding box in the
public data), the typical house size, lot size, grade, age, view and waterfront rates, and the price
level. Within a zip code a latent size factor s and a quality factor q (corr 0.75) drive a
log-normal sqft_living, grade (3..13), bedrooms, bathrooms and (with age) floors; lot size is
log-normal around the zip code's level; yr_built is the sale year minus a zip-code-typical age
(1900 .. sale year); old houses are more often renovated (yr_renovated between yr_built + 1 and
the sale year, else 0) and more often have a basement (sqft_above + sqft_basement = sqft_living);
sqft_living15 / sqft_lot15 are the house's own values pulled towards the zip code's.

Ground truth. ``ln(price) = f(row) + eps`` with ``eps ~ Normal(0, sigma^2)`` independent of every
column (``--sigma``, default 0.15), so no model can do better than an RMSE of sigma on ln(price):

    f = 12.5 + L[zipcode]
        + 0.42 ln(sqft_living / 2000) + 0.08 ln(sqft_lot / 7500) + 0.15 ln(sqft_living15 / 2000)
        + 0.09 (grade - 7) + 0.06 (condition - 3) + 0.06 view + 0.45 waterfront
        + 0.03 (bathrooms - 2) - 0.01 (bedrooms - 3) - 0.04 (floors - 1)
        - 0.17 sqft_basement / sqft_living
        - 0.43 a + 0.40 a^2                  where a = max(year(date) - yr_built, 0) / 100
        + 0.08 [yr_renovated > 0]
        + ln(1.06) t                         market trend, +6 % a year: t = days since 2014-01-01 / 365.25
        + 0.03 cos(2 pi (doy - 105) / 365.25)  season, peak in mid April: doy = day of the year (1..366)

    price = round(exp(f + eps)) dollars, clipped to [1000, 1e8]

``L[zipcode]`` is the ``level`` column of ``_ZIP_TABLE`` below (0.03 .. 1.37; the coefficients
and levels were fitted to the public 2014-15 sales and rounded). The rounding to whole dollars moves
ln(price) by at most 0.5 / price (1e-5 at $50,000); the clip only binds in far corners (sigma well above 1, or sale dates
decades away from 2014) and the summary counts the rows it touched in the chunks it generated
(``prices_clipped``).
``ground_truth_log_price(df)`` computes f for a frame of these columns. Changing sigma changes only
the prices: every other column is the same for the same seed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from statistics import NormalDist

import numpy as np
import polars as pl

DEFAULT_START = date(2014, 5, 2)
DEFAULT_SIGMA = 0.15
DEFAULT_CHUNK_ROWS = 1_000_000
FORMATS = ("parquet", "csv")
FILE_PREFIX = "synth-"

# Columns in the spec's order with the spec's types (string, date, float -> Float64, int -> Int64).
# tests/test_synth.py holds this to tasks/datasets/king_county/spec.yaml.
SCHEMA: dict[str, pl.DataType] = {
    "id": pl.String(), "date": pl.Date(), "price": pl.Float64(), "bedrooms": pl.Int64(),
    "bathrooms": pl.Float64(), "sqft_living": pl.Float64(), "sqft_lot": pl.Float64(), "floors": pl.Float64(),
    "waterfront": pl.Int64(), "view": pl.Int64(), "condition": pl.Int64(), "grade": pl.Int64(),
    "sqft_above": pl.Float64(), "sqft_basement": pl.Float64(), "yr_built": pl.Int64(), "yr_renovated": pl.Int64(),
    "zipcode": pl.String(), "lat": pl.Float64(), "long": pl.Float64(), "sqft_living15": pl.Float64(),
    "sqft_lot15": pl.Float64(),
}  # fmt: skip

# --- the ground truth --------------------------------------------------------------------------------
BASE = 12.5
EPOCH = date(2014, 1, 1)
TREND = math.log(1.06)  # per year
SEASON_AMPLITUDE = 0.03
SEASON_PEAK_DOY = 105
COEF = {
    "ln_living": 0.42, "ln_lot": 0.08, "ln_living15": 0.15, "grade": 0.09, "condition": 0.06, "view": 0.06,
    "waterfront": 0.45, "bathrooms": 0.03, "bedrooms": -0.01, "floors": -0.04, "basement_share": -0.17,
    "age": -0.43, "age2": 0.40, "renovated": 0.08,
}  # fmt: skip
PRICE_MIN, PRICE_MAX = 1_000.0, 100_000_000.0

# Per zip code, from the public sales (tasks/datasets/king_county/kc_house_data.csv.gz): sales count (the sampling weight),
# centre and spread of the points and their bounding box, mean ln(sqft_living), mean ln(sqft_lot), mean
# grade, mean and sd of the age at sale, waterfront share, mean view, and the price level L[zipcode].
_ZIP_TABLE = """
# zip  sales lat     long      sd_lat sd_long lat_lo  lat_hi  long_lo  long_hi  ln_liv ln_lot grade age sd_age water view level
98001  362 47.3090 -122.2706 0.0307 0.0136 47.2576 47.3575 -122.294 -122.231 7.494 9.271 7.30 33.6 23.1 0.0000 0.102 +0.035
98002  199 47.3088 -122.2134 0.0212 0.0120 47.2761 47.3532 -122.229 -122.080 7.341 8.838 6.69 46.6 29.3 0.0000 0.010 +0.042
98003  280 47.3157 -122.3101 0.0312 0.0194 47.2574 47.3554 -122.334 -122.180 7.503 9.150 7.54 37.5 15.6 0.0000 0.214 +0.072
98004  317 47.6162 -122.2052 0.0196 0.0112 47.5806 47.6501 -122.229 -122.113 7.878 9.364 8.69 42.9 23.5 0.0032 0.306 +1.183
98005  168 47.6115 -122.1673 0.0226 0.0079 47.5830 47.6587 -122.185 -122.150 7.830 9.629 8.49 44.6 13.1 0.0000 0.095 +0.786
98006  498 47.5580 -122.1468 0.0100 0.0249 47.5380 47.5784 -122.197 -122.101 7.891 9.373 8.80 35.6 16.9 0.0080 0.635 +0.702
98007  141 47.6105 -122.1421 0.0189 0.0068 47.5647 47.6604 -122.153 -122.128 7.633 9.122 7.96 43.2 14.3 0.0000 0.028 +0.718
98008  283 47.6133 -122.1158 0.0176 0.0080 47.5692 47.6441 -122.132 -122.090 7.599 9.119 7.65 48.0 10.6 0.0318 0.477 +0.725
98010  100 47.3332 -121.9995 0.0191 0.0433 47.2931 47.3783 -122.053 -121.867 7.566 10.176 7.40 35.2 27.7 0.0000 0.100 +0.243
98011  195 47.7552 -122.2012 0.0146 0.0167 47.7264 47.7763 -122.237 -122.167 7.671 9.125 7.77 32.1 19.1 0.0000 0.062 +0.501
98014  124 47.6715 -121.8485 0.0285 0.1802 47.6085 47.7200 -121.962 -121.315 7.532 10.506 7.39 33.3 24.0 0.0000 0.185 +0.314
98019  190 47.7371 -121.9548 0.0132 0.0557 47.7064 47.7736 -121.986 -121.473 7.623 9.584 7.51 22.7 19.3 0.0000 0.021 +0.338
98022  234 47.2115 -121.9952 0.0241 0.0344 47.1559 47.2848 -122.088 -121.646 7.441 9.981 7.16 42.8 29.0 0.0000 0.628 +0.055
98023  499 47.3086 -122.3643 0.0140 0.0170 47.2707 47.3408 -122.401 -122.335 7.532 9.132 7.58 35.5 14.7 0.0080 0.122 +0.030
98024   81 47.5584 -121.9053 0.0185 0.0266 47.5242 47.6067 -121.962 -121.850 7.606 10.794 7.53 43.0 29.1 0.0000 0.235 +0.430
98027  412 47.5217 -122.0428 0.0324 0.0382 47.4449 47.5717 -122.126 -121.900 7.750 9.384 8.19 27.1 20.7 0.0049 0.160 +0.553
98028  283 47.7551 -122.2460 0.0140 0.0135 47.7325 47.7769 -122.270 -122.220 7.606 9.169 7.61 36.5 21.3 0.0035 0.163 +0.464
98029  321 47.5596 -122.0057 0.0111 0.0110 47.5396 47.5810 -122.045 -121.976 7.680 8.574 8.40 16.7 10.2 0.0000 0.081 +0.665
98030  256 47.3690 -122.1904 0.0115 0.0177 47.3410 47.3867 -122.229 -122.135 7.541 9.070 7.41 29.5 21.9 0.0000 0.023 +0.088
98031  274 47.4038 -122.1892 0.0117 0.0166 47.3439 47.4236 -122.224 -122.084 7.524 9.099 7.38 32.5 16.4 0.0000 0.007 +0.121
98032  125 47.3736 -122.2788 0.0102 0.0179 47.3557 47.4122 -122.304 -122.231 7.390 9.138 7.14 48.8 17.7 0.0000 0.080 +0.045
98033  432 47.6801 -122.1877 0.0151 0.0148 47.6476 47.7168 -122.217 -122.158 7.686 9.101 8.08 35.9 23.2 0.0093 0.299 +0.841
98034  545 47.7207 -122.2074 0.0097 0.0254 47.6705 47.7404 -122.260 -122.145 7.525 9.034 7.51 38.0 15.2 0.0110 0.202 +0.611
98038  590 47.3706 -122.0318 0.0218 0.0204 47.3438 47.4583 -122.079 -121.936 7.622 9.155 7.60 18.5 14.4 0.0000 0.027 +0.196
98039   50 47.6258 -122.2335 0.0089 0.0049 47.6102 47.6413 -122.241 -122.223 8.143 9.690 9.56 41.7 25.7 0.0200 0.440 +1.366
98040  282 47.5598 -122.2256 0.0187 0.0108 47.5260 47.5934 -122.251 -122.204 7.973 9.447 8.96 42.8 17.6 0.0426 0.784 +0.941
98042  548 47.3657 -122.1155 0.0200 0.0341 47.3117 47.4230 -122.177 -122.039 7.523 9.234 7.43 28.0 17.1 0.0000 0.033 +0.098
98045  221 47.4734 -121.7590 0.0192 0.0347 47.4291 47.5316 -121.842 -121.417 7.543 9.925 7.62 28.5 19.0 0.0000 0.267 +0.350
98052  574 47.6805 -122.1193 0.0266 0.0213 47.6278 47.7318 -122.164 -122.029 7.716 9.096 8.19 28.9 15.9 0.0052 0.064 +0.692
98053  405 47.6799 -122.0228 0.0259 0.0265 47.6101 47.7243 -122.117 -121.953 7.783 9.594 8.29 16.5 12.0 0.0000 0.067 +0.606
98055  268 47.4587 -122.2028 0.0204 0.0117 47.4231 47.4917 -122.232 -122.186 7.421 8.902 7.13 45.1 28.2 0.0000 0.104 +0.205
98056  406 47.5097 -122.1828 0.0164 0.0108 47.4792 47.5454 -122.209 -122.164 7.526 8.977 7.35 37.2 24.5 0.0074 0.175 +0.376
98058  455 47.4461 -122.1461 0.0134 0.0277 47.3917 47.4771 -122.187 -122.066 7.563 9.278 7.56 35.9 16.0 0.0000 0.022 +0.211
98059  468 47.4927 -122.1390 0.0176 0.0229 47.4596 47.5405 -122.188 -122.063 7.716 9.204 7.89 25.4 19.9 0.0000 0.043 +0.378
98065  310 47.5317 -121.8619 0.0092 0.0282 47.5124 47.5729 -121.890 -121.676 7.787 8.925 7.86 17.2 22.3 0.0000 0.290 +0.439
98070  118 47.4174 -122.4638 0.0437 0.0258 47.3312 47.5098 -122.519 -122.404 7.451 10.804 7.25 46.2 27.3 0.2034 1.085 +0.299
98072  273 47.7510 -122.1320 0.0140 0.0288 47.7181 47.7757 -122.175 -122.025 7.706 9.852 8.07 32.9 14.7 0.0000 0.059 +0.509
98074  441 47.6241 -122.0448 0.0135 0.0189 47.5906 47.6569 -122.089 -121.992 7.822 9.298 8.71 24.4 13.4 0.0136 0.181 +0.606
98075  359 47.5875 -122.0225 0.0092 0.0343 47.5595 47.6018 -122.086 -121.965 7.972 9.441 9.01 20.4 13.7 0.0279 0.318 +0.599
98077  198 47.7459 -122.0612 0.0188 0.0213 47.7073 47.7759 -122.101 -122.012 7.882 10.526 8.78 29.7 13.1 0.0000 0.010 +0.457
98092  351 47.3018 -122.1680 0.0277 0.0415 47.2485 47.3427 -122.228 -122.006 7.639 9.479 7.85 25.0 16.3 0.0000 0.137 +0.045
98102  105 47.6346 -122.3222 0.0116 0.0074 47.5617 47.6507 -122.385 -122.310 7.543 7.915 8.29 61.7 43.9 0.0000 0.171 +1.077
98103  601 47.6760 -122.3442 0.0163 0.0079 47.6485 47.7011 -122.364 -122.329 7.343 7.986 7.41 61.2 41.6 0.0000 0.145 +0.921
98105  229 47.6651 -122.2943 0.0049 0.0212 47.6515 47.6719 -122.329 -122.256 7.582 8.394 7.84 73.9 30.1 0.0131 0.306 +1.042
98106  335 47.5362 -122.3568 0.0147 0.0072 47.5138 47.5772 -122.409 -122.338 7.228 8.406 6.87 48.8 32.9 0.0000 0.075 +0.445
98107  266 47.6698 -122.3756 0.0048 0.0137 47.6536 47.6762 -122.406 -122.351 7.304 7.889 7.42 54.7 42.7 0.0000 0.211 +0.945
98108  186 47.5498 -122.3069 0.0132 0.0110 47.5211 47.5701 -122.332 -122.291 7.372 8.455 7.02 56.3 35.8 0.0000 0.097 +0.448
98109  109 47.6356 -122.3501 0.0139 0.0058 47.5420 47.6476 -122.357 -122.322 7.543 8.065 8.02 70.2 39.7 0.0000 0.477 +1.087
98112  269 47.6296 -122.2979 0.0073 0.0096 47.6181 47.6467 -122.315 -122.279 7.729 8.350 8.44 69.8 37.9 0.0000 0.149 +1.139
98115  583 47.6855 -122.3018 0.0085 0.0166 47.6721 47.7009 -122.329 -122.263 7.440 8.488 7.36 65.4 28.4 0.0017 0.201 +0.913
98116  330 47.5739 -122.3936 0.0091 0.0088 47.5576 47.5935 -122.415 -122.381 7.444 8.348 7.57 60.7 35.3 0.0030 0.627 +0.850
98117  553 47.6869 -122.3786 0.0072 0.0124 47.6754 47.7014 -122.404 -122.357 7.355 8.324 7.28 66.0 32.4 0.0000 0.183 +0.913
98118  508 47.5438 -122.2756 0.0153 0.0093 47.5118 47.5694 -122.292 -122.249 7.336 8.535 6.97 64.1 33.4 0.0079 0.254 +0.544
98119  184 47.6400 -122.3669 0.0070 0.0053 47.6256 47.6544 -122.375 -122.357 7.527 8.035 8.02 66.7 42.5 0.0000 0.549 +1.067
98122  290 47.6102 -122.2998 0.0053 0.0087 47.6018 47.6199 -122.319 -122.282 7.414 7.998 7.74 64.5 44.3 0.0000 0.210 +0.896
98125  410 47.7170 -122.3012 0.0093 0.0141 47.6963 47.7338 -122.329 -122.274 7.395 8.802 7.18 54.4 23.0 0.0171 0.256 +0.655
98126  354 47.5446 -122.3753 0.0185 0.0036 47.5137 47.5858 -122.382 -122.366 7.253 8.433 7.03 61.6 31.8 0.0000 0.379 +0.654
98133  494 47.7356 -122.3438 0.0223 0.0084 47.7013 47.7776 -122.358 -122.315 7.330 8.692 7.13 51.0 25.6 0.0000 0.020 +0.545
98136  263 47.5388 -122.3882 0.0116 0.0044 47.5142 47.5573 -122.399 -122.381 7.365 8.447 7.40 57.7 34.4 0.0190 0.631 +0.772
98144  343 47.5863 -122.2984 0.0091 0.0088 47.5699 47.6199 -122.317 -122.280 7.454 8.099 7.45 59.0 41.5 0.0058 0.431 +0.763
98146  288 47.5021 -122.3583 0.0088 0.0162 47.4814 47.5141 -122.391 -122.334 7.306 8.997 6.82 58.6 23.0 0.0278 0.403 +0.354
98148   57 47.4374 -122.3293 0.0124 0.0037 47.4238 47.4666 -122.336 -122.322 7.323 9.062 6.95 51.1 21.5 0.0000 0.000 +0.229
98155  446 47.7549 -122.3035 0.0125 0.0165 47.7340 47.7772 -122.332 -122.270 7.406 9.140 7.17 53.2 18.4 0.0135 0.170 +0.502
98166  254 47.4552 -122.3503 0.0161 0.0119 47.4090 47.4815 -122.378 -122.267 7.541 9.344 7.39 56.7 20.3 0.0591 0.665 +0.367
98168  269 47.4897 -122.3079 0.0124 0.0201 47.4696 47.5141 -122.335 -122.258 7.222 9.201 6.51 61.6 19.6 0.0000 0.015 +0.151
98177  255 47.7424 -122.3693 0.0275 0.0090 47.7013 47.7776 -122.393 -122.357 7.661 9.178 7.98 53.4 18.8 0.0039 0.816 +0.669
98178  262 47.4991 -122.2470 0.0072 0.0144 47.4816 47.5121 -122.279 -122.220 7.373 8.933 6.82 59.1 20.9 0.0344 0.534 +0.236
98188  136 47.4473 -122.2810 0.0122 0.0080 47.4232 47.4697 -122.298 -122.263 7.417 9.165 7.04 48.9 20.5 0.0000 0.147 +0.162
98198  280 47.3908 -122.3157 0.0216 0.0101 47.3429 47.4232 -122.334 -122.288 7.392 9.090 7.10 47.6 19.1 0.0357 0.593 +0.129
98199  317 47.6481 -122.3985 0.0076 0.0088 47.6321 47.6712 -122.416 -122.369 7.587 8.461 8.01 57.8 28.9 0.0032 0.552 +0.963
"""


def _parse_zip_table(text: str) -> tuple[list[str], np.ndarray]:
    rows = [line.split() for line in text.strip().splitlines() if not line.startswith("#")]
    return [r[0] for r in rows], np.array([[float(v) for v in r[1:]] for r in rows])


ZIPCODES, _Z = _parse_zip_table(_ZIP_TABLE)
(_Z_SALES, _Z_LAT, _Z_LONG, _Z_SD_LAT, _Z_SD_LONG, _Z_LAT_LO, _Z_LAT_HI, _Z_LONG_LO, _Z_LONG_HI, _Z_LN_LIV,
 _Z_LN_LOT, _Z_GRADE, _Z_AGE, _Z_SD_AGE, _Z_WATER, _Z_VIEW, ZIP_LEVEL) = _Z.T  # fmt: skip
_ZIP_P = _Z_SALES / _Z_SALES.sum()
_MEAN_LN_LIV = float(_ZIP_P @ _Z_LN_LIV)

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
    _VIEW_TH[0] - _VIEW_SD * _ND.inv_cdf(1 - min(max(v / _MEAN_VIEW_IF_ANY, 0.002), 0.6)) for v in _Z_VIEW
])

# Sales volume: integer weights by weekday (Monday first) and month, so the split of N over days is exact
# integer arithmetic.
WEEKDAY_WEIGHTS = [100, 110, 110, 100, 95, 30, 25]
MONTH_WEIGHTS = [60, 70, 90, 105, 115, 110, 110, 100, 90, 90, 75, 70]

# id = 1e9 + (row * _ID_MULT + offset(seed)) mod 9e9: a bijection of the row number onto 10-digit ids.
_ID_SPACE = 9_000_000_000
_ID_MULT = 982_451_653  # prime, coprime to 9e9 = 2^9 3^2 5^9
MAX_ROWS = _ID_SPACE


# --- the ground truth, shared by the generator and ground_truth_log_price -----------------------------


def _year_doy(days: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Calendar year and day of year (1..366) of days since 1970-01-01."""
    d = days.astype("datetime64[D]")
    y = d.astype("datetime64[Y]")
    return y.astype(np.int64) + 1970, (d - y).astype(np.int64) + 1


def _time_effect(days: np.ndarray) -> np.ndarray:
    """Market trend plus season of sale days (days since 1970-01-01)."""
    _, doy = _year_doy(days)
    t = (days.astype(np.float64) - (EPOCH - date(1970, 1, 1)).days) / 365.25
    return TREND * t + SEASON_AMPLITUDE * np.cos(2 * np.pi * (doy - SEASON_PEAK_DOY) / 365.25)


def _f(zip_idx, living, lot, living15, grade, condition, view, waterfront, bathrooms, bedrooms, floors,
       basement, yr_built, yr_renovated, sale_year, time_effect) -> np.ndarray:  # fmt: skip
    c = COEF
    a = np.maximum(sale_year - yr_built, 0) / 100.0
    return (
        BASE + ZIP_LEVEL[zip_idx]
        + c["ln_living"] * np.log(living / 2000.0)
        + c["ln_lot"] * np.log(lot / 7500.0)
        + c["ln_living15"] * np.log(living15 / 2000.0)
        + c["grade"] * (grade - 7)
        + c["condition"] * (condition - 3)
        + c["view"] * view
        + c["waterfront"] * waterfront
        + c["bathrooms"] * (bathrooms - 2)
        + c["bedrooms"] * (bedrooms - 3)
        + c["floors"] * (floors - 1)
        + c["basement_share"] * (basement / living)
        + c["age"] * a + c["age2"] * a * a
        + c["renovated"] * (yr_renovated > 0)
        + time_effect
    )  # fmt: skip


def ground_truth_log_price(df) -> np.ndarray:
    """f(row) of the module docstring (ln(price) without the noise) for a frame of the spec's columns.

    ``df`` is a polars DataFrame (anything ``pl.DataFrame(df)`` accepts will do) with the spec's column
    names; ``date`` may be a Date, a Datetime or text (ISO or ``20141013T000000``). Raises ValueError on a
    zip code outside the 70.
    """
    if not isinstance(df, pl.DataFrame):
        df = pl.DataFrame(df)
    dt = df.schema["date"]
    if dt == pl.Date:
        date_expr = pl.col("date")
    elif isinstance(dt, pl.Datetime):
        date_expr = pl.col("date").dt.date()
    else:
        text = pl.col("date").cast(pl.String).str.strip_chars()
        date_expr = text.str.to_datetime("%Y%m%dT%H%M%S", strict=False).dt.date().fill_null(
            text.str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False))
    zips = pl.col("zipcode").cast(pl.String).str.strip_chars()
    cols = df.select(
        zips.replace_strict(ZIPCODES, list(range(len(ZIPCODES))), default=None, return_dtype=pl.Int64).alias("zi"),
        zips.alias("zipcode"),
        date_expr.cast(pl.Int32).alias("days"),
        *[pl.col(c).cast(pl.Float64) for c in (
            "sqft_living", "sqft_lot", "sqft_living15", "grade", "condition", "view", "waterfront", "bathrooms",
            "bedrooms", "floors", "sqft_basement", "yr_built", "yr_renovated")],
    )  # fmt: skip
    bad = cols.filter(pl.col("zi").is_null())
    if bad.height:
        raise ValueError(f"zip code(s) outside King County's 70: {bad['zipcode'].unique().to_list()[:10]}")
    if cols["days"].null_count():
        raise ValueError("column 'date' has values that are not dates")
    unique_days, inverse = np.unique(cols["days"].to_numpy().astype(np.int64), return_inverse=True)
    year = _year_doy(unique_days)[0][inverse]
    time_effect = _time_effect(unique_days)[inverse]
    g = {c: cols[c].to_numpy() for c in cols.columns}
    return _f(g["zi"].astype(np.int64), g["sqft_living"], g["sqft_lot"], g["sqft_living15"], g["grade"],
              g["condition"], g["view"], g["waterfront"], g["bathrooms"], g["bedrooms"], g["floors"],
              g["sqft_basement"], g["yr_built"], g["yr_renovated"], year, time_effect)  # fmt: skip


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


def _resample_outside(x: np.ndarray, lo: np.ndarray, hi: np.ndarray, u: np.ndarray) -> np.ndarray:
    """x where it lies in [lo, hi], else a uniform draw in [lo, hi] (no pile-up at the edges)."""
    out = (x < lo) | (x > hi)
    return np.where(out, lo + u * (hi - lo), x)


def generate_chunk(chunk: Chunk, seed: int, sigma: float, day_numbers: np.ndarray) -> tuple[pl.DataFrame, int]:
    """The rows of one chunk (in day order) and how many prices hit the clip.

    ``day_numbers`` holds each plan day as days since 1970-01-01. Only (seed, chunk.index, the chunk's
    pieces and first row) decide the output.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, chunk.index]))
    n = chunk.rows
    # Per-day values are computed once per piece and repeated over its rows.
    piece_days = day_numbers[[p.day for p in chunk.pieces]].astype(np.int64)
    piece_counts = [p.count for p in chunk.pieces]
    days = np.repeat(piece_days, piece_counts)
    sale_year = np.repeat(_year_doy(piece_days)[0], piece_counts)
    time_effect = np.repeat(_time_effect(piece_days), piece_counts)

    zi = rng.choice(len(ZIPCODES), size=n, p=_ZIP_P)
    z = rng.standard_normal((13, n), dtype=np.float32)
    u = rng.random((8, n), dtype=np.float32)
    eps = rng.standard_normal(n)  # drawn last: sigma changes the prices only

    s = z[0]  # size
    q = 0.75 * s + 0.66 * z[1]  # quality, corr(s, q) = 0.75
    zip_ln_liv = _Z_LN_LIV[zi]
    size_level = zip_ln_liv - _MEAN_LN_LIV

    living = np.clip(np.rint(np.exp(zip_ln_liv + 0.38 * s) / 10) * 10, 400, 12_000)
    grade = np.clip(np.rint(_Z_GRADE[zi] + 0.95 * q), 3, 13).astype(np.int64)
    bedrooms = np.clip(np.rint(3.37 + 1.2 * size_level + 0.6 * s + 0.65 * z[2]), 1, 10).astype(np.int64)
    bathrooms = np.clip(np.rint(4 * (2.11 + 1.0 * size_level + 0.45 * s + 0.25 * q + 0.35 * z[3])) / 4, 0.75, 7.5)
    del size_level

    max_age = sale_year - 1900
    age = np.abs(_Z_AGE[zi] + _Z_SD_AGE[zi] * (-0.35 * q + 0.94 * z[4]))
    age = np.where(age > max_age, u[0] * max_age, age)
    age = np.minimum(np.rint(age).astype(np.int64), max_age)
    del max_age
    yr_built = sale_year - age

    floors = FLOOR_VALUES[np.searchsorted(_FLOOR_TH, 0.5 * q - 0.5 * (age - 40) / 30 + z[5])]
    has_basement = u[1] < np.clip(0.22 + 0.0045 * age - 0.15 * (floors >= 2.5), 0.0, 0.75)
    basement = np.where(has_basement, np.rint((0.15 + 0.30 * u[2]) * living / 10) * 10, 0.0)
    del has_basement

    lot = np.clip(np.rint(np.exp(_Z_LN_LOT[zi] + 0.25 * s + 0.75 * z[6])), 520, 1_650_000)
    renovated = u[3] < np.clip(0.0012 * (age - 10), 0.0, 0.25)
    yr_renovated = np.where(renovated, yr_built + 1 + np.floor(u[4] * age).astype(np.int64), 0)
    yr_renovated = np.minimum(yr_renovated, sale_year)
    del renovated
    condition = 1 + np.searchsorted(_COND_TH, 0.01 * (age - 40) + z[7])
    del age

    view = np.searchsorted(_VIEW_TH, _Z_VIEW_SHIFT[zi] + 0.25 * q + z[8])
    water_p = _Z_WATER[zi]
    waterfront = (u[5] < water_p).astype(np.int64)
    view = np.where(waterfront == 1, np.maximum(view, np.where(u[5] < 0.7 * water_p, 4, 3)), view)
    del water_p

    living15 = np.clip(np.rint(np.exp(0.45 * np.log(living) + 0.55 * zip_ln_liv + 0.2 * z[9]) / 10) * 10, 460, 6_200)
    del zip_ln_liv
    lot15 = np.clip(np.rint(np.exp(0.75 * np.log(lot) + 0.25 * _Z_LN_LOT[zi] + 0.35 * z[10])), 650, 870_000)
    lat = np.round(_resample_outside(_Z_LAT[zi] + _Z_SD_LAT[zi] * z[11], _Z_LAT_LO[zi], _Z_LAT_HI[zi], u[6]), 4)
    long = np.round(_resample_outside(_Z_LONG[zi] + _Z_SD_LONG[zi] * z[12], _Z_LONG_LO[zi], _Z_LONG_HI[zi], u[7]), 3)
    del z, u, s, q

    f = _f(zi, living, lot, living15, grade, condition, view, waterfront, bathrooms, bedrooms, floors, basement,
           yr_built, yr_renovated, sale_year, time_effect)  # fmt: skip
    del time_effect, sale_year
    f += sigma * eps
    del eps
    price = np.rint(np.exp(f, out=f), out=f)
    clipped = int(np.count_nonzero((price < PRICE_MIN) | (price > PRICE_MAX)))
    np.clip(price, PRICE_MIN, PRICE_MAX, out=price)

    rows = np.arange(chunk.first_row, chunk.first_row + n, dtype=np.uint64)
    offset = np.uint64(int(np.random.SeedSequence([seed, 0x1D]).generate_state(1, np.uint64)[0]) % _ID_SPACE)
    rows *= np.uint64(_ID_MULT)
    rows += offset
    rows %= np.uint64(_ID_SPACE)
    rows += np.uint64(1_000_000_000)

    df = pl.DataFrame({
        "id": pl.Series(rows).cast(pl.String),
        "date": pl.Series(days.astype(np.int32)).cast(pl.Date),
        "price": price,
        "bedrooms": bedrooms,
        "bathrooms": bathrooms,
        "sqft_living": living,
        "sqft_lot": lot,
        "floors": floors,
        "waterfront": waterfront,
        "view": view,
        "condition": condition,
        "grade": grade,
        "sqft_above": living - basement,
        "sqft_basement": basement,
        "yr_built": yr_built,
        "yr_renovated": yr_renovated,
        "zipcode": pl.Series(ZIPCODES, dtype=pl.String).gather(zi),
        "lat": lat,
        "long": long,
        "sqft_living15": living15,
        "sqft_lot15": lot15,
    }, schema=SCHEMA)  # fmt: skip
    return df, clipped


# --- writing -----------------------------------------------------------------------------------------

def csv_text(df: pl.DataFrame) -> pl.DataFrame:
    """One column of CSV records in the public file's conventions: id, date, floors and zipcode quoted,
    the date as "20141013T000000", numbers unquoted and without a trailing ".0" (2 rather than 2.0)."""

    def number(c: str) -> pl.Expr:
        return pl.col(c).cast(pl.String).str.strip_suffix(".0")

    def quoted(e: pl.Expr) -> pl.Expr:
        return pl.concat_str(pl.lit('"'), e, pl.lit('"'))

    fields = {c: number(c) for c in df.columns}
    fields.update({
        "id": quoted(pl.col("id")),
        "date": quoted(pl.col("date").dt.strftime("%Y%m%dT000000")),
        "floors": quoted(number("floors")),
        "zipcode": quoted(pl.col("zipcode")),
    })  # fmt: skip
    return df.select(pl.concat_str([fields[c] for c in df.columns], separator=",").alias("record"))


def file_name(part: int, fmt: str) -> str:
    return f"{FILE_PREFIX}{part}.{fmt}"


def _publish(tmp: Path, path: Path) -> bool:
    """Give the finished ``tmp`` its landing name unless that name exists. True if it landed.

    A hard link is atomic and never replaces an existing file, even one that a concurrent writer landed
    after our existence check; where hard links are not supported, ``os.replace`` after a fresh check.
    """
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    except OSError:
        if path.exists():
            return False
        os.replace(tmp, path)
    return True


def _write_atomic(df: pl.DataFrame, path: Path, fmt: str) -> bool:
    """Write ``df`` to a hidden temporary file beside ``path``, then publish it. True if it landed."""
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}-{threading.get_ident()}"
    try:
        if fmt == "parquet":
            df.write_parquet(tmp, compression="zstd", compression_level=1, statistics=True)
        else:
            with open(tmp, "wb") as f:
                f.write((",".join(df.columns) + "\n").encode())  # the public file's header is not quoted
                csv_text(df).write_csv(f, include_header=False, quote_style="never")
        return _publish(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
            written += _write_atomic(df.slice(offset, piece.count), path, fmt)
        offset += piece.count
    return written, len(paths) - written, clipped


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
    t0 = time.perf_counter()
    out = Path(out)
    counts = rows_per_day(rows, start, days)
    chunks = plan_chunks(counts, chunk_rows)
    first = (start - date(1970, 1, 1)).days
    day_numbers = np.arange(first, first + days, dtype=np.int64)
    day_names = [(start + timedelta(i)).isoformat() for i in range(days)]
    workers = workers or min(4, os.cpu_count() or 1)

    written = existing = clipped = 0
    if workers == 1:
        for chunk in chunks:
            w, e, c = _run_chunk(chunk, seed, sigma, fmt, out, day_numbers, day_names)
            written, existing, clipped = written + w, existing + e, clipped + c
    else:
        # At most ``workers`` chunks in flight: memory stays bounded by workers x chunk_rows.
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="synth") as pool:
            pending: deque[Future] = deque()
            for chunk in chunks:
                if len(pending) >= workers:
                    w, e, c = pending.popleft().result()
                    written, existing, clipped = written + w, existing + e, clipped + c
                pending.append(pool.submit(_run_chunk, chunk, seed, sigma, fmt, out, day_numbers, day_names))
            while pending:
                w, e, c = pending.popleft().result()
                written, existing, clipped = written + w, existing + e, clipped + c
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


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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
