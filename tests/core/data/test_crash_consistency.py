"""Crash consistency, tested as databases test themselves: a process running a stage is
killed (SIGKILL, no clean-up) at seeded random points, and the database it leaves must hold
every stage's tables whole, the old version or the new one, never a mix; a rerun then
reaches the state an uninterrupted run reaches, with every invariant.

Kill points: before or after the k-th SQL statement the stage issues (k drawn over all of
them, BEGIN and COMMIT included), and at a random moment of the run (inside a statement or
a commit). The stage runs in a forked child, so a point costs a fork, not an interpreter.
"""

from __future__ import annotations

import dataclasses
import hashlib
import multiprocessing
import os
import random
import shutil
import signal
import threading
import time
from pathlib import Path

import duckdb
import pytest

from cprec_core.config import CorpusConfig, SourceConfig
from cprec_core.data.interactions import DataError, build_interactions
from cprec_core.data.landing import ingest, scan
from cprec_core.data.raw import load_raw_interactions, reconcile
from cprec_core.data.sequences import build_domain_sequences, build_mixed_sequences
from tests.conftest import FIXTURE_DATA, data_config, write_movielens
from tests.core.data.test_landing import done, rows_for, write_jsonl_gz, write_parquet

STATEMENT_POINTS = 24  # per stage, plus TIMED_POINTS at random moments
TIMED_POINTS = 6
CORPUS = CorpusConfig(max_items=10)

# each stage's tables, in build order, and the columns that are not content (load times)
GROUPS = {
    "raw": ("raw_interactions", "rejected_rows", "source_files"),
    "interactions": ("users", "items", "interactions", "filtered_interactions", "domains"),
    "sequences": ("domain_sequences", "target_sequences"),
    "mixed": ("mixed_sequences",),
}
NOT_CONTENT = {"loaded_at", "landed_at"}


class Killing:
    """A connection that kills its own process at the ``kill_at``-th statement (before it
    runs, or after it returned); with ``kill_at`` None it only counts."""

    def __init__(self, con: duckdb.DuckDBPyConnection, kill_at: int | None = None,
                 after: bool = False):
        self._con, self._kill_at, self._after, self.statements = con, kill_at, after, 0

    def _statement(self, method, *args, **kwargs):
        self.statements += 1
        mine = self.statements == self._kill_at
        if mine and not self._after:
            os.kill(os.getpid(), signal.SIGKILL)
        result = method(*args, **kwargs)
        if mine:
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    def execute(self, *args, **kwargs):
        return self._statement(self._con.execute, *args, **kwargs)

    def executemany(self, *args, **kwargs):
        return self._statement(self._con.executemany, *args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._con, name)


def _child(stage, db: str, kill_at: int | None, after: bool, delay: float | None) -> None:
    if delay is not None:
        threading.Timer(delay, os.kill, (os.getpid(), signal.SIGKILL)).start()
    con = duckdb.connect(db)
    stage(Killing(con, kill_at, after))
    con.close()
    os._exit(0)


def run_killed(stage, db: Path, kill_at: int | None = None, after: bool = False,
               delay: float | None = None) -> int:
    """Runs ``stage(con)`` on ``db`` in a forked child killed as asked; its exit code
    (-9 when the kill came first)."""
    child = multiprocessing.get_context("fork").Process(
        target=_child, args=(stage, str(db), kill_at, after, delay))
    child.start()
    child.join(120)
    assert child.exitcode is not None, "the stage hung"
    return child.exitcode


def fingerprints(db: Path) -> dict[str, str | None]:
    """Per stage, a hash of its tables' content (None where none of them exists yet)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        present = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        out = {}
        for group, tables in GROUPS.items():
            if not any(t in present for t in tables):
                out[group] = None
                continue
            digest = hashlib.sha256()
            for table in tables:
                columns = [r[0] for r in con.execute(
                    "SELECT column_name FROM duckdb_columns() WHERE table_name = ?"
                    " ORDER BY column_index", [table]).fetchall() if r[0] not in NOT_CONTENT]
                rows = con.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall() \
                    if table in present else None
                digest.update(repr((table, sorted(map(repr, rows or [])))).encode())
            out[group] = digest.hexdigest()
        return out
    finally:
        con.close()


def check_invariants(db: Path) -> None:
    """What holds after any complete run: raw rows reconcile with the source files; every
    raw row is kept or filtered; every interaction's user and item are the indexed ones;
    every sequence is its user's train history in that domain."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        assert reconcile(con) == []
        raw, kept, filtered = con.execute(
            "SELECT (SELECT count(*) FROM raw_interactions), (SELECT count(*) FROM interactions),"
            " (SELECT count(*) FROM filtered_interactions)").fetchall()[0]
        assert raw == kept + filtered
        (wrong,) = con.execute("""
            SELECT count(*) FROM interactions i LEFT JOIN users u USING (user_idx)
            LEFT JOIN items t USING (item_idx)
            WHERE u.user_id IS DISTINCT FROM i.user_id OR t.item_id IS DISTINCT FROM i.item_id
               OR t.domain IS DISTINCT FROM i.domain""").fetchall()[0]
        assert wrong == 0
        (bad_sequences,) = con.execute("""
            WITH history AS (
                SELECT user_idx, domain, list(item_idx ORDER BY pos) AS items
                FROM interactions WHERE split = 'train' GROUP BY ALL),
            sequences AS (
                SELECT user_idx, domain, flatten(list(item_idxs ORDER BY part)) AS items
                FROM (SELECT * FROM domain_sequences UNION ALL SELECT * FROM target_sequences)
                GROUP BY ALL)
            SELECT count(*) FROM sequences s LEFT JOIN history h USING (user_idx, domain)
            WHERE h.items IS NULL OR s.items != h.items[len(h.items) - len(s.items) + 1:]
            """).fetchall()[0]
        assert bad_sequences == 0
    finally:
        con.close()


@pytest.fixture
def two_versions(tmp_path):
    """A database built from one version of the data (``old``) and, for the stage under
    test, another version of the input with other settings (``new``)."""
    data = tmp_path / "data"
    write_movielens(data, seed=7)
    cfg = data_config(**{**FIXTURE_DATA, "sources": (SourceConfig(kind="movielens",
                                                                  path=str(data),
                                                                  genre_rule="first"),),
                         "source_domains": tuple(FIXTURE_DATA["source_domains"]),
                         "target_domains": tuple(FIXTURE_DATA["target_domains"])})
    cache = tmp_path / "cache"

    def build(con, config):
        load_raw_interactions(con, config.sources, cache)
        build_interactions(con, config)
        build_domain_sequences(con, CORPUS)
        build_mixed_sequences(con, CORPUS)

    old = tmp_path / "old.duckdb"
    with duckdb.connect(str(old)) as con:
        build(con, cfg)
    write_movielens(data, seed=8, n_users=44)  # new rows, other users and histories
    new_cfg = dataclasses.replace(cfg, user_core=4)
    return old, (lambda con: build(con, new_cfg)), new_cfg


def kill_points(seed: int, statements: int, seconds: float) -> list[dict]:
    rng = random.Random(seed)
    points = [dict(kill_at=1, after=False), dict(kill_at=statements, after=True)]
    points += [dict(kill_at=rng.randint(1, statements), after=rng.random() < 0.5)
               for _ in range(STATEMENT_POINTS - 2)]
    return points + [dict(delay=rng.uniform(0, seconds)) for _ in range(TIMED_POINTS)]


def test_a_killed_build_leaves_every_stage_old_or_new_and_a_rerun_completes(two_versions,
                                                                            tmp_path):
    old, build_new, _ = two_versions
    before = fingerprints(old)
    reference = tmp_path / "reference.duckdb"
    shutil.copyfile(old, reference)
    with duckdb.connect(str(reference)) as con:
        counter = Killing(con)
        build_new(counter)
    after = fingerprints(reference)
    check_invariants(reference)
    assert all(before[g] != after[g] for g in GROUPS), "the new version must differ everywhere"
    started = time.perf_counter()
    assert run_killed(build_new, reference) == 0
    seconds = time.perf_counter() - started
    outcomes = []
    for n, point in enumerate(kill_points(33, counter.statements, seconds)):
        db = tmp_path / f"killed-{n}.duckdb"
        shutil.copyfile(old, db)
        code = run_killed(build_new, db, **point)
        found = fingerprints(db)
        states = [("old" if found[g] == before[g] else "new" if found[g] == after[g] else
                   "mixed") for g in GROUPS]
        assert "mixed" not in states, (point, states)
        # stages run in order: once one is old, the later ones are old too
        assert states == sorted(states, key=lambda s: s == "old"), (point, states)
        if states.count("new") in (0, len(states)):
            check_invariants(db)
        with duckdb.connect(str(db)) as con:  # the rerun
            build_new(con)
        assert fingerprints(db) == after, point
        check_invariants(db)
        outcomes.append((code, states.count("new")))
    killed = [o for o in outcomes if o[0] == -signal.SIGKILL]
    assert len(killed) >= STATEMENT_POINTS  # every statement point killed the build
    assert {n for _, n in killed} >= {0, len(GROUPS)}  # points before and after it all


def test_a_failed_check_leaves_the_previous_tables(two_versions):
    old, _, new_cfg = two_versions
    before = fingerprints(old)
    with duckdb.connect(str(old)) as con:
        load_raw_interactions(con, new_cfg.sources, old.parent / "cache")
        with pytest.raises(DataError, match="min_target_users"):
            build_interactions(con, dataclasses.replace(new_cfg, min_target_users=10_000))
    found = fingerprints(old)
    assert found["raw"] != before["raw"]  # its own stage succeeded
    assert {g: found[g] for g in GROUPS if g != "raw"} == {
        g: before[g] for g in GROUPS if g != "raw"}


def _deliveries(root: Path) -> None:
    write_parquet(root / "Western" / "a.parquet", rows_for("Western", 12, 9, 5))
    done(root / "Western" / "a.parquet")
    write_jsonl_gz(root / "Western" / "b.jsonl.gz", rows_for("Western", 8, 9, 4, start=9000,
                                                             prefix="v"))
    done(root / "Western" / "b.jsonl.gz")
    write_parquet(root / "Noir" / "c.parquet", rows_for("Noir", 10, 7, 6))
    done(root / "Noir" / "c.parquet")
    # the same content as a.parquet for the same domain: a duplicate, never loaded twice
    shutil.copyfile(root / "Western" / "a.parquet", root / "Western" / "again.parquet")
    done(root / "Western" / "again.parquet")


def _landing_state(db: Path) -> dict:
    if not db.exists():  # killed before the database file was created
        return {"loaded": 0, "rows": 0, "ledger_rows": 0}
    con = duckdb.connect(str(db), read_only=True)
    try:
        present = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
        if not {"landed_files", "landed_raw"} <= present:  # killed before the schema was
            return {"loaded": 0, "rows": 0, "ledger_rows": 0}
        loaded, ledger_rows = con.execute(
            "SELECT count(*), coalesce(sum(rows_loaded), 0) FROM landed_files"
            " WHERE status = 'loaded'").fetchall()[0]
        (rows,) = con.execute("SELECT count(*) FROM landed_raw").fetchall()[0]
        (twice,) = con.execute(
            "SELECT count(*) FROM (SELECT sha256, delivered_for FROM landed_files"
            " WHERE status = 'loaded' GROUP BY ALL HAVING count(*) > 1)").fetchall()[0]
        (orphans,) = con.execute(
            "SELECT count(DISTINCT source_file) FROM landed_raw WHERE source_file NOT IN"
            " (SELECT source_file FROM landed_files WHERE status = 'loaded')").fetchall()[0]
        assert twice == 0 and orphans == 0
        assert rows == ledger_rows  # the ledger counts the rows there are
        return {"loaded": loaded, "rows": rows, "ledger_rows": ledger_rows}
    finally:
        con.close()


def test_a_killed_landing_load_never_loads_a_delivery_twice(tmp_path):
    root = tmp_path / "landing"
    _deliveries(root)

    def load(con):
        ingest(con, scan(root).deliveries)

    reference = tmp_path / "reference.duckdb"
    with duckdb.connect(str(reference)) as con:
        counter = Killing(con)
        load(counter)
    whole = _landing_state(reference)
    assert whole["loaded"] == 3 and whole["rows"] == 12 * 5 + 8 * 4 + 10 * 6
    started = time.perf_counter()
    assert run_killed(load, tmp_path / "timing.duckdb") == 0
    seconds = time.perf_counter() - started
    for n, point in enumerate(kill_points(35, counter.statements, seconds)):
        db = tmp_path / f"killed-{n}.duckdb"
        run_killed(load, db, **point)
        partial = _landing_state(db)
        assert partial["loaded"] <= 3
        with duckdb.connect(str(db)) as con:  # the next run of the sensor's load
            load(con)
        assert _landing_state(db) == whole, point
