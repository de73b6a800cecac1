"""Ranking metrics, shared by the evaluation and the next-item trainers' early stopping. Every
function takes ``ranks``: the 0-based position of the target among its candidates after
sorting by score, ties broken against the target (so a constant scorer does not look
good). One tie rule for everything: ``ranks_from_scores``."""

from __future__ import annotations

import numpy as np


def ranks_from_scores(scores: np.ndarray, target_col: np.ndarray) -> np.ndarray:
    """rank = number of candidates scoring at least as high as the target, minus itself."""
    target = scores[np.arange(len(scores)), target_col][:, None]
    return (scores >= target).sum(1) - 1


def hit_ratio(ranks: np.ndarray, k: int) -> float:
    """HR@k = mean(rank < k)."""
    return float(np.mean(ranks < k)) if len(ranks) else float("nan")


def ndcg(ranks: np.ndarray, k: int) -> float:
    """NDCG@k with one relevant item = mean(1 / log2(rank + 2) if rank < k else 0)."""
    if not len(ranks):
        return float("nan")
    return float(np.mean(np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)))


def ranking_report(ranks: np.ndarray) -> dict[str, float]:
    return {"hr@1": hit_ratio(ranks, 1), "hr@3": hit_ratio(ranks, 3), "hr@5": hit_ratio(ranks, 5),
            "ndcg@3": ndcg(ranks, 3), "ndcg@5": ndcg(ranks, 5)}


def rank_metrics(scores, target, k: int = 10) -> dict[str, float]:
    """HR@k and NDCG@k of the target column ``target`` given ``scores`` (rows of cases,
    higher is better; numpy or torch), by ``ranks_from_scores``' tie rule."""
    scores, target = np.asarray(scores, dtype=float), np.asarray(target)
    if np.isnan(scores).any():
        raise ValueError("NaN scores: the model is broken")
    ranks = ranks_from_scores(scores, target)
    return {f"hr@{k}": hit_ratio(ranks, k), f"ndcg@{k}": ndcg(ranks, k)}


def reciprocal_ranks(scores: np.ndarray, target_col: np.ndarray) -> np.ndarray:
    """1 / (rank + 1) per case: MRR's per-case terms, a smoother criterion than HR@1 (on 60
    cases one case moves HR@1 by 0.017; a near miss still counts here)."""
    return 1.0 / (ranks_from_scores(scores, target_col) + 1.0)


def one_se_choice(per_case: dict, simpler, higher_is_better: bool = True) -> tuple[object, dict]:
    """(the choice, every choice's mean): the choice whose per-case values (the same cases
    for every choice) have the best mean, unless ``simpler`` is within one standard error of
    it, the standard error of the paired per-case differences; then ``simpler``. A choice
    made on a few dozen cases otherwise follows noise (the one-standard-error rule)."""
    means = {k: float(np.mean(v)) for k, v in per_case.items()}
    sign = 1.0 if higher_is_better else -1.0
    best = max(means, key=lambda k: (sign * means[k], k == simpler))
    diff = sign * (np.asarray(per_case[best], float) - np.asarray(per_case[simpler], float))
    se = float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("inf")
    return (simpler if float(np.mean(diff)) <= se else best), means
