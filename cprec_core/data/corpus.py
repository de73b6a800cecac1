"""Stage 4: the CPT corpus. Both sequence kinds rendered with the unified prompt, tagged with
their kind and domain(s), tokenised once for the configured model and stored in DuckDB, so
training never re-tokenises. Each document ends with the tokenizer's EOS token, which is
where packed training blocks may start a new document.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from cprec_core.config import CorpusConfig
from cprec_core.prompts import render_unified

TOKENIZE_BATCH = 2048


@dataclass(frozen=True)
class CorpusReport:
    documents: dict[str, int]
    tokens: dict[str, int]
    max_tokens: int
    tokenizer: str

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())


def corpus_texts(con: duckdb.DuckDBPyConnection, cfg: CorpusConfig) -> list[tuple]:
    """(kind, seq_id, user_idx, domains, item_idxs, text) per sequence, domain-specific first."""
    titles = dict(con.execute("SELECT item_idx, title FROM items").fetchall())
    rows = []
    for kind, query in (
        ("domain", "SELECT seq_id, user_idx, [domain], item_idxs FROM domain_sequences ORDER BY seq_id"),
        ("mixed", "SELECT seq_id, user_idx, domains, item_idxs FROM mixed_sequences ORDER BY seq_id"),
    ):
        for seq_id, user_idx, domains, item_idxs in con.execute(query).fetchall():
            text = render_unified([titles[i] for i in item_idxs], cfg)
            rows.append((kind, seq_id, user_idx, domains, item_idxs, text))
    return rows


def build_cpt_corpus(con: duckdb.DuckDBPyConnection, cfg: CorpusConfig, tokenizer,
                     tokenizer_name: str) -> CorpusReport:
    rows = corpus_texts(con, cfg)
    if not rows:
        raise ValueError("no sequences to render: domain_sequences and mixed_sequences are empty")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError(f"tokenizer {tokenizer_name!r} has no EOS token to separate documents")
    ids: list[list[int]] = []
    texts = [r[5] for r in rows]
    for start in range(0, len(texts), TOKENIZE_BATCH):
        batch = tokenizer(texts[start:start + TOKENIZE_BATCH], add_special_tokens=False)
        ids.extend(seq + [eos] for seq in batch["input_ids"])
    table = pa.table({
        "doc_id": pa.array(range(len(rows)), pa.int32()),
        "kind": [r[0] for r in rows],
        "seq_id": pa.array([r[1] for r in rows], pa.int32()),
        "user_idx": pa.array([r[2] for r in rows], pa.int32()),
        "domains": [list(r[3]) for r in rows],
        "item_idxs": pa.array([r[4] for r in rows], pa.list_(pa.int32())),
        "n_items": pa.array([len(r[4]) for r in rows], pa.int32()),
        "text": texts,
        "input_ids": pa.array(ids, pa.list_(pa.int32())),
        "n_tokens": pa.array([len(x) for x in ids], pa.int32()),
    })
    con.register("_corpus_arrow", table)
    con.execute("CREATE OR REPLACE TABLE cpt_corpus AS SELECT * FROM _corpus_arrow ORDER BY doc_id")
    con.unregister("_corpus_arrow")
    con.execute("CREATE OR REPLACE TABLE cpt_corpus_info AS SELECT ? AS tokenizer, ? AS eos_token_id",
                [tokenizer_name, eos])
    stats = con.execute(
        "SELECT kind, count(*), sum(n_tokens) FROM cpt_corpus GROUP BY kind ORDER BY kind"
    ).fetchall()
    (max_tokens,) = con.execute("SELECT max(n_tokens) FROM cpt_corpus").fetchall()[0]
    return CorpusReport({k: n for k, n, _ in stats}, {k: int(t) for k, _, t in stats},
                        int(max_tokens), tokenizer_name)


def corpus_leaks(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Items in the corpus that must never be there (all counts must be 0)."""
    target_items, heldout = con.execute(
        """
        WITH used AS (
            SELECT s.user_idx, unnest(s.item_idxs) AS item_idx FROM domain_sequences s
            UNION ALL
            SELECT m.user_idx, unnest(m.item_idxs) AS item_idx FROM mixed_sequences m)
        SELECT
            count(*) FILTER (WHERE d.role != 'source'),
            count(*) FILTER (WHERE EXISTS (
                SELECT 1 FROM interactions i WHERE i.user_idx = used.user_idx
                AND i.item_idx = used.item_idx AND i.split IN ('valid', 'test')))
        FROM used JOIN items it USING (item_idx) JOIN domains d ON d.domain = it.domain
        """
    ).fetchall()[0]
    (target_text,) = con.execute(
        """
        SELECT count(*) FROM cpt_corpus c
        WHERE list_has_any(c.domains, (SELECT list(domain) FROM domains WHERE role != 'source'))
        """
    ).fetchall()[0]
    return {"non_source_items": target_items, "heldout_interactions": heldout,
            "non_source_documents": target_text}


def export_snapshot(con: duckdb.DuckDBPyConnection, folder: Path, tokenizer) -> dict:
    """What training reads, outside the database: the corpus and item titles as Parquet and
    the tokenizer, so a training process (or a cluster job) never holds the DuckDB lock."""
    folder.mkdir(parents=True, exist_ok=True)
    for table, query in (
        ("cpt_corpus", "SELECT doc_id, kind, domains, item_idxs, input_ids, n_tokens"
                       " FROM cpt_corpus ORDER BY doc_id"),
        ("items", "SELECT item_idx, domain, title FROM items ORDER BY item_idx"),
    ):
        tmp = folder / f".{table}.parquet.tmp"
        con.execute(f"COPY ({query}) TO '{tmp}' (FORMAT parquet)")
        tmp.rename(folder / f"{table}.parquet")
    tokenizer.save_pretrained(folder / "tokenizer")
    digest = hashlib.sha256((folder / "cpt_corpus.parquet").read_bytes()).hexdigest()[:16]
    info = {"snapshot_sha256": digest, "tokenizer": con.execute(
        "SELECT tokenizer FROM cpt_corpus_info").fetchall()[0][0]}
    (folder / "corpus_info.json").write_text(json.dumps(info, indent=2))
    return info
