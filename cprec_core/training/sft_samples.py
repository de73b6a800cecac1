"""SFT samples per target domain, as LLaRA builds them (method.md section 2).

For each user, a sliding window over the train history: the last up-to-``history`` items
before position t are the history, item t the target (histories shorter than
``min_history`` are skipped). Candidates: the target plus ``negatives`` items of the domain
outside the window (its history and target), drawn with a fixed seed, in a seeded random
order. As LLaRA draws them, and never conditioned on the user's validation or test item:
excluding those would mark them, over many epochs, as "never a negative beside this
history", a leak that grows with training. A held-out item may so appear as a negative.

Prompts: cprec_core.prompts (LLaRA's template, hybrid or text-only). The curriculum
(``hybrid_probability``) decides per optimiser step which of the two a step reads.
"""

from __future__ import annotations

import numpy as np

from cprec_core.prompts import Case


def build_samples(histories: list[list[int]], items: list[int], history: int = 10,
                  min_history: int = 3, negatives: int = 19, seed: int = 0) -> list[Case]:
    """Sliding-window samples of the users' train histories (global item ids)."""
    if len(items) < negatives + 1:
        raise ValueError(f"the domain has {len(items)} items: {negatives + 1} candidates"
                         " need at least that many")
    rng = np.random.default_rng(seed)
    pool = np.asarray(sorted(items))
    samples = []
    for user, items_of_user in enumerate(histories):
        for t in range(min_history, len(items_of_user)):
            window, target = items_of_user[max(0, t - history):t], items_of_user[t]
            allowed = pool[~np.isin(pool, [*window, target])]
            if len(allowed) < negatives:
                continue  # a window that holds nearly every item cannot get 19 negatives
            negs = rng.choice(allowed, size=negatives, replace=False).tolist()
            candidates = [target, *negs]
            rng.shuffle(candidates)
            samples.append(Case(user, window, candidates, target, items_of_user[:t]))
    return samples


def hybrid_probability(step: int, total_steps: int) -> float:
    """LLaRA's curriculum: the hybrid prompt with probability step / total, text otherwise."""
    return min(1.0, max(0.0, step / max(total_steps, 1)))


def choose_hybrid(step: int, total_steps: int, rng: np.random.Generator) -> bool:
    return bool(rng.random() < hybrid_probability(step, total_steps))
