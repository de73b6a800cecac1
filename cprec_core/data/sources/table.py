"""Generic logs: Parquet, CSV or JSON lines with columns user_id, item_id, title, timestamp,
domain (rating optional). ``timestamp``: epoch seconds or milliseconds (``timestamp_unit``) or
ISO-8601 text. For CSV and JSON lines, ``line`` is the physical line where the record starts;
for Parquet, it is the 1-based row number.

``read_table_file(path, unit, default_domain)`` reads one file; with ``default_domain`` (files
dropped into ``landing/<domain>/``, see cprec_core.data.landing) the ``domain`` column may be absent
or empty and the folder's domain is used.
"""

from __future__ import annotations

import csv
import io
import zlib
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from cprec_core.config import SourceConfig
from cprec_core.data.sources.base import (
    Accepted,
    FileRead,
    Record,
    Rejected,
    RowProblem,
    SourceError,
    file_sha256,
    json_rows,
    open_binary,
    parse_rating,
    parse_timestamp_ms,
    raw_text,
)

REQUIRED = ("user_id", "item_id", "title", "timestamp", "domain")
SUFFIXES = (".parquet", ".csv", ".csv.gz", ".jsonl", ".jsonl.gz")
EXPECTED = ("Parquet or CSV (.parquet, .csv, .csv.gz) or JSON lines (.jsonl, .jsonl.gz) with"
            f" columns {', '.join(REQUIRED)}")


def table_files(path: Path) -> list[Path]:
    if path.is_file():
        if not path.name.endswith(SUFFIXES):
            raise SourceError(f"{path}: unknown format; expected {EXPECTED}")
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES))
        if not files:
            raise SourceError(f"{path}: no table files found; expected {EXPECTED}")
        return files
    raise SourceError(f"{path}: not found; expected {EXPECTED}")


def _check_columns(path: Path, columns: list[str], default_domain: str | None = None) -> None:
    missing = [c for c in REQUIRED if c not in columns and not (c == "domain" and default_domain)]
    if missing:
        raise SourceError(f"{path}: missing column(s) {missing}; found {columns}; expected {EXPECTED}")


def _row(source: str, line: int, row: dict, unit: str, default_domain: str | None = None) -> Accepted:
    values = {}
    for key in ("user_id", "item_id", "title", "domain"):
        value = row.get(key)
        if key == "domain" and default_domain and (value is None or not str(value).strip()):
            value = default_domain
        text = "" if value is None else str(value).strip()
        if not text:
            what = "item without title" if key == "title" else f"missing {key}"
            raise RowProblem(key, what)
        values[key] = " ".join(text.split()) if key == "title" else text
    ts_ms = parse_timestamp_ms(row.get("timestamp"), unit)
    rating = parse_rating(row.get("rating"))
    return Accepted(source, line, values["user_id"], values["item_id"], values["title"], ts_ms,
                    values["domain"], rating)


def _read_csv(path: Path, unit: str, default_domain: str | None = None) -> Iterator[Record]:
    source = str(path)
    rows = 0
    try:
        with open_binary(path) as binary:
            text = io.TextIOWrapper(binary, encoding="utf-8", errors="replace", newline="")
            reader = csv.reader(text)
            header = next(reader, None)
            if header is None:
                raise SourceError(f"{path}: empty file; expected a header line and {EXPECTED}")
            header = [h.strip().lstrip("\ufeff") for h in header]
            _check_columns(path, header, default_domain)
            start = reader.line_num + 1
            while True:
                try:
                    cols = next(reader)
                except StopIteration:
                    break
                except csv.Error as exc:  # e.g. a NUL byte: reject the record, read on
                    rows += 1
                    yield Rejected(source, start, "line", f"unreadable CSV record: {exc}", "")
                    start = reader.line_num + 1
                    continue
                line, start = start, reader.line_num + 1
                if not cols:
                    continue
                rows += 1
                try:
                    if any("\ufffd" in c for c in cols):
                        raise RowProblem("line", "not valid UTF-8")
                    if len(cols) != len(header):
                        raise RowProblem("line", f"expected {len(header)} fields, got {len(cols)}")
                    yield _row(source, line, dict(zip(header, cols)), unit, default_domain)
                except RowProblem as p:
                    yield Rejected(source, line, p.field, p.reason, raw_text(",".join(cols)))
    except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
        raise SourceError(f"{path}: cannot be read ({exc}); expected {EXPECTED}") from exc
    yield FileRead(source, "interactions", "csv", rows, file_sha256(path))


def _read_parquet(path: Path, unit: str, default_domain: str | None = None) -> Iterator[Record]:
    source = str(path)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as exc:  # pyarrow raises several types for a corrupt file
        raise SourceError(f"{path}: not a readable Parquet file ({exc}); expected {EXPECTED}")
    _check_columns(path, parquet.schema_arrow.names, default_domain)
    rows = 0
    for batch in parquet.iter_batches(batch_size=65_536):
        for row in batch.to_pylist():
            rows += 1
            try:
                yield _row(source, rows, row, unit, default_domain)
            except RowProblem as p:
                yield Rejected(source, rows, p.field, p.reason, raw_text(repr(row)))
    yield FileRead(source, "interactions", "parquet", rows, file_sha256(path))


def _read_jsonl(path: Path, unit: str, default_domain: str | None = None) -> Iterator[Record]:
    """One JSON object per line; a line missing a required key is rejected with that key."""
    source = str(path)
    rows = 0
    for number, raw, obj in json_rows(path):
        rows += 1
        try:
            if isinstance(obj, RowProblem):
                raise obj
            for key in REQUIRED:
                if key not in obj and not (key == "domain" and default_domain):
                    raise RowProblem(key, f"missing {key}")
            yield _row(source, number, obj, unit, default_domain)
        except RowProblem as p:
            yield Rejected(source, number, p.field, p.reason, raw_text(raw))
    yield FileRead(source, "interactions", "jsonl", rows, file_sha256(path))


def read_table_file(path: Path, unit: str = "auto", default_domain: str | None = None) -> Iterator[Record]:
    """All records of one table file, by suffix (see ``SUFFIXES``)."""
    if path.name.endswith(".parquet"):
        return _read_parquet(path, unit, default_domain)
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return _read_jsonl(path, unit, default_domain)
    if path.name.endswith((".csv", ".csv.gz")):
        return _read_csv(path, unit, default_domain)
    raise SourceError(f"{path}: unknown format; expected {EXPECTED}")


def read_table(path: str | Path, cfg: SourceConfig) -> Iterator[Record]:
    for file in table_files(Path(path)):
        yield from read_table_file(file, cfg.timestamp_unit)
