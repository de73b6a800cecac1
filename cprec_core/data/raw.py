"""Stage 1: every input row into DuckDB, with the unusable ones kept and explained.

Tables (one DuckDB file per profile):
  raw_interactions(source_file, line, user_id, item_id, title, ts, domain, rating)
  rejected_rows(source_file, line, field, reason, raw)
  source_files(source_file, role, format, sha256, rows_read, rows_loaded, rows_rejected, loaded_at)
Rows of files delivered to the landing folder (cprec_core.data.landing) are appended after the
configured sources, with ``source_file`` = ``landing:<path in the folder>#<sha256[:12]>``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import duckdb

from cprec_core.config import SourceConfig
from cprec_core.data.db import atomic
from cprec_core.data.landing import append_landed
from cprec_core.data.rows import Writer
from cprec_core.data.sources import Record, read_source
from cprec_core.progress import Log, Throttled, duration
from cprec_core.reporting import query_table

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


def load_records(con: duckdb.DuckDBPyConnection, records: Iterable[Record],
                 with_landed: bool = False, log: Log | None = None,
                 every_s: float | None = None) -> RawLoadReport:
    """(Re)create the raw tables and fill them from ``records``; with ``with_landed``, the
    rows of every file loaded from the landing folder follow (cprec_core.data.landing).
    One transaction: when a file cannot be read to its end (``SourceError``), the tables stay
    as the previous load left them, with none of the partial file's rows. With ``log``, a
    line every ``every_s`` seconds (30) says how far reading got (large logs take minutes)."""
    throttled = Throttled(log, every_s) if log else None
    with atomic(con):
        con.execute(SCHEMA)
        writer = Writer(con)
        for n, record in enumerate(records, start=1):
            writer.add(record)
            if throttled is not None and throttled.due():
                throttled(f"raw: {n:,} records read in {duration(throttled.elapsed)}"
                          f" ({n / max(throttled.elapsed, 1e-9):,.0f}/s), now {record.source_file}")
        writer.flush()
        files, reasons = writer.files, writer.reasons
        if with_landed:
            landed_files, landed_reasons = append_landed(con)
            files = files + landed_files
            reasons = reasons + landed_reasons
    return RawLoadReport(files=files, reasons=dict(reasons.most_common()))


def load_raw_interactions(con: duckdb.DuckDBPyConnection, sources: Iterable[SourceConfig],
                          cache_dir: str | Path, log: Log | None = None) -> RawLoadReport:
    """The configured sources, then every landed file (they survive a rebuild)."""
    def records():
        for source in sources:
            yield from read_source(source, cache_dir)

    return load_records(con, records(), with_landed=True, log=log)


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


def raw_previews(con: duckdb.DuckDBPyConnection) -> dict[str, str]:
    """Markdown previews of the loaded and the rejected rows."""
    return {"preview": query_table(con, "SELECT * FROM raw_interactions LIMIT 10"),
            "rejected_rows": query_table(con, "SELECT * FROM rejected_rows"
                                              " ORDER BY source_file, line LIMIT 20")}
