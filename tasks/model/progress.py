"""One log line per training epoch, through the standard ``logging`` logger that Airflow's task log captures.

A ``train`` task may run for hours; Lightning's progress bar is off (it writes carriage returns, not
lines). :class:`EpochProgress` logs, at the end of every training epoch (on rank 0 only under DDP)::

    train epoch 3/60: train loss 0.2104, val loss 0.1893, val rmse_ln 0.1650, elapsed 12.3s, left at most 3m54s (epoch budget)

- the losses are the epoch's means (batch-size weighted; the training loss summed over every rank);
- ``left`` is an upper bound: the epochs left in ``max_epochs`` times the mean epoch time so far, or what is
  left of ``max_time_s`` when that is sooner (early stopping may end the run before either);
- time is measured with a monotonic clock (``time.perf_counter``), never the wall clock.

The tuning trials log the same lines with their own label (``trial-3 epoch ...``), and the refit on
train + val with ``refit`` (no validation there: ``val -``).
"""

from __future__ import annotations

import logging
import math
import time
from typing import Callable

import pytorch_lightning as L

log = logging.getLogger(__name__)


def duration(seconds: float) -> str:
    """``12.3s``, ``3m54s``, ``2h05m``: short and readable in a log line."""
    if not math.isfinite(seconds):
        return "?"
    seconds = max(seconds, 0.0)
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        m, s = divmod(int(round(seconds)), 60)
        return f"{m}m{s:02d}s"
    h, m = divmod(int(round(seconds)) // 60, 60)
    return f"{h}h{m:02d}m"


def time_left(done: int, max_epochs: int, elapsed: float, max_time_s: float | None) -> tuple[float, str]:
    """(seconds, what bounds it): the epochs left at the mean epoch time so far, or the rest of
    ``max_time_s`` when that is sooner."""
    per_epoch = elapsed / max(done, 1)
    by_epochs = max(max_epochs - done, 0) * per_epoch
    if max_time_s is not None and max_time_s - elapsed < by_epochs:
        return max(max_time_s - elapsed, 0.0), "max_time_s"
    return by_epochs, "epoch budget"


def epoch_line(label: str, epoch: int, max_epochs: int, train_loss: float | None, val: dict[str, float],
               elapsed: float, max_time_s: float | None) -> str:
    """The line logged for ``epoch`` (0-based; shown 1-based) of ``label``'s run."""
    left, bound = time_left(epoch + 1, max_epochs, elapsed, max_time_s)
    parts = [f"train loss {train_loss:.4f}" if train_loss is not None else "train loss -"]
    parts += [f"{name} {value:.4f}" for name, value in val.items()] or ["val -"]
    return (f"{label} epoch {epoch + 1}/{max_epochs}: {', '.join(parts)}, elapsed {duration(elapsed)}, "
            f"left at most {duration(left)} ({bound})")


class EpochProgress(L.Callback):
    """Logs :func:`epoch_line` at the end of each training epoch (global rank 0 only).

    ``val_metrics``: the ``callback_metrics`` keys shown as the validation figures (``val/loss`` and the
    monitored metric), shown as ``val loss`` / ``val rmse_ln``. The training loss is the module's
    ``train_epoch_means()`` (the epoch's mean over all ranks), read here because Lightning calls a
    callback's ``on_train_epoch_end`` before the module's. ``clock``: seconds from a monotonic origin.
    """

    def __init__(self, label: str, max_epochs: int, max_time_s: float | None, val_metrics: tuple[str, ...],
                 clock: Callable[[], float] = time.perf_counter, logger: logging.Logger | None = None) -> None:
        self.label, self.max_epochs, self.max_time_s = label, max_epochs, max_time_s
        self.val_metrics, self.clock, self.logger = val_metrics, clock, logger or log
        self.start: float | None = None
        self.lines: list[str] = []

    def on_train_start(self, trainer, module) -> None:
        self.start = self.clock()

    def on_train_epoch_end(self, trainer, module) -> None:
        means = module.train_epoch_means() if hasattr(module, "train_epoch_means") else None
        if not trainer.is_global_zero:
            return
        if self.start is None:
            self.start = self.clock()
        metrics = trainer.callback_metrics
        val = {key.replace("/", " "): float(metrics[key]) for key in self.val_metrics if key in metrics}
        line = epoch_line(self.label, trainer.current_epoch, self.max_epochs, means[0] if means else None, val,
                          self.clock() - self.start, self.max_time_s)
        self.lines.append(line)
        self.logger.info("%s", line)
