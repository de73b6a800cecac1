"""Stage 3: behaviour sequences for continual pre-training (method.md section 1.2).

Only the *train* split is used: of the *source* domains for the domain-specific and mixed
sequences, and of the *target* domains for ``target_sequences``, which only the CPT variant
``wsa_target`` reads (the corpus keeps them apart by their kind). Ties in time are broken by the source
file and line, so the order is the order the log recorded.

Windows: a history longer than ``max_items`` is cut into ``k = ceil(n / max_items)``
consecutive windows of near-equal length (sizes differ by at most one), instead of fixed
chunks that would leave a useless 1-item tail. A window needs ``min_len`` items; a mixed
window also needs ``min_domains`` distinct domains.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from cprec_core.config import CorpusConfig
from cprec_core.data.db import atomic
from cprec_core.reporting import query_table

_WINDOWED = """
    SELECT *, ((rn - 1) * ceil(n / ?)::BIGINT) // n AS part
    FROM (
        SELECT i.user_idx, i.item_idx, i.domain, i.ts, i.source_file, i.line,
               row_number() OVER (PARTITION BY {partition} ORDER BY i.ts, i.source_file, i.line) AS rn,
               count(*) OVER (PARTITION BY {partition}) AS n
        FROM interactions i
        WHERE i.split = 'train' AND i.role = ?)
"""


@dataclass(frozen=True)
class SequenceReport:
    sequences: int
    users: int
    items_total: int
    mean_len: float
    dropped_windows: int


def build_domain_sequences(con: duckdb.DuckDBPyConnection, cfg: CorpusConfig) -> SequenceReport:
    """One row per (user, source domain, window): items in time order; and the same of the
    target domains' train split as ``target_sequences`` (its report: ``target_report``);
    both tables in one transaction."""
    with atomic(con):
        _per_domain(con, cfg, "target", "target_sequences")
        return _per_domain(con, cfg, "source", "domain_sequences")


def target_report(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Items in ``target_sequences``, per target domain."""
    return {d: int(n) for d, n in con.execute(
        "SELECT domain, sum(n_items) FROM target_sequences GROUP BY ALL ORDER BY 1").fetchall()}


def _per_domain(con: duckdb.DuckDBPyConnection, cfg: CorpusConfig, role: str,
                table: str) -> SequenceReport:
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _domain_windows AS
        SELECT user_idx, domain, part::INTEGER AS part,
               list(item_idx ORDER BY rn) AS item_idxs, list(ts ORDER BY rn) AS ts,
               count(*)::INTEGER AS n_items
        FROM ({_WINDOWED.format(partition="i.user_idx, i.domain")})
        GROUP BY user_idx, domain, part
        """,
        [cfg.max_items, role],
    )
    con.execute(
        f"""
        CREATE OR REPLACE TABLE {table} AS
        SELECT (row_number() OVER (ORDER BY user_idx, domain, part) - 1)::INTEGER AS seq_id,
               user_idx, domain, part, item_idxs, ts, n_items
        FROM _domain_windows WHERE n_items >= ?
        ORDER BY seq_id
        """,
        [cfg.min_len],
    )
    return _report(con, table, "_domain_windows")


def build_mixed_sequences(con: duckdb.DuckDBPyConnection, cfg: CorpusConfig) -> SequenceReport:
    """One row per (user, window) over all source domains merged in time order."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _mixed_windows AS
        SELECT user_idx, part::INTEGER AS part,
               list(item_idx ORDER BY rn) AS item_idxs, list(ts ORDER BY rn) AS ts,
               list(domain ORDER BY rn) AS item_domains,
               count(*)::INTEGER AS n_items, count(DISTINCT domain)::INTEGER AS n_domains
        FROM ({_WINDOWED.format(partition="i.user_idx")})
        GROUP BY user_idx, part
        """,
        [cfg.max_items, "source"],
    )
    con.execute(
        """
        CREATE OR REPLACE TABLE mixed_sequences AS
        SELECT (row_number() OVER (ORDER BY user_idx, part) - 1)::INTEGER AS seq_id,
               user_idx, part, item_idxs, ts, item_domains,
               list_sort(list_distinct(item_domains)) AS domains, n_items, n_domains
        FROM _mixed_windows WHERE n_items >= ? AND n_domains >= ?
        ORDER BY seq_id
        """,
        [cfg.min_len, cfg.min_domains],
    )
    return _report(con, "mixed_sequences", "_mixed_windows")


def _report(con: duckdb.DuckDBPyConnection, table: str, windows: str) -> SequenceReport:
    n, users, total, mean = con.execute(
        f"SELECT count(*), count(DISTINCT user_idx), coalesce(sum(n_items), 0),"
        f" coalesce(avg(n_items), 0) FROM {table}"
    ).fetchall()[0]
    (all_windows,) = con.execute(f"SELECT count(*) FROM {windows}").fetchall()[0]
    return SequenceReport(n, users, int(total), round(float(mean), 2), all_windows - n)


def unordered_sequences(con: duckdb.DuckDBPyConnection, table: str) -> int:
    """Sequences whose timestamps are not non-decreasing (must be 0)."""
    (n,) = con.execute(f"SELECT count(*) FROM {table} WHERE ts != list_sort(ts)").fetchall()[0]
    return n


_BREAKDOWN = {
    "domain_sequences": ("per_domain", """
        SELECT domain, count(*) AS sequences, sum(n_items) AS items,
               round(avg(n_items), 1) AS mean_len
        FROM domain_sequences GROUP BY domain ORDER BY items DESC"""),
    "mixed_sequences": ("domains_per_sequence", """
        SELECT n_domains, count(*) AS sequences FROM mixed_sequences GROUP BY ALL ORDER BY 1"""),
}


def sequence_previews(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """A preview of ``table`` (domain_sequences or mixed_sequences) and its breakdown."""
    name, breakdown = _BREAKDOWN[table]
    return {"preview": query_table(con, f"SELECT * FROM {table} LIMIT 10"),
            name: query_table(con, breakdown)}
