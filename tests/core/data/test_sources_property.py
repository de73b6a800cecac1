"""Property-based tests of the source readers: whatever bytes a file holds, a reader either
raises ``SourceError`` naming one of its files, or yields well-formed records whose ledger adds
up (per file: accepted + rejected == rows read; for item files, rejected <= rows read).

Inputs are random bytes, valid files damaged byte-wise (flips, insertions of byte order marks,
NUL bytes, line breaks, huge numbers and deep nesting, deletions, truncation, damage to the
gzip stream) and files whose fields hold random values of random types. The examples are
derandomized and no example database is kept, so every run tests the same inputs.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
import tempfile
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cprec_core.config import SourceConfig
from cprec_core.data.sources import Accepted, FileRead, Rejected, SourceError
from cprec_core.data.sources.amazon import read_amazon2018, read_amazon2023
from cprec_core.data.sources.base import MAX_TS_MS, MIN_TS_MS, RAW_TEXT_LIMIT
from cprec_core.data.sources.movielens import read_movielens
from cprec_core.data.sources.table import read_table

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ---------------------------------------------------------------------------------------
# The property


def check_records(reader, files: list[Path]) -> list | None:
    """Run ``reader()`` to completion and check the property (see the module docstring);
    the records, or None after a SourceError."""
    try:
        records = list(reader())
    except SourceError as exc:
        names = tuple(str(f) for f in files)
        assert str(exc).startswith(names), f"SourceError does not name a file: {exc}"
        return None
    seen: dict[str, list[int]] = {}  # file -> [accepted, rejected]
    finished: set[str] = set()
    for r in records:
        if isinstance(r, FileRead):
            assert r.source_file not in finished, f"two FileReads for {r.source_file}"
            finished.add(r.source_file)
            acc, rej = seen.get(r.source_file, [0, 0])
            assert isinstance(r.rows_read, int) and r.rows_read >= 0
            assert re.fullmatch(r"[0-9a-f]{64}", r.sha256)
            if r.role == "interactions":
                assert acc + rej == r.rows_read, r
            else:
                assert r.role == "items" and acc == 0 and rej <= r.rows_read, r
            continue
        assert isinstance(r, (Accepted, Rejected)), r
        assert r.source_file not in finished, f"a record after the FileRead of its file: {r}"
        assert isinstance(r.line, int) and r.line >= 1
        counts = seen.setdefault(r.source_file, [0, 0])
        if isinstance(r, Accepted):
            counts[0] += 1
            check_accepted(r)
        else:
            counts[1] += 1
            assert r.field and isinstance(r.field, str) and r.reason and isinstance(r.reason, str)
            assert isinstance(r.raw, str) and len(r.raw) <= RAW_TEXT_LIMIT
            for text in (r.field, r.reason, r.raw):
                text.encode("utf-8")  # storable: no lone surrogates
    assert set(seen) <= finished, "records of a file without its FileRead"
    return records


def check_accepted(a: Accepted) -> None:
    for name in ("user_id", "item_id", "title", "domain"):
        value = getattr(a, name)
        assert isinstance(value, str) and value.strip() == value and value, (name, a)
        assert not re.search(r"[\x00-\x1f\ud800-\udfff]", value), (name, a)
    assert isinstance(a.ts_ms, int) and MIN_TS_MS <= a.ts_ms < MAX_TS_MS
    assert a.rating is None or (isinstance(a.rating, float) and math.isfinite(a.rating))


# ---------------------------------------------------------------------------------------
# Byte-level damage

NASTY = [
    b"\xef\xbb\xbf", b"\x00", b"\x00\x00\x00\x00", b"\n", b"\r\n", b"\r", b'"', b",", b"\t",
    b"\x1b", b"\xff", b"\xc3", b"\xed\xa0\x80", b"\\u0000", b"\\ud800", b"\\u001b",
    b"9" * 4400, b"[" * 3000, b"{" * 3000, b"(" * 300, b"NaN", b"-Infinity", b"1e999",
    b"null", b"true", b"[]", b"{}", b"-1", b"0x" + b"f" * 1200, b"\n\n\n", b"\"\n\"",
]

positions = st.integers(min_value=0, max_value=1 << 20)
edit = st.one_of(
    st.tuples(st.just("flip"), positions, st.integers(1, 255)),
    st.tuples(st.just("after_separator"), positions, st.sampled_from(NASTY)),
    st.tuples(st.just("insert"), positions, st.one_of(st.sampled_from(NASTY),
                                                      st.binary(min_size=1, max_size=8))),
    st.tuples(st.just("delete"), positions, st.integers(1, 64)),
    st.tuples(st.just("truncate"), positions, st.just(0)),
)
edits = st.lists(edit, min_size=1, max_size=4)


SEPARATORS = re.compile(rb"[:,\t\n\[{]")


def damage(data: bytes, ops: list[tuple]) -> bytes:
    """``ops`` applied in turn; ``after_separator`` inserts where a value starts (after a
    ``:``, ``,``, tab, newline or bracket), so huge numbers and deep nesting get parsed."""
    out = bytearray(data)
    for op, pos, arg in ops:
        at = pos % (len(out) + 1)
        if op == "after_separator":
            seps = [m.end() for m in SEPARATORS.finditer(out)] or [0]
            out[seps[pos % len(seps)]:seps[pos % len(seps)]] = arg
        elif op == "flip" and at < len(out):
            out[at] ^= arg
        elif op == "insert":
            out[at:at] = arg
        elif op == "delete":
            del out[at:at + arg]
        elif op == "truncate":
            out = out[:at]
    return bytes(out)


@st.composite
def damaged(draw, valid: bytes) -> bytes:
    """Random bytes, or ``valid`` with a few edits (usually)."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=400))
    return damage(valid, draw(edits))


@st.composite
def stored(draw, content: bytes, gz: bool) -> bytes:
    """``content`` as stored: plain, or gzip-compressed and sometimes damaged as a stream."""
    if not gz:
        return content
    data = gzip.compress(content, mtime=0)
    return damage(data, draw(st.lists(edit, max_size=2)))


# ---------------------------------------------------------------------------------------
# Field-level randomness: values of every JSON type, with the awkward ones over-represented

awkward_text = st.sampled_from(["", " ", "\x00", "a\x00b", "\ud800", "x\udcff", "\x1b[0m",
                                "\ufeffid", "tab\there", "line\nbreak", "\u2028", "&#0;",
                                "&amp;", "2009-09-13", "09 13, 2009", "1e999", "nan", "-5",
                                "1252800000", "1588687728923", " u1 ", "x" * 600])
scalar = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(10**25), max_value=10**25),
    st.sampled_from([1252800000, 1588687728923, 2**63, -(2**63) - 1, 0, 12]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), awkward_text,
)
json_value = st.recursive(scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=6)


def json_line(obj) -> bytes:
    return json.dumps(obj, allow_nan=True).encode("utf-8", "surrogatepass")


RAW_TOKENS = [b"9" * 4400, b"-" + b"9" * 4400, b"[" * 3000 + b"]" * 3000, b"1e999",
              b'"\\ud800"', b'"a\\u0000b"', b'"\\u001b"', b"NaN", b"-Infinity"]


@st.composite
def json_rows(draw, template: dict, n: int = 3) -> tuple[bytes, list[dict]]:
    """(file content, the rows as generated): each row is ``template`` with up to two keys
    removed or given a random value; a ``bytes`` value was written verbatim (e.g. a 4,400-digit
    number)."""
    rows = []
    for _ in range(draw(st.integers(1, n))):
        row = dict(template)
        for key in draw(st.lists(st.sampled_from(sorted(template)), max_size=2, unique=True)):
            how = draw(st.integers(0, 3))
            if how == 0:
                del row[key]
            else:
                row[key] = draw(st.sampled_from(RAW_TOKENS) if how == 1 else json_value)
        rows.append(row)
    lines = [b"{" + b", ".join(json_line(k) + b": " + (v if isinstance(v, bytes) else json_line(v))
                               for k, v in row.items()) + b"}\n" for row in rows]
    return b"".join(lines), rows


def is_id(value) -> bool:
    """The type rule for ids (cprec_core.data.sources.base): text or an integer."""
    return (isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
            or (isinstance(value, float) and value.is_integer()))


def is_number_or_text(value) -> bool:
    return isinstance(value, (str, int, float)) and not isinstance(value, bool)


def check_types(records: list | None, rows: list[dict], source: Path, fields: dict) -> None:
    """Each accepted row of ``source`` came from a row whose values have the right types:
    ``fields`` maps record attribute -> (the row's key, or key and fallback; type rule)."""
    for r in records or []:
        if not isinstance(r, Accepted) or r.source_file != str(source):
            continue
        row = rows[r.line - 1]
        for attr, (keys, rule) in fields.items():
            value = row.get(keys[0])
            if not value and len(keys) > 1:  # Amazon 2023: asin when parent_asin is empty
                value = row.get(keys[1])
            if value is not None or attr != "rating":
                assert rule(value), (attr, value, r)


# ---------------------------------------------------------------------------------------
# Generic tables: CSV, JSON lines, Parquet

TABLE_ROWS = [
    {"user_id": "u1", "item_id": "i1", "title": "Dune", "timestamp": 1252800000,
     "domain": "Books", "rating": 5},
    {"user_id": "u2", "item_id": "i2", "title": "Tea, Earl \"Grey\"",
     "timestamp": "2009-09-13T10:20:30Z", "domain": "Grocery", "rating": ""},
    {"user_id": "u3", "item_id": "i1", "title": "Dune", "timestamp": 1252800000123,
     "domain": "Books", "rating": 4.5},
]
COLUMNS = list(TABLE_ROWS[0])


def csv_bytes(rows: list[dict]) -> bytes:
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow([row.get(c, "") for c in COLUMNS])
    return out.getvalue().encode("utf-8", "surrogatepass")


VALID_CSV = csv_bytes(TABLE_ROWS)
VALID_JSONL = b"".join(json_line(r) + b"\n" for r in TABLE_ROWS)


def run_table(name: str, data: bytes) -> list | None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        cfg = SourceConfig(kind="table", path=str(path))
        return check_records(lambda: read_table(path, cfg), [path])


@FUZZ
@given(gz=st.booleans(), data=st.data())
def test_table_csv_damaged_bytes(gz, data):
    content = data.draw(damaged(VALID_CSV))
    run_table("log.csv.gz" if gz else "log.csv", data.draw(stored(content, gz)))


@FUZZ
@given(gz=st.booleans(), data=st.data())
def test_table_csv_random_fields(gz, data):
    rows = []
    for r in TABLE_ROWS:  # up to two fields of each row get random text
        odd = data.draw(st.lists(st.sampled_from(COLUMNS), max_size=2, unique=True))
        rows.append({c: data.draw(st.one_of(st.text(max_size=10), awkward_text)) if c in odd
                     else str(r[c]) for c in COLUMNS})
    run_table("log.csv.gz" if gz else "log.csv", data.draw(stored(csv_bytes(rows), gz)))


@FUZZ
@given(gz=st.booleans(), data=st.data())
def test_table_jsonl_damaged_bytes(gz, data):
    content = data.draw(damaged(VALID_JSONL))
    run_table("log.jsonl.gz" if gz else "log.jsonl", data.draw(stored(content, gz)))


TABLE_TYPES = {"user_id": (["user_id"], is_id), "item_id": (["item_id"], is_id),
               "title": (["title"], lambda v: isinstance(v, str)),
               "domain": (["domain"], lambda v: isinstance(v, str)),
               "ts_ms": (["timestamp"], is_number_or_text),
               "rating": (["rating"], is_number_or_text)}


@FUZZ
@given(data=st.data())
def test_table_jsonl_random_fields(data):
    content, rows = data.draw(json_rows(TABLE_ROWS[0]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "log.jsonl"
        path.write_bytes(content)
        records = check_records(lambda: read_table(path, SourceConfig(kind="table", path=tmp)),
                                [path])
        check_types(records, rows, path, TABLE_TYPES)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


VALID_PARQUET = parquet_bytes(pa.table({
    "user_id": ["u1", "u2", "u3"], "item_id": pa.array([1, 2, 3], pa.int64()),
    "title": ["Dune", "Tea", "Jam"],
    "timestamp": pa.array([datetime(2009, 9, 13), None, datetime(2010, 1, 1)], pa.timestamp("s")),
    "domain": ["Books", "Grocery", None], "rating": [5.0, None, float("nan")],
}))

# typed columns a Parquet writer may produce, each a (type, strategy of one value) pair
PARQUET_COLUMNS = [
    (pa.string(), st.one_of(st.none(), st.text(max_size=8), awkward_text.filter(
        lambda t: not re.search(r"[\ud800-\udfff]", t)))),  # Arrow strings are UTF-8
    (pa.int64(), st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))),
    (pa.float64(), st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True))),
    (pa.bool_(), st.one_of(st.none(), st.booleans())),
    (pa.binary(), st.one_of(st.none(), st.binary(max_size=6))),
    (pa.list_(pa.int64()), st.one_of(st.none(), st.lists(st.integers(-5, 5), max_size=3))),
    (pa.timestamp("s"), st.one_of(st.none(), st.integers(-(10**13), 10**13))),
    (pa.timestamp("ms", tz="UTC"), st.one_of(st.none(), st.integers(-(10**15), 10**15))),
    (pa.date32(), st.one_of(st.none(), st.integers(-(10**6), 10**6))),
    (pa.decimal128(12, 3), st.one_of(st.none(), st.decimals(-(10**8), 10**8, places=3,
                                                              allow_nan=False))),
    (pa.uint64(), st.one_of(st.none(), st.integers(0, 2**64 - 1))),
    (pa.float32(), st.one_of(st.none(), st.floats(width=32))),
    (pa.large_string(), st.one_of(st.none(), st.text(max_size=8))),
    (pa.dictionary(pa.int32(), pa.string()), st.one_of(st.none(), st.sampled_from(["a", "b"]))),
    (pa.struct([("a", pa.int64())]), st.one_of(st.none(), st.builds(dict, a=st.integers(0, 9)))),
    (pa.duration("s"), st.one_of(st.none(), st.integers(-(10**9), 10**9))),
    (pa.time64("us"), st.one_of(st.none(), st.integers(0, 86_400 * 10**6 - 1))),
]


@FUZZ
@given(data=st.data())
def test_table_parquet_damaged_bytes(data):
    run_table("log.parquet", data.draw(damaged(VALID_PARQUET)))


# a column of the expected type, per column
PARQUET_GOOD = {
    "user_id": (pa.string(), st.sampled_from(["u1", "u2"])),
    "item_id": (pa.int64(), st.sampled_from([1, 2])),
    "title": (pa.string(), st.sampled_from(["Dune", "Tea"])),
    "timestamp": (pa.int64(), st.sampled_from([1252800000, 1588687728923])),
    "domain": (pa.string(), st.sampled_from(["Books"])),
    "rating": (pa.float64(), st.sampled_from([4.5, 1.0])),
}
TEXT_TYPES = (pa.string(), pa.large_string())


def parquet_type_ok(name: str, kind: pa.DataType) -> bool:
    """Whether an accepted row may come from a column of this type (base.py's rules)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    if name in ("title", "domain"):
        return kind in TEXT_TYPES
    if name in ("user_id", "item_id"):
        return kind in TEXT_TYPES or pa.types.is_integer(kind) or pa.types.is_floating(kind)
    if name == "timestamp":
        return (kind in TEXT_TYPES or pa.types.is_integer(kind) or pa.types.is_floating(kind)
                or pa.types.is_decimal(kind) or pa.types.is_timestamp(kind)
                or pa.types.is_date(kind))
    return not (pa.types.is_boolean(kind) or pa.types.is_binary(kind)  # rating
                or pa.types.is_nested(kind) or pa.types.is_temporal(kind))


@FUZZ
@given(data=st.data())
def test_table_parquet_random_column_types(data):
    n = data.draw(st.integers(1, 4))
    columns = {}
    for name in COLUMNS:
        how = data.draw(st.sampled_from(["good"] * 13 + ["random"] * 6 + ["missing"]))
        if how == "missing" and name != "rating":
            continue  # a column goes missing
        kind, values = (PARQUET_GOOD[name] if how == "good"
                        else data.draw(st.sampled_from(PARQUET_COLUMNS)))
        columns[name] = pa.array([data.draw(values) for _ in range(n)], kind)
    table = pa.table(columns)
    for r in run_table("log.parquet", parquet_bytes(table)) or []:
        if isinstance(r, Accepted):  # each value it was read from has an accepted type
            for name in columns:
                if table.column(name)[r.line - 1].is_valid:
                    assert parquet_type_ok(name, table.schema.field(name).type), (name, r)


# ---------------------------------------------------------------------------------------
# Amazon 2018 and 2023: a review file and a meta file per category

REVIEW18 = {"reviewerID": "A1", "asin": "B1", "overall": 5.0, "unixReviewTime": 1252800000,
            "reviewTime": "09 13, 2009", "summary": "Great"}
META18 = {"asin": "B1", "title": "Some &amp; Title", "main_cat": "Books"}
REVIEW23 = {"user_id": "U1", "parent_asin": "P1", "asin": "V1", "rating": 4.0,
            "timestamp": 1588687728923, "title": "review headline"}
META23 = {"parent_asin": "P1", "title": "Item Title", "main_category": "Beauty"}


def amazon_valid(review: dict, meta: dict, item_key: str) -> tuple[bytes, bytes]:
    other = dict(meta, **{item_key: "B2", "title": "Other"})
    reviews = [review, dict(review, **{item_key: "B2"}), dict(review, **{item_key: "B404"})]
    return (b"".join(json_line(r) + b"\n" for r in reviews),
            b"".join(json_line(m) + b"\n" for m in (meta, other)))


def run_amazon(reader, kind: str, ext: str, data, reviews: bytes, meta: bytes,
               rows: list[dict] | None = None, types: dict | None = None) -> None:
    gz_reviews, gz_meta = data.draw(st.booleans()), data.draw(st.booleans())
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        reviews_path = folder / f"Books{ext}{'.gz' if gz_reviews else ''}"
        meta_path = folder / f"meta_Books{ext}{'.gz' if gz_meta else ''}"
        reviews_path.write_bytes(data.draw(stored(reviews, gz_reviews)))
        meta_path.write_bytes(data.draw(stored(meta, gz_meta)))
        unit = data.draw(st.sampled_from(["auto", "s", "ms"]))
        cfg = SourceConfig(kind=kind, path=str(folder), timestamp_unit=unit)
        records = check_records(lambda: reader(folder, cfg), [reviews_path, meta_path, folder])
        if rows is not None:
            check_types(records, rows, reviews_path, types)


AMAZON = {
    "amazon2018": (read_amazon2018, ".json", REVIEW18, META18, "asin"),
    "amazon2023": (read_amazon2023, ".jsonl", REVIEW23, META23, "parent_asin"),
}
AMAZON_TYPES = {
    "amazon2018": {"user_id": (["reviewerID"], is_id), "item_id": (["asin"], is_id),
                   "rating": (["overall"], is_number_or_text)},
    "amazon2023": {"user_id": (["user_id"], is_id), "item_id": (["parent_asin", "asin"], is_id),
                   "ts_ms": (["timestamp"], is_number_or_text),
                   "rating": (["rating"], is_number_or_text)},
}


def amazon_damaged(kind):
    reader, ext, review, meta, key = AMAZON[kind]
    valid_reviews, valid_meta = amazon_valid(review, meta, key)

    @FUZZ
    @given(data=st.data())
    def test(data):
        which = data.draw(st.sampled_from(["reviews", "meta", "both"]))
        reviews = data.draw(damaged(valid_reviews)) if which != "meta" else valid_reviews
        meta_bytes = data.draw(damaged(valid_meta)) if which != "reviews" else valid_meta
        run_amazon(reader, kind, ext, data, reviews, meta_bytes)
    return test


def amazon_random_fields(kind):
    reader, ext, review, meta, _ = AMAZON[kind]

    @FUZZ
    @given(data=st.data())
    def test(data):
        reviews, rows = data.draw(json_rows(review))
        meta_bytes, _ = data.draw(json_rows(meta))
        run_amazon(reader, kind, ext, data, reviews, meta_bytes, rows, AMAZON_TYPES[kind])
    return test


test_amazon2018_damaged_bytes = amazon_damaged("amazon2018")
test_amazon2023_damaged_bytes = amazon_damaged("amazon2023")
test_amazon2018_random_fields = amazon_random_fields("amazon2018")
test_amazon2023_random_fields = amazon_random_fields("amazon2023")


# ---------------------------------------------------------------------------------------
# MovieLens (RecBole atomic): an .inter and an .item file

ML_ITEM = ("item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
           "1\tToy Story\t1995\tAnimation Children's Comedy\n"
           "2\tHeat\t1995\tCrime Thriller\n"
           "3\tunknown\t1995\tunknown\n").encode()
ML_INTER = ("user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
            "196\t1\t3\t881250949\n186\t2\t5\t891717742\n22\t3\t1\t878887116\n"
            "7\t9\t2\t878887116\n").encode()


def run_movielens(data, inter: bytes, item: bytes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "ml.inter").write_bytes(inter)
        (folder / "ml.item").write_bytes(item)
        unit = data.draw(st.sampled_from(["auto", "s", "ms"]))
        cfg = SourceConfig(kind="movielens", path=str(folder), timestamp_unit=unit)
        check_records(lambda: read_movielens(folder, cfg),
                      [folder / "ml.inter", folder / "ml.item", folder])


@FUZZ
@given(data=st.data())
def test_movielens_damaged_bytes(data):
    which = data.draw(st.sampled_from(["inter", "item", "both"]))
    inter = data.draw(damaged(ML_INTER)) if which != "item" else ML_INTER
    item = data.draw(damaged(ML_ITEM)) if which != "inter" else ML_ITEM
    run_movielens(data, inter, item)


@FUZZ
@given(data=st.data())
def test_movielens_random_fields(data):
    def line(fields: list[str]) -> bytes:
        cells = [data.draw(st.one_of(st.just(f), st.just(f), st.text(max_size=8), awkward_text))
                 for f in fields]
        return "\t".join(c.replace("\t", " ").replace("\n", " ") for c in cells).encode(
            "utf-8", "surrogatepass") + b"\n"
    item = ML_ITEM.splitlines(keepends=True)[0] + b"".join(
        line(["1", "Toy Story", "1995", "Comedy"]) for _ in range(2))
    inter = ML_INTER.splitlines(keepends=True)[0] + b"".join(
        line(["196", "1", "3", "881250949"]) for _ in range(3))
    run_movielens(data, inter, item)


# ---------------------------------------------------------------------------------------
# A byte order mark changes nothing


def outcome(reader, folder: Path) -> list | str:
    """The records without what depends on the folder or the bytes (path, checksum), or the
    SourceError's message without the folder."""
    try:
        records = list(reader())
    except SourceError as exc:
        return str(exc).replace(str(folder), "<folder>")
    return [r._replace(source_file=Path(r.source_file).name, sha256="") if isinstance(r, FileRead)
            else r._replace(source_file=Path(r.source_file).name) for r in records]


@st.composite
def text_inputs(draw, kind: str) -> tuple[dict[str, bytes], SourceConfig]:
    """{file name: content} of a valid-looking input of ``kind``, and its config (path: '.')."""
    if kind == "csv":
        rows = [{c: draw(st.one_of(st.just(str(r[c])), awkward_text)) for c in COLUMNS}
                for r in TABLE_ROWS]
        return {"log.csv": csv_bytes(rows)}, SourceConfig(kind="table", path="log.csv")
    if kind == "jsonl":
        return ({"log.jsonl": draw(json_rows(TABLE_ROWS[0]))[0]},
                SourceConfig(kind="table", path="log.jsonl"))
    if kind == "movielens":
        return {"ml.inter": ML_INTER, "ml.item": ML_ITEM}, SourceConfig(kind="movielens", path=".")
    _, ext, review, meta, _ = AMAZON[kind]
    return ({f"Books{ext}": draw(json_rows(review))[0], f"meta_Books{ext}": draw(json_rows(meta))[0]},
            SourceConfig(kind=kind, path="."))


READERS = {"csv": read_table, "jsonl": read_table, "movielens": read_movielens,
           "amazon2018": read_amazon2018, "amazon2023": read_amazon2023}


@settings(FUZZ, max_examples=30)
@given(kind=st.sampled_from(sorted(READERS)), data=st.data())
def test_a_byte_order_mark_changes_nothing(kind, data):
    files, cfg = data.draw(text_inputs(kind))
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for bom in (b"", b"\xef\xbb\xbf"):
            folder = Path(tmp) / f"bom{len(bom)}"
            folder.mkdir()
            for name, content in files.items():
                (folder / name).write_bytes(bom + content)
            path = folder / cfg.path
            results.append(outcome(lambda: READERS[kind](path, cfg), folder))
    assert results[0] == results[1]
