"""Who is champion: the ledger's newest event, which the MLflow alias ``champion`` follows.

The ledger (``tasks/registry/ledger.py``) is the source of truth; the alias is what serving and scoring
read. A move writes its ledger event first (the commit point) and then points the alias at it
(:func:`sync`). A crash between the two leaves the ledger one move ahead of the alias: every promote
and rollback first calls :func:`sync`, which completes that interrupted move, and ``homeworth champion``
reports the disagreement (:func:`disagreement`) and repairs it on ``--repair``. Before the first ledger
event (a registry older than its ledger) the alias alone says who is champion.

:func:`sync` reads the alias before the ledger and checks again after each move of the alias, so a
reconciler that read an older ledger cannot leave the alias behind a newer event: whoever moves the
alias last also reads the ledger last.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from tasks.core import tracking
from tasks.core.settings import Settings
from tasks.registry import ledger

log = logging.getLogger(__name__)

SYNC_ROUNDS = 10


@dataclass
class State:
    """The MLflow alias and the ledger, read in that order."""

    alias: str | None  # the version the alias points at (None: no alias)
    scan: ledger.Scan

    @property
    def head(self) -> ledger.LedgerEvent | None:
        return self.scan.head

    @property
    def version(self) -> str | None:
        """The champion: the newest event's version, or the alias while the ledger is empty."""
        return self.head.to_version if self.head is not None else self.alias

    @property
    def agrees(self) -> bool:
        return self.head is None or self.alias == self.head.to_version


def read(c, settings: Settings) -> State:
    """The alias, then the ledger (the order :func:`sync` relies on)."""
    mv = tracking.champion_version(c, settings.model_name, strict=True)
    return State(alias=str(mv.version) if mv is not None else None, scan=ledger.scan(settings))


def disagreement(state: State) -> str | None:
    """The disagreement between the alias and the ledger in words, or None when they agree."""
    if state.agrees:
        return None
    h = state.head
    if state.alias == h.from_version:
        kind = "an interrupted move: the ledger recorded it, the alias did not follow"
    else:
        kind = "the alias was moved outside the ledger, or a move was interrupted"
    return (f"the MLflow alias '{tracking.CHAMPION}' points at v{state.alias or ' (none)'} but the ledger's newest "
            f"event #{h.seq} ({h.event_id}, {h.kind} v{h.from_version or 'none'} -> v{h.to_version} by {h.who()}) "
            f"names v{h.to_version}; {kind}")


def outage(step: str, settings: Settings, eid: str, exc: BaseException) -> tracking.TrackingUnavailable:
    """The error of a move (``step``: promote, rollback) cut off by an unreachable MLflow server: what the ledger
    (a local read, no MLflow) holds of event ``eid`` and what completes it."""
    found = ledger.scan(settings).find(eid)
    if found is not None:
        then = (f"its ledger event #{found.seq} ({eid}, v{found.from_version or 'none'} -> v{found.to_version}) is "
                f"recorded, the source of truth: the retry, the next promote or rollback, or `homeworth champion "
                f"--repair` points the alias at it")
    else:
        then = "no ledger event was recorded: the champion did not move"
    cause = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
    return tracking.TrackingUnavailable(f"{step}: the MLflow server {settings.mlflow_tracking_uri} did not answer "
                                        f"({cause}); {then}")


def sync(c, settings: Settings, own: str | None = None) -> State:
    """Point the alias at the ledger's newest event, checking again after each move; returns the state read last.

    ``own``: the id of the event the caller has just appended (moving the alias to it is the move itself,
    not a repair); any other disagreement is logged as a warning: the alias completes an interrupted move."""
    for _ in range(SYNC_ROUNDS):
        state = read(c, settings)
        if state.agrees:
            return state
        h = state.head
        if h.event_id == own:
            log.info("champion: v%s -> v%s (ledger event #%d)", state.alias, h.to_version, h.seq)
        else:
            log.warning("champion: %s; moving the alias to v%s (completing the interrupted move)",
                        disagreement(state), h.to_version)
        c.set_registered_model_alias(settings.model_name, tracking.CHAMPION, state.head.to_version)
    state = read(c, settings)
    if not state.agrees:
        raise RuntimeError(f"the champion alias did not settle after {SYNC_ROUNDS} moves: {disagreement(state)}")
    return state
