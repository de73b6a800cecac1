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

from cprec_core.metrics import one_se_choice, ranks_from_scores
from cprec_core.models.hybrid import CandidateInputs
from cprec_core.prompts import Case, encode_answer, encode_prompt


@dataclass
class RankBatch:
    inputs: CandidateInputs
    target_index: torch.Tensor  # (B,) position of the target among the candidates
    answer_tokens: torch.Tensor  # (B, K) tokens of each candidate's answer (title, EOS)


def rank_batch(cases: list[Case], titles: dict[int, str], tokenizer, placeholder_id: int,
               local: dict[int, int], hybrid: bool, listing: bool, device,
               answers: dict[int, list[int]] | None = None,
               candidate_vectors: bool = False) -> RankBatch:
    """The cases' prompts (LLaRA's, ``listing`` the candidates or not) and candidate answers.
    ``answers``: a cache of answer token ids by item. ``candidate_vectors``: each answer is
    read after its candidate's injected vector (cprec_core.models.hybrid.CandidateInputs)."""
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
    candidate_slots = (torch.tensor([local[c] for case in cases for c in case.candidates],
                                    dtype=torch.long, device=device)
                       if candidate_vectors else None)
    return RankBatch(
        CandidateInputs(prompt_ids, torch.tensor(slots, dtype=torch.long, device=device), conts,
                        candidate_slots),
        torch.tensor([case.candidates.index(case.target) for case in cases], device=device),
        torch.tensor([[len(c) for c in cs] for cs in conts], dtype=torch.float32, device=device))


@dataclass
class RankLoss:
    total: torch.Tensor  # summed over the cases: what is backpropagated
    ranking: torch.Tensor  # the cross-entropy part, summed over the cases
    ntp: torch.Tensor  # the target's next-token loss per token, summed over the cases


def candidate_loss(scores: torch.Tensor, batch: RankBatch, ntp_weight: float,
                   calibrated: torch.Tensor | None = None) -> RankLoss:
    """``scores``: (B, K) summed log-likelihoods of the candidates' answers; ``calibrated``:
    the same divided by the learned temperature, what the softmax reads (``scores`` where
    not given)."""
    rows = torch.arange(len(scores), device=scores.device)
    logits = scores if calibrated is None else calibrated
    ranking = -torch.log_softmax(logits, -1)[rows, batch.target_index]
    ntp = -scores[rows, batch.target_index] / batch.answer_tokens[rows, batch.target_index]
    total = ranking + ntp_weight * ntp if ntp_weight else ranking
    return RankLoss(total.sum(), ranking.detach().sum(), ntp.detach().sum())


def validation_report(summed: np.ndarray, tokens: np.ndarray, target_index: np.ndarray,
                      calibrated: np.ndarray | None = None,
                      residual: np.ndarray | None = None) -> dict:
    """HR@1 and MRR of the ranking by summed and by mean log-likelihood per token (ties
    count as misses, as in cprec_core.metrics), the loss per answer (the cross-entropy over
    the candidates of ``calibrated``, the summed scores divided by the learned temperature:
    ln 20 = 3.0 for a blind guess among 20) with its standard error, the loss at temperature
    1, the
    scoring chosen, and under ``per_case`` the values the choices are
    made on. Scoring: by MRR, the mean (the evaluation's default) unless the sum is better
    by more than one standard error (metrics.one_se_choice). ``residual``: a residual
    system's scores (cprec_core.training.residual), which ``calibrated`` divides by the
    temperature: its HR@1 and MRR too, and its scoring is ``residual``."""
    from scipy.special import log_softmax

    rows = np.arange(len(summed))
    ranking = summed if residual is None else residual
    calibrated = ranking if calibrated is None else calibrated
    nonzero = calibrated != 0
    temperature = float(np.median(ranking[nonzero] / calibrated[nonzero])) if nonzero.any() else 1.0
    out: dict = {"cases": int(len(summed)), "temperature": round(temperature, 4)}
    per_case = {"loss": -log_softmax(calibrated, 1)[rows, target_index]}
    families = [("sum", summed), ("mean", summed / tokens)]
    if residual is not None:
        families.append(("residual", residual))
    for name, scores in families:
        ranks = ranks_from_scores(scores, target_index)
        out[f"hr@1 ({name})"] = round(float(np.mean(ranks == 0)), 4)
        per_case[f"rr ({name})"] = 1.0 / (ranks + 1.0)
        out[f"mrr ({name})"] = round(float(per_case[f"rr ({name})"].mean()), 4)
    loss = per_case["loss"]
    out["loss per answer"] = round(float(loss.mean()), 4)
    out["loss per answer (T=1)"] = round(float(-log_softmax(ranking, 1)[rows, target_index].mean()), 4)
    out["loss se"] = round(float(loss.std(ddof=1) / np.sqrt(len(loss))), 4) if len(loss) > 1 else None
    if residual is None:
        out["scoring"], _ = one_se_choice({"sum": per_case["rr (sum)"],
                                           "mean": per_case["rr (mean)"]}, "mean")
    else:
        out["scoring"] = "residual"
    out["per_case"] = {k: [round(float(x), 5) for x in v] for k, v in per_case.items()}
    return out
