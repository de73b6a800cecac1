"""What CPT trains on, in which order: the phase-aware data plan.

The corpus snapshot (Parquet written by the ``cpt_corpus`` asset) holds both document kinds.
A *plan* is a pure function of (corpus, config, variant): the packed blocks and, for every
optimiser step, which blocks it reads and which schedule phase it is in. Resuming a run only
needs the step number.

Variants (method.md section 1.4):
  wsa               warmup + stable on domain-specific blocks, annealing on mixed blocks
  ds_only           the same LR shape on domain-specific blocks only
  ds_mix_shuffled   both kinds shuffled together, warmup then cosine (no stable phase)
  shuffled_control  wsa on a corpus whose items are shuffled across users (per kind; within
                    a domain for domain-specific sequences): same titles, template and lengths,
                    behaviour destroyed
  wsa_target        wsa whose warmup and stable phases also read the target domains' train
                    sequences (documents of kind ``target``); every other variant drops them
                    (``for_variant``), so its corpus is source-only as the paper's. A data
                    set that is one target domain (the public benchmark, genre_rule whole)
                    has no mixed sequences: with ``anneal_ratio`` set, its last share of
                    steps anneals on the same kind of documents (the LR shape of WSA
                    without the data switch, which needs two domains)
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq

from cprec_core.config import CorpusConfig, CPTConfig
from cprec_core.prompts import bos_prefix, render_unified
from cprec_core.training.packing import PackedBlocks, pack_documents


class CorpusError(ValueError):
    """The corpus cannot be trained on (missing, empty, no mixed sequences for WSA)."""


@dataclass(frozen=True)
class Corpus:
    kinds: list[str]
    domains: list[list[str]]
    item_idxs: list[list[int]]
    input_ids: list[np.ndarray]
    fingerprint: str

    def __len__(self) -> int:
        return len(self.kinds)

    @property
    def tokens(self) -> int:
        return int(sum(len(x) for x in self.input_ids))


def read_corpus(path) -> Corpus:
    try:
        table = pq.read_table(path, columns=["kind", "domains", "item_idxs", "input_ids"])
    except FileNotFoundError:
        raise CorpusError(f"{path}: corpus snapshot not found; materialise cpt_corpus first") from None
    if table.num_rows == 0:
        raise CorpusError(f"{path}: the CPT corpus is empty; nothing to train on")
    cols = table.to_pydict()
    ids = [np.asarray(x, dtype=np.int64) for x in cols["input_ids"]]
    return Corpus(cols["kind"], cols["domains"], cols["item_idxs"], ids,
                  _fingerprint(cols["kind"], ids))


def _fingerprint(kinds: list[str], ids: list[np.ndarray]) -> str:
    """Of the documents' kinds and tokens, in order: equal corpora give equal plans, in any
    profile (so a finished run can be reused: cpt.reuse_from)."""
    digest = hashlib.sha256()
    for kind, x in zip(kinds, ids):
        digest.update(kind.encode())
        digest.update(x.tobytes())
    return digest.hexdigest()[:16]


def shuffled_control(corpus: Corpus, titles: dict[int, str], cfg: CorpusConfig, tokenizer,
                     seed: int) -> Corpus:
    """Items permuted across users (within each domain for domain-specific documents,
    across all mixed documents for mixed ones); lengths, titles and template are kept."""
    rng = np.random.default_rng(seed)
    new_items = [list(x) for x in corpus.item_idxs]
    groups: dict[tuple, list[int]] = {}
    for i, (kind, domains) in enumerate(zip(corpus.kinds, corpus.domains)):
        groups.setdefault((kind, tuple(domains) if kind == "domain" else ()), []).append(i)
    for members in groups.values():
        pool = np.concatenate([np.asarray(corpus.item_idxs[i]) for i in members])
        pool = pool[rng.permutation(len(pool))]
        at = 0
        for i in members:
            k = len(corpus.item_idxs[i])
            new_items[i] = pool[at:at + k].tolist()
            at += k
    texts = [render_unified([titles[j] for j in items], cfg) for items in new_items]
    eos = tokenizer.eos_token_id
    bos = bos_prefix(tokenizer)
    ids = [np.asarray(bos + x + [eos], dtype=np.int64)
           for x in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return Corpus(corpus.kinds, corpus.domains, new_items, ids, corpus.fingerprint + "-control")


def for_variant(corpus: Corpus, variant: str) -> Corpus:
    """The documents ``variant`` trains on: every kind for ``wsa_target``, else the corpus
    without the target domains' train sequences."""
    if variant == "wsa_target" or "target" not in corpus.kinds:
        return corpus
    keep = [i for i, k in enumerate(corpus.kinds) if k != "target"]
    kinds, ids = [corpus.kinds[i] for i in keep], [corpus.input_ids[i] for i in keep]
    return Corpus(kinds, [corpus.domains[i] for i in keep], [corpus.item_idxs[i] for i in keep],
                  ids, _fingerprint(kinds, ids))


def subsample(corpus: Corpus, max_tokens: int, seed: int) -> Corpus:
    """At most ``max_tokens``: the same random share of each kind's documents."""
    if not max_tokens or corpus.tokens <= max_tokens:
        return corpus
    share = max_tokens / corpus.tokens
    rng = np.random.default_rng(seed)
    keep = []
    for kind in ("domain", "mixed", "target"):
        idx = [i for i, k in enumerate(corpus.kinds) if k == kind]
        if idx:
            n = max(1, round(len(idx) * share))
            keep += sorted(rng.choice(idx, size=n, replace=False).tolist())
    keep.sort()
    return Corpus([corpus.kinds[i] for i in keep], [corpus.domains[i] for i in keep],
                  [corpus.item_idxs[i] for i in keep], [corpus.input_ids[i] for i in keep],
                  f"{corpus.fingerprint}-max{max_tokens}")


@dataclass(frozen=True)
class Plan:
    blocks: PackedBlocks
    steps: list[np.ndarray]  # block indices of each optimiser step
    data: list[str]  # "domain", "mixed" or "domain+mixed", per step
    warmup_steps: int
    stable_steps: int
    anneal_steps: int

    @property
    def total_steps(self) -> int:
        return len(self.steps)

    def phase(self, step: int) -> str:
        if step < self.warmup_steps:
            return "warmup"
        if step < self.warmup_steps + self.stable_steps:
            return "stable"
        return "anneal"

    def tokens(self, step: int) -> int:
        return int(self.blocks.tokens[self.steps[step]].sum())


def split_steps(block_ids: np.ndarray, n_steps: int) -> list[np.ndarray]:
    return [s for s in np.array_split(block_ids, n_steps) if len(s)] if n_steps else []


def build_plan(corpus: Corpus, cfg: CPTConfig, variant: str, pad_id: int) -> Plan:
    rng = np.random.default_rng(cfg.seed)
    # the target domains' train sequences join the domain-specific phase (wsa_target only)
    domain = [x for x, k in zip(corpus.input_ids, corpus.kinds) if k in ("domain", "target")]
    mixed = [x for x, k in zip(corpus.input_ids, corpus.kinds) if k == "mixed"]
    per_step = cfg.blocks_per_step

    if variant == "ds_mix_shuffled":
        docs = ([domain[i] for i in rng.permutation(len(domain))]
                + [mixed[i] for i in rng.permutation(len(mixed))])
        docs = [docs[i] for i in rng.permutation(len(docs))]
        blocks = pack_documents(docs, cfg.block_size, pad_id)
        order = rng.permutation(len(blocks))
        n = math.ceil(len(blocks) / per_step)
        steps = split_steps(order, n)
        warmup = max(1, round(cfg.warmup_ratio * len(steps)))
        return Plan(blocks, steps, ["domain+mixed"] * len(steps), warmup, 0, len(steps) - warmup)

    single = variant == "wsa_target" and not mixed and cfg.anneal_ratio > 0
    if variant in ("wsa", "shuffled_control", "wsa_target") and not mixed and not single:
        raise CorpusError("the corpus has no mixed sequences: WSA anneals on them (need users"
                          " with >= corpus.min_domains source domains; a single-domain"
                          " wsa_target run anneals on its own documents with cpt.anneal_ratio)")
    if not domain:
        raise CorpusError("the corpus has no domain-specific sequences")
    d_blocks = pack_documents([domain[i] for i in rng.permutation(len(domain))], cfg.block_size, pad_id)
    if variant == "ds_only" or single:
        blocks = d_blocks
        order = rng.permutation(len(blocks))
        total = math.ceil(len(blocks) / per_step)
        m_tokens = sum(len(x) for x in mixed)
        ratio = cfg.anneal_ratio or m_tokens / max(m_tokens + sum(len(x) for x in domain), 1)
        anneal = max(1, round(ratio * total))
        steps = split_steps(order, total)
        warmup = max(1, round(cfg.warmup_ratio * total))
        return Plan(blocks, steps, ["domain"] * len(steps), warmup,
                    max(0, total - warmup - anneal), min(anneal, total - warmup))

    m_blocks = pack_documents([mixed[i] for i in rng.permutation(len(mixed))], cfg.block_size, pad_id)
    blocks = concat_blocks(d_blocks, m_blocks)
    d_ids = rng.permutation(len(d_blocks))
    m_ids = len(d_blocks) + rng.permutation(len(m_blocks))
    total = math.ceil(len(d_blocks) / per_step) + math.ceil(len(m_blocks) / per_step)
    anneal = round(cfg.anneal_ratio * total) if cfg.anneal_ratio else math.ceil(len(m_blocks) / per_step)
    anneal = min(max(anneal, 1), total - 1)
    d_steps, m_steps = split_steps(d_ids, total - anneal), split_steps(m_ids, anneal)
    steps, anneal = d_steps + m_steps, len(m_steps)
    total = len(steps)
    warmup = min(max(1, round(cfg.warmup_ratio * total)), total - anneal)
    return Plan(blocks, steps, ["domain"] * len(d_steps) + ["mixed"] * anneal, warmup,
                total - anneal - warmup, anneal)


def concat_blocks(a: PackedBlocks, b: PackedBlocks) -> PackedBlocks:
    return PackedBlocks(*(np.concatenate([x, y]) for x, y in zip(
        (a.input_ids, a.position_ids, a.targets, a.documents, a.tokens),
        (b.input_ids, b.position_ids, b.targets, b.documents, b.tokens))))
