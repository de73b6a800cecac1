"""SFT samples per target domain, as LLaRA builds them (method.md section 2).

For each user, a sliding window over the train history: the last up-to-``history`` items
before position t are the history, item t the target (histories shorter than
``min_history`` are skipped). Candidates: the target plus ``negatives`` items of the domain
the user never touched, drawn with a fixed seed, in a seeded random order.

Prompts: cprec_core.prompts (LLaRA's template, hybrid or text-only). The curriculum
(``hybrid_probability``) decides per optimiser step which of the two a step reads.
"""

from __future__ import annotations

import numpy as np

from cprec_core.prompts import Case


def build_samples(histories: list[list[int]], items: list[int], seen: list[set[int]],
                  history: int = 10, min_history: int = 3, negatives: int = 19,
                  seed: int = 0) -> list[Case]:
    """Sliding-window samples; ``seen[u]`` is every item user u touched in the domain
    (train, valid and test), so no negative is a held-out positive."""
    if len(items) < negatives + 1:
        raise ValueError(f"the domain has {len(items)} items: {negatives + 1} candidates"
                         " need at least that many")
    rng = np.random.default_rng(seed)
    pool = np.asarray(sorted(items))
    samples = []
    for user, items_of_user in enumerate(histories):
        unseen = pool[~np.isin(pool, list(seen[user]))]
        if len(unseen) < negatives:
            continue  # a user who saw nearly every item cannot get 19 negatives
        for t in range(min_history, len(items_of_user)):
            target = items_of_user[t]
            negs = rng.choice(unseen, size=negatives, replace=False).tolist()
            candidates = [target, *negs]
            rng.shuffle(candidates)
            samples.append(Case(user, items_of_user[max(0, t - history):t], candidates, target))
    return samples


def hybrid_probability(step: int, total_steps: int) -> float:
    """LLaRA's curriculum: the hybrid prompt with probability step / total, text otherwise."""
    return min(1.0, max(0.0, step / max(total_steps, 1)))


def choose_hybrid(step: int, total_steps: int, rng: np.random.Generator) -> bool:
    return bool(rng.random() < hybrid_probability(step, total_steps))
