"""Generic logs: Parquet, CSV or JSON lines with columns user_id, item_id, title, timestamp,
domain (rating optional). ``timestamp``: epoch seconds or milliseconds (``timestamp_unit``) or
ISO-8601 text. For CSV and JSON lines, ``line`` is the physical line where the record starts;
for Parquet, it is the 1-based row number.

``read_table_file(path, unit, default_domain)`` reads one file; with ``default_domain`` (files
dropped into ``landing/<domain>/``, see cprec_core.data.landing) the ``domain`` column may be absent
or empty and the folder's domain is used.

Values are type-checked, not converted to text (rules in cprec_core.data.sources.base): ids are
text or integers (an integral float such as ``12.0`` is the id ``12``), title and domain are
text, so a Parquet list, a NaN id or a JSON object is a rejected row naming its column. CSV is
read as UTF-8 (a leading byte order mark is dropped); a record the csv module cannot parse (a
field over its size limit) is rejected and reading goes on. A file that cannot be read to its
end (damaged gzip stream or Parquet page) raises ``SourceError`` naming the line (or row) after
which reading stopped.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterator

import pyarrow.parquet as pq

from cprec_core.config import SourceConfig
from cprec_core.data.sources.base import (
    DEFAULT_LIMITS,
    Accepted,
    FileRead,
    FileTimes,
    ReadLimits,
    Record,
    Rejected,
    RowProblem,
    SourceError,
    id_text,
    is_missing,
    iter_lines,
    json_rows,
    parse_rating,
    plain_text,
    raw_text,
    read_limits,
    read_sha256,
    safe_repr,
    stopped_reading,
    title_text,
)

REQUIRED = ("user_id", "item_id", "title", "timestamp", "domain")
OPTIONAL = ("rating",)
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


class Unreadable:
    """A Parquet cell pyarrow cannot turn into a Python value (e.g. a timestamp past 9999)."""

    def __init__(self, exc: Exception):
        self.reason = f"unreadable value ({type(exc).__name__}: {exc})"

    def __repr__(self) -> str:
        return "<unreadable>"


def _row(source: str, line: int, row: dict, times: FileTimes,
         default_domain: str | None = None) -> Accepted:
    for key, value in row.items():
        if isinstance(value, Unreadable):
            raise RowProblem(key, value.reason)
    user_id = id_text(row.get("user_id"), "user_id")
    item_id = id_text(row.get("item_id"), "item_id")
    title = title_text(row.get("title"))
    domain = row.get("domain")
    if default_domain and is_missing(domain):
        domain = default_domain
    domain = plain_text(domain, "domain", "missing domain")
    ts_ms = times.parse(row.get("timestamp"), line)
    rating = parse_rating(row.get("rating"))
    return Accepted(source, line, user_id, item_id, title, ts_ms, domain, rating)


MAX_RECORD_LINES = 100  # a quoted field may hold line breaks, over at most this many lines


def _csv_records(path: Path, limits: ReadLimits
                 ) -> Iterator[tuple[int, list[str] | RowProblem, bytes]]:
    """(line where the record starts, its fields or the problem, its first line's bytes).

    Each record is parsed strictly from the physical lines it spans. A quote that is never
    closed (within ``MAX_RECORD_LINES`` lines or ``limits.record_bytes``, or before the end of
    the file) rejects only the line where it opened; reading resumes at the next line, so
    one stray quote never swallows the rows after it."""
    lines = iter_lines(path, limits)
    pending: list[tuple[int, str | RowProblem, bytes]] = []

    def next_line():
        return pending.pop() if pending else next(lines, None)

    while (first := next_line()) is not None:
        number, text, raw = first
        if isinstance(text, RowProblem):
            yield number, text, raw
            continue
        taken, joined = [first], text
        while True:
            try:
                fields = next(csv.reader(io.StringIO(joined), strict=True), [])
                break
            except csv.Error as exc:
                unclosed = "unexpected end of data" in str(exc)
                more = (next_line() if unclosed and len(taken) < MAX_RECORD_LINES else None)
                if more is not None and isinstance(more[1], str) and (
                        len(joined) + len(more[1]) <= limits.record_bytes):
                    taken.append(more)
                    joined += "\n" + more[1]
                    continue
                if more is not None:
                    pending.append(more)
                if len(taken) == 1 and not unclosed:  # e.g. text after a closing quote
                    fields = RowProblem("line", f"unreadable CSV record: {exc}")
                    break
                pending.extend(reversed(taken[1:]))  # read again, each as its own row
                fields = RowProblem("line", "a quote opened on this line is never closed"
                                            f" (within {MAX_RECORD_LINES} lines or the end of"
                                            " the file); the next lines are read as rows of"
                                            " their own")
                break
        yield number, fields, raw


def _read_csv(path: Path, unit: str, default_domain: str | None = None,
              limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[Record]:
    """A record that cannot be parsed is a rejected row naming its line; the reader resumes
    after it (``_csv_records``)."""
    source = str(path)
    records = _csv_records(path, limits)
    first = next(records, None)
    if first is None:
        raise SourceError(f"{path}: empty file; expected a header line and {EXPECTED}")
    if isinstance(first[1], RowProblem):
        raise SourceError(f"{path}:1: unreadable CSV header ({first[1].reason});"
                          f" expected {EXPECTED}")
    header = [h.strip() for h in first[1]]
    _check_columns(path, header, default_domain)
    times = FileTimes(unit)
    rows = 0
    for line, cols, raw in records:
        if cols == [] or cols == [""]:
            continue  # a blank line
        rows += 1
        try:
            if isinstance(cols, RowProblem):
                raise cols
            if len(cols) != len(header):
                raise RowProblem("line", f"expected {len(header)} fields, got {len(cols)}")
            yield _row(source, line, dict(zip(header, cols)), times, default_domain)
        except RowProblem as p:
            yield Rejected(source, line, p.field, p.reason, raw_text(raw))
    yield FileRead(source, "interactions", "csv", rows, read_sha256(path))


def _parquet_rows(batch) -> list[dict]:
    """The rows of one record batch; a cell pyarrow cannot convert becomes ``Unreadable`` (its
    row is rejected) instead of failing the whole batch."""
    try:
        return batch.to_pylist()
    except Exception:  # pyarrow raises ValueError, OverflowError, ArrowException ...
        pass
    rows = []
    for i in range(batch.num_rows):
        row = {}
        for name, column in zip(batch.schema.names, batch.columns):
            try:
                row[name] = column[i].as_py()
            except Exception as exc:
                row[name] = Unreadable(exc)
        rows.append(row)
    return rows


def _batches(parquet: pq.ParquetFile, path: Path, columns: list[str]) -> Iterator:
    """The file's record batches; pyarrow's errors on a damaged page (several types) become
    ``SourceError`` naming the last row read."""
    rows = 0
    try:
        for batch in parquet.iter_batches(batch_size=65_536, columns=columns):
            yield batch
            rows += batch.num_rows
    except Exception as exc:
        raise stopped_reading(path, rows, exc, unit="row") from exc


def _read_parquet(path: Path, unit: str, default_domain: str | None = None,
                  limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[Record]:
    """Only the columns in use are read; a file pyarrow cannot open is a ``SourceError``, and
    so is one whose columns hold more than ``limits.file_bytes`` uncompressed (from its
    metadata, before anything is read)."""
    source = str(path)
    try:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
    except FileNotFoundError as exc:
        raise stopped_reading(path, 0, exc) from exc
    except Exception as exc:
        raise SourceError(f"{path}: not a readable Parquet file ({exc}); expected {EXPECTED}") from None
    _check_columns(path, names, default_domain)
    wanted = [c for c in (*REQUIRED, *OPTIONAL) if c in names]
    try:
        meta = parquet.metadata
        size = sum(meta.row_group(g).column(c).total_uncompressed_size
                   for g in range(meta.num_row_groups) for c in range(meta.num_columns)
                   if meta.row_group(g).column(c).path_in_schema in wanted)
    except Exception as exc:  # damaged metadata: pyarrow raises several types
        raise SourceError(f"{path}: unreadable Parquet metadata ({type(exc).__name__}: {exc});"
                          f" expected {EXPECTED}") from None
    if size > limits.file_bytes:
        raise SourceError(f"{path}: {size:,} bytes uncompressed in the columns read, more than"
                          f" {limits.file_bytes:,} (max_file_bytes); not read")
    times = FileTimes(unit)
    rows = 0
    for batch in _batches(parquet, path, wanted):
        for row in _parquet_rows(batch):
            rows += 1
            try:
                yield _row(source, rows, row, times, default_domain)
            except RowProblem as p:
                yield Rejected(source, rows, p.field, p.reason, raw_text(safe_repr(row)))
    yield FileRead(source, "interactions", "parquet", rows, read_sha256(path))


def _read_jsonl(path: Path, unit: str, default_domain: str | None = None,
                limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[Record]:
    """One JSON object per line; a line missing a required key is rejected with that key."""
    source = str(path)
    times = FileTimes(unit)
    rows = 0
    for number, raw, obj in json_rows(path, limits):
        rows += 1
        try:
            if isinstance(obj, RowProblem):
                raise obj
            for key in REQUIRED:
                if key not in obj and not (key == "domain" and default_domain):
                    raise RowProblem(key, f"missing {key}")
            yield _row(source, number, obj, times, default_domain)
        except RowProblem as p:
            yield Rejected(source, number, p.field, p.reason, raw_text(raw))
    yield FileRead(source, "interactions", "jsonl", rows, read_sha256(path))


def read_table_file(path: Path, unit: str = "auto", default_domain: str | None = None,
                    limits: ReadLimits = DEFAULT_LIMITS) -> Iterator[Record]:
    """All records of one table file, by suffix (see ``SUFFIXES``)."""
    if path.name.endswith(".parquet"):
        return _read_parquet(path, unit, default_domain, limits)
    if path.name.endswith((".jsonl", ".jsonl.gz")):
        return _read_jsonl(path, unit, default_domain, limits)
    if path.name.endswith((".csv", ".csv.gz")):
        return _read_csv(path, unit, default_domain, limits)
    raise SourceError(f"{path}: unknown format; expected {EXPECTED}")


def read_table(path: str | Path, cfg: SourceConfig) -> Iterator[Record]:
    for file in table_files(Path(path)):
        yield from read_table_file(file, cfg.timestamp_unit, limits=read_limits(cfg))
