"""The fault-injection suite (``make faults``): tally and selection.

Tests here kill task processes through ``tasks.core.faults`` (``HOMEWORTH_FAULT``) and check the pipeline's
invariants afterwards. Each deliberate kill is recorded with ``tally.injected`` / ``tally.survived``, each
invariant that held with ``tally.held``; the session ends with one line:
``faults injected N, survived N, invariant checks passed N``.

Tests marked ``slow_faults`` (the real scheduler, minutes) run only when the marker expression selects
the ``faults`` tier (``make faults``: ``-m faults``); in ``make test`` they are skipped, and the quick
in-process checks of the hook run.
"""

from __future__ import annotations

import sys

import pytest

from tests.faults.tally import NOTES, TALLY, closing_line


def pytest_collection_modifyitems(config, items):
    if "faults" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="the real-scheduler fault suite runs in `make faults` (-m faults)")
    for item in items:
        if item.get_closest_marker("slow_faults"):
            item.add_marker(skip)


def pytest_unconfigure(config):
    if TALLY["injected"] or TALLY["checks"]:
        sys.stdout.write("".join(f"{n}\n" for n in NOTES) + closing_line() + "\n")
        sys.stdout.flush()
