"""The candidate-aware objective and the validation scores it is selected on.

Per case: the softmax cross-entropy over the candidates' summed answer log-likelihoods
(one tree forward shares the prompt among the candidates, cprec_core.models.hybrid), plus
``ntp_weight`` times the target answer's next-token loss per token, which keeps the model
able to write the title (generation) while the first term teaches it to rank.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from cprec_core.models.hybrid import CandidateInputs
from cprec_core.prompts import Case, encode_answer, encode_prompt


@dataclass
class RankBatch:
    inputs: CandidateInputs
    target_index: torch.Tensor  # (B,) position of the target among the candidates
    answer_tokens: torch.Tensor  # (B, K) tokens of each candidate's answer (title, EOS)


def rank_batch(cases: list[Case], titles: dict[int, str], tokenizer, placeholder_id: int,
               local: dict[int, int], hybrid: bool, listing: bool, device,
               answers: dict[int, list[int]] | None = None) -> RankBatch:
    """The cases' prompts (LLaRA's, ``listing`` the candidates or not) and candidate answers.
    ``answers``: a cache of answer token ids by item."""
    answers = {} if answers is None else answers
    prompt_ids, slots, conts = [], [], []
    for case in cases:
        ids, items = encode_prompt(case, titles, tokenizer, placeholder_id, hybrid, listing)
        prompt_ids.append(torch.tensor(ids, device=device))
        slots += [local[i] for i in items]
        for c in case.candidates:
            if c not in answers:
                answers[c] = encode_answer(titles[c], tokenizer)
        conts.append([answers[c] for c in case.candidates])
    return RankBatch(
        CandidateInputs(prompt_ids, torch.tensor(slots, dtype=torch.long, device=device), conts),
        torch.tensor([case.candidates.index(case.target) for case in cases], device=device),
        torch.tensor([[len(c) for c in cs] for cs in conts], dtype=torch.float32, device=device))


@dataclass
class RankLoss:
    total: torch.Tensor  # summed over the cases: what is backpropagated
    ranking: torch.Tensor  # the cross-entropy part, summed over the cases
    ntp: torch.Tensor  # the target's next-token loss per token, summed over the cases


def candidate_loss(scores: torch.Tensor, batch: RankBatch, ntp_weight: float) -> RankLoss:
    """``scores``: (B, K) summed log-likelihoods of the candidates' answers."""
    rows = torch.arange(len(scores), device=scores.device)
    ranking = -torch.log_softmax(scores, -1)[rows, batch.target_index]
    ntp = -scores[rows, batch.target_index] / batch.answer_tokens[rows, batch.target_index]
    total = ranking + ntp_weight * ntp if ntp_weight else ranking
    return RankLoss(total.sum(), ranking.detach().sum(), ntp.detach().sum())


def validation_report(summed: np.ndarray, tokens: np.ndarray, target_index: np.ndarray) -> dict:
    """HR@1 of the ranking by summed and by mean log-likelihood per token (ties count as
    misses, as in cprec_core.metrics), and the loss per answer: the cross-entropy over the
    candidates of the summed scores (ln 20 = 3.0 for a blind guess among 20)."""
    from scipy.special import log_softmax

    rows = np.arange(len(summed))
    out = {"cases": int(len(summed))}
    for name, scores in (("sum", summed), ("mean", summed / tokens)):
        target = scores[rows, target_index]
        out[f"hr@1 ({name})"] = round(float(np.mean((scores >= target[:, None]).sum(1) == 1)), 4)
    out["loss per answer"] = round(float(-log_softmax(summed, 1)[rows, target_index].mean()), 4)
    out["scoring"] = "mean" if out["hr@1 (mean)"] > out["hr@1 (sum)"] else "sum"
    return out
