"""What every source reader yields, and the small parsing helpers they share.

A reader is a generator of records: ``Accepted`` interactions, ``Rejected`` rows (file, line,
field, reason and the raw text, so nothing is silently lost) and one ``FileRead`` per file it
finished, with the number of rows it read. The loader (cprec_core.data.raw) writes them to DuckDB
and reconciles ``accepted + rejected == rows read`` per file.

What a reader may raise: only ``SourceError``, naming the file (and the line where there is
one). A defect of one row is a ``Rejected`` record; a file that cannot be read to its end
(damaged gzip stream, unreadable Parquet page, I/O error) raises ``SourceError`` naming the
file and the line (or Parquet row) after which reading stopped (``SourceFileGone`` if the
file was removed meanwhile). The rows of that file yielded before it have no ``FileRead`` and
must be discarded by the caller: the loader aborts the build, the landing folder rolls the
delivery back.

Field rules shared by every format (see ``id_text``, ``title_text``, ``parse_timestamp_ms``,
``parse_rating``):
  - ids (user, item): text or an integer. A float counts only when integral (``12.0`` ->
    ``"12"``: pandas writes an integer column with gaps as floats). Bools, bytes, lists,
    objects, dates and fractional numbers are the wrong type.
  - title and domain: text only.
  - None, NaN and blank text are "missing".
  - text fields must not contain a NUL byte, another C0 control character (titles may hold
    tab, LF and CR, which become spaces) or an unpaired surrogate (not encodable as UTF-8).
  - rating: a finite number or numeric text; absent/blank = no rating.
"""

from __future__ import annotations

import ast
import codecs
import gzip
import hashlib
import json
import math
import re
import warnings
import zlib
from dataclasses import dataclass
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Iterator, NamedTuple

MIN_TS_MS = 0  # 1970-01-01
MAX_TS_MS = 4_102_444_800_000  # 2100-01-01
RAW_TEXT_LIMIT = 500
SHOW_LIMIT = 60  # characters of a value quoted in a reason
MAX_INT_ID = 2**63  # integer ids must fit a signed 64-bit column

# errors of reading a (possibly gzip-compressed) file; gzip.BadGzipFile is an OSError
READ_ERRORS = (OSError, EOFError, zlib.error)


@dataclass(frozen=True)
class ReadLimits:
    """What one input file may hold, enforced while it is read, so a small hostile file (a
    gzip bomb, one endless line) cannot take the memory: a record (line) of at most
    ``record_bytes`` (a longer one is a rejected row, its bytes skipped without being held)
    and at most ``file_bytes`` after decompression (more: a ``SourceError`` naming the file
    and the line). The defaults fit a 24 GB machine and every real log we read (Amazon's
    longest review lines are tens of kilobytes); ``data.sources[].max_record_bytes`` and
    ``max_file_bytes`` change them."""

    record_bytes: int = 4 << 20
    file_bytes: int = 64 << 30


DEFAULT_LIMITS = ReadLimits()


def read_limits(cfg) -> ReadLimits:
    """A source's limits (cprec_core.config.SourceConfig)."""
    return ReadLimits(cfg.max_record_bytes, cfg.max_file_bytes)


class SourceError(ValueError):
    """A whole input cannot be read: missing file, unknown format, missing column, a file that
    cannot be read to its end."""


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


class SourceFileGone(SourceError):
    """A file removed before or while it was read (``filename``): a caller may treat it as
    gone rather than broken, as the landing folder does."""

    def __init__(self, message: str, filename: str):
        super().__init__(message)
        self.filename = filename


def file_sha256(path: Path) -> str:
    """The file's SHA-256; ``OSError`` if it cannot be read (see ``read_sha256``)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_sha256(path: Path) -> str:
    """``file_sha256`` for a reader's ``FileRead``: an ``OSError`` becomes a ``SourceError``."""
    try:
        return file_sha256(path)
    except OSError as exc:
        raise stopped_reading(path, 0, exc) from exc


def require_file(path: Path, expected: str) -> Path:
    if not path.is_file():
        raise SourceError(f"{path}: file not found; expected {expected}")
    return path


def stopped_reading(path: Path, line: int, exc: BaseException, unit: str = "line") -> SourceError:
    """The error for a file that cannot be read to its end (``line``: the last one read);
    ``SourceFileGone`` if the file was removed."""
    if isinstance(exc, FileNotFoundError):
        return SourceFileGone(f"{path}: removed before or while it was read ({exc})", str(path))
    gz = path.name.endswith(".gz")
    where = f"reading stopped after {unit} {line}" if line else "cannot be read"
    return SourceError(f"{path}: {where} ({type(exc).__name__}: {exc}); expected a"
                       f" {'gzip-compressed ' if gz else ''}file readable to its end")


def iter_lines(path: Path, limits: ReadLimits = DEFAULT_LIMITS
               ) -> Iterator[tuple[int, str | RowProblem, bytes]]:
    """(1-based line number, decoded text or the ``RowProblem`` that makes the line unusable,
    raw bytes) for each line: not UTF-8, or longer than ``limits.record_bytes`` (its bytes
    are skipped, never held: ``raw`` is its beginning).

    LF and CRLF endings both work; ``.gz`` files are decompressed on the fly; a UTF-8 byte order
    mark (Windows editors write one) is dropped from the first line. A file that cannot be read
    to its end, or that holds more than ``limits.file_bytes`` (after decompression), raises
    ``SourceError`` naming the last line read.
    """
    number, total = 0, 0
    try:
        with open_binary(path) as fh:
            while True:
                raw = fh.readline(limits.record_bytes + 1)
                if not raw:
                    break
                number += 1
                total += len(raw)
                problem = None
                if len(raw) > limits.record_bytes:
                    problem = RowProblem("line", f"longer than {limits.record_bytes:,} bytes"
                                                 " (max_record_bytes); skipped")
                    raw = raw[:RAW_TEXT_LIMIT * 4]
                    while True:  # the rest of the line, in bounded pieces
                        rest = fh.readline(1 << 20)
                        total += len(rest)
                        _check_total(path, number, total, limits)
                        if not rest or rest.endswith(b"\n"):
                            break
                _check_total(path, number, total, limits)
                raw = raw.rstrip(b"\r\n")
                if number == 1 and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[len(codecs.BOM_UTF8):]
                text: str | RowProblem = problem
                if problem is None:
                    try:
                        text = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        text = RowProblem("line", "not valid UTF-8")
                yield number, text, raw
    except READ_ERRORS as exc:
        raise stopped_reading(path, number, exc) from exc


def _check_total(path: Path, line: int, total: int, limits: ReadLimits) -> None:
    if total > limits.file_bytes:
        raise SourceError(f"{path}: more than {limits.file_bytes:,} bytes"
                          f"{' after decompression' if path.name.endswith('.gz') else ''}"
                          f" by line {line} (max_file_bytes); not read")


def open_binary(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def raw_text(raw: bytes | str) -> str:
    """At most ``RAW_TEXT_LIMIT`` characters of a row, always encodable: bytes that are not
    UTF-8 (also when smuggled in as ``surrogateescape`` characters) become U+FFFD."""
    if isinstance(raw, str):
        try:
            raw = raw.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            raw = raw.encode("utf-8", "replace")
    return raw[: RAW_TEXT_LIMIT * 4 + 4].decode("utf-8", errors="replace")[:RAW_TEXT_LIMIT]


def safe_repr(value: object) -> str:
    """``repr`` that cannot fail: a 5,000-digit int or a 1,000-deep list cannot be shown."""
    try:
        return repr(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__} too large to show>"


def show(value: object) -> str:
    """A value quoted in a reason: its repr, cut to ``SHOW_LIMIT`` characters."""
    text = safe_repr(value)
    return text if len(text) <= SHOW_LIMIT else text[: SHOW_LIMIT - 3] + "..."


def kind(value: object) -> str:
    """A value's type in words, for 'wrong type' reasons."""
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float, Decimal)):
        return "a number"
    if isinstance(value, (bytes, bytearray)):
        return "bytes"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, (list, tuple, set)):
        return "a list"
    if isinstance(value, date):
        return "a date"
    return f"a {type(value).__name__}"


def json_rows(path: Path, limits: ReadLimits = DEFAULT_LIMITS
              ) -> Iterator[tuple[int, bytes, dict | RowProblem]]:
    """The rows of a JSON-lines file: (line number, raw bytes, the object, or the RowProblem
    that makes the line unusable: not UTF-8, too long, not a JSON object). Blank lines are
    not rows."""
    for number, text, raw in iter_lines(path, limits):
        if isinstance(text, str) and not text.strip():
            continue
        try:
            if isinstance(text, RowProblem):
                raise text
            parsed: dict | RowProblem = parse_json_line(text)
        except RowProblem as problem:
            parsed = problem
        yield number, raw, parsed


def parse_json_line(text: str) -> dict:
    """One JSON object per line. Falls back to a Python literal (the 2014-era Amazon dumps
    wrote ``dict`` reprs); ``ast.literal_eval`` evaluates literals only, never code.

    A number of over 4,300 digits (``ValueError``: Python's int conversion limit) and deeply
    nested brackets (``RecursionError``) make the line malformed, like any syntax error.
    """
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        try:
            with warnings.catch_warnings():  # "invalid escape sequence" etc. for junk lines
                warnings.simplefilter("ignore")
                obj = ast.literal_eval(text)
        except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
            raise RowProblem("json", f"malformed JSON: {exc.msg} at column {exc.colno}") from None
    except ValueError as exc:  # int conversion limit: "Exceeds the limit (4300 digits) ..."
        raise RowProblem("json", f"malformed JSON: a number too long to read ({exc})") from None
    except RecursionError:
        raise RowProblem("json", "malformed JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise RowProblem("json", f"expected a JSON object, got {type(obj).__name__}")
    return obj


_ID_BAD = re.compile(r"[\x00-\x1f\ud800-\udfff]")
_TITLE_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff]")  # tab, LF, CR are spaces


def check_chars(text: str, field: str, title: bool = False) -> str:
    """``text`` unless it holds a NUL byte, another C0 control character (titles may hold tab,
    LF and CR) or an unpaired surrogate (a JSON ``\\ud800`` escape; cannot be stored)."""
    bad = (_TITLE_BAD if title else _ID_BAD).search(text)
    if bad:
        char = bad.group()
        if char == "\x00":
            raise RowProblem(field, "contains a NUL byte")
        if char >= "\ud800":
            raise RowProblem(field, "contains an unpaired surrogate (not valid Unicode)")
        raise RowProblem(field, f"contains control character U+{ord(char):04X}")
    return text


def is_missing(value: object) -> bool:
    """None, NaN and blank text."""
    return (value is None or (isinstance(value, float) and math.isnan(value))
            or (isinstance(value, str) and not value.strip()))


def id_text(value: object, field: str, what: str | None = None) -> str:
    """An id as text: text or an integer; an integral float (12.0) is the integer 12."""
    what = what or field
    if is_missing(value):
        raise RowProblem(field, f"missing {what}")
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        value = int(value)
    if isinstance(value, str):
        return check_chars(value.strip(), field)
    if isinstance(value, int) and not isinstance(value, bool):
        if abs(value) >= MAX_INT_ID:
            raise RowProblem(field, f"{what} is an integer over 64 bits")
        return str(value)
    if isinstance(value, float):
        raise RowProblem(field, f"{what} {show(value)} is not an integer")
    raise RowProblem(field, f"{what} is {kind(value)}, expected text or an integer")


def title_text(value: object, field: str = "title", missing: str = "item without title") -> str:
    """A title: text, whitespace runs (tab and newlines too) collapsed to one space."""
    return " ".join(plain_text(value, field, missing, title=True).split())


def plain_text(value: object, field: str, missing: str, title: bool = False) -> str:
    """A text field (title, domain), stripped; any other type is rejected."""
    if is_missing(value):
        raise RowProblem(field, missing)
    if not isinstance(value, str):
        raise RowProblem(field, f"{field} is {kind(value)}, expected text")
    return check_chars(value.strip(), field, title)


def parse_timestamp_ms(value: object, unit: str = "auto") -> int:
    """Epoch seconds/milliseconds (number or numeric text), a datetime or date, or ISO-8601
    text -> epoch ms, within 1970-2100. Any other type is unparseable.

    ``unit='auto'`` reads numbers above 1e11 as milliseconds (1e11 s is the year 5138).
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        raise RowProblem("timestamp", "missing timestamp")
    if isinstance(value, datetime):
        ms = _datetime_ms(value, value)
    elif isinstance(value, date):
        ms = _datetime_ms(datetime(value.year, value.month, value.day), value)
    elif isinstance(value, (int, float, Decimal)) and not isinstance(value, bool):
        ms = _number_ms(value, unit)
    elif isinstance(value, str):
        text = value.strip()
        try:
            number = float(text)
        except ValueError:
            try:
                parsed = datetime.fromisoformat(text.replace("Z", "+00:00"))
            except ValueError:
                raise RowProblem("timestamp", f"unparseable time {show(text[:40])}") from None
            ms = _datetime_ms(parsed, value)
        else:
            ms = _number_ms(number, unit, value)
    else:
        raise RowProblem("timestamp", f"unparseable time {show(value)}")
    return check_ms_range(ms, value)


class FileTimes:
    """How one file's timestamps are read. Numbers follow the configured unit; under
    ``auto`` the file's first numeric timestamp decides its unit (above 1e11: milliseconds)
    for every later row, so one file never mixes units: a later number of the other
    magnitude (a year-9999 value in seconds would read as a 1978 one in milliseconds) is a
    rejected row naming the unit and the line that decided it, never a plausible wrong date.
    Datetimes and ISO-8601 text carry their own unit."""

    def __init__(self, unit: str = "auto"):
        self.configured = unit
        self.unit = None if unit == "auto" else unit
        self.decided_at: int | None = None

    def parse(self, value: object, line: int, field: str = "timestamp") -> int:
        number = _as_number(value)
        if number is not None and self.configured == "auto":
            magnitude = "ms" if abs(number) > 1e11 else "s"
            if self.unit is None:
                self.unit, self.decided_at = magnitude, line
            elif magnitude != self.unit:
                raise RowProblem(field, f"timestamp {show(value)} has the magnitude of"
                                        f" {'milliseconds' if magnitude == 'ms' else 'seconds'},"
                                        f" but this file's timestamps are"
                                        f" {'milliseconds' if self.unit == 'ms' else 'seconds'}"
                                        f" (decided by line {self.decided_at}); set"
                                        " timestamp_unit if the file mixes them")
        try:
            return parse_timestamp_ms(value, self.unit or "auto")
        except RowProblem as problem:
            raise RowProblem(field, problem.reason) from None


def _as_number(value: object) -> float | None:
    """A finite number, or numeric text, as float; None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, Decimal)):
        try:
            number = float(value)
        except OverflowError:
            return None
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return number if math.isfinite(number) else None


def _datetime_ms(dt: datetime, original: object) -> float:
    """Naive datetimes are read as UTC."""
    try:
        return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp() * 1000
    except (OverflowError, ValueError, OSError):
        raise RowProblem("timestamp", f"timestamp {show(original)} outside 1970-2100") from None


def _number_ms(value: int | float | Decimal, unit: str, original: object = None) -> float:
    original = value if original is None else original
    try:
        number = float(value)
    except OverflowError:  # an int of hundreds of digits
        raise RowProblem("timestamp", f"timestamp {show(original)} outside 1970-2100") from None
    if not math.isfinite(number):
        raise RowProblem("timestamp", f"unparseable time {show(original)}")
    is_ms = unit == "ms" or (unit == "auto" and abs(number) > 1e11)
    return number if is_ms else number * 1000


def check_ms_range(ms: float, original: object, field: str = "timestamp") -> int:
    """``ms`` as an int, if within 1970-2100 (checked before the conversion: no overflow)."""
    if not MIN_TS_MS <= ms < MAX_TS_MS:
        raise RowProblem(field, f"timestamp {show(original)} outside 1970-2100")
    return int(round(ms))


def parse_rating(value: object) -> float | None:
    """A finite number or numeric text; None and blank text are no rating."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        raise RowProblem("rating", f"rating {show(value)} is not a number")
    try:
        rating = float(value)
    except ValueError:
        raise RowProblem("rating", f"rating {show(value)} is not a number") from None
    except OverflowError:
        raise RowProblem("rating", f"rating {show(value)} is not finite") from None
    if not math.isfinite(rating):
        raise RowProblem("rating", f"rating {show(value)} is not finite")
    return rating


def require_text(obj: dict, key: str, what: str | None = None) -> str:
    """``obj[key]`` as an id (see ``id_text``)."""
    return id_text(obj.get(key), key, what)


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
