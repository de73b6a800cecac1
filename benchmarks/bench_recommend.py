"""Benchmark: the recommendations batch job's two stages in users per second, each beside a
baseline, on a profile's data.

    python benchmarks/bench_recommend.py [--profile demo] [--domain crime] [--users 8]

Arms:
- Retrieval (every user of the domain): the job's batched scoring of every item by the
  retrieval model (cprec_core.recommend.retrieval, 512 histories per forward) and the top N,
  beside the same model called once per user.
- Re-ranking (``--users`` users, the N retrieved candidates each): the job's tree-masked
  forward (one prompt, N continuations; cprec_core.recommend.pipeline.LLMReranking) beside
  one full forward per candidate (benchmarks/naive_scorer.py), with the largest difference
  between the two arms' summed log-probabilities as a check that they agree.

Needs the profile's database, SASRec and an SFT adapter of ``--system`` (``make demo``).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from cprec_core.config import load_profile
from cprec_core.data.db import connect
from cprec_core.data.domain_users import domain_for_slug
from cprec_core.prompts import Case
from cprec_core.provenance import processor
from cprec_core.recommend.batch import domain_users_by_recency
from cprec_core.recommend.pipeline import LLMReranking, Reranker, choose_retrieval
from cprec_core.recommend.retrieval import (domain_items, exclude_history,
                                            sequential_full_scores, top_n)
from cprec_core.reporting import md_table

from naive_scorer import score_naive  # noqa: E402 - benchmarks/ is the script's folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--domain", default="crime")
    parser.add_argument("--system", default="cprec_rank", help="the re-ranking SFT system")
    parser.add_argument("--users", type=int, default=8, help="users re-ranked per arm")
    args = parser.parse_args()
    profile = load_profile(args.profile)
    layout, n = profile.layout, profile.recommend.retrieve
    with connect(layout.database, read_only=True) as con:
        domain, _ = domain_for_slug(con, args.domain)
        items = domain_items(con, domain)
        people = domain_users_by_recency(con, domain)
    retrieval = choose_retrieval(profile, args.domain)
    files = retrieval.files(layout, args.domain)
    histories = people.histories

    def retrieve(batch_size: int) -> float:
        started = time.perf_counter()
        scores = sequential_full_scores(files, items, histories, batch_size)
        top_n(exclude_history(scores, items, histories), n)
        return time.perf_counter() - started

    retrieve(512)  # warm-up: model load, allocator
    batched, single = retrieve(512), retrieve(1)
    rows = [("retrieval", f"{retrieval.model}, top {n} of {len(items.ids):,} items",
             len(histories), f"{len(histories) / single:,.0f}", f"{len(histories) / batched:,.0f}",
             f"{single / batched:.1f}x", "")]

    run = layout.sft_run(args.system, args.domain, 0)
    validation = run.read_manifest().validation or {"scoring": "mean"}
    choice = Reranker(args.system, 0, validation["scoring"], None, "bench")
    reranking = LLMReranking(profile, args.domain, choice, items)
    users = people.users[:args.users]
    picked = histories[:args.users]
    scores = exclude_history(sequential_full_scores(files, items, picked), items, picked)
    candidates = items.ids[top_n(scores, n)[0]]
    reranking.llm_scores(users[:1], picked[:1], candidates[:1])  # warm-up
    started = time.perf_counter()
    tree = np.stack([reranking.scorer.evaluate(
        [Case(int(u), list(h)[-profile.sft.history:], [int(c) for c in cand], int(cand[0]))],
        reranking.titles, 1, generate=False)[0].summed
        for u, h, cand in zip(users, picked, candidates)])
    tree_s = time.perf_counter() - started
    started = time.perf_counter()
    naive = np.stack([score_naive(reranking.scorer, Case(
        int(u), list(h)[-profile.sft.history:], [int(c) for c in cand], int(cand[0])),
        reranking.titles).summed for u, h, cand in zip(users, picked, candidates)])
    naive_s = time.perf_counter() - started
    rows.append(("re-ranking", f"{args.system} seed 0, {n} candidates per user", len(users),
                 f"{len(users) / naive_s:.3f}", f"{len(users) / tree_s:.3f}",
                 f"{naive_s / tree_s:.1f}x", f"{np.abs(tree - naive).max():.2e}"))
    print(f"{processor()}, {torch.get_num_threads()} threads, profile {args.profile},"
          f" {domain}: {len(histories):,} users")
    print(md_table(["stage", "what", "users", "baseline users/s (one per call / per"
                    " candidate)", "ours users/s", "speed-up", "max |summed logp diff|"],
                   rows))


if __name__ == "__main__":
    main()
