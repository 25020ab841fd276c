"""The history for scoring: the validated sales of a lake, re-read only when its partitions change."""

from __future__ import annotations

import logging
import threading

import polars as pl

from tasks.features.comps.config import CompsConfig

log = logging.getLogger(__name__)


class LakeHistory:
    """The validated sales of a lake as comps history, re-read only when its partitions change.

    Scoring a house today needs the sales before today: :meth:`frame` returns them all (``comps``
    keeps, per row, only the ones dated before it). The partitions' names, sizes and modification
    times are checked on every call (one listing), so a re-validated day is picked up.
    """

    def __init__(self, lake_uri: str, columns: list[str]):
        self.lake_uri, self.columns = lake_uri, columns
        self._key: tuple | None = None
        self._df: pl.DataFrame | None = None
        self._lock = threading.Lock()

    def _partitions(self) -> tuple[list[str], tuple]:
        import pyarrow.fs as pafs

        from tasks.core import lake, storage

        fs, root = storage.resolve(lake.table_uri(self.lake_uri, lake.VALIDATED))
        if fs.get_file_info(root).type != pafs.FileType.Directory:
            return [], ()
        infos = [i for i in fs.get_file_info(pafs.FileSelector(root, recursive=True))
                 if i.type == pafs.FileType.File and i.base_name == storage.PART_FILE and "/ds=" in i.path
                 and not any(part.startswith((".", "_")) for part in i.path.split("/")[-2:])]
        infos.sort(key=lambda i: i.path)
        base = lake.table_uri(self.lake_uri, lake.VALIDATED)
        uris = [storage.join(base, i.path[len(root):].lstrip("/")) for i in infos]
        return uris, tuple((i.path, i.size, i.mtime_ns) for i in infos)

    def frame(self) -> pl.DataFrame:
        uris, key = self._partitions()
        with self._lock:
            if self._df is None or key != self._key:
                if uris:
                    self._df = pl.scan_parquet(uris).select(self.columns).collect()
                else:
                    self._df = pl.DataFrame()
                self._key = key
                log.info("comps history: %d validated sales from %d partitions of %s", self._df.height, len(uris),
                         self.lake_uri)
            return self._df


_LAKES: dict[tuple, LakeHistory] = {}


def lake_history(lake_uri: str, cfg: CompsConfig) -> LakeHistory:
    """A process-wide :class:`LakeHistory` per lake and column set (scoring and the endpoint share it)."""
    cols = list(dict.fromkeys(cfg.input_columns(with_target=True)))
    key = (lake_uri, tuple(cols))
    if key not in _LAKES:
        _LAKES[key] = LakeHistory(lake_uri, cols)
    return _LAKES[key]
