"""Readers for every supported input format; ``read_source`` dispatches on the config."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from cprec_core.config import SourceConfig
from cprec_core.data.sources.amazon import read_amazon2018, read_amazon2023
from cprec_core.data.sources.base import (Accepted, FileRead, Record, Rejected, SourceError,
                                         SourceFileGone)
from cprec_core.data.sources.embedded import ensure_embedded
from cprec_core.data.sources.movielens import read_movielens
from cprec_core.data.sources.table import read_table

__all__ = ["Accepted", "FileRead", "Record", "Rejected", "SourceError", "SourceFileGone",
           "read_source"]


def read_source(cfg: SourceConfig, cache_dir: str | Path) -> Iterator[Record]:
    """All records of one configured source, in file order."""
    if cfg.kind == "embedded":
        return read_movielens(ensure_embedded(cfg.name, cache_dir), cfg)
    readers = {
        "movielens": read_movielens,
        "amazon2018": read_amazon2018,
        "amazon2023": read_amazon2023,
        "table": read_table,
    }
    return readers[cfg.kind](Path(cfg.path), cfg)
