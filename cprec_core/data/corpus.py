"""Stage 4: the CPT corpus. Both sequence kinds rendered with the unified prompt, tagged with
their kind and domain(s), tokenised once for the configured model and stored in DuckDB, so
training never re-tokenises. Each document ends with the tokenizer's EOS token, which is
where packed training blocks may start a new document, and starts with its BOS where the
tokenizer puts one before a text (Llama, Gemma), as the SFT and scoring prompts do.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass

import duckdb
import pyarrow as pa

from cprec_core.config import CorpusConfig, Profile
from cprec_core.data.db import atomic
from cprec_core.layout import Layout
from cprec_core.models.tokenizer import load_tokenizer, tokenizer_fingerprint
from cprec_core.prompts import bos_prefix, render_unified

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


KINDS = ("domain", "mixed", "target")  # target: the target domains' train sequences


def corpus_texts(con: duckdb.DuckDBPyConnection, cfg: CorpusConfig) -> list[tuple]:
    """(kind, seq_id, user_idx, domains, item_idxs, text) per sequence: domain-specific,
    mixed, then the target domains' train sequences (read by the ``wsa_target`` variant
    only; cprec_core.training.cpt_plan drops them for every other variant)."""
    titles = dict(con.execute("SELECT item_idx, title FROM items").fetchall())
    rows = []
    for kind, query in (
        ("domain", "SELECT seq_id, user_idx, [domain], item_idxs FROM domain_sequences ORDER BY seq_id"),
        ("mixed", "SELECT seq_id, user_idx, domains, item_idxs FROM mixed_sequences ORDER BY seq_id"),
        ("target", "SELECT seq_id, user_idx, [domain], item_idxs FROM target_sequences"
                   " ORDER BY seq_id"),
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
    bos = bos_prefix(tokenizer)
    texts = [r[5] for r in rows]
    for start in range(0, len(texts), TOKENIZE_BATCH):
        batch = tokenizer(texts[start:start + TOKENIZE_BATCH], add_special_tokens=False)
        ids.extend(bos + seq + [eos] for seq in batch["input_ids"])
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
    """Items in the corpus that must never be there (all counts must be 0): a non-source
    item in a domain-specific or mixed sequence, a validation or test interaction in any
    sequence (target ones included), a target sequence holding another domain's item or an
    interaction outside the train split, and a document of a non-source domain that is not
    of kind ``target``."""
    target_items, heldout, target_outside_train = con.execute(
        """
        WITH used AS (
            SELECT 'source' AS kind, s.user_idx, s.domain AS seq_domain,
                   unnest(s.item_idxs) AS item_idx FROM domain_sequences s
            UNION ALL
            SELECT 'source', m.user_idx, NULL, unnest(m.item_idxs) FROM mixed_sequences m
            UNION ALL
            SELECT 'target', t.user_idx, t.domain, unnest(t.item_idxs) FROM target_sequences t)
        SELECT
            count(*) FILTER (WHERE used.kind = 'source' AND d.role != 'source'),
            count(*) FILTER (WHERE EXISTS (
                SELECT 1 FROM interactions i WHERE i.user_idx = used.user_idx
                AND i.item_idx = used.item_idx AND i.split IN ('valid', 'test'))),
            count(*) FILTER (WHERE used.kind = 'target' AND (
                d.role != 'target' OR it.domain != used.seq_domain OR NOT EXISTS (
                SELECT 1 FROM interactions i WHERE i.user_idx = used.user_idx
                AND i.item_idx = used.item_idx AND i.split = 'train')))
        FROM used JOIN items it USING (item_idx) JOIN domains d ON d.domain = it.domain
        """
    ).fetchall()[0]
    (target_text,) = con.execute(
        """
        SELECT count(*) FROM cpt_corpus c
        WHERE c.kind != 'target'
        AND list_has_any(c.domains, (SELECT list(domain) FROM domains WHERE role != 'source'))
        """
    ).fetchall()[0]
    return {"non_source_items": target_items, "heldout_interactions": heldout,
            "non_source_documents": target_text,
            "target_items_outside_train": target_outside_train}


def export_snapshot(con: duckdb.DuckDBPyConnection, layout: Layout, tokenizer) -> dict:
    """What training reads, outside the database: the corpus and item titles as Parquet and
    the tokenizer, so a training process (or a cluster job) never holds the DuckDB lock.

    Written whole into a staging folder beside the snapshot, then swapped in by two renames,
    so a reader never sees the files of two snapshots mixed (a process killed between the two
    renames leaves no snapshot, and both whole folders, until the next export)."""
    final = layout.corpus_dir
    staging = final.with_name(f".{final.name}.new")
    retired = final.with_name(f".{final.name}.old")
    for leftover in (staging, retired):
        shutil.rmtree(leftover, ignore_errors=True)
    staging.mkdir(parents=True)
    files = {layout.corpus_parquet.name: "SELECT doc_id, kind, domains, item_idxs, input_ids,"
                                         " n_tokens FROM cpt_corpus ORDER BY doc_id",
             layout.corpus_items.name: "SELECT item_idx, domain, title FROM items"
                                       " ORDER BY item_idx"}
    for name, query in files.items():
        con.sql(query).write_parquet(str(staging / name))  # the path never enters SQL text
    tokenizer.save_pretrained(staging / layout.tokenizer_dir.name)
    digest = hashlib.sha256((staging / layout.corpus_parquet.name).read_bytes()).hexdigest()[:16]
    info = {"snapshot_sha256": digest, "tokenizer": con.execute(
        "SELECT tokenizer FROM cpt_corpus_info").fetchall()[0][0]}
    (staging / layout.corpus_info.name).write_text(json.dumps(info, indent=2))
    if final.exists():
        final.rename(retired)
    staging.rename(final)
    shutil.rmtree(retired, ignore_errors=True)
    return info


@dataclass(frozen=True)
class CorpusSnapshot:
    report: CorpusReport
    snapshot_sha256: str  # of the corpus Parquet file: the data CPT trains on
    tokenizer_fingerprint: str


def build_corpus_snapshot(con: duckdb.DuckDBPyConnection, profile: Profile) -> CorpusSnapshot:
    """Render and tokenise the corpus for the profile's model, then export the snapshot
    that training reads (``export_snapshot``)."""
    texts = None
    if profile.model.name == "tiny-random":  # its tokenizer is trained on the corpus
        # the source domains' documents and every title: what changes with the target
        # domains' interactions stays out, so new target data leaves the CPT of the source
        # variants (and their data version) as it was
        texts = [row[5] for row in corpus_texts(con, profile.corpus) if row[0] != "target"]
        texts += [title for (title,) in con.execute("SELECT title FROM items ORDER BY item_idx")
                  .fetchall()]
    tokenizer = load_tokenizer(profile.model.name, profile.layout.cache_dir, texts,
                               profile.model.trust_remote_code)
    with atomic(con):  # both corpus tables, and the snapshot written from them, or neither
        report = build_cpt_corpus(con, profile.corpus, tokenizer, profile.model.name)
        info = export_snapshot(con, profile.layout, tokenizer)
    return CorpusSnapshot(report, info["snapshot_sha256"], tokenizer_fingerprint(tokenizer))


def sample_documents(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(kind, text) of the first document of each kind."""
    return con.execute("SELECT kind, text FROM cpt_corpus WHERE doc_id IN "
                       "(0, (SELECT min(doc_id) FROM cpt_corpus WHERE kind = 'mixed'))").fetchall()


def document_balance(con: duckdb.DuckDBPyConnection) -> tuple[int, int, int]:
    """(documents, sequences, documents whose token count disagrees with their tokens)."""
    return con.execute(
        "SELECT (SELECT count(*) FROM cpt_corpus),"
        " (SELECT count(*) FROM domain_sequences) + (SELECT count(*) FROM mixed_sequences)"
        " + (SELECT count(*) FROM target_sequences),"
        " (SELECT count(*) FROM cpt_corpus WHERE len(input_ids) != n_tokens)").fetchall()[0]
