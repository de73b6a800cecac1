"""New interaction files dropped into a landing folder: found, waited for, loaded once.

What counts as a delivery (paths relative to the landing folder, default ``data/landing``):

* ``<Domain>/<anything>.parquet|.csv|.csv.gz|.jsonl|.jsonl.gz``: generic logs (columns
  user_id, item_id, title, timestamp, rating optional); the ``domain`` column may be absent
  or empty, the top folder names the domain. Deeper folders are fine
  (``Western/2025/05/part-1.parquet`` is domain ``Western``).
* ``<anything>.parquet|...`` directly in the landing folder: the ``domain`` column is required.
* ``<Category>.jsonl[.gz]`` next to ``meta_<Category>.jsonl[.gz]`` (Amazon Reviews 2023) or
  ``<Category>.json[.gz]`` next to ``meta_<Category>.json[.gz]`` (2018), in any folder: the
  review file is the delivery, read with its meta file; the domain is the category.

Hidden names (``.x``, ``_x``) and in-progress names (``*.tmp``, ``*.part``, ``*.partial``,
``*.crdownload``, ``*~``) are not looked at; other suffixes are listed as ignored.

Complete, not half-written: a delivery is read when ``<file>.done`` exists next to it, or
when its size and modification time did not change between two scans and it is at least
``settle_seconds`` old. ``LandingCursor`` (the sensor's cursor) remembers the
``(size, mtime)`` stamp each delivery had when it was requested, so each version of a file is
requested once.

Loaded once: ``ingest`` keys each delivery on the SHA-256 of its content (review + meta file
for Amazon pairs) and the domain folder it was delivered to, in the ``landed_files`` ledger;
the same content delivered again for the same domain, under any name, is recorded as a
duplicate and adds no rows (the same file dropped into two domain folders loads for each).
Every file of a delivery (an Amazon meta file too) must stay inside the landing folder: a link
out of it is never read. The rows live in their own tables
(``landed_raw``, ``landed_rejected``, ``landed_source_files``, same columns as
``raw_interactions``, ``rejected_rows``, ``source_files``), so rebuilding ``raw_interactions``
from the configured sources keeps them: ``append_landed`` copies them in after the sources.
Each delivery's rows and its ledger row are written in one transaction: a crash leaves it
either loaded and recorded or absent, so it is never loaded twice.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import stat
import tempfile
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator

import duckdb

from cprec_core.data.db import atomic
from cprec_core.data.rows import Writer, reason_group
from cprec_core.data.sources.amazon import AMAZON_2018, AMAZON_2023, read_pair
from cprec_core.data.sources.base import (Record, SourceError, SourceFileGone,
                                         category_from_filename)
from cprec_core.data.sources.table import read_table_file

TABLE_SUFFIXES = (".parquet", ".csv", ".csv.gz", ".jsonl", ".jsonl.gz")
AMAZON_SUFFIXES = {".jsonl": AMAZON_2023, ".jsonl.gz": AMAZON_2023,
                   ".json": AMAZON_2018, ".json.gz": AMAZON_2018}
IN_PROGRESS = (".tmp", ".part", ".partial", ".crdownload", "~")
MARKER = ".done"
LABEL_PREFIX = "landing:"

SCHEMA = """
CREATE TABLE IF NOT EXISTS landed_files (
    delivery VARCHAR NOT NULL, source_file VARCHAR, kind VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL, size BIGINT NOT NULL, status VARCHAR NOT NULL, detail VARCHAR,
    rows_read BIGINT NOT NULL DEFAULT 0, rows_loaded BIGINT NOT NULL DEFAULT 0,
    rows_rejected BIGINT NOT NULL DEFAULT 0, domains VARCHAR[],
    landed_at TIMESTAMP DEFAULT current_timestamp);
ALTER TABLE landed_files ADD COLUMN IF NOT EXISTS delivered_for VARCHAR;
CREATE TABLE IF NOT EXISTS landed_raw (
    source_file VARCHAR NOT NULL, line BIGINT NOT NULL, user_id VARCHAR NOT NULL,
    item_id VARCHAR NOT NULL, title VARCHAR NOT NULL, ts TIMESTAMP NOT NULL,
    domain VARCHAR NOT NULL, rating DOUBLE);
CREATE TABLE IF NOT EXISTS landed_rejected (
    source_file VARCHAR NOT NULL, line BIGINT NOT NULL, field VARCHAR NOT NULL,
    reason VARCHAR NOT NULL, raw VARCHAR);
CREATE TABLE IF NOT EXISTS landed_source_files (
    source_file VARCHAR NOT NULL, role VARCHAR NOT NULL, format VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL, rows_read BIGINT NOT NULL, rows_loaded BIGINT NOT NULL,
    rows_rejected BIGINT NOT NULL, loaded_at TIMESTAMP DEFAULT current_timestamp);
"""
LANDED_TABLES = ("landed_raw", "landed_rejected", "landed_source_files")


class LandingError(ValueError):
    """The landing folder or a requested delivery cannot be used."""


# ---------------------------------------------------------------------------------------
# Finding deliveries


@dataclass(frozen=True)
class Delivery:
    rel: str  # POSIX path relative to the landing folder
    path: Path
    kind: str  # table | amazon2018 | amazon2023
    size: int
    mtime_ns: int
    marker: bool  # <file>.done exists
    domain: str | None = None  # from the top folder (table files)
    meta: Path | None = None  # Amazon meta file
    meta_size: int = 0
    meta_mtime_ns: int = 0
    root: Path | None = None  # the landing folder, to check links again when it is read
    problem: str | None = None  # why it cannot be read at all (a name that is not UTF-8)

    @property
    def files(self) -> list[Path]:
        return [self.path] + ([self.meta] if self.meta is not None else [])

    @property
    def stamp(self) -> str:
        """Changes whenever the file or its meta file is rewritten."""
        return f"{self.size}:{self.mtime_ns}:{self.meta_size}:{self.meta_mtime_ns}"

    @property
    def newest_mtime_ns(self) -> int:
        return max(self.mtime_ns, self.meta_mtime_ns)


@dataclass(frozen=True)
class Scan:
    deliveries: list[Delivery]
    ignored: dict[str, str]  # rel -> why it is not a delivery


def _suffix(name: str, suffixes: Iterable[str]) -> str | None:
    return next((s for s in sorted(suffixes, key=len, reverse=True) if name.endswith(s)), None)


def _skipped(rel_parts: tuple[str, ...]) -> bool:
    return any(p.startswith((".", "_")) for p in rel_parts) or rel_parts[-1].endswith(IN_PROGRESS)


def scan(root: str | Path) -> Scan:
    """Every delivery under ``root`` (which must exist), in path order."""
    root = Path(root)
    if not root.is_dir():
        raise LandingError(f"{root}: landing folder not found; create it or set landing_dir")
    real_root = root.resolve()
    deliveries, ignored = [], {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "_")))
        for name in sorted(filenames):
            path = Path(dirpath) / name
            rel_parts = path.relative_to(root).parts
            rel = "/".join(rel_parts)
            if _skipped(rel_parts) or name.endswith(MARKER):
                continue
            if not _utf8(rel):  # recorded as failed; the files after it still load
                shown = rel.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                deliveries.append(Delivery(
                    shown, path, "table", 0, 0, True, root=root,
                    problem=f"{root / shown}: the file or folder name is not valid UTF-8"
                            " (shown with U+FFFD); rename it to load it"))
                continue
            if _outside(real_root, path):
                ignored[rel] = "a link pointing outside the landing folder"
                continue
            if not path.is_file():
                continue
            try:
                delivery = _delivery(root, path, rel, rel_parts, ignored)
            except FileNotFoundError:  # removed while the folder was being listed
                continue
            if delivery is None:
                continue
            if delivery.meta is not None and _outside(real_root, delivery.meta):
                ignored[rel] = (f"its meta file {delivery.meta.name} is a link pointing outside"
                                " the landing folder")
                continue
            deliveries.append(delivery)
    return Scan(deliveries, ignored)


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # os.walk hands undecodable bytes over as surrogates
        return False
    return True


def _outside(real_root: Path, path: Path) -> bool:
    """Whether ``path`` (or a link on its way) leads out of the landing folder."""
    return not path.resolve().is_relative_to(real_root)


def _delivery(root: Path, path: Path, rel: str, parts: tuple[str, ...],
              ignored: dict[str, str]) -> Delivery | None:
    name = path.name
    st = path.stat()
    marker = path.with_name(name + MARKER).exists()
    amazon = _suffix(name, AMAZON_SUFFIXES)
    if name.startswith("meta_") and amazon:
        return None  # read with its review file
    if amazon:
        meta = path.with_name(f"meta_{name[: -len(amazon)].removesuffix('_5')}{amazon}")
        if not meta.is_file() and not amazon.endswith(".gz"):
            meta = meta.with_name(meta.name + ".gz")
        elif not meta.is_file():
            meta = meta.with_name(meta.name.removesuffix(".gz"))
        if meta.is_file():
            layout = AMAZON_SUFFIXES[amazon]
            mst = meta.stat()
            return Delivery(rel, path, layout.version, st.st_size, st.st_mtime_ns, marker,
                            meta=meta, meta_size=mst.st_size, meta_mtime_ns=mst.st_mtime_ns,
                            root=root)
    if _suffix(name, TABLE_SUFFIXES):
        domain = parts[0] if len(parts) > 1 else None
        return Delivery(rel, path, "table", st.st_size, st.st_mtime_ns, marker, domain=domain,
                        root=root)
    if amazon:
        ignored[rel] = (f"Amazon review file without its meta file (meta_{name}); .json files"
                        " are read only as Amazon 2018 pairs")
    else:
        ignored[rel] = (f"unsupported file type; expected {', '.join(TABLE_SUFFIXES)} or an"
                        " Amazon review + meta_ pair")
    return None


@dataclass
class LandingCursor:
    """What the sensor remembers between ticks: the stamp each delivery had on the previous
    scan (``seen``) and the stamp it had when it was requested (``requested``)."""

    seen: dict[str, str] = field(default_factory=dict)
    requested: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str | None) -> "LandingCursor":
        if not text:
            return cls()
        data = json.loads(text)
        return cls(dict(data.get("seen", {})), dict(data.get("requested", {})))

    def to_json(self) -> str:
        return json.dumps({"seen": self.seen, "requested": self.requested}, sort_keys=True)

    def advance(self, found: Scan, now_ns: int, settle_seconds: float) -> list[Delivery]:
        """The deliveries to request now (complete and not requested in this version);
        updates the cursor. Entries of files that disappeared are forgotten."""
        ready, seen = [], {}
        for d in found.deliveries:
            if self.requested.get(d.rel) == d.stamp:
                continue
            settled = (self.seen.get(d.rel) == d.stamp
                       and now_ns - d.newest_mtime_ns >= settle_seconds * 1e9)
            if d.marker or settled:
                ready.append(d)
            else:
                seen[d.rel] = d.stamp
        present = {d.rel for d in found.deliveries}
        self.seen = seen
        self.requested = {k: v for k, v in self.requested.items() if k in present}
        self.requested.update({d.rel: d.stamp for d in ready})
        return ready


def complete(found: Scan, now_ns: int, settle_seconds: float) -> list[Delivery]:
    """Deliveries that can be read without a previous scan to compare with: a ``.done``
    marker, or unchanged for at least ``settle_seconds`` (for runs launched by hand)."""
    return [d for d in found.deliveries
            if d.marker or now_ns - d.newest_mtime_ns >= settle_seconds * 1e9]


# ---------------------------------------------------------------------------------------
# Loading


@dataclass(frozen=True)
class IngestReport:
    files: list[dict]  # one ledger row per delivery handled
    reasons: dict[str, int]

    def count(self, status: str) -> int:
        return sum(f["status"] == status for f in self.files)

    @property
    def rows_loaded(self) -> int:
        return sum(f["rows_loaded"] for f in self.files)

    @property
    def domains(self) -> list[str]:
        return sorted({d for f in self.files for d in (f["domains"] or [])})


class _Refused(Exception):
    """A file of a delivery that must not be read (a link, not a regular file, a second
    name of a file, or a path that leads out of the landing folder)."""


class _Changed(Exception):
    pass


def _fd_path(fd: int, path: Path) -> Path:
    """Where the open file ``fd`` really is: Linux names it in /proc; elsewhere the resolved
    path, accepted only if it is the same file as the handle."""
    try:
        return Path(os.readlink(f"/proc/self/fd/{fd}"))
    except OSError:
        real = Path(os.path.realpath(path))
        st, mine = os.stat(real), os.fstat(fd)
        if (st.st_dev, st.st_ino) != (mine.st_dev, mine.st_ino):
            raise _Refused(f"{path}: replaced while it was opened; not read") from None
        return real


def _copy_checked(path: Path, real_root: Path, dest: Path, stamp: tuple[int, int]) -> str:
    """Copies the landing file ``path`` to ``dest`` from one handle opened without
    following links and checked on that handle (a regular file with one name, inside the
    landing folder, with the size and time the scan saw); returns the copy's SHA-256. The
    reader then reads the copy, so nothing swapped in after the check is ever read."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _Refused(f"{path}: a symbolic link; not read (deliver the file itself,"
                           " inside the landing folder)") from None
        raise
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _Refused(f"{path}: not a regular file; not read")
        if st.st_nlink != 1:
            raise _Refused(f"{path}: a file with {st.st_nlink} names (a hard link); not read"
                           " (deliver a copy)")
        real = _fd_path(fd, path)
        if not real.is_relative_to(real_root):
            raise _Refused(f"{path}: a link pointing outside the landing folder ({real});"
                           " not read")
        if (st.st_size, st.st_mtime_ns) != stamp:
            raise _Changed()
        with open(dest, "wb") as out:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        after = os.fstat(fd)
        if (after.st_size, after.st_mtime_ns) != stamp:
            raise _Changed()
    return digest.hexdigest()


@contextmanager
def _staged(d: Delivery) -> Iterator[tuple[Delivery, str]]:
    """The delivery with its files copied (checked) into a private folder, and the SHA-256
    of its content (review + meta file for Amazon pairs); the copies go afterwards."""
    real_root = (d.root or d.path.parent).resolve()
    with tempfile.TemporaryDirectory(prefix="cprec-landing-") as folder:
        path = Path(folder) / d.path.name
        sha = _copy_checked(d.path, real_root, path, (d.size, d.mtime_ns))
        meta = None
        if d.meta is not None:
            meta = Path(folder) / d.meta.name
            meta_sha = _copy_checked(d.meta, real_root, meta, (d.meta_size, d.meta_mtime_ns))
            sha = hashlib.sha256(f"{sha}:{meta_sha}".encode()).hexdigest()
        yield dataclasses.replace(d, path=path, meta=meta), sha


def _records(d: Delivery) -> Iterator[Record]:
    if d.kind == "table":
        return read_table_file(d.path, "auto", d.domain)
    layout = AMAZON_2023 if d.kind == "amazon2023" else AMAZON_2018
    return read_pair(category_from_filename(d.path), d.path, d.meta, layout)


def _relabel(record: Record, labels: dict[str, str]) -> Record:
    return record._replace(source_file=labels[record.source_file])


def ingest(con: duckdb.DuckDBPyConnection, deliveries: Iterable[Delivery]) -> IngestReport:
    """Load each delivery once (see the module docstring); returns what happened to each.
    One delivery's failure never stops the others.

    Status per delivery: ``loaded``; ``duplicate`` (the same content already loaded for the
    same domain folder, nothing added); ``failed`` (the whole file cannot be read, its name is
    not UTF-8, or one of its files is a link, a hard link or not a regular file: the reason
    names the file; nothing added, a corrected file can be delivered again); ``changed`` (the
    file changed after the scan or while it was read; nothing added, it is read again once
    complete); ``gone`` (removed before it was read; nothing added)."""

    con.execute(SCHEMA)
    rows, reasons = [], Counter()
    for d in deliveries:
        row = dict(delivery=d.rel, source_file=None, kind=d.kind, sha256="", size=d.size,
                   status="loaded", detail=None, rows_read=0, rows_loaded=0, rows_rejected=0,
                   domains=None, delivered_for=d.domain)
        try:
            if d.problem is not None:
                raise _Refused(d.problem)
            with _staged(d) as (copy, sha):
                row["sha256"] = sha
                row.update(_load(con, d, copy, sha, reasons, row))
        except FileNotFoundError as exc:
            row.update(status="gone", detail=f"{exc.filename}: removed before it was read")
        except _Refused as exc:
            row.update(status="failed", detail=str(exc))
        except _Changed:
            row.update(status="changed", detail=f"{d.path}: changed since the scan; read again"
                                                " once complete")
        if row["status"] != "loaded":  # a loaded delivery's row went in with its rows
            _ledger(con, row)
        rows.append(row)
    return IngestReport(rows, dict(reasons.most_common()))


def _load(con: duckdb.DuckDBPyConnection, d: Delivery, copy: Delivery, sha: str,
          reasons: Counter, row: dict) -> dict:
    """Reads one delivery (from its checked ``copy``) into the landed tables and writes its
    ledger ``row`` in one transaction, so a process that dies at any point leaves the
    delivery either loaded and recorded or neither (never loaded twice); returns the ledger
    fields that say what happened."""
    earlier = con.execute(
        "SELECT delivery, landed_at FROM landed_files WHERE sha256 = ? AND status = 'loaded'"
        " AND delivered_for IS NOT DISTINCT FROM ? ORDER BY landed_at LIMIT 1",
        [sha, d.domain]).fetchall()
    if earlier:
        return dict(status="duplicate",
                    detail=f"same content as {earlier[0][0]}, loaded {earlier[0][1]:%Y-%m-%d %H:%M:%S}")
    label = f"{LABEL_PREFIX}{d.rel}#{sha[:12]}"
    labels = {str(copy.path): label}
    names = {str(copy.path): str(d.path)}  # errors name the landing file, not the copy
    if d.meta is not None:
        meta_rel = PurePosixPath(d.rel).parent / d.meta.name
        labels[str(copy.meta)] = f"{LABEL_PREFIX}{meta_rel}#{sha[:12]}"
        names[str(copy.meta)] = str(d.meta)

    def named(text: str) -> str:
        for staged, original in names.items():
            text = text.replace(staged, original)
        return text

    try:
        with atomic(con):  # the rows and their ledger row, or neither
            writer = Writer(con, tables=LANDED_TABLES)
            for record in _records(copy):
                writer.add(_relabel(record, labels))
            writer.flush()
            mine = [f for f in writer.files if f["source_file"] == label][0]
            domains = [r[0] for r in con.execute(
                "SELECT DISTINCT domain FROM landed_raw WHERE source_file = ? ORDER BY 1",
                [label]).fetchall()]
            loaded = dict(source_file=label, rows_read=mine["rows_read"],
                          rows_loaded=mine["rows_loaded"], rows_rejected=mine["rows_rejected"],
                          domains=domains)
            _ledger(con, {**row, **loaded})
    except duckdb.Error:
        raise  # the database itself failed: not this file's fault
    except (FileNotFoundError, SourceFileGone) as exc:
        return dict(status="gone", detail=f"{d.path}: removed while it was read"
                                          f" ({named(str(exc))})")
    except SourceError as exc:
        return dict(status="failed", detail=named(str(exc)))
    except Exception as exc:  # a reader defect must not stop the other deliveries
        return dict(status="failed", detail=f"{d.path}: {type(exc).__name__}: {named(str(exc))}")
    reasons.update(writer.reasons)
    return loaded


def _ledger(con: duckdb.DuckDBPyConnection, row: dict) -> None:
    con.execute(
        "INSERT INTO landed_files (delivery, source_file, kind, sha256, size, status, detail,"
        " rows_read, rows_loaded, rows_rejected, domains, delivered_for)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [row[k] for k in ("delivery", "source_file", "kind", "sha256", "size", "status", "detail",
                          "rows_read", "rows_loaded", "rows_rejected", "domains",
                          "delivered_for")])


def has_landed(con: duckdb.DuckDBPyConnection) -> bool:
    (n,) = con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'landed_source_files'"
                       " AND schema_name = current_schema()").fetchall()[0]
    return n > 0


def append_landed(con: duckdb.DuckDBPyConnection) -> tuple[list[dict], Counter]:
    """Copy every landed row into the freshly rebuilt raw tables; returns the landed
    ``source_files`` rows and the rejection reasons, for the load report."""

    if not has_landed(con):
        return [], Counter()
    con.execute("INSERT INTO raw_interactions SELECT * FROM landed_raw")
    con.execute("INSERT INTO rejected_rows SELECT * FROM landed_rejected")
    con.execute("INSERT INTO source_files SELECT * FROM landed_source_files")
    keys = ("source_file", "role", "format", "sha256", "rows_read", "rows_loaded", "rows_rejected")
    files = [dict(zip(keys, r)) for r in con.execute(
        f"SELECT {', '.join(keys)} FROM landed_source_files ORDER BY loaded_at, source_file").fetchall()]
    reasons = Counter()
    for fld, reason, n in con.execute(
            "SELECT field, reason, count(*) FROM landed_rejected GROUP BY ALL").fetchall():
        reasons[f"{fld}: {reason_group(reason)}"] += n
    return files, reasons


def landed_only_domains(con: duckdb.DuckDBPyConnection) -> set[str]:
    """Domains of ``raw_interactions`` that only landed files bring (none of the configured
    sources has them)."""
    if not has_landed(con):
        return set()
    return {r[0] for r in con.execute(
        """
        SELECT DISTINCT domain FROM raw_interactions
        WHERE source_file IN (SELECT source_file FROM landed_source_files)
        EXCEPT
        SELECT DISTINCT domain FROM raw_interactions
        WHERE source_file NOT IN (SELECT source_file FROM landed_source_files)
        """).fetchall()}


def landed_summary(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """The ledger, newest first: delivery, status, rows loaded / rejected, domains, detail."""
    con.execute(SCHEMA)
    return con.execute(
        "SELECT delivery, status, rows_loaded, rows_rejected, array_to_string(domains, ', '),"
        " coalesce(detail, ''), strftime(landed_at, '%Y-%m-%d %H:%M:%S')"
        " FROM landed_files ORDER BY landed_at DESC, delivery LIMIT 50").fetchall()


def landed_version(con: duckdb.DuckDBPyConnection) -> str:
    """A fingerprint of everything loaded so far (the content hashes, in load order)."""
    con.execute(SCHEMA)
    shas = [r[0] for r in con.execute(
        "SELECT sha256 FROM landed_files WHERE status = 'loaded' ORDER BY sha256").fetchall()]
    return hashlib.sha256(",".join(shas).encode()).hexdigest()[:16]


def landed_rows(con: duckdb.DuckDBPyConnection) -> int:
    con.execute(SCHEMA)
    return con.execute("SELECT count(*) FROM landed_raw").fetchall()[0][0]


def failed_deliveries(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    """(delivery, status, reason) of each delivery whose latest attempt failed or found the
    file changed since it was first loaded."""
    if not con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'landed_files'"
                       ).fetchall()[0][0]:
        return []
    return con.execute("""
        SELECT delivery, status, detail FROM landed_files
        QUALIFY row_number() OVER (PARTITION BY delivery ORDER BY landed_at DESC) = 1
            AND status IN ('failed', 'changed')
        ORDER BY delivery""").fetchall()


@dataclass(frozen=True)
class Selection:
    """What one load of the landing folder takes: the deliveries, the requested files that
    are no longer there, and the files ignored by the scan (with why)."""

    deliveries: list[Delivery]
    gone: list[str]
    ignored: dict[str, str]


def select_deliveries(root: Path, requested: list[str], now_ns: int,
                      settle_seconds: float) -> Selection:
    """The requested files (paths relative to ``root``: what the sensor asks for), or with
    none requested every complete delivery (a load launched by hand)."""
    found = scan(root)
    if not requested:
        return Selection(complete(found, now_ns, settle_seconds), [], found.ignored)
    by_rel = {d.rel: d for d in found.deliveries}
    return Selection([by_rel[f] for f in requested if f in by_rel],
                     [f for f in requested if f not in by_rel], found.ignored)
