"""Full-ranking evaluation (the SASRec and HSTU papers' protocol), beside the 20-candidate
one: each test item ranked against every item of its domain, the user's history excluded,
HR@10 and NDCG@10. Systems: popularity, item-kNN, every trained seed of SASRec, GRU4Rec and
the text systems, and the two-stage pipeline (cprec_core.recommend.pipeline), whose
retrieval recall@N is stored with it: re-ranking cannot recover a test item that retrieval
missed.

    python -m cprec_core.recommend.full_ranking --profile demo --domain crime

Per-user ranks go to ``full_ranking_cases``, what each system was to ``full_ranking_runs``;
``full_ranking_table`` turns them into the leaderboard's table with bootstrap intervals and
the paired test of the pipeline against its retrieval model; ``full_ranking_tests`` the
registry's paired tests (cprec_core.systems.PAIRED_TESTS) on NDCG@10, and
``full_ranking_subsets`` NDCG@10 per user-activity and target-popularity group.
"""

from __future__ import annotations

import json
import time
from typing import Callable, ContextManager

import duckdb
import numpy as np
from scipy.stats import wilcoxon

from cprec_core.config import Profile
from cprec_core.data.db import atomic
from cprec_core.data.cases import popularity_groups
from cprec_core.data.domain_users import domain_for_slug
from cprec_core.evaluation.leaderboard import bootstrap_interval
from cprec_core.metrics import ranks_from_scores
from cprec_core.progress import Progress, duration
from cprec_core.provenance import git_revision
from cprec_core.reporting import md_table
from cprec_core.systems import PAIRED_TESTS
from cprec_core.training.next_item import trained_next_item_models
from cprec_core.recommend.pipeline import (LLMReranking, choose_reranker, choose_retrieval,
                                           describe)
from cprec_core.recommend.retrieval import (domain_items, exclude_history, item_knn_scores,
                                            popularity_scores, sequential_full_scores, top_n)

K = 10
PIPELINE = "two-stage"
SCHEMA = """
CREATE TABLE IF NOT EXISTS full_ranking_cases (
    domain VARCHAR NOT NULL, system VARCHAR NOT NULL, user_idx INTEGER NOT NULL,
    rank INTEGER NOT NULL, retrieved BOOLEAN);
CREATE TABLE IF NOT EXISTS full_ranking_runs (
    domain VARCHAR NOT NULL, system VARCHAR NOT NULL, cases INTEGER NOT NULL,
    items INTEGER NOT NULL, seconds DOUBLE NOT NULL, detail VARCHAR,
    evaluated_at TIMESTAMP DEFAULT current_timestamp, git_revision VARCHAR);
-- added later: older rows are seed 0, their groups unknown
ALTER TABLE full_ranking_cases ADD COLUMN IF NOT EXISTS seed INTEGER DEFAULT 0;
ALTER TABLE full_ranking_cases ADD COLUMN IF NOT EXISTS activity VARCHAR;
ALTER TABLE full_ranking_cases ADD COLUMN IF NOT EXISTS popularity VARCHAR;
ALTER TABLE full_ranking_runs ADD COLUMN IF NOT EXISTS seeds INTEGER DEFAULT 1;
"""


def sample_test_users(con: duckdb.DuckDBPyConnection, domain: str, max_cases: int = 0,
               seed: int = 0) -> tuple[list[int], list[list[int]], list[int]]:
    """(users, histories, test items) of the domain's users with a test item; a history is
    the train items then the validation item. With ``max_cases``, a seeded sample."""
    rows = _test_rows(con, domain, max_cases, seed)
    return ([r[0] for r in rows], [list(r[1]) + ([r[2]] if r[2] is not None else [])
                                   for r in rows], [r[3] for r in rows])


def _test_rows(con, domain: str, max_cases: int, seed: int) -> list[tuple]:
    rows = con.execute(
        "SELECT user_idx, history, valid_item, test_item, activity FROM domain_users"
        " WHERE domain = ? AND test_item IS NOT NULL ORDER BY user_idx", [domain]).fetchall()
    if max_cases and len(rows) > max_cases:
        pick = np.random.default_rng(seed).choice(len(rows), max_cases, replace=False)
        rows = [rows[i] for i in sorted(pick)]
    return rows


def pipeline_ranks(retrieved: np.ndarray, rerank_scores: np.ndarray,
                   retrieval_ranks: np.ndarray, target_cols: np.ndarray) -> np.ndarray:
    """The target's rank after re-ranking: its place among the re-ranked N where retrieval
    found it (ties against it), else its retrieval rank (N or worse)."""
    hit = retrieved == target_cols[:, None]
    found = hit.any(1)
    ranks = retrieval_ranks.copy()
    if found.any():
        ranks[found] = ranks_from_scores(rerank_scores[found], hit[found].argmax(1))
    return ranks


def full_ranking_domain(connect: Callable[[], ContextManager[duckdb.DuckDBPyConnection]],
                        profile: Profile, slug: str, log=print,
                        every_s: float | None = None) -> dict[str, dict]:
    """Rank each sampled test user's test item among all the domain's items with every
    system; replaces the domain's rows. Returns {system: {cases, hr@10, ndcg@10, ...}}."""
    cfg = profile.recommend
    with connect() as con:
        domain, _ = domain_for_slug(con, slug)
        items = domain_items(con, domain)
        users, histories, targets = sample_test_users(con, domain, cfg.full_ranking_cases,
                                               profile.evaluation.seed)
        if not users:
            raise ValueError(f"no test users in {domain!r}")
        activity = [r[4] for r in _test_rows(con, domain, cfg.full_ranking_cases,
                                             profile.evaluation.seed)]
        groups = popularity_groups(con, domain)
        popularity = [groups.get(int(t), "tail") for t in targets]
        target_cols = items.columns(targets)
        scorers = {("popularity", 0): lambda: popularity_scores(con, items, len(users)),
                   ("item-knn (domain)", 0): lambda: item_knn_scores(con, items, histories)}
        for name, seed, files in trained_next_item_models(profile, slug):
            scorers[(name, seed)] = lambda files=files: sequential_full_scores(files, items,
                                                                               histories)
        ranks, seconds, full = {}, {}, {}
        for key, score in scorers.items():
            started = time.perf_counter()
            full[key] = exclude_history(score(), items, histories)
            ranks[key] = ranks_from_scores(full[key], target_cols)
            seconds[key[0]] = seconds.get(key[0], 0.0) + time.perf_counter() - started
        runs = [(system, s, None) for system, s in seconds.items()]
        retrieval = choose_retrieval(profile, slug)
        reranker = choose_reranker(con, profile, slug, domain)
    log(f"{slug} full ranking: {len(users):,} test users, {len(items.ids):,} items;"
        f" classic systems in {duration(sum(r[1] for r in runs))}")
    started = time.perf_counter()
    retrieval_key = (retrieval.model, retrieval.seed)
    retrieved, retrieval_scores = top_n(full[retrieval_key], cfg.retrieve)
    recall = ranks[retrieval_key] < cfg.retrieve
    if reranker is None:
        log(f"{slug} full ranking: no trained LLM system, the pipeline is retrieval alone")
        rerank_scores = retrieval_scores
    else:
        reranking = LLMReranking(profile, slug, reranker, items)
        progress = Progress(log, f"{slug} full ranking: re-ranking by {reranker.system}",
                            len(users), "users", every_s, first=True)
        rerank_scores = reranking.scores(users, histories, items.ids[retrieved],
                                         retrieval_scores, lambda done, _: progress.update(done))
    ranks[(PIPELINE, 0)] = pipeline_ranks(retrieved, rerank_scores, ranks[retrieval_key],
                                          target_cols)
    runs.append((PIPELINE, time.perf_counter() - started,
                 json.dumps({**describe(retrieval, reranker), "retrieve": cfg.retrieve})))
    rows = [(domain, system, int(u), int(r), bool(recall[i]) if system == PIPELINE else None,
             seed, activity[i], popularity[i])
            for (system, seed), system_ranks in ranks.items()
            for i, (u, r) in enumerate(zip(users, system_ranks))]
    n_seeds = {system: sum(k[0] == system for k in ranks) for system, _ in ranks}
    revision = git_revision()
    with connect() as con:
        con.execute(SCHEMA)
        with atomic(con):
            for table in ("full_ranking_cases", "full_ranking_runs"):
                con.execute(f"DELETE FROM {table} WHERE domain = ?", [domain])
            con.executemany("INSERT INTO full_ranking_cases (domain, system, user_idx, rank,"
                            " retrieved, seed, activity, popularity)"
                            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
            con.executemany(
                "INSERT INTO full_ranking_runs (domain, system, cases, items, seconds, detail,"
                " git_revision, seeds) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(domain, system, len(users), len(items.ids), round(took, 2), detail,
                  revision, n_seeds[system]) for system, took, detail in runs])
    summary = {}
    for system in n_seeds:  # the mean over seeds
        seeded = np.stack([r for (s, _), r in ranks.items() if s == system])
        summary[system] = {"cases": len(users), "seeds": len(seeded),
                           "hr@10": float(np.mean(seeded < K)),
                           "ndcg@10": float(np.mean(ndcg_at_k(seeded)))}
    summary[PIPELINE].update({f"recall@{cfg.retrieve}": float(recall.mean()),
                              "retrieval": retrieval.model,
                              "reranker": reranker.system if reranker else None})
    log(f"{slug} full ranking: " + ", ".join(
        f"{s} NDCG@10 {m['ndcg@10']:.4f}" for s, m in summary.items()))
    return summary


def ndcg_at_k(ranks: np.ndarray, k: int = K) -> np.ndarray:
    """Per case: 1 / log2(rank + 2) within the top k, else 0."""
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def _gains(con, domain: str, system: str, seed: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(hits@10, NDCG@10) per test user (ordered by user) of ``system``: of one seed, or
    the mean over its seeds."""
    rows = con.execute("""SELECT seed, list(rank ORDER BY user_idx) FROM full_ranking_cases
                          WHERE domain = ? AND system = ? AND (? IS NULL OR seed = ?)
                          GROUP BY seed ORDER BY seed""", [domain, system, seed, seed]).fetchall()
    ranks = np.asarray([r[1] for r in rows])
    return (ranks < K).astype(float).mean(0), ndcg_at_k(ranks).mean(0)


def _has(con, table: str) -> bool:
    return bool(con.execute("SELECT count(*) FROM information_schema.tables"
                            " WHERE table_name = ?", [table]).fetchone()[0])


def full_ranking_table(con: duckdb.DuckDBPyConnection, resamples: int = 1000
                       ) -> tuple[list[str], list[tuple]]:
    """(header, rows): per domain and system HR@10 and NDCG@10 (per user, the mean over the
    system's seeds) with 95 % bootstrap intervals, the pipeline's retrieval recall@N, and
    the paired test of the pipeline against its retrieval model (NDCG@10 difference with its
    interval, Wilcoxon signed-rank p)."""
    header = ["domain", "system", "cases", "seeds", "HR@10 [95% CI]", "NDCG@10 [95% CI]",
              "recall@N of retrieval", "vs retrieval: NDCG@10 diff [95% CI]", "p"]
    if not _has(con, "full_ranking_runs"):
        return header, []
    out = []
    runs = con.execute("SELECT domain, system, detail, coalesce(seeds, 1) FROM full_ranking_runs"
                       " ORDER BY domain, rowid").fetchall()
    for domain, system, detail, seeds in runs:
        hits, gains = _gains(con, domain, system)
        recall, diff, p = "", "", ""
        if system == PIPELINE:
            info = json.loads(detail)
            retrieved = [c[0] for c in con.execute(
                "SELECT retrieved FROM full_ranking_cases WHERE domain = ? AND system = ?"
                " ORDER BY user_idx", [domain, system]).fetchall()]
            base = _gains(con, domain, info["retrieval"]["model"],
                          info["retrieval"].get("seed", 0))[1]
            delta = gains - base
            recall = f"{np.mean(retrieved):.3f} (N {info['retrieve']})"
            low, high = bootstrap_interval(delta, resamples)
            diff = f"{delta.mean():+.4f} [{low:+.4f}, {high:+.4f}]"
            p = f"{wilcoxon(delta).pvalue:.3g}" if np.any(delta) else "1 (no difference)"
            system = pipeline_label(info)
        h_low, h_high = bootstrap_interval(hits, resamples)
        n_low, n_high = bootstrap_interval(gains, resamples)
        out.append((domain, system, len(gains), seeds,
                    f"{hits.mean():.3f} [{h_low:.3f}, {h_high:.3f}]",
                    f"{gains.mean():.4f} [{n_low:.4f}, {n_high:.4f}]", recall, diff, p))
    return header, out


def full_ranking_tests(con: duckdb.DuckDBPyConnection, resamples: int = 1000
                       ) -> tuple[list[str], list[tuple]]:
    """(header, rows): the registry's paired tests (cprec_core.systems.PAIRED_TESTS) where
    both systems were ranked, on NDCG@10 per test user (the mean over each system's seeds):
    the difference with its 95 % bootstrap interval and the Wilcoxon signed-rank p."""
    header = ["domain", "A vs B", "cases", "A NDCG@10", "B NDCG@10", "A - B [95% CI]",
              "Wilcoxon p"]
    if not _has(con, "full_ranking_cases"):
        return header, []
    out = []
    for (domain,) in con.execute("SELECT DISTINCT domain FROM full_ranking_cases"
                                 " ORDER BY 1").fetchall():
        have = {r[0] for r in con.execute("SELECT DISTINCT system FROM full_ranking_cases"
                                          " WHERE domain = ?", [domain]).fetchall()}
        for a, b in PAIRED_TESTS:
            if a not in have or b not in have:
                continue
            ga, gb = _gains(con, domain, a)[1], _gains(con, domain, b)[1]
            delta = ga - gb
            low, high = bootstrap_interval(delta, resamples)
            p = f"{wilcoxon(delta).pvalue:.3g}" if np.any(delta) else "1 (no difference)"
            out.append((domain, f"{a} vs {b}", len(delta), f"{ga.mean():.4f}",
                        f"{gb.mean():.4f}", f"{delta.mean():+.4f} [{low:+.4f}, {high:+.4f}]", p))
    return header, out


def full_ranking_subsets(con: duckdb.DuckDBPyConnection) -> tuple[list[str], list[tuple]]:
    """(header, rows): NDCG@10 per domain and system in each user-activity tercile and
    each target-popularity group (head / torso / tail of the domain's items by train
    interactions), the mean over seeds, with the number of users of each group."""
    groups = ("sparse", "medium", "dense", "head", "torso", "tail")
    header = ["domain", "system", *groups]
    if not _has(con, "full_ranking_cases"):
        return header, []
    rows = con.execute("""
        SELECT domain, system, g.subset, count(*) // count(DISTINCT seed),
               avg(CASE WHEN rank < ? THEN 1 / log2(rank + 2) ELSE 0 END)
        FROM full_ranking_cases,
             (SELECT unnest(['sparse', 'medium', 'dense', 'head', 'torso', 'tail']) AS subset) g
        WHERE g.subset IN (activity, popularity)
        GROUP BY ALL""", [K]).fetchall()
    order = [r[:2] for r in con.execute("SELECT domain, system FROM full_ranking_runs"
                                        " ORDER BY domain, rowid").fetchall()]
    cells = {(d, s, g): f"{v:.4f} ({n})" for d, s, g, n, v in rows}
    return header, [(d, s, *[cells.get((d, s, g), "") for g in groups]) for d, s in order
                    if any((d, s, g) in cells for g in groups)]


def full_ranking_markdown(con: duckdb.DuckDBPyConnection, resamples: int = 1000) -> str:
    """The full-ranking table with its heading and reading, where it was run ("" if not),
    then the paired tests and the groups."""
    header, rows = full_ranking_table(con, resamples)
    if not rows:
        return ""
    parts = ["### Full ranking (each test item against every item of its domain)\n\n"
             "HR@10 and NDCG@10 with the user's history excluded, per user the mean over the"
             " system's seeds, 95 % bootstrap intervals over users; the two-stage pipeline"
             " re-ranks its retrieval model's top N, so its recall@N bounds it; its paired"
             " test is against that retrieval model (NDCG@10 per user, Wilcoxon signed-rank)."
             "\n\n" + md_table(header, rows)]
    header, tests = full_ranking_tests(con, resamples)
    if tests:
        parts.append("#### Paired tests, full ranking (NDCG@10 per test user, seeds"
                     " averaged; Wilcoxon signed-rank)\n\n" + md_table(header, tests))
    header, groups = full_ranking_subsets(con)
    if groups:
        parts.append("#### Full-ranking NDCG@10 by user activity and by the test item's"
                     " popularity (terciles of the domain's items by train interactions;"
                     " users in brackets)\n\n" + md_table(header, groups))
    return "\n\n".join(parts)


def pipeline_label(info: dict) -> str:
    """``two-stage: sasrec top 50 -> cprec_rank seed 0 (fused with sasrec, lambda 0.5)``,
    or for a residual system ``(residual on sasrec, gate 0.2)``."""
    retrieval, rerank = info["retrieval"], info["rerank"]
    label = f"{PIPELINE}: {retrieval['model']} top {info['retrieve']} -> "
    if rerank is None:
        return label + "no LLM (retrieval order)"
    label += f"{rerank['system']} seed {rerank['seed']}"
    if rerank["fusion_lambda"] is not None:
        how = "residual on {}, gate {:g}" if rerank.get("scoring") == "residual" else \
            "fused with {}, lambda {:g}"
        label += f" ({how.format(rerank['fusion_partner'], rerank['fusion_lambda'])})"
    return label


def main(argv: list[str] | None = None) -> int:
    import argparse

    from cprec_core.cli import add_profile_arguments, profile_from_args, run_tool
    from cprec_core.data.db import connect

    parser = add_profile_arguments(argparse.ArgumentParser(description=__doc__.split("\n")[0]))
    parser.add_argument("--domain", required=True, help="partition key, e.g. crime")
    args = parser.parse_args(argv)
    profile = profile_from_args(args)

    def work() -> None:
        summary = full_ranking_domain(lambda: connect(profile.layout.database), profile,
                                      args.domain)
        print(json.dumps(summary, indent=1))

    return run_tool(work, profile.layout.database)


if __name__ == "__main__":
    raise SystemExit(main())
