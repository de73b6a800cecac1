"""The residual ranker (objective ``residual`` in cprec_core.systems): the LLM learns what to
add to a classic recommender's ranking rather than to rank alone.

A candidate's score is z(c) + g * z(l): c the classic partner's score, l the LLM's summed
answer log-likelihood, z the standardisation over a case's candidates, g a learned gate
(``Projector.residual_weight``). The softmax of the candidate loss
(cprec_core.training.rank_loss) reads the score over the learned temperature, so g and the
temperature are learned with the LoRA and the projector, inside the loss.

The gate starts at 0, so before the first update the ranking is the classic model's and the
LLM has to earn any weight it gets. (The issue's ``exp(a)`` cannot be 0: started near 0 it
would learn at ``exp(a)`` times its rate; a plain gate at 0 gets its gradient, the
correlation of the LLM's scores with the target, from the first step.)

The gate has to earn its place on held-out data too: when the run ends, the learned gate is
kept only where the residual ranking's validation MRR beats the classic model's alone by
more than one standard error of the paired per-case differences (``keep_gate``); otherwise
the saved gate is 0 and the system ranks as its partner does. The gate learns on training
windows, on which the partner itself was trained and is surer than on held-out cases, so
the loss can favour a gate that held-out cases do not.

The partner is the better of SASRec and GRU4Rec (first seed each, frozen) by MRR on the
trainer's validation cases, SASRec on ties; its scores for a training window come from the
user's whole train history before the target, as the evaluation scores a case
(cprec_core.evaluation.baselines.next_item_scores). The run manifest records the partner
and the learned gate; the evaluation ranks the test cases by the same formula with that
partner's scores (cprec_core.evaluation.evaluate, family ``residual``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from cprec_core.config import Profile
from cprec_core.evaluation.baselines import next_item_scores
from cprec_core.metrics import one_se_choice, reciprocal_ranks
from cprec_core.models.hybrid import zscore
from cprec_core.prompts import Case
from cprec_core.training.next_item import load_next_item_model

PARTNERS = ("sasrec", "gru4rec")  # the classic models a residual system may build on


class ResidualError(RuntimeError):
    """No classic model to build on."""


@dataclass
class ClassicPartner:
    """A frozen next-item model whose scores the residual ranker adds to."""

    name: str  # sasrec or gru4rec
    seed: int
    model: torch.nn.Module
    index: list[int]  # position j holds the global id of the model's item j + 1
    valid_mrr: dict[str, float] = field(default_factory=dict)  # every partner's: why this one

    def scores(self, cases: list[Case]) -> np.ndarray:
        """(cases, candidates) scores, each from the case's whole in-domain history."""
        return next_item_scores(self.model, self.index, [c.classic_history for c in cases],
                                [c.candidates for c in cases], self.model.shape.max_len)

    def reciprocal_ranks(self, cases: list[Case]) -> np.ndarray:
        """Per case, 1 / (rank + 1) of the target by the partner alone."""
        target = np.array([c.candidates.index(c.target) for c in cases])
        return reciprocal_ranks(self.scores(cases), target)

    def record(self) -> dict:
        """What the run manifest keeps (the gate is added when the run ends)."""
        return {"partner": self.name, "partner_seed": self.seed,
                "partner_valid_mrr": {k: round(v, 4) for k, v in self.valid_mrr.items()}}


def choose_partner(profile: Profile, partition: str, validation: list[Case]) -> ClassicPartner:
    """Of SASRec and GRU4Rec (first seed each), the one with the better MRR on
    ``validation``; SASRec on ties or without validation cases."""
    loaded = []
    for name in PARTNERS:
        seed = getattr(profile, name).seeds[0]
        files = profile.layout.next_item_model(name, partition, seed)
        if files.exists():
            loaded.append(ClassicPartner(name, seed, *load_next_item_model(files)))
    if not loaded:
        raise ResidualError(f"no SASRec or GRU4Rec for domain {partition!r}: a residual system"
                            " builds on one; materialise sasrec first")
    mrr = ({p.name: float(p.reciprocal_ranks(validation).mean()) for p in loaded}
           if validation else {})
    best = max(loaded, key=lambda p: mrr.get(p.name, 0.0))  # max keeps the first on ties
    best.valid_mrr = mrr
    return best


def keep_gate(classic_rr, residual_rr) -> tuple[bool, str, dict[str, float]]:
    """(keep the learned gate, why, each ranking's validation MRR): kept only where the
    residual ranking beats the classic model alone by more than one standard error
    (metrics.one_se_choice, the classic model the simpler choice)."""
    choice, means = one_se_choice({"classic": classic_rr, "residual": residual_rr}, "classic")
    mrr = f"validation MRR residual {means['residual']:.4f}, classic alone {means['classic']:.4f}"
    if choice == "residual":
        return True, f"the learned gate: {mrr}, better by more than one standard error", means
    return False, (f"gate 0, the classic model alone: {mrr}, the residual not better by more"
                   " than one standard error"), means


def gate_from(ranking: torch.Tensor, classic: torch.Tensor, summed: torch.Tensor) -> float:
    """The gate g a forward used, read back from its scores (ranking = z(classic) + g *
    z(summed)): under FSDP the parameter is sharded outside the forward."""
    llm = zscore(summed.float())
    keep = llm.abs() > 1e-3
    if not keep.any():
        return 0.0
    ratio = (ranking.float() - zscore(classic.float().to(ranking.device))) / llm
    return float(ratio[keep].median())
