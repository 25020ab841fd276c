"""King County, the bundled dataset, as the tests see it: one place for its paths and its file's header.

Imported as ``from tests.kc import ...`` (pytest runs from the repository root).
"""

from __future__ import annotations

import gzip

from tasks.core.settings import DATASETS_DIR
from tasks.core.spec import DatasetSpec, load_spec

KC_DIR = DATASETS_DIR / "king_county"
KC_SPEC_PATH = KC_DIR / "spec.yaml"
KC_DATA_PATH = KC_DIR / "kc_house_data.csv.gz"
# The public file's header: the spec's columns in the file's order.
KC_HEADER = ",".join(load_spec(KC_SPEC_PATH).columns)


def kc_spec() -> DatasetSpec:
    return load_spec(KC_SPEC_PATH)


def kc_lines() -> list[str]:
    """The bundled CSV's lines (header first), without line ends."""
    return gzip.decompress(KC_DATA_PATH.read_bytes()).decode().splitlines()
