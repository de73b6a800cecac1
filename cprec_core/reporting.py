"""Plain-text reports shared by the CLI, the Dagster metadata and `make demo`."""

from __future__ import annotations

from typing import Any, Sequence

import duckdb


def md_table(columns: Sequence[str], rows: Sequence[Sequence[Any]], max_cell: int = 80) -> str:
    """A GitHub-flavoured markdown table; long cells are cut, pipes escaped."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            text = f"{value:,.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
        elif isinstance(value, int):
            text = f"{value:,}"
        else:
            text = str(value)
        text = text.replace("|", "\\|").replace("\n", " ")
        return text if len(text) <= max_cell else text[: max_cell - 1] + "…"

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def query_table(con: duckdb.DuckDBPyConnection, sql: str, params: list | None = None,
                max_cell: int = 80) -> str:
    result = con.execute(sql, params or [])
    columns = [d[0] for d in result.description]
    return md_table(columns, result.fetchall(), max_cell)


def corpus_summary(con: duckdb.DuckDBPyConnection) -> str:
    """Counts per domain, per sequence kind and tokens: what `make demo` prints."""
    (tokenizer,) = con.execute("SELECT tokenizer FROM cpt_corpus_info").fetchall()[0]
    parts = [
        "Domains (after cleaning, k-core and the leave-one-out split)",
        query_table(con, "SELECT domain, role, users, items, interactions, train, valid, test"
                         " FROM domains WHERE interactions > 0 ORDER BY CASE role WHEN 'source' THEN 0"
                         " WHEN 'target' THEN 1 ELSE 2 END, interactions DESC"),
        "",
        f"CPT corpus (train split; source domains, and the target domains' own sequences"
        f" of kind target that only the wsa_target variant reads; tokens by {tokenizer})",
        query_table(con, """
            SELECT kind, domain, count(*) AS documents, sum(n_items) AS items,
                   sum(n_tokens) AS tokens, round(avg(n_tokens), 1) AS mean_tokens,
                   max(n_tokens) AS max_tokens
            FROM (SELECT kind, CASE WHEN kind = 'mixed' THEN 'all source domains'
                                    ELSE domains[1] END AS domain, n_items, n_tokens
                  FROM cpt_corpus)
            GROUP BY ALL ORDER BY kind, tokens DESC"""),
        "",
        query_table(con, "SELECT count(*) AS documents, sum(n_tokens) AS tokens FROM cpt_corpus"),
    ]
    return "\n".join(parts)
