"""DPO stage, step 2: preference pairs mined from the training windows by the SFT model.

Each training window (a sliding-window sample of a user's train history, as SFT builds them,
with its own seeded draw of candidates: never the stored validation or test candidate
sets) is scored by the SFT adapter the policy will start from. Its pairs: chosen = the
target; rejected = the ``hard`` wrong candidates the SFT model ranks highest, plus
``random`` others drawn from the remaining wrong candidates. Each pair keeps the scores that
chose it: the SFT model's summed answer log-likelihoods of both answers, which are also the
DPO reference's (the reference is that same adapter, frozen), so DPO never runs a
reference forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import pyarrow as pa

from cprec_core.prompts import Case

PAIR_SCHEMA = pa.schema([
    ("window", pa.int32()), ("user", pa.int32()), ("history", pa.list_(pa.int32())),
    ("candidates", pa.list_(pa.int32())), ("chosen", pa.int32()), ("rejected", pa.int32()),
    ("kind", pa.string()),  # hard | random
    ("rejected_rank", pa.int32()),  # the rejected answer's rank by the SFT model (1 = top)
    ("chosen_rank", pa.int32()),
    ("ref_chosen", pa.float32()), ("ref_rejected", pa.float32()),  # summed log-likelihoods
    ("chosen_tokens", pa.int32()), ("rejected_tokens", pa.int32()),
])


class CandidateScorer(Protocol):
    """What mining needs of cprec_core.evaluation.llm.LLMScorer."""

    def evaluate(self, samples: list[Case], titles: dict[int, str], batch_size: int = 8,
                 generate: bool = True, max_new_tokens: int = 32, progress=None) -> list: ...

    def continuations(self, sample: Case, titles: dict[int, str]) -> list[list[int]]: ...


@dataclass(frozen=True)
class Rejected:
    item: int
    kind: str
    rank: int


def choose_rejected(summed: np.ndarray, candidates: list[int], target: int, hard: int,
                    random: int, rng: np.random.Generator) -> list[Rejected]:
    """The ``hard`` highest-scored wrong candidates, then ``random`` of the other wrong ones.
    Ties in score keep the candidates' order (a stable sort), so mining is deterministic."""
    order = np.argsort(-summed, kind="stable")
    ranked = [(candidates[i], rank) for rank, i in enumerate(order, start=1)]
    wrong = [(item, rank) for item, rank in ranked if item != target]
    out = [Rejected(item, "hard", rank) for item, rank in wrong[:hard]]
    rest = wrong[hard:]
    if random and rest:
        for i in sorted(rng.choice(len(rest), size=min(random, len(rest)), replace=False)):
            out.append(Rejected(rest[i][0], "random", rest[i][1]))
    return out


def mine_pairs(scorer: CandidateScorer, windows: list[Case], titles: dict[int, str],
               hard: int, random: int, seed: int, batch_size: int = 8,
               progress: Callable[[int, int], None] | None = None) -> pa.Table:
    """One row per pair (``PAIR_SCHEMA``), windows in order."""
    if hard < 0 or random < 0 or hard + random == 0:
        raise ValueError(f"need at least one rejected answer per window (hard={hard},"
                         f" random={random})")
    results = scorer.evaluate(windows, titles, batch_size=batch_size, generate=False,
                              progress=progress)
    rng = np.random.default_rng(seed)
    rows: dict[str, list] = {name: [] for name in PAIR_SCHEMA.names}
    for w, (case, result) in enumerate(zip(windows, results)):
        summed = np.asarray(result.summed, dtype=np.float64)
        tokens = [len(c) for c in scorer.continuations(case, titles)]
        position = {item: k for k, item in enumerate(case.candidates)}
        t = position[case.target]
        chosen_rank = int((summed > summed[t]).sum()) + 1
        for rejected in choose_rejected(summed, case.candidates, case.target, hard, random, rng):
            r = position[rejected.item]
            for name, value in (("window", w), ("user", case.user), ("history", case.history),
                                ("candidates", case.candidates), ("chosen", case.target),
                                ("rejected", rejected.item), ("kind", rejected.kind),
                                ("rejected_rank", rejected.rank), ("chosen_rank", chosen_rank),
                                ("ref_chosen", summed[t]), ("ref_rejected", summed[r]),
                                ("chosen_tokens", tokens[t]), ("rejected_tokens", tokens[r])):
                rows[name].append(value)
    return pa.table(rows, schema=PAIR_SCHEMA)


def pair_summary(pairs: pa.Table) -> dict:
    """What the UI shows of a mining run: counts, how often the SFT model already ranks the
    target first, and the reference margin by kind of negative."""
    chosen = np.asarray(pairs.column("ref_chosen"))
    rejected = np.asarray(pairs.column("ref_rejected"))
    kinds = np.asarray(pairs.column("kind"))
    windows = np.asarray(pairs.column("window"))
    first = np.unique(windows, return_index=True)[1]
    out = {"pairs": int(len(pairs)), "windows": int(len(first)),
           "sft_hr@1 on windows": round(float(np.mean(
               np.asarray(pairs.column("chosen_rank"))[first] == 1)), 4) if len(first) else 0.0}
    for kind in ("hard", "random"):
        mask = kinds == kind
        out[f"{kind} pairs"] = int(mask.sum())
        if mask.any():
            out[f"{kind}: reference margin"] = round(float(np.mean(chosen[mask] - rejected[mask])), 3)
            out[f"{kind}: chosen above rejected"] = round(float(np.mean(chosen[mask] > rejected[mask])), 4)
    return out
