"""Stage 1: every input row into DuckDB, with the unusable ones kept and explained.

Tables (one DuckDB file per profile):
  raw_interactions(source_file, line, user_id, item_id, title, ts, domain, rating)
  rejected_rows(source_file, line, field, reason, raw)
  source_files(source_file, role, format, sha256, rows_read, rows_loaded, rows_rejected, loaded_at)
Rows of files delivered to the landing folder (cprec_core.landing) are appended after the
configured sources, with ``source_file`` = ``landing:<path in the folder>#<sha256[:12]>``.
"""

from __future__ import annotations

import hashlib
import json
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


RAW_TABLES = ("raw_interactions", "rejected_rows", "source_files")


class Writer:
    """Buffers records and appends them to DuckDB as Arrow batches, into ``tables`` =
    (interactions, rejected rows, file ledger): the raw tables, or the landing tables
    (cprec_core.landing) which have the same columns."""

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


def load_records(con: duckdb.DuckDBPyConnection, records: Iterable[Record],
                 with_landed: bool = False) -> RawLoadReport:
    """(Re)create the raw tables and fill them from ``records``; with ``with_landed``, the
    rows of every file loaded from the landing folder follow (cprec_core.landing)."""
    con.execute(SCHEMA)
    writer = Writer(con)
    for record in records:
        writer.add(record)
    writer.flush()
    files, reasons = writer.files, writer.reasons
    if with_landed:
        from cprec_core.landing import append_landed

        landed_files, landed_reasons = append_landed(con)
        files = files + landed_files
        reasons = reasons + landed_reasons
    return RawLoadReport(files=files, reasons=dict(reasons.most_common()))


def load_raw_interactions(con: duckdb.DuckDBPyConnection, sources: Iterable[SourceConfig],
                          cache_dir: str | Path) -> RawLoadReport:
    """The configured sources, then every landed file (they survive a rebuild)."""
    def records():
        for source in sources:
            yield from read_source(source, cache_dir)

    return load_records(con, records(), with_landed=True)


def raw_data_version(con: duckdb.DuckDBPyConnection) -> str:
    """A fingerprint of the input files (names and SHA-256) behind ``raw_interactions``."""
    rows = con.execute("SELECT source_file, sha256 FROM source_files ORDER BY ALL").fetchall()
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16]


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
