"""SFT samples per target domain, as LLaRA builds them (method.md section 2).

For each user, a sliding window over the train history: the last up-to-``history`` items
before position t are the history, item t the target (histories shorter than
``min_history`` are skipped). Candidates: the target plus ``negatives`` items of the domain
the user never touched, drawn with a fixed seed, in a seeded random order.

Prompts follow LLaRA's movie template. In the hybrid form every history and candidate
item is written ``Title [emb]``: the placeholder token's input embedding is later replaced
by the projected SASRec embedding of that item (cprec_core.models.hybrid). The text-only form
(the curriculum's other half) writes just the titles.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PLACEHOLDER = "[emb]"
LLARA_TEMPLATE = (
    "This user has watched {history} in the previous. Given the following {n} movies: "
    "{candidates}, recommend one movie for this user to watch next. The movie title is"
)


@dataclass(frozen=True)
class SFTSample:
    user: int
    history: list[int]  # global item ids, oldest first
    candidates: list[int]  # includes the target
    target: int


def build_samples(histories: list[list[int]], items: list[int], seen: list[set[int]],
                  history: int = 10, min_history: int = 3, negatives: int = 19,
                  seed: int = 0) -> list[SFTSample]:
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
            samples.append(SFTSample(user, items_of_user[max(0, t - history):t], candidates, target))
    return samples


def render(sample: SFTSample, titles: dict[int, str], hybrid: bool,
           template: str = LLARA_TEMPLATE) -> tuple[str, list[int]]:
    """(prompt text, item id of each placeholder in order of appearance)."""

    def item(i: int) -> str:
        return f"{titles[i]} {PLACEHOLDER}" if hybrid else titles[i]

    text = template.format(history=", ".join(item(i) for i in sample.history),
                           n=len(sample.candidates),
                           candidates=", ".join(item(i) for i in sample.candidates))
    slots = [*sample.history, *sample.candidates] if hybrid else []
    return text, slots


def tokenize(sample: SFTSample, titles: dict[int, str], tokenizer, placeholder_id: int,
             hybrid: bool) -> dict:
    """Token ids of prompt + " " + target title + EOS, labels only on the answer, and the
    item id behind each placeholder token."""
    prompt, slots = render(sample, titles, hybrid)
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer(" " + titles[sample.target], add_special_tokens=False)["input_ids"]
    answer_ids = answer_ids + [tokenizer.eos_token_id]
    ids = prompt_ids + answer_ids
    n_slots = sum(1 for t in prompt_ids if t == placeholder_id)
    if n_slots != len(slots):
        raise ValueError(f"prompt has {n_slots} placeholder tokens for {len(slots)} items: the"
                         f" tokenizer splits {PLACEHOLDER!r} or a title contains it")
    return {"input_ids": ids, "labels": [-100] * len(prompt_ids) + answer_ids,
            "slot_items": slots}


def hybrid_probability(step: int, total_steps: int) -> float:
    """LLaRA's curriculum: the hybrid prompt with probability step / total, text otherwise."""
    return min(1.0, max(0.0, step / max(total_steps, 1)))


def choose_hybrid(step: int, total_steps: int, rng: np.random.Generator) -> bool:
    return bool(rng.random() < hybrid_probability(step, total_steps))
