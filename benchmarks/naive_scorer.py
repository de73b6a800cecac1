"""The reference the likelihood scorer is measured and tested against: one full forward of
prompt + candidate per candidate, no shared prefix (20 forwards per case)."""

from __future__ import annotations

import numpy as np
import torch

from cprec_core.evaluation.llm import CaseResult, LLMScorer
from cprec_core.prompts import Case


@torch.no_grad()
def score_naive(scorer: LLMScorer, case: Case, titles: dict[int, str]) -> CaseResult:
    """Summed and mean log-probability of each candidate, from separate forwards."""
    conts = scorer.continuations(case, titles)
    with scorer._autocast():
        ids, prompt_embeds = scorer.prompt(case, titles)
    summed = np.zeros(len(conts))
    for k, c in enumerate(conts):
        tokens = torch.tensor(c, device=scorer.device)
        with scorer._autocast():
            embeds = torch.cat([prompt_embeds,
                                scorer.model.get_input_embeddings()(tokens)[None]], 1)
            hidden = scorer.model.get_decoder()(inputs_embeds=embeds,
                                                use_cache=False).last_hidden_state[0]
        lp = scorer._head(hidden[ids.shape[1] - 1:-1], tokens[:, None])[0]
        summed[k] = float(lp.sum())
    return CaseResult(summed, summed / np.asarray([len(c) for c in conts], dtype=float))
