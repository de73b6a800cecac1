"""What every source reader yields, and the small parsing helpers they share.

A reader is a generator of records: ``Accepted`` interactions, ``Rejected`` rows (file, line,
field, reason and the raw text, so nothing is silently lost) and one ``FileRead`` per file it
finished, with the number of rows it read. The loader (cprec_core.data.raw) writes them to DuckDB
and reconciles ``accepted + rejected == rows read`` per file.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import ast
import math
import zlib
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator, NamedTuple

MIN_TS_MS = 0  # 1970-01-01
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01
RAW_TEXT_LIMIT = 500


class SourceError(ValueError):
    """A whole input cannot be read: missing file, unknown format, missing column."""


class Accepted(NamedTuple):
    source_file: str
    line: int
    user_id: str
    item_id: str
    title: str
    ts_ms: int
    domain: str
    rating: float | None


class Rejected(NamedTuple):
    source_file: str
    line: int
    field: str
    reason: str
    raw: str


class FileRead(NamedTuple):
    source_file: str
    role: str  # "interactions" or "items"
    format: str
    rows_read: int
    sha256: str


Record = Accepted | Rejected | FileRead


class RowProblem(Exception):
    """Raised inside a reader for one row; becomes a ``Rejected`` record."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def require_file(path: Path, expected: str) -> Path:
    if not path.is_file():
        raise SourceError(f"{path}: file not found; expected {expected}")
    return path


def iter_lines(path: Path) -> Iterator[tuple[int, str | None, bytes]]:
    """(1-based line number, decoded text or None if not UTF-8, raw bytes) for each line.

    LF and CRLF endings both work; ``.gz`` files are decompressed on the fly.
    """
    with open_binary(path) as fh:
        try:
            for number, raw in enumerate(fh, start=1):
                raw = raw.rstrip(b"\r\n")
                try:
                    yield number, raw.decode("utf-8"), raw
                except UnicodeDecodeError:
                    yield number, None, raw
        except (OSError, EOFError, zlib.error) as exc:  # gzip.BadGzipFile is an OSError
            raise SourceError(f"{path}: cannot be read as {'gzip' if path.suffix == '.gz' else 'text'}"
                              f" ({exc}); expected a {'gzip-compressed ' if path.suffix == '.gz' else ''}"
                              "text file") from exc


def open_binary(path: Path):
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def raw_text(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", errors="replace")
    return raw[:RAW_TEXT_LIMIT]


def json_rows(path: Path) -> Iterator[tuple[int, bytes, dict | RowProblem]]:
    """The rows of a JSON-lines file: (line number, raw bytes, the object, or the RowProblem
    that makes the line unusable: not UTF-8, not a JSON object). Blank lines are not rows."""
    for number, text, raw in iter_lines(path):
        if text is not None and not text.strip():
            continue
        try:
            if text is None:
                raise RowProblem("line", "not valid UTF-8")
            parsed: dict | RowProblem = parse_json_line(text)
        except RowProblem as problem:
            parsed = problem
        yield number, raw, parsed


def parse_json_line(text: str) -> dict:
    """One JSON object per line. Falls back to a Python literal (the 2014-era Amazon dumps
    wrote ``dict`` reprs); ``ast.literal_eval`` evaluates literals only, never code."""
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        try:
            obj = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise RowProblem("json", f"malformed JSON: {exc.msg} at column {exc.colno}")
    if not isinstance(obj, dict):
        raise RowProblem("json", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def parse_timestamp_ms(value: object, unit: str = "auto") -> int:
    """Epoch seconds/milliseconds (number or numeric string), a datetime, or ISO-8601 text ->
    epoch ms, within 1970-2100.

    ``unit='auto'`` reads numbers above 1e11 as milliseconds (1e11 s is the year 5138).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowProblem("timestamp", "missing timestamp")
    if isinstance(value, bool):
        raise RowProblem("timestamp", f"unparseable time {value!r}")
    if isinstance(value, datetime):
        ms = _datetime_ms(value)
    elif isinstance(value, (int, float)):
        ms = _number_ms(float(value), unit, value)
    else:
        text = str(value).strip()
        try:
            ms = _number_ms(float(text), unit, value)
        except ValueError:
            try:
                ms = _datetime_ms(datetime.fromisoformat(text.replace("Z", "+00:00")))
            except ValueError:
                raise RowProblem("timestamp", f"unparseable time {text[:40]!r}")
    return check_ms_range(ms, value)


def _datetime_ms(dt: datetime) -> int:
    """Naive datetimes are read as UTC."""
    return int((dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp() * 1000)


def _number_ms(number: float, unit: str, original: object) -> int:
    if not math.isfinite(number):
        raise RowProblem("timestamp", f"unparseable time {original!r}")
    is_ms = unit == "ms" or (unit == "auto" and abs(number) > 1e11)
    return int(round(number if is_ms else number * 1000))


def check_ms_range(ms: int, original: object, field: str = "timestamp") -> int:
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        raise RowProblem(field, f"timestamp {original!r} outside 1970-2100")
    return ms


def parse_rating(value: object) -> float | None:
    if value is None or value == "":
        return None
    try:
        rating = float(value)
    except (TypeError, ValueError):
        raise RowProblem("rating", f"rating {value!r} is not a number")
    if not math.isfinite(rating):
        raise RowProblem("rating", f"rating {value!r} is not finite")
    return rating


def require_text(obj: dict, key: str, what: str | None = None) -> str:
    value = obj.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowProblem(key, f"missing {what or key}")
    if isinstance(value, (dict, list)):
        raise RowProblem(key, f"{what or key} is a {type(value).__name__}, expected text")
    return str(value).strip()


def category_from_filename(path: Path, prefix: str = "") -> str:
    """``meta_Video_Games.json.gz`` -> ``Video Games``; the Amazon 5-core suffix is dropped."""
    name = path.name
    for suffix in (".gz", ".jsonl", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    if prefix and name.startswith(prefix):
        name = name[len(prefix):]
    if name.endswith("_5"):
        name = name[:-2]
    return name.replace("_", " ").strip()
