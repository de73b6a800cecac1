"""The preference objective of the DPO stage (after SFT), on whole answers.

A pair is one prompt (a training window's hybrid prompt) with a chosen answer (the target
title) and a rejected one (a wrong candidate). The policy's summed answer log-likelihoods
come from the same tree forward the candidate-aware SFT uses (cprec_core.models.hybrid); the
reference's were computed once, when the pairs were mined, since the reference is the SFT
adapter the policy starts from.

- ``sigmoid`` (DPO, Rafailov et al. 2023): ``-log sigmoid(beta * (r_c - r_r))`` with
  ``r = log pi(answer) - log pi_ref(answer)``.
- ``ipo`` (Azar et al. 2023): ``(d - 1 / (2 beta))^2`` with ``d`` the difference of the log
  ratios per answer token, normalised by length as TRL does.

Both are checked against TRL's ``DPOTrainer`` on the same inputs
(tests/core/training/test_preference_loss.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo")


@dataclass
class PreferenceLoss:
    losses: torch.Tensor  # (P,) one per pair: what is averaged and backpropagated
    chosen_rewards: torch.Tensor  # (P,) beta * log ratio of the chosen answer (detached)
    rejected_rewards: torch.Tensor  # (P,) the same for the rejected answer

    @property
    def margin(self) -> float:
        """Mean reward margin of chosen over rejected."""
        return float((self.chosen_rewards - self.rejected_rewards).mean())

    @property
    def accuracy(self) -> float:
        """Share of pairs whose chosen answer has the higher reward."""
        return float((self.chosen_rewards > self.rejected_rewards).float().mean())


def preference_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
                    ref_chosen: torch.Tensor, ref_rejected: torch.Tensor, beta: float,
                    loss_type: str = "sigmoid", chosen_tokens: torch.Tensor | None = None,
                    rejected_tokens: torch.Tensor | None = None) -> PreferenceLoss:
    """Per-pair losses from summed answer log-likelihoods, shape (P,) each; ``ipo`` also
    needs the answers' token counts."""
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"preference loss {loss_type!r} is not one of {LOSS_TYPES}")
    chosen_ratio = policy_chosen - ref_chosen
    rejected_ratio = policy_rejected - ref_rejected
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * (chosen_ratio - rejected_ratio))
    else:
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss needs the answers' token counts")
        delta = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        losses = (delta - 1 / (2 * beta)) ** 2
    return PreferenceLoss(losses, beta * chosen_ratio.detach(), beta * rejected_ratio.detach())
