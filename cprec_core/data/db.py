"""Opening the profile's DuckDB file from several processes.

DuckDB lets one process open a file for writing, or any number of processes read-only, never
both. Dagster runs several steps at once (the multiprocess executor, concurrent runs of
two domain partitions), so a step that finds the file locked waits and retries instead of
failing. The ``duckdb_write`` pool (limit 1) keeps writers in turn; readers (the trainers'
short data loads) wait here until the writer of the moment is done.
"""

from __future__ import annotations

import re
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import duckdb

DEFAULT_WAIT_SECONDS = 900.0


class DatabaseBusy(TimeoutError):
    """The database stayed locked by another process for longer than the wait allows."""


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def lock_holder(exc: Exception) -> str:
    """Who holds the lock, as DuckDB words it (program and PID), or its whole message."""
    found = re.search(r"Conflicting lock is held in (.+?)(?:\. See also|$)", str(exc), re.S)
    return found.group(1).strip() if found else str(exc)


def connect(path: str | Path, read_only: bool = False,
            wait_seconds: float = DEFAULT_WAIT_SECONDS,
            on_wait: Callable[[str], None] = _stderr) -> duckdb.DuckDBPyConnection:
    """A connection to ``path``, retried with back-off (0.1 s doubling to 5 s) while another
    process holds the file's lock; any other error is raised at once. While it waits it says
    so through ``on_wait`` (stderr by default: the console of a command, the compute log of
    a Dagster step), naming the holder, at once and then every minute. A writer creates the
    folder of a new database."""
    if not read_only:  # a new profile's first writer creates its folder
        Path(path).parent.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    deadline = started + wait_seconds
    delay, told = 0.1, None
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower():
                raise
            now = time.monotonic()
            left = deadline - now
            if left <= 0:
                raise DatabaseBusy(f"{path}: still locked after {wait_seconds:g} s by"
                                   f" {lock_holder(exc)}") from exc
            if told is None or now - told >= 60:
                on_wait(f"{path} is locked by {lock_holder(exc)}; waiting"
                        f" ({now - started:.0f} s so far, at most {wait_seconds:g} s)")
                told = now
            time.sleep(min(delay, left))
            delay = min(delay * 2, 5.0)


@contextmanager
def atomic(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """One transaction around a stage that replaces tables: everything it builds, and the
    checks it makes before the end of the block, become visible in the one COMMIT. An
    exception (a failed check included) rolls every table back to its previous state; a
    process killed before the COMMIT leaves nothing of the block on disk (DuckDB writes a
    transaction to its log only when it commits). Not nestable: a stage calls the others'
    inner builders, never their ``atomic`` blocks."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")
