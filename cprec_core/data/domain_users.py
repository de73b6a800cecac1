"""Per-domain evaluation data: one row per user of a target domain with the train history,
the validation item and the test item, plus the user's activity level (sparse / medium /
dense = terciles of train-history length in that domain, method.md section 3). SASRec, SFT
and evaluation read this table; it is rebuilt one domain (one partition) at a time.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import duckdb

from cprec_core.data.db import atomic
from cprec_core.data.interactions import DataError, target_slugs
from cprec_core.reporting import query_table

SCHEMA = """
CREATE TABLE IF NOT EXISTS domain_users (
    domain VARCHAR NOT NULL, user_idx INTEGER NOT NULL, history INTEGER[] NOT NULL,
    valid_item INTEGER, test_item INTEGER, n_train INTEGER NOT NULL, activity VARCHAR NOT NULL,
    PRIMARY KEY (domain, user_idx))
"""


@dataclass(frozen=True)
class DomainData:
    """One target domain's users: histories (global item ids), validation and test items."""

    domain: str
    items: list[int]  # every item of the domain (global ids)
    histories: list[list[int]]
    valid: list[int | None]
    test: list[int | None]
    data_version: str = ""  # domain_data_version() of the rows read: which data a model saw


def load_domain_data(con: duckdb.DuckDBPyConnection, slug: str) -> DomainData:
    domain, _ = domain_for_slug(con, slug)
    rows = con.execute("SELECT history, valid_item, test_item FROM domain_users WHERE domain = ?"
                       " ORDER BY user_idx", [domain]).fetchall()
    if not rows:
        raise DataError(f"no users for domain {domain!r}: materialise domain_users[{slug}] first")
    items = [r[0] for r in con.execute(
        "SELECT item_idx FROM items WHERE domain = ? ORDER BY item_idx", [domain]).fetchall()]
    return DomainData(domain, items, [list(r[0]) for r in rows], [r[1] for r in rows],
                      [r[2] for r in rows], domain_data_version(con, domain))


def domain_data_version(con: duckdb.DuckDBPyConnection, domain: str) -> str:
    """A fingerprint of one domain's ``domain_users`` rows and item titles: what SASRec and
    the SFT adapters of that domain train and are evaluated on. It changes when new data
    changes the domain, so a re-trained model is told apart from the old one (manifests,
    Dagster data versions)."""
    (users, items) = con.execute(
        """
        SELECT (SELECT md5(coalesce(string_agg(concat_ws('|', user_idx, history::VARCHAR,
                                                          valid_item, test_item), ';'
                                               ORDER BY user_idx), ''))
                FROM domain_users WHERE domain = $1),
               (SELECT md5(coalesce(string_agg(concat_ws('|', item_idx, item_id, title), ';'
                                               ORDER BY item_idx), ''))
                FROM items WHERE domain = $1)
        """, [domain]).fetchall()[0]
    return hashlib.sha256(f"{users}:{items}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DomainDataReport:
    domain: str
    users: int
    items: int
    train: int
    density: float
    tercile_cuts: tuple[float, float]
    activity: dict[str, int]


def domain_for_slug(con: duckdb.DuckDBPyConnection, slug: str) -> tuple[str, str]:
    """(domain name, role) of a target partition key; a clear error for any other key."""
    rows = con.execute("SELECT domain, role FROM domains WHERE slug = ? AND role = 'target'",
                       [slug]).fetchall()
    if not rows:
        raise DataError(f"partition key {slug!r} is not a target domain of this profile;"
                        f" targets: {target_slugs(con)}")
    return rows[0]


def build_domain_users(con: duckdb.DuckDBPyConnection, slug: str) -> DomainDataReport:
    domain, _role = domain_for_slug(con, slug)
    with atomic(con):  # the domain's rows are replaced as a whole or not at all
        con.execute(SCHEMA)
        con.execute("DELETE FROM domain_users WHERE domain = ?", [domain])
        _insert_domain_users(con, domain)
    return _report(con, domain)


def _insert_domain_users(con: duckdb.DuckDBPyConnection, domain: str) -> None:
    con.execute(
        """
        INSERT INTO domain_users
        WITH per_user AS (
            SELECT user_idx,
                   list(item_idx ORDER BY pos) FILTER (WHERE split = 'train') AS history,
                   any_value(item_idx) FILTER (WHERE split = 'valid') AS valid_item,
                   any_value(item_idx) FILTER (WHERE split = 'test') AS test_item,
                   count(*) FILTER (WHERE split = 'train')::INTEGER AS n_train
            FROM interactions WHERE domain = ? GROUP BY user_idx),
        cuts AS (SELECT quantile_cont(n_train, 1 / 3) AS lo, quantile_cont(n_train, 2 / 3) AS hi
                 FROM per_user)
        SELECT ?, user_idx, coalesce(history, []), valid_item, test_item, n_train,
               CASE WHEN n_train <= lo THEN 'sparse' WHEN n_train <= hi THEN 'medium'
                    ELSE 'dense' END
        FROM per_user, cuts
        """,
        [domain, domain],
    )


def _report(con: duckdb.DuckDBPyConnection, domain: str) -> DomainDataReport:
    users, items, train, lo, hi = con.execute(
        """
        SELECT (SELECT count(*) FROM domain_users WHERE domain = $1),
               (SELECT count(DISTINCT item_idx) FROM interactions WHERE domain = $1),
               (SELECT count(*) FROM interactions WHERE domain = $1 AND split = 'train'),
               (SELECT quantile_cont(n_train, 1 / 3) FROM domain_users WHERE domain = $1),
               (SELECT quantile_cont(n_train, 2 / 3) FROM domain_users WHERE domain = $1)
        """,
        [domain],
    ).fetchall()[0]
    activity = dict(con.execute(
        "SELECT activity, count(*) FROM domain_users WHERE domain = ? GROUP BY ALL", [domain]
    ).fetchall())
    density = train / (users * items) if users and items else 0.0
    return DomainDataReport(domain, users, items, train, round(density, 5),
                            (float(lo or 0), float(hi or 0)), activity)


def domain_users_preview(con: duckdb.DuckDBPyConnection, domain: str) -> str:
    return query_table(con, "SELECT * FROM domain_users WHERE domain = ? LIMIT 10", [domain])
