"""The candidate-aware SFT objective (``objective: rank`` in cprec_core.systems).

It reads the same sliding windows as the paper's recipe with negatives re-drawn every
epoch, reads the hybrid prompt on every step (no curriculum), scores every candidate's
answer behind one shared prompt (the tree forward,
cprec_core.models.candidate_tree) and trains on cprec_core.training.rank_loss: the softmax
over the candidates' answer likelihoods plus a weighted next-token loss. SASRec inputs are
standardised, the projector learns at its own rate, and with ``sft.rank.select_every`` the
trainer keeps the adapter that scores best on the validation sample.

The SFT trainer (cprec_core.training.sft) holds one objective, this one or
cprec_core.training.next_token_objective, and asks it the few things they differ in.
"""

from __future__ import annotations

import dataclasses

import torch

from cprec_core.config import SFTConfig
from cprec_core.training.hybrid_run import candidate_batch
from cprec_core.training.loop import autocast, fingerprint, micro_batches
from cprec_core.training.rank_loss import candidate_loss


class CandidateObjective:
    name = "rank"
    standardise = True  # SASRec vectors standardised before the projector
    tree_attention = True  # every step is a tree forward
    curriculum = False  # the hybrid prompt on every step: validation and test read it, and
    # the projector learns only where it is in the graph (LLaRA's curriculum left it about
    # two steps at the peak rate in study-rank)

    def __init__(self, cfg: SFTConfig):
        self.cfg = cfg
        self.epochs = cfg.rank.epochs
        self.max_samples = cfg.rank.max_samples
        self.redraw = True  # negatives drawn again for each epoch
        self.select_every = cfg.rank.select_every

    def param_groups(self, lora: list, projector) -> list[dict]:
        """The projector learns from scratch: its own learning rate; the temperature too."""
        return [{"params": lora, "lr": self.cfg.rank.lr},
                {"params": list(projector.net.parameters()), "lr": self.cfg.rank.projector_lr},
                {"params": [projector.log_temperature], "lr": self.cfg.rank.temperature_lr}]

    def prepare(self, trainer) -> str:
        """Nothing to tokenize ahead (candidates change every epoch); the fingerprint of
        every epoch's windows, the settings, the system and the model."""
        return fingerprint([[[[s.user, s.history, s.candidates] for s in e]
                             for e in trainer.epochs], dataclasses.asdict(self.cfg),
                            trainer.system, trainer.profile.model.name])

    def longest_row(self, trainer) -> int:
        """Prompt and every candidate's answer, measured on the first 64 windows."""
        batch = candidate_batch(trainer, trainer.epochs[0][:64], True)
        return max(len(p) for p in batch.inputs.prompt_ids) + int(batch.answer_tokens.sum(1).max())

    def step(self, trainer, step: int, hybrid: bool) -> dict:
        """Forwards and backwards of one step; the mean losses per case and the tokens (each
        prompt once, every candidate's answer)."""
        acc = trainer.accelerator
        cases = [trainer.epochs[trainer.step_epoch[step]][i] for i in trainer.steps[step]]
        sums = torch.zeros(5, device=trainer.device)  # loss, its two parts, tokens, temperature
        for part, sync in micro_batches(acc, trainer.model, cases, self.cfg.micro_batch):
            batch = candidate_batch(trainer, part, hybrid)
            with sync, autocast(trainer.device, trainer.dtype):
                scores, calibrated = trainer.model(candidates=batch.inputs, hybrid=hybrid,
                                                   calibrated=True)
            loss = candidate_loss(scores.float(), batch, self.cfg.rank.ntp_weight,
                                  calibrated.float())
            acc.backward(loss.total * acc.num_processes / len(cases))
            tokens = sum(len(p) for p in batch.inputs.prompt_ids) + batch.answer_tokens.sum()
            # the temperature as the forward used it (under FSDP the parameter is sharded
            # outside the forward), weighted by the cases it scored
            ratio = scores.detach().float() / calibrated.detach().float()
            temperature = ratio[calibrated.detach() != 0].median() * len(part)
            sums += torch.stack([loss.total.detach(), loss.ranking, loss.ntp,
                                 tokens.to(sums.device), temperature.to(sums.device)])
        sums = acc.reduce(sums, reduction="sum")
        total, ranking, ntp = (sums[:3] / len(cases)).tolist()
        temperature = float(sums[4] / len(cases))
        return {"loss": total, "tokens": int(sums[3]), "rank_loss": round(ranking, 5),
                "ntp_loss": round(ntp, 5), "temperature": round(temperature, 4)}
