"""Mining preference pairs: hard negatives are the SFT model's top wrong candidates, the
random ones come from the rest, and every pair keeps the scores that chose it."""

import numpy as np
import pytest

from cprec_core.evaluation.llm import CaseResult
from cprec_core.prompts import Case
from cprec_core.training.dpo_pairs import PAIR_SCHEMA, choose_rejected, mine_pairs, pair_summary


class StubScorer:
    """Scores candidate c as -c (item 1 first), answers of c + 1 tokens."""

    def __init__(self):
        self.calls = []

    def evaluate(self, samples, titles, batch_size=8, generate=True, max_new_tokens=32,
                 progress=None):
        self.calls.append(generate)
        return [CaseResult(-np.asarray(s.candidates, dtype=float),
                           -np.asarray(s.candidates, dtype=float)) for s in samples]

    def continuations(self, sample, titles):
        return [[0] * (c + 1) for c in sample.candidates]


def test_hard_negatives_are_the_top_wrong_candidates_and_random_ones_the_rest():
    rng = np.random.default_rng(0)
    summed = np.array([-1.0, -3.0, -0.5, -2.0, -0.5])  # candidates 10, 11, 12, 13, 14
    out = choose_rejected(summed, [10, 11, 12, 13, 14], target=12, hard=2, random=1, rng=rng)
    # ranking: 12 and 14 tie at -0.5 (stable: 12 first), then 10, 13, 11
    assert [(r.item, r.kind, r.rank) for r in out[:2]] == [(14, "hard", 2), (10, "hard", 3)]
    assert out[2].kind == "random" and out[2].item in (13, 11) and out[2].rank in (4, 5)
    assert choose_rejected(summed, [10, 11, 12, 13, 14], 12, 9, 3, rng)[-1].kind == "hard"


def test_pairs_keep_the_reference_scores_and_token_counts():
    windows = [Case(0, [1, 2], [5, 3, 4, 7], 4), Case(1, [2], [6, 8, 9, 2], 9)]
    scorer = StubScorer()
    pairs = mine_pairs(scorer, windows, {}, hard=1, random=1, seed=0)
    assert pairs.schema == PAIR_SCHEMA and scorer.calls == [False]  # likelihood only
    rows = pairs.to_pylist()
    assert [(r["window"], r["chosen"], r["rejected"], r["kind"]) for r in rows[:1]] == [
        (0, 4, 3, "hard")]  # 3 scores -3, above the target's -4
    assert rows[0]["ref_chosen"] == -4.0 and rows[0]["ref_rejected"] == -3.0
    assert rows[0]["chosen_rank"] == 2 and rows[0]["rejected_rank"] == 1
    assert rows[0]["chosen_tokens"] == 5 and rows[0]["rejected_tokens"] == 4
    assert {r["kind"] for r in rows} == {"hard", "random"} and len(rows) == 4
    assert rows[2]["chosen_rank"] == 4  # 9 is the lowest-scored of window 1
    again = mine_pairs(StubScorer(), windows, {}, hard=1, random=1, seed=0)
    assert again.equals(pairs)  # seeded
    summary = pair_summary(pairs)
    assert summary["pairs"] == 4 and summary["windows"] == 2 and summary["sft_hr@1 on windows"] == 0.0
    assert summary["hard: chosen above rejected"] == 0.0
    with pytest.raises(ValueError, match="at least one rejected"):
        mine_pairs(StubScorer(), windows, {}, hard=0, random=0, seed=0)
