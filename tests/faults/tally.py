"""The fault suite's tally: kills injected, kills survived, invariant checks that held (``tests/faults/conftest.py``
prints them as the session's closing line)."""

from __future__ import annotations

TALLY = {"injected": 0, "survived": 0, "checks": 0}
NOTES: list[str] = []  # printed before the closing line (the phases' durations)


def injected(n: int = 1) -> None:
    TALLY["injected"] += n


def survived(n: int = 1) -> None:
    TALLY["survived"] += n


def held(what: str, ok: bool, detail: object = "") -> None:
    """Assert one invariant and count it."""
    assert ok, f"invariant broken: {what}: {detail}"
    TALLY["checks"] += 1


def closing_line() -> str:
    return (f"faults injected {TALLY['injected']}, survived {TALLY['survived']}, "
            f"invariant checks passed {TALLY['checks']}")
