"""The landing folder: which files are deliveries, when they are complete, loading each once,
surviving a rebuild of raw_interactions, and how a new domain gets its role."""

import gzip
import json
import os
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cprec_core.config import SourceConfig
from cprec_core.data.interactions import build_interactions
from cprec_core.data.landing import LandingCursor, complete, ingest, landed_only_domains, scan
from cprec_core.data.raw import load_raw_interactions, raw_data_version, reconcile
from cprec_core.data.sources.base import SourceFileGone
from tests.conftest import data_config

T0 = 1_700_000_000


def rows_for(domain: str | None, users: int, items: int, per_user: int, start: int = 0,
             prefix: str = "w") -> list[dict]:
    out = []
    for u in range(users):
        for k in range(per_user):
            item = (u + k) % items
            row = {"user_id": f"{prefix}{u}", "item_id": f"{domain or 'x'}-{item}",
                   "title": f"Film {item}", "timestamp": T0 + start + u * 100 + k}
            if domain is not None:
                row["domain"] = domain
            out.append(row)
    return out


def write_jsonl_gz(path: Path, rows: list[dict | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt") as fh:
        for r in rows:
            fh.write((r if isinstance(r, str) else json.dumps(r)) + "\n")
    return path


def write_parquet(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def done(path: Path) -> Path:
    path.with_name(path.name + ".done").touch()
    return path


def set_mtime(path: Path, seconds_ago: float) -> None:
    t = os.stat(path).st_mtime - seconds_ago
    os.utime(path, (t, t))


def test_scan_tells_deliveries_from_other_files(tmp_path):
    root = tmp_path / "landing"
    write_jsonl_gz(root / "Western" / "2025" / "week1.jsonl.gz", rows_for(None, 2, 3, 2))
    write_parquet(root / "mixed.parquet", rows_for("Noir", 2, 3, 2))
    write_jsonl_gz(root / "amazon" / "Video_Games.jsonl.gz", [])
    write_jsonl_gz(root / "amazon" / "meta_Video_Games.jsonl.gz", [])
    write_jsonl_gz(root / "amazon" / "meta_Books.jsonl.gz", [])  # a meta file alone: waits
    (root / "notes.txt").write_text("hello")
    (root / "Western" / "week2.parquet.tmp").write_text("half")
    (root / ".staging").mkdir()
    (root / ".staging" / "x.parquet").write_text("hidden")
    (root / "old.json").write_text("{}")
    done(root / "mixed.parquet")

    found = scan(root)
    by_rel = {d.rel: d for d in found.deliveries}
    assert sorted(by_rel) == ["Western/2025/week1.jsonl.gz", "amazon/Video_Games.jsonl.gz",
                              "mixed.parquet"]
    assert by_rel["Western/2025/week1.jsonl.gz"].domain == "Western"
    assert by_rel["Western/2025/week1.jsonl.gz"].kind == "table"
    assert by_rel["mixed.parquet"].domain is None and by_rel["mixed.parquet"].marker
    pair = by_rel["amazon/Video_Games.jsonl.gz"]
    assert pair.kind == "amazon2023" and pair.meta.name == "meta_Video_Games.jsonl.gz"
    assert set(found.ignored) == {"notes.txt", "old.json"}
    assert "unsupported file type" in found.ignored["notes.txt"]
    assert "without its meta file" in found.ignored["old.json"]
    with pytest.raises(ValueError, match="landing folder not found"):
        scan(tmp_path / "missing")


def test_cursor_requests_complete_files_once(tmp_path):
    root = tmp_path / "landing"
    a = write_parquet(root / "Western" / "a.parquet", rows_for(None, 2, 3, 2))
    cursor = LandingCursor()
    t0 = os.stat(a).st_mtime_ns
    now = lambda: t0 + 1  # noqa: E731 - "just written"
    # first sight: not complete (no marker, not seen before)
    assert cursor.advance(scan(root), now(), settle_seconds=30) == []
    # unchanged on the next tick but younger than settle_seconds: still waiting
    assert cursor.advance(scan(root), now(), settle_seconds=30) == []
    # unchanged and old enough: requested, once
    ready = cursor.advance(scan(root), now() + 31 * 10**9, settle_seconds=30)
    assert [d.rel for d in ready] == ["Western/a.parquet"]
    cursor = LandingCursor.from_json(cursor.to_json())  # survives the round trip
    assert cursor.advance(scan(root), now() + 60 * 10**9, settle_seconds=30) == []
    # rewritten: a new version, which has to settle again
    write_parquet(a, rows_for(None, 3, 3, 2))
    t0 = os.stat(a).st_mtime_ns
    assert cursor.advance(scan(root), now() + 61 * 10**9, settle_seconds=30) == []
    assert len(cursor.advance(scan(root), now() + 100 * 10**9, settle_seconds=30)) == 1
    # a .done marker makes a file complete at once
    b = done(write_parquet(root / "Western" / "b.parquet", rows_for(None, 2, 3, 2)))
    assert [d.rel for d in cursor.advance(scan(root), os.stat(b).st_mtime_ns, 30)] == [
        "Western/b.parquet"]
    # a file that is gone is forgotten
    a.unlink()
    cursor.advance(scan(root), now(), 30)
    assert "Western/a.parquet" not in cursor.requested
    # complete(): for runs launched by hand, marker or old enough
    c = write_parquet(root / "Western" / "c.parquet", rows_for(None, 2, 3, 2))
    assert [d.rel for d in complete(scan(root), os.stat(c).st_mtime_ns, 30)] == ["Western/b.parquet"]
    set_mtime(c, 60)
    assert len(complete(scan(root), os.stat(b).st_mtime_ns, 30)) == 2


def test_ingest_loads_each_content_once_and_keeps_bad_rows(tmp_path):
    root = tmp_path / "landing"
    rows = rows_for(None, 3, 4, 2) + ["not json", {"user_id": "u", "item_id": "i", "title": "t"}]
    first = done(write_jsonl_gz(root / "Western" / "week1.jsonl.gz", rows))
    con = duckdb.connect()
    report = ingest(con, scan(root).deliveries)
    assert [(f["status"], f["rows_read"], f["rows_loaded"], f["rows_rejected"], f["domains"])
            for f in report.files] == [("loaded", 8, 6, 2, ["Western"])]
    assert report.reasons == {"json: malformed JSON: Expecting value at column 1": 1,
                              "timestamp: missing timestamp": 1}
    rejected = con.execute("SELECT source_file, line, field FROM landed_rejected ORDER BY line").fetchall()
    label = report.files[0]["source_file"]
    assert label.startswith("landing:Western/week1.jsonl.gz#")
    assert rejected == [(label, 7, "json"), (label, 8, "timestamp")]

    # the same delivery again, and the same content under another name: nothing added
    copy = root / "Western" / "week1-again.jsonl.gz"
    copy.write_bytes(first.read_bytes())
    again = ingest(con, scan(root).deliveries)
    assert [f["status"] for f in again.files] == ["duplicate", "duplicate"]
    assert "same content as Western/week1.jsonl.gz" in again.files[0]["detail"]
    assert con.execute("SELECT count(*) FROM landed_raw").fetchall()[0][0] == 6

    # a file that cannot be read at all: recorded with the reason, nothing added
    bad = done(write_parquet(root / "no-domain.parquet", rows_for(None, 1, 1, 1)))
    failed = ingest(con, [d for d in scan(root).deliveries if d.path == bad])
    assert failed.files[0]["status"] == "failed"
    assert f"{bad}: missing column(s) ['domain']" in failed.files[0]["detail"]
    assert con.execute("SELECT count(*) FROM landed_raw").fetchall()[0][0] == 6
    statuses = con.execute("SELECT status, count(*) FROM landed_files GROUP BY ALL ORDER BY 1").fetchall()
    assert statuses == [("duplicate", 2), ("failed", 1), ("loaded", 1)]


def test_landed_rows_survive_a_rebuild_and_new_domain_becomes_target(tmp_path):
    logs = tmp_path / "logs"
    base = rows_for("Drama", 12, 8, 6) + rows_for("Crime", 12, 8, 6, start=50_000)
    write_parquet(logs / "base.parquet", base)
    sources = (SourceConfig(kind="table", path=str(logs)),)
    cfg = data_config(sources=sources, target_domains=("Crime",), min_target_items=5,
                      min_target_users=10, user_core=2, item_core=2)
    root = tmp_path / "landing"
    con = duckdb.connect()
    load_raw_interactions(con, sources, tmp_path / "cache")
    before = raw_data_version(con)
    (raw_rows,) = con.execute("SELECT count(*) FROM raw_interactions").fetchall()[0]

    # a big enough new domain and a small one land
    done(write_parquet(root / "Western" / "w.parquet", rows_for(None, 12, 8, 6, prefix="u")))
    done(write_jsonl_gz(root / "Noir" / "n.jsonl.gz", rows_for(None, 4, 3, 3, prefix="u")))
    ingest(con, scan(root).deliveries)
    report = load_raw_interactions(con, sources, tmp_path / "cache")
    (after_rows,) = con.execute("SELECT count(*) FROM raw_interactions").fetchall()[0]
    assert after_rows == raw_rows + 12 * 6 + 4 * 3
    assert report.total("rows_loaded") == after_rows and report.reconciled
    assert reconcile(con) == [] and raw_data_version(con) != before
    assert landed_only_domains(con) == {"Western", "Noir"}

    result = build_interactions(con, cfg)
    roles = dict(con.execute("SELECT domain, role FROM domains").fetchall())
    assert roles == {"Drama": "source", "Crime": "target", "Western": "target", "Noir": "unused"}
    assert result.landed_domains["Western"] == "target (new domain from landed files)"
    assert result.landed_domains["Noir"] == ("unused until it qualifies: 3 items <"
                                             " min_target_items=5; 4 test users < min_target_users=10")
    # the new domains never reach the corpus: they are not source domains
    assert con.execute("SELECT DISTINCT role FROM interactions WHERE domain IN ('Western', 'Noir')"
                       " ORDER BY 1").fetchall() == [("target",), ("unused",)]


def test_one_bad_delivery_never_stops_the_batch(tmp_path, monkeypatch):
    root = tmp_path / "landing"
    done(write_parquet(root / "Western" / "a.parquet", rows_for(None, 2, 3, 2)))
    done(write_parquet(root / "Western" / "b.parquet", rows_for(None, 2, 3, 2, prefix="b")))
    done(write_parquet(root / "Western" / "c.parquet", rows_for(None, 2, 3, 2, prefix="c")))
    done(write_parquet(root / "Western" / "e.parquet", rows_for(None, 2, 3, 2, prefix="e")))
    import cprec_core.data.landing as landing

    real = landing._records

    def flaky(d):  # a reader defect on one file, not a SourceError
        if d.path.name == "b.parquet":
            raise RecursionError("maximum recursion depth exceeded")
        if d.path.name == "e.parquet":
            return half_then_gone(d)
        return real(d)

    def half_then_gone(d):  # removed half-way through
        yield next(real(d))
        raise SourceFileGone(f"{d.path}: reading stopped after row 1", str(d.path))

    monkeypatch.setattr(landing, "_records", flaky)
    deliveries = scan(root).deliveries
    (root / "Western" / "c.parquet").unlink()  # removed between the scan and the load
    con = duckdb.connect()
    report = ingest(con, deliveries)
    got = {f["delivery"]: (f["status"], f["detail"]) for f in report.files}
    assert got["Western/a.parquet"] == ("loaded", None)
    assert got["Western/b.parquet"][0] == "failed"
    assert got["Western/b.parquet"][1].startswith(f"{root / 'Western' / 'b.parquet'}: RecursionError")
    c, e = got["Western/c.parquet"], got["Western/e.parquet"]
    assert c[0] == "gone" and "removed before it was read" in c[1]
    assert e[0] == "gone" and "removed while it was read" in e[1]
    assert con.execute("SELECT count(*) FROM landed_raw").fetchall()[0][0] == 4


def test_the_same_content_delivered_for_two_domains_loads_for_each(tmp_path):
    root = tmp_path / "landing"
    rows = rows_for(None, 2, 3, 2)
    done(write_parquet(root / "Western" / "a.parquet", rows))
    done(write_parquet(root / "Noir" / "a.parquet", rows))
    con = duckdb.connect()
    report = ingest(con, scan(root).deliveries)
    assert sorted((f["status"], tuple(f["domains"])) for f in report.files) == [
        ("loaded", ("Noir",)), ("loaded", ("Western",))]
    done(write_parquet(root / "Noir" / "again.parquet", rows))
    again = ingest(con, [d for d in scan(root).deliveries if d.rel == "Noir/again.parquet"])
    assert again.files[0]["status"] == "duplicate" and "Noir/a.parquet" in again.files[0]["detail"]


def test_no_file_of_a_delivery_may_link_out_of_the_landing_folder(tmp_path):
    root = tmp_path / "landing"
    outside = write_jsonl_gz(tmp_path / "secret" / "meta_Books.jsonl.gz", [])
    write_jsonl_gz(root / "amazon" / "Books.jsonl.gz", [])
    (root / "amazon" / "meta_Books.jsonl.gz").symlink_to(outside)
    found = scan(root)
    assert found.deliveries == []
    assert "meta file meta_Books.jsonl.gz is a link pointing outside" in found.ignored[
        "amazon/Books.jsonl.gz"]

    # swapped for a link after the scan: not read either
    write_jsonl_gz(root / "amazon" / "Toys.jsonl.gz", [])
    meta = write_jsonl_gz(root / "amazon" / "meta_Toys.jsonl.gz", [])
    deliveries = [d for d in scan(root).deliveries if d.rel == "amazon/Toys.jsonl.gz"]
    meta.unlink()
    meta.symlink_to(outside)
    report = ingest(duckdb.connect(), deliveries)
    assert report.files[0]["status"] == "failed"
    assert "meta_Toys.jsonl.gz: a symbolic link; not read" in report.files[0]["detail"]


def test_only_regular_files_with_one_name_inside_the_folder_are_read(tmp_path):
    root = tmp_path / "landing"
    secret = tmp_path / "secret.csv"
    secret.write_text("user_id,item_id,title,timestamp\nroot,x,SECRET LINE,1700000000\n")
    done(write_parquet(root / "Western" / "a.parquet", rows_for(None, 2, 3, 2)))
    done(write_parquet(root / "Western" / "z.parquet", rows_for(None, 2, 3, 2, prefix="z")))
    os.link(secret, root / "Western" / "hard.csv")  # a second name of a file outside
    done(root / "Western" / "hard.csv")
    os.mkfifo(root / "Western" / "pipe.csv")
    done(root / "Western" / "pipe.csv")
    swapped = write_parquet(root / "Western" / "swap.parquet", rows_for(None, 2, 3, 2, prefix="s"))
    done(swapped)
    bad = os.fsencode(root / "Western") + b"/caf\xe9.parquet"  # Latin-1, not UTF-8
    with open(bad, "wb") as fh:
        fh.write((root / "Western" / "a.parquet").read_bytes())
    with open(bad + b".done", "wb"):
        pass
    deliveries = scan(root).deliveries
    swapped.unlink()  # swapped for a link to a file outside after the scan
    swapped.symlink_to(secret)
    con = duckdb.connect()
    report = ingest(con, deliveries)
    got = {f["delivery"]: (f["status"], f["detail"] or "") for f in report.files}
    assert got["Western/a.parquet"][0] == got["Western/z.parquet"][0] == "loaded"
    assert got["Western/hard.csv"][0] == "failed" and "a hard link" in got["Western/hard.csv"][1]
    assert got["Western/swap.parquet"][0] == "failed" and "symbolic link" in got[
        "Western/swap.parquet"][1]
    assert got["Western/caf\ufffd.parquet"][0] == "failed"
    assert "not valid UTF-8" in got["Western/caf\ufffd.parquet"][1]
    assert "pipe.csv" not in got or got["Western/pipe.csv"][0] == "failed"
    assert not any("SECRET" in detail for _, detail in got.values())
    assert con.execute("SELECT count(*) FROM landed_raw WHERE title LIKE '%SECRET%'"
                       ).fetchall()[0][0] == 0
    assert con.execute("SELECT count(*) FROM landed_raw").fetchall()[0][0] == 8
    # the ledger and a rerun cope with the name: the same result, nothing loaded twice
    again = ingest(con, scan(root).deliveries)
    assert con.execute("SELECT count(*) FROM landed_raw").fetchall()[0][0] == 8
    assert {f["status"] for f in again.files} <= {"duplicate", "failed"}
