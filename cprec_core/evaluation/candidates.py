"""Fixed candidate sets: for every test (and validation) case of a domain, the target plus 19
items of the domain the user never touched, drawn once with a fixed seed and stored, so every
system is scored on exactly the same rows (LLaRA re-draws them on every call; we do not)."""

from __future__ import annotations

import hashlib

import duckdb
import numpy as np

from cprec_core.data.db import atomic
from cprec_core.data.domain_users import domain_for_slug
from cprec_core.progress import Log, Progress

SCHEMA = """
CREATE TABLE IF NOT EXISTS candidate_sets (
    domain VARCHAR NOT NULL, split VARCHAR NOT NULL, user_idx INTEGER NOT NULL,
    target INTEGER NOT NULL, candidates INTEGER[] NOT NULL, activity VARCHAR NOT NULL,
    PRIMARY KEY (domain, split, user_idx))
"""


def _seed(domain: str, split: str, seed: int) -> int:
    return int.from_bytes(hashlib.sha256(f"{domain}|{split}|{seed}".encode()).digest()[:8], "little")


def build_candidate_sets(con: duckdb.DuckDBPyConnection, slug: str, negatives: int = 19,
                         seed: int = 0, log: Log = print,
                         every_s: float | None = None) -> dict[str, int]:
    """Draws and stores the domain's candidate sets; returns the count per split. Progress
    (users drawn, time left) goes to ``log`` at most every ``every_s`` seconds
    (cprec_core.progress)."""
    domain, _ = domain_for_slug(con, slug)
    items = np.asarray([r[0] for r in con.execute(
        "SELECT item_idx FROM items WHERE domain = ? ORDER BY item_idx", [domain]).fetchall()])
    if len(items) < negatives + 1:
        raise ValueError(f"domain {domain!r} has {len(items)} items; {negatives + 1} candidates"
                         " need at least that many")
    users = con.execute(
        """SELECT u.user_idx, u.valid_item, u.test_item, u.activity, list(i.item_idx)
           FROM domain_users u JOIN interactions i ON i.user_idx = u.user_idx AND i.domain = u.domain
           WHERE u.domain = ? GROUP BY ALL ORDER BY u.user_idx""", [domain]).fetchall()
    drawn = {}
    for split, column in (("valid", 1), ("test", 2)):
        rng = np.random.default_rng(_seed(domain, split, seed))
        rows = []
        progress = Progress(log, f"{slug} candidate sets ({split})", len(users), "users",
                            every_s)
        for done, row in enumerate(users, 1):
            target = row[column]
            unseen = np.setdiff1d(items, row[4])
            if target is not None and len(unseen) >= negatives:
                candidates = np.concatenate([[target],
                                             rng.choice(unseen, negatives, replace=False)])
                rng.shuffle(candidates)
                rows.append((domain, split, row[0], int(target), candidates.tolist(), row[3]))
            progress.update(done)
        drawn[split] = rows
    with atomic(con):  # the domain's sets are replaced as a whole or not at all
        con.execute(SCHEMA)
        con.execute("DELETE FROM candidate_sets WHERE domain = ?", [domain])
        for rows in drawn.values():
            con.executemany("INSERT INTO candidate_sets VALUES (?, ?, ?, ?, ?, ?)", rows)
    return {split: len(rows) for split, rows in drawn.items()}


def bad_candidate_sets(con: duckdb.DuckDBPyConnection, size: int = 20) -> int:
    """Rows whose candidates are not `size` distinct items containing the target once."""
    return con.execute(
        """SELECT count(*) FROM candidate_sets WHERE
               len(candidates) != ? OR len(list_distinct(candidates)) != ?
               OR len(list_filter(candidates, lambda c: c = target)) != 1""",
        [size, size]).fetchall()[0][0]
