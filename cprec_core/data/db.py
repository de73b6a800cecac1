"""Opening the profile's DuckDB file from several processes.

DuckDB lets one process open a file for writing, or any number of processes read-only, never
both. Dagster runs several steps at once (the multiprocess executor, concurrent runs of
two domain partitions), so a step that finds the file locked waits and retries instead of
failing. The ``duckdb_write`` pool (limit 1) keeps writers in turn; readers (the trainers'
short data loads) wait here until the writer of the moment is done.
"""

from __future__ import annotations

import time
from pathlib import Path

import duckdb

DEFAULT_WAIT_SECONDS = 900.0


class DatabaseBusy(TimeoutError):
    """The database stayed locked by another process for longer than the wait allows."""


def connect(path: str | Path, read_only: bool = False,
            wait_seconds: float = DEFAULT_WAIT_SECONDS) -> duckdb.DuckDBPyConnection:
    """A connection to ``path``, retried with back-off (0.1 s doubling to 5 s) while another
    process holds the file's lock; any other error is raised at once. A writer creates the
    folder of a new database."""
    if not read_only:  # a new profile's first writer creates its folder
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + wait_seconds
    delay = 0.1
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            left = deadline - time.monotonic()
            if left <= 0:
                raise DatabaseBusy(f"{path}: still locked by another process after"
                                   f" {wait_seconds:g} s ({exc})") from exc
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)
