"""The candidate-aware SFT objective (``objective: rank`` in cprec_core.systems).

It reads the same sliding windows as the paper's recipe with negatives re-drawn every
epoch, reads the hybrid prompt on every step (no curriculum), scores every candidate's
answer behind one shared prompt (the tree forward,
cprec_core.models.candidate_tree) and trains on cprec_core.training.rank_loss: the softmax
over the candidates' answer likelihoods plus a weighted next-token loss. SASRec inputs are
standardised, the projector learns at its own rate, and with ``sft.rank.select_every`` the
trainer keeps the adapter that scores best on the validation sample.

A residual system (cprec_core.training.residual) trains the same way on z(classic score) +
g * z(LLM score), its classic partner's scores computed for every batch.

The SFT trainer (cprec_core.training.sft) holds one objective, this one or
cprec_core.training.next_token_objective, and asks it the few things they differ in.
"""

from __future__ import annotations

import dataclasses

import torch

from cprec_core.config import SFTConfig
from cprec_core.training.hybrid_run import candidate_batch, classic_scores
from cprec_core.training.loop import autocast, fingerprint, micro_batches
from cprec_core.training.rank_loss import candidate_loss
from cprec_core.training.residual import gate_from


class CandidateObjective:
    name = "rank"
    standardise = True  # SASRec vectors standardised before the projector
    tree_attention = True  # every step is a tree forward
    curriculum = False  # the hybrid prompt on every step: validation and test read it, and
    # the projector learns only where it is in the graph (LLaRA's curriculum left it about
    # two steps at the peak rate in study-rank)

    def __init__(self, cfg: SFTConfig, residual: bool = False):
        self.cfg = cfg
        self.residual = residual  # ranks by z(classic) + g * z(LLM): the trainer's partner
        if residual:
            self.name = "residual"
        self.epochs = cfg.rank.epochs
        self.max_samples = cfg.rank.max_samples
        self.redraw = True  # negatives drawn again for each epoch
        self.select_every = cfg.rank.select_every

    def param_groups(self, lora: list, projector) -> list[dict]:
        """The projector learns from scratch: its own learning rate; the temperature and the
        residual gate too. The gate is in the optimiser for every system (FSDP's optimiser
        state covers every parameter of the projector); outside a residual system it is
        never in the graph, so it gets no gradient and stays 0."""
        return [{"params": lora, "lr": self.cfg.rank.lr},
                {"params": list(projector.net.parameters()), "lr": self.cfg.rank.projector_lr},
                {"params": [projector.log_temperature], "lr": self.cfg.rank.temperature_lr},
                {"params": [projector.residual_weight], "lr": self.cfg.rank.residual_lr}]

    def prepare(self, trainer) -> str:
        """Nothing to tokenize ahead (candidates change every epoch); the fingerprint of
        every epoch's windows, the settings, the system, the model and the classic partner."""
        partner = trainer.partner and [trainer.partner.name, trainer.partner.seed]
        return fingerprint([[[[s.user, s.history, s.candidates] for s in e]
                             for e in trainer.epochs], dataclasses.asdict(self.cfg),
                            trainer.system, trainer.profile.model.name, partner])

    def longest_row(self, trainer) -> int:
        """Prompt and every candidate's answer, measured on the first 64 windows."""
        batch = candidate_batch(trainer, trainer.epochs[0][:64], True)
        return max(len(p) for p in batch.inputs.prompt_ids) + int(batch.answer_tokens.sum(1).max())

    def step(self, trainer, step: int, hybrid: bool) -> dict:
        """Forwards and backwards of one step; the mean losses per case and the tokens (each
        prompt once, every candidate's answer)."""
        acc = trainer.accelerator
        cases = [trainer.epochs[trainer.step_epoch[step]][i] for i in trainer.steps[step]]
        # loss, its two parts, tokens, temperature, gate
        sums = torch.zeros(6, device=trainer.device)
        for part, sync in micro_batches(acc, trainer.model, cases, self.cfg.micro_batch):
            batch = candidate_batch(trainer, part, hybrid)
            classic = classic_scores(trainer, part)
            with sync, autocast(trainer.device, trainer.dtype):
                scores, ranking, calibrated = trainer.model(
                    candidates=batch.inputs, hybrid=hybrid, calibrated=True, classic=classic)
            loss = candidate_loss(scores.float(), batch, self.cfg.rank.ntp_weight,
                                  calibrated.float())
            acc.backward(loss.total * acc.num_processes / len(cases))
            tokens = sum(len(p) for p in batch.inputs.prompt_ids) + batch.answer_tokens.sum()
            # the temperature and gate as the forward used them (under FSDP the parameters
            # are sharded outside the forward), weighted by the cases scored
            temperature = learned_temperature(ranking.detach(), calibrated.detach())
            gate = 0.0 if classic is None else gate_from(ranking.detach(), classic, scores.detach())
            sums += torch.tensor([loss.total.item(), loss.ranking.item(), loss.ntp.item(),
                                  float(tokens), temperature * len(part), gate * len(part)],
                                 device=sums.device)
        sums = acc.reduce(sums, reduction="sum")
        total, ranking, ntp = (sums[:3] / len(cases)).tolist()
        temperature, gate = (sums[4:] / len(cases)).tolist()
        fields = {"loss": total, "tokens": int(sums[3]), "rank_loss": round(ranking, 5),
                  "ntp_loss": round(ntp, 5), "temperature": round(temperature, 4)}
        if self.residual:
            fields["gate"] = round(gate, 4)
        return fields


def learned_temperature(ranking: torch.Tensor, calibrated: torch.Tensor) -> float:
    """The temperature a forward divided by (ranking / calibrated)."""
    keep = calibrated != 0
    return float((ranking.float()[keep] / calibrated.float()[keep]).median()) if keep.any() else 1.0
