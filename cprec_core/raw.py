"""Stage 1: every input row into DuckDB, with the unusable ones kept and explained.

Tables (one DuckDB file per profile):
  raw_interactions(source_file, line, user_id, item_id, title, ts, domain, rating)
  rejected_rows(source_file, line, field, reason, raw)
  source_files(source_file, role, format, sha256, rows_read, rows_loaded, rows_rejected, loaded_at)
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import duckdb
import pyarrow as pa

from cprec_core.config import SourceConfig
from cprec_core.sources import Accepted, FileRead, Record, Rejected, read_source

BATCH_ROWS = 200_000

SCHEMA = """
CREATE OR REPLACE TABLE raw_interactions (
    source_file VARCHAR NOT NULL, line BIGINT NOT NULL, user_id VARCHAR NOT NULL,
    item_id VARCHAR NOT NULL, title VARCHAR NOT NULL, ts TIMESTAMP NOT NULL,
    domain VARCHAR NOT NULL, rating DOUBLE);
CREATE OR REPLACE TABLE rejected_rows (
    source_file VARCHAR NOT NULL, line BIGINT NOT NULL, field VARCHAR NOT NULL,
    reason VARCHAR NOT NULL, raw VARCHAR);
CREATE OR REPLACE TABLE source_files (
    source_file VARCHAR NOT NULL, role VARCHAR NOT NULL, format VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL, rows_read BIGINT NOT NULL, rows_loaded BIGINT NOT NULL,
    rows_rejected BIGINT NOT NULL, loaded_at TIMESTAMP DEFAULT current_timestamp);
"""

_ACCEPTED = pa.schema([("source_file", pa.string()), ("line", pa.int64()),
                       ("user_id", pa.string()), ("item_id", pa.string()),
                       ("title", pa.string()), ("ts_ms", pa.int64()),
                       ("domain", pa.string()), ("rating", pa.float64())])
_REJECTED = pa.schema([("source_file", pa.string()), ("line", pa.int64()),
                       ("field", pa.string()), ("reason", pa.string()), ("raw", pa.string())])


@dataclass(frozen=True)
class RawLoadReport:
    """Per-file ledger rows plus the rejection reasons, most common first."""

    files: list[dict]
    reasons: dict[str, int]

    def total(self, key: str, role: str = "interactions") -> int:
        return sum(f[key] for f in self.files if f["role"] == role)

    @property
    def reconciled(self) -> bool:
        return all(f["rows_read"] == f["rows_loaded"] + f["rows_rejected"] for f in self.files)


def reason_group(reason: str) -> str:
    """A reason without its row-specific parts, for counting: quoted values become '…' and a
    trailing "(… line N)" pointer is dropped."""
    reason = re.sub(r" \([^()]*line \d+\)$", "", reason)
    return re.sub(r"'[^']*'", "'…'", reason)


class _Writer:
    """Buffers records and appends them to DuckDB as Arrow batches."""

    def __init__(self, con: duckdb.DuckDBPyConnection):
        self.con = con
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
                "INSERT INTO source_files (source_file, role, format, sha256, rows_read,"
                " rows_loaded, rows_rejected) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [record.source_file, record.role, record.format, record.sha256,
                 record.rows_read, loaded, rejected],
            )

    def flush(self) -> None:
        if self.accepted:
            batch = pa.Table.from_pylist([r._asdict() for r in self.accepted], schema=_ACCEPTED)
            self.con.register("_accepted_batch", batch)
            self.con.execute(
                "INSERT INTO raw_interactions SELECT source_file, line, user_id, item_id, title,"
                " make_timestamp(ts_ms * 1000), domain, rating FROM _accepted_batch"
            )
            self.con.unregister("_accepted_batch")
            self.accepted.clear()
        if self.rejected:
            batch = pa.Table.from_pylist([r._asdict() for r in self.rejected], schema=_REJECTED)
            self.con.register("_rejected_batch", batch)
            self.con.execute("INSERT INTO rejected_rows SELECT * FROM _rejected_batch")
            self.con.unregister("_rejected_batch")
            self.rejected.clear()


def load_records(con: duckdb.DuckDBPyConnection, records: Iterable[Record]) -> RawLoadReport:
    """(Re)create the raw tables and fill them from ``records``."""
    con.execute(SCHEMA)
    writer = _Writer(con)
    for record in records:
        writer.add(record)
    writer.flush()
    return RawLoadReport(files=writer.files, reasons=dict(writer.reasons.most_common()))


def load_raw_interactions(con: duckdb.DuckDBPyConnection, sources: Iterable[SourceConfig],
                          cache_dir: str | Path) -> RawLoadReport:
    def records():
        for source in sources:
            yield from read_source(source, cache_dir)

    return load_records(con, records())


def reconcile(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """Files whose ledger does not add up, or whose table rows differ from the ledger."""
    return con.execute(
        """
        SELECT f.source_file, f.rows_read, f.rows_loaded, f.rows_rejected,
               coalesce(r.n, 0) AS raw_rows, coalesce(j.n, 0) AS rejected_rows
        FROM source_files f
        LEFT JOIN (SELECT source_file, count(*) n FROM raw_interactions GROUP BY ALL) r
               USING (source_file)
        LEFT JOIN (SELECT source_file, count(*) n FROM rejected_rows GROUP BY ALL) j
               USING (source_file)
        WHERE f.rows_read != f.rows_loaded + f.rows_rejected
           OR f.rows_rejected != coalesce(j.n, 0)
           OR (f.role = 'interactions' AND f.rows_loaded != coalesce(r.n, 0))
        """
    ).fetchall()
