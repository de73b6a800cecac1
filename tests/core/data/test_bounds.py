"""Small hostile inputs must not take the memory or swallow rows: an endless line (also
inside a gzip bomb), a file that decompresses past its bound, and a CSV quote that is never
closed. Memory is checked in a child process under an address-space limit."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import textwrap
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cprec_core.config import ConfigError, SourceConfig
from cprec_core.data.sources import Accepted, FileRead, Rejected, SourceError
from cprec_core.data.sources.base import ReadLimits, iter_lines
from cprec_core.data.sources.table import read_table_file

HEADER = "user_id,item_id,title,timestamp,domain"


def _bomb(path, line_bytes: int) -> None:
    """A gzip file of a few hundred kilobytes holding one ``line_bytes`` line, then a row."""
    block = zlib.compressobj(1, zlib.DEFLATED, 31)  # gzip framing
    with open(path, "wb") as fh:
        fh.write(block.compress(b'{"user_id": "u1", "title": "'))
        chunk = b"a" * (1 << 20)
        for _ in range(line_bytes >> 20):
            fh.write(block.compress(chunk))
        fh.write(block.compress(b'"}\n{"user_id": "u2", "item_id": "i", "title": "T",'
                                b' "timestamp": 1700000000, "domain": "D"}\n'))
        fh.write(block.flush())


def test_an_endless_line_in_a_gzip_bomb_is_one_rejected_row_in_bounded_memory(tmp_path):
    bomb = tmp_path / "bomb.jsonl.gz"
    _bomb(bomb, 300 << 20)
    assert bomb.stat().st_size < 2 << 20
    child = textwrap.dedent(f"""
        import resource, sys
        from pathlib import Path
        from cprec_core.data.sources.table import read_table_file
        from cprec_core.data.sources import Rejected, Accepted
        with open("/proc/self/status") as fh:
            size = next(int(l.split()[1]) * 1024 for l in fh if l.startswith("VmSize"))
        limit = size + (160 << 20)  # far less than the 300 MB line
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        records = list(read_table_file(Path({str(bomb)!r})))
        kinds = [type(r).__name__ for r in records]
        print(kinds, records[0].line, records[0].reason)
    """)
    done = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "['Rejected', 'Accepted', 'FileRead'] 1 longer than 4,194,304 bytes" in done.stdout


def test_more_than_max_file_bytes_after_decompression_stops_the_file(tmp_path):
    path = tmp_path / "big.jsonl.gz"
    row = json.dumps({"user_id": "u", "item_id": "i", "title": "T", "timestamp": 1700000000,
                      "domain": "D"})
    with gzip.open(path, "wt") as fh:
        fh.write((row + "\n") * 1000)
    limits = ReadLimits(record_bytes=1024, file_bytes=20_000)
    with pytest.raises(SourceError, match=r"big.jsonl.gz: more than 20,000 bytes after"
                                          r" decompression by line \d+ \(max_file_bytes\)"):
        list(read_table_file(path, limits=limits))
    assert len(list(read_table_file(path))) == 1001  # within the default bound


def test_limits_are_settings_of_a_source_and_are_checked():
    assert SourceConfig(kind="table", path="x", max_record_bytes=2048).max_record_bytes == 2048
    with pytest.raises(ConfigError, match="max_record_bytes must be at least 1024"):
        SourceConfig(kind="table", path="x", max_record_bytes=0)


def test_a_too_long_line_is_rejected_and_reading_goes_on(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text(f"{HEADER}\nu1,i1,{'x' * 5000},1700000000,D\nu2,i2,T,1700000001,D\n")
    records = list(read_table_file(path, limits=ReadLimits(record_bytes=1024)))
    rejected = [r for r in records if isinstance(r, Rejected)]
    assert [(r.line, r.field) for r in rejected] == [(2, "line")]
    assert "longer than 1,024 bytes" in rejected[0].reason and len(rejected[0].raw) <= 500
    assert [r.line for r in records if isinstance(r, Accepted)] == [3]
    lines = list(iter_lines(path, ReadLimits(record_bytes=1024)))
    assert [n for n, _, _ in lines] == [1, 2, 3]


def test_an_unclosed_csv_quote_rejects_its_line_and_swallows_nothing(tmp_path):
    path = tmp_path / "quotes.csv"
    rows = [f"u{i},i{i},Title {i},{1700000000 + i},D" for i in range(3000)]
    rows[1] = 'u1,i1,"Title 1,1700000001,D'  # a quote that never closes (line 3)
    rows[5] = 'u5,i5,"Title" 5,1700000005,D'  # text after a closing quote (line 7)
    rows[9] = 'u9,i9,"Title\nover two lines",1700000009,D'  # a legal quoted line break
    path.write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    records = list(read_table_file(path))
    rejected = {r.line: r.reason for r in records if isinstance(r, Rejected)}
    assert set(rejected) == {3, 7}
    assert "a quote opened on this line is never closed" in rejected[3]
    assert "unreadable CSV record" in rejected[7]
    accepted = [r for r in records if isinstance(r, Accepted)]
    assert len(accepted) == 2998
    assert [r.title for r in accepted if r.user_id == "u9"] == ["Title over two lines"]
    (read,) = [r for r in records if isinstance(r, FileRead)]
    assert read.rows_read == 3000  # every row is accepted or rejected: nothing swallowed


def test_a_parquet_file_larger_than_the_bound_is_not_read(tmp_path):
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"user_id": [f"u{i}" for i in range(2000)],
                             "item_id": [f"i{i}" for i in range(2000)],
                             "title": [f"Title {i}" for i in range(2000)], "timestamp": [1700000000] * 2000,
                             "domain": ["D"] * 2000}), path, compression="zstd")
    with pytest.raises(SourceError, match=r"t.parquet: [\d,]+ bytes uncompressed"):
        list(read_table_file(path, limits=ReadLimits(record_bytes=1024, file_bytes=4096)))
    assert len(list(read_table_file(path))) == 2001


def test_damaged_parquet_metadata_is_a_source_error(tmp_path):
    """A column name in the footer that is not UTF-8 (found by the fuzz test on a fresh
    clone): the size check reads the metadata, so it must fail as the file, not crash."""
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"user_id": ["u"], "item_id": ["i"], "title": ["T"],
                             "timestamp": [1700000000], "domain": ["D"]}), path)
    data = path.read_bytes()
    footer = data.rindex(b"\x07user_id")  # the column chunk's path in the footer
    path.write_bytes(data[:footer] + b"\x07\xf5ser_id" + data[footer + 8:])
    with pytest.raises(SourceError, match=r"t.parquet: (unreadable Parquet metadata|not a"
                                          r" readable Parquet file)"):
        list(read_table_file(path))
