"""``make bench`` defaults: a quick size and a scratch report; docs/benchmarks.md only with --write-docs."""

import pytest

from benchmarks.run import build_parser, resolve_args
from benchmarks.runner import QUICK_SIZES
from tasks.core.settings import get_settings


@pytest.fixture
def ap(tmp_path, monkeypatch):
    monkeypatch.setenv("HOMEWORTH_HOME", str(tmp_path))
    get_settings.cache_clear()
    yield build_parser()
    get_settings.cache_clear()


def test_default_report_is_a_scratch_file(ap, tmp_path):
    args = resolve_args(ap, ap.parse_args(["--quick"]))
    assert args.sizes == QUICK_SIZES
    assert args.out.endswith("bench/benchmarks.md") and "docs" not in args.out


def test_write_docs_targets_docs(ap):
    assert resolve_args(ap, ap.parse_args(["--write-docs"])).out.endswith("docs/benchmarks.md")


def test_write_docs_and_out_conflict(ap):
    with pytest.raises(SystemExit):
        resolve_args(ap, ap.parse_args(["--write-docs", "--out", "x.md"]))
