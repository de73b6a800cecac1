"""Score systems on a domain's fixed candidate sets and store one row per (split, system,
family, user subset) in ``evaluation_results``: the classic scorers and, for every SFT
adapter on disk, likelihood ranking (summed and length-normalised). Generation with
ValidRatio is issue 5's next step."""

from __future__ import annotations

import numpy as np

import duckdb

from cprec_core.collab.train_sasrec import load_sasrec
from cprec_core.config import Profile
from cprec_core.domain_data import domain_for_slug
from cprec_core.evaluation.baselines import item_knn, load_cases, popularity, sasrec_scores
from cprec_core.evaluation.metrics import ranking_report, ranks_from_scores

SCHEMA = """
CREATE TABLE IF NOT EXISTS evaluation_results (
    domain VARCHAR NOT NULL, split VARCHAR NOT NULL, system VARCHAR NOT NULL,
    family VARCHAR NOT NULL, subset VARCHAR NOT NULL, cases INTEGER NOT NULL,
    valid_ratio DOUBLE, "hr@1" DOUBLE, "hr@3" DOUBLE, "hr@5" DOUBLE, "ndcg@3" DOUBLE,
    "ndcg@5" DOUBLE, evaluated_at TIMESTAMP DEFAULT current_timestamp)
"""
SUBSETS = ("all", "sparse", "medium", "dense")


def classic_scores(con, profile: Profile, slug: str, cases) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    scores = {
        "random": rng.random(cases.candidates.shape),
        "popularity": popularity(con, cases),
        "item-knn (domain)": item_knn(con, cases, all_domains=False),
        "item-knn (all domains)": item_knn(con, cases, all_domains=True),
    }
    folder = profile.domain_dir("sasrec", slug)
    if (folder / "model.safetensors").is_file():
        model, index = load_sasrec(folder)
        scores["sasrec"] = sasrec_scores(model, index, cases, model.shape.max_len)
    return scores


def llm_scores(con, profile: Profile, slug: str, cases, log=print) -> dict[tuple[str, str], np.ndarray]:
    """Likelihood scores of every SFT system of the profile whose adapter exists."""
    from cprec_core.evaluation.llm import LLMScorer
    from cprec_core.sft_data import SFTSample

    titles = dict(con.execute("SELECT item_idx, title FROM items WHERE domain = ?",
                              [cases.domain]).fetchall())
    out = {}
    for system in profile.sft.systems:
        if not (profile.root / "sft" / system / slug / "adapter").is_dir():
            log(f"{system}: no SFT adapter for {slug}, skipped")
            continue
        scorer = LLMScorer.load(profile, slug, system)
        summed, mean = [], []
        for user, history, candidates, target in zip(cases.users, cases.histories,
                                                     cases.candidates, cases.targets):
            sample = SFTSample(int(user), history[-profile.sft.history:],
                               [int(c) for c in candidates], int(target))
            s, m = scorer.candidate_logprobs(sample, titles)
            summed.append(s)
            mean.append(m)
        out[(system, "likelihood (sum)")] = np.asarray(summed)
        out[(system, "likelihood (mean)")] = np.asarray(mean)
    return out


def evaluate_domain(con: duckdb.DuckDBPyConnection, profile: Profile, slug: str,
                    with_llm: bool = True, log=print) -> list[tuple]:
    domain, _ = domain_for_slug(con, slug)
    con.execute(SCHEMA)
    rows = []
    cfg = profile.evaluation
    for split in ("valid", "test"):
        cases = load_cases(con, domain, split, cfg.max_cases, cfg.seed)
        activity = np.asarray(cases.activity)
        scored = {(s, "ranking"): v for s, v in classic_scores(con, profile, slug, cases).items()}
        if with_llm and split == "test":
            scored.update(llm_scores(con, profile, slug, cases, log))
        for (system, family), scores in scored.items():
            ranks = ranks_from_scores(scores, cases.target_col)
            for subset in SUBSETS:
                keep = np.ones(len(ranks), bool) if subset == "all" else activity == subset
                if not keep.any():
                    continue
                m = ranking_report(ranks[keep])
                rows.append((domain, split, system, family, subset, int(keep.sum()), 1.0,
                             m["hr@1"], m["hr@3"], m["hr@5"], m["ndcg@3"], m["ndcg@5"]))
    systems = sorted({r[2] for r in rows})
    con.execute("DELETE FROM evaluation_results WHERE domain = ? AND system IN (SELECT unnest(?))",
                [domain, systems])
    con.executemany(
        "INSERT INTO evaluation_results (domain, split, system, family, subset, cases, valid_ratio,"
        ' "hr@1", "hr@3", "hr@5", "ndcg@3", "ndcg@5") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)',
        rows)
    return rows
