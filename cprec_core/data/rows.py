"""Appending parsed records to DuckDB: accepted rows, rejected rows with their reason, and the
per-file ledger. Shared by the raw tables (cprec_core.data.raw) and the landing tables
(cprec_core.data.landing), which have the same columns."""

from __future__ import annotations

import re
from collections import Counter

import duckdb
import pyarrow as pa

from cprec_core.data.sources import Accepted, FileRead, Record, Rejected

BATCH_ROWS = 200_000

_ACCEPTED = pa.schema([("source_file", pa.string()), ("line", pa.int64()),
                       ("user_id", pa.string()), ("item_id", pa.string()),
                       ("title", pa.string()), ("ts_ms", pa.int64()),
                       ("domain", pa.string()), ("rating", pa.float64())])
_REJECTED = pa.schema([("source_file", pa.string()), ("line", pa.int64()),
                       ("field", pa.string()), ("reason", pa.string()), ("raw", pa.string())])


def reason_group(reason: str) -> str:
    """A reason without its row-specific parts, for counting: quoted values become '…' and a
    trailing "(… line N)" pointer is dropped."""
    reason = re.sub(r" \([^()]*line \d+\)$", "", reason)
    return re.sub(r"'[^']*'", "'…'", reason)


RAW_TABLES = ("raw_interactions", "rejected_rows", "source_files")


class Writer:
    """Buffers records and appends them to DuckDB as Arrow batches, into ``tables`` =
    (interactions, rejected rows, file ledger): the raw tables, or the landing tables
    (cprec_core.data.landing)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, tables: tuple[str, str, str] = RAW_TABLES):
        self.con = con
        self.tables = tables
        self.accepted: list[Accepted] = []
        self.rejected: list[Rejected] = []
        self.per_file: Counter = Counter()
        self.rejected_per_file: Counter = Counter()
        self.reasons: Counter = Counter()
        self.files: list[dict] = []

    def add(self, record: Record) -> None:
        if isinstance(record, Accepted):
            self.accepted.append(record)
            self.per_file[record.source_file] += 1
            if len(self.accepted) >= BATCH_ROWS:
                self.flush()
        elif isinstance(record, Rejected):
            self.rejected.append(record)
            self.rejected_per_file[record.source_file] += 1
            self.reasons[f"{record.field}: {reason_group(record.reason)}"] += 1
            if len(self.rejected) >= BATCH_ROWS:
                self.flush()
        elif isinstance(record, FileRead):
            rejected = self.rejected_per_file[record.source_file]
            loaded = (self.per_file[record.source_file] if record.role == "interactions"
                      else record.rows_read - rejected)
            row = dict(source_file=record.source_file, role=record.role, format=record.format,
                       sha256=record.sha256, rows_read=record.rows_read, rows_loaded=loaded,
                       rows_rejected=rejected)
            self.files.append(row)
            self.con.execute(
                f"INSERT INTO {self.tables[2]} (source_file, role, format, sha256, rows_read,"
                " rows_loaded, rows_rejected) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [record.source_file, record.role, record.format, record.sha256,
                 record.rows_read, loaded, rejected],
            )

    def flush(self) -> None:
        if self.accepted:
            batch = pa.Table.from_pylist([r._asdict() for r in self.accepted], schema=_ACCEPTED)
            self.con.register("_accepted_batch", batch)
            self.con.execute(
                f"INSERT INTO {self.tables[0]} SELECT source_file, line, user_id, item_id, title,"
                " make_timestamp(ts_ms * 1000), domain, rating FROM _accepted_batch"
            )
            self.con.unregister("_accepted_batch")
            self.accepted.clear()
        if self.rejected:
            batch = pa.Table.from_pylist([r._asdict() for r in self.rejected], schema=_REJECTED)
            self.con.register("_rejected_batch", batch)
            self.con.execute(f"INSERT INTO {self.tables[1]} SELECT * FROM _rejected_batch")
            self.con.unregister("_rejected_batch")
            self.rejected.clear()
