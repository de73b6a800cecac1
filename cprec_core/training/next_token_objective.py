"""The paper's SFT objective (LLaRA's): next-token loss on the answer title and EOS.

Each window is tokenized ahead in both prompts (hybrid and text-only; the curriculum picks
one per step), negatives are drawn once, and every parameter learns at ``sft.lr``. The
other objective, with the same methods, is cprec_core.training.candidate_objective.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from cprec_core.config import SFTConfig
from cprec_core.prompts import encode_sft_example
from cprec_core.training.loop import autocast, fingerprint, micro_batches


class NextTokenObjective:
    name = "ntp"
    standardise = False
    tree_attention = False
    curriculum = True  # LLaRA's: the hybrid prompt with probability step / total

    def __init__(self, cfg: SFTConfig):
        self.cfg = cfg
        self.epochs = cfg.epochs
        self.max_samples = cfg.max_samples
        self.redraw = False  # the same candidates every epoch, as the paper's recipe
        self.select_every = 0  # the last step's weights are kept
        self.rows: dict[bool, list[dict]] = {}

    def param_groups(self, lora: list, projector) -> list[dict]:
        """One rate for all (the temperature is the candidate objective's: no gradient)."""
        return [{"params": lora + list(projector.parameters()), "lr": self.cfg.lr}]

    def prepare(self, trainer) -> str:
        """Every window tokenized in both prompts; the fingerprint of the hybrid rows, the
        settings, the system and the model."""
        inputs = trainer.inputs
        self.rows = {hybrid: [encode_sft_example(s, inputs.titles, trainer.tokenizer,
                                                 trainer.placeholder_id, hybrid)
                              for s in trainer.samples]
                     for hybrid in (True, False)}
        return fingerprint([[r["input_ids"] for r in self.rows[True]],
                            dataclasses.asdict(self.cfg), trainer.system,
                            trainer.profile.model.name])

    def longest_row(self, trainer) -> int:
        return max(len(r["input_ids"]) for r in self.rows[True])

    def batch(self, trainer, ids: np.ndarray, hybrid: bool) -> tuple[torch.Tensor, ...]:
        """(input ids, labels, attention mask, item slots) of the windows ``ids``, padded
        with EOS to the widest."""
        rows = [self.rows[hybrid][i] for i in ids]
        width = max(len(r["input_ids"]) for r in rows)
        input_ids = torch.full((len(rows), width), trainer.tokenizer.eos_token_id,
                               dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        slots = []
        for k, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[k, :n] = torch.tensor(r["input_ids"])
            labels[k, :n] = torch.tensor(r["labels"])
            mask[k, :n] = 1
            slots += [trainer.inputs.local[i] for i in r["slot_items"]]
        device = trainer.device
        return (input_ids.to(device), labels.to(device), mask.to(device),
                torch.tensor(slots, dtype=torch.long, device=device))

    def step(self, trainer, step: int, hybrid: bool) -> dict:
        """Forwards and backwards of one step; the mean loss per target token."""
        acc, ids, rows = trainer.accelerator, trainer.steps[step], self.rows[hybrid]
        n_targets = sum(sum(1 for t in rows[i]["labels"][1:] if t != -100) for i in ids)
        total = torch.zeros((), device=trainer.device)
        for part, sync in micro_batches(acc, trainer.model, ids, self.cfg.micro_batch):
            with sync, autocast(trainer.device, trainer.dtype):
                loss = trainer.model(*self.batch(trainer, part, hybrid), hybrid)
            acc.backward(loss * acc.num_processes / n_targets)
            total += loss.detach().float()
        return {"loss": float(acc.reduce(total, reduction="sum")) / n_targets,
                "tokens": sum(len(rows[i]["input_ids"]) for i in ids)}
