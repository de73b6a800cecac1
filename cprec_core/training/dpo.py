"""DPO after SFT: preference post-training of a candidate-aware SFT adapter.

    accelerate launch -m cprec_core.training.dpo --profile demo --domain crime --system cprec_dpo
    python -m cprec_core.training.dpo --profile demo --domain crime --system llara_dpo
    python -m cprec_core.training.dpo --profile demo --domain crime --dry-run   # plan only

The policy starts from the SFT adapter of the system's ``sft_init`` (``cprec_rank`` for
``cprec_dpo``), and that same adapter, frozen, is the reference. First the pairs are mined
(cprec_core.training.dpo_pairs, stored beside the run as ``pairs.parquet`` with
``pairs.json``, reused while the SFT adapter and the mining settings are unchanged); their
stored scores are the reference log-likelihoods, so training runs no reference forward.
Each step reads ``dpo.batch_size`` windows; one tree forward per micro-batch scores a
window's chosen answer and its rejected ones behind one shared prompt (the prompt the SFT
system reads), and cprec_core.training.preference_loss turns them into the loss. Only the
LoRA weights learn (every dropout off, so the policy starts exactly at the reference); the
projector stays the SFT adapter's.

Everything else is the SFT trainer's (cprec_core.training.sft): bf16 where supported,
checkpoints with exact resume, ``train_log.jsonl`` (here with the reward margin and the
accuracy of chosen over rejected), validation scoring of the final weights, the manifest
(naming the SFT adapter and the pairs it came from). The output is an SFT-style run folder
of the DPO system (cprec_core.layout), so the evaluation scores it like any SFT system.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from dataclasses import dataclass

import numpy as np
import pyarrow.parquet as pq
import torch
from accelerate import Accelerator
from safetensors.torch import load_file
from transformers import AutoTokenizer, get_wsd_schedule

from cprec_core.cli import (add_domain_run_arguments, add_profile_arguments,
                            add_reporter_argument, profile_from_args, run_trainer)
from cprec_core.config import Profile
from cprec_core.data.sources.base import file_sha256
from cprec_core.models.candidate_tree import TREE_ATTENTION
from cprec_core.models.hybrid import (CandidateInputs, HybridLM, Projector,
                                      add_placeholder_to_tokenizer,
                                      add_placeholder_token)
from cprec_core.models.loader import load_base_model, resolve_dtype
from cprec_core.models.lora import load_trainable_lora
from cprec_core.models.quantization import prepare_for_training
from cprec_core.progress import Reporter
from cprec_core.prompts import Case, encode_answer, encode_prompt
from cprec_core.systems import system as registered
from cprec_core.training import dry_run
from cprec_core.training.dpo_pairs import ensure_pairs, training_windows
from cprec_core.training.loop import autocast, fingerprint, micro_batches
from cprec_core.training.preference_loss import preference_loss
from cprec_core.training.sft import SFTError, SFTTrainer, over_seeds


@dataclass(frozen=True)
class Window:
    """A training window with its pairs: the chosen answer (the target) against each
    rejected one, and the reference's summed log-likelihoods of all of them."""

    case: Case
    rejected: tuple[int, ...]
    ref_chosen: float
    ref_rejected: tuple[float, ...]
    tokens: tuple[int, ...]  # answer tokens of the chosen, then of each rejected


def windows_from_pairs(table) -> list[Window]:
    """Pairs grouped back into their windows, in window order."""
    by_window: dict[int, list[dict]] = {}
    for row in table.to_pylist():
        by_window.setdefault(row["window"], []).append(row)
    out = []
    for _, rows in sorted(by_window.items()):
        first = rows[0]
        out.append(Window(
            Case(first["user"], first["history"], first["candidates"], first["chosen"]),
            tuple(r["rejected"] for r in rows), first["ref_chosen"],
            tuple(r["ref_rejected"] for r in rows),
            (first["chosen_tokens"], *(r["rejected_tokens"] for r in rows))))
    return out


def disable_dropout(model: torch.nn.Module) -> None:
    """Every dropout of ``model`` off (LoRA's comes from the saved adapter's config), as
    TRL's ``disable_dropout``: the policy's log-likelihoods at step 0 are then the stored
    reference's, and the DPO loss starts at ln 2."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0


class DPOTrainer(SFTTrainer):
    """The SFT trainer with pairs for samples and the preference loss for the objective."""

    TRAINER = "dpo"

    def __init__(self, profile: Profile, domain: str, system: str,
                 reporter: Reporter | None = None, seed: int | None = None):
        entry = registered(system)
        if entry.kind != "dpo":
            raise SFTError(f"{system!r} is not a DPO system of cprec_core.systems")
        super().__init__(profile, domain, system, reporter, seed)
        self.dpo = profile.dpo
        self.source = entry.sft_init
        if not registered(self.source).ranks_candidates:
            raise SFTError(f"{system}: DPO starts from a candidate-aware SFT system, not"
                           f" {self.source!r}")
        self.source_run = profile.layout.sft_run(self.source, domain, self.seed)
        self.listing = profile.sft.listing_for(self.source)

    @property
    def stage(self):
        """DPO's own checkpoint_every and grad_clip drive the inherited loop."""
        return self.dpo

    # -- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        if not self.source_run.exists():
            raise SFTError(f"{self.source_run.adapter}: no {self.source} adapter for"
                           f" {self.partition!r} seed {self.seed}; train it first")
        self.accelerator = Accelerator(cpu=self.profile.device == "cpu")
        self.device = self.accelerator.device
        self.dtype = resolve_dtype(self.profile.sft.dtype, str(self.device))
        self.check_setup()
        self.tokenizer = AutoTokenizer.from_pretrained(self.profile.layout.tokenizer_dir)
        self._setup_sasrec()
        self._load_domain()
        if not self.run.pairs.is_file():
            raise SFTError(f"{self.run.pairs}: no pairs; mine them first: python -m"
                           f" cprec_core.training.dpo_pairs --domain {self.partition} --system"
                           f" {self.system}")
        self.windows = windows_from_pairs(pq.read_table(self.run.pairs))
        self.samples, self.epochs = self.windows, [self.windows] * self.dpo.epochs
        self.steps, self.step_epoch = [], []
        for e in range(self.dpo.epochs):
            order = np.random.default_rng(self.seed + e).permutation(len(self.windows))
            for i in range(0, len(order), self.dpo.batch_size):
                self.steps.append(order[i:i + self.dpo.batch_size])
                self.step_epoch.append(e)
        self.total_steps = len(self.steps)
        self.fingerprint = fingerprint(
            [file_sha256(self.run.pairs), dataclasses.asdict(self.dpo), self.system,
             self.profile.model.name])
        base = load_base_model(self.profile.model.name, self.profile.layout.cache_dir, self.dtype,
                               self.tokenizer, self.profile.model.trust_remote_code,
                               self.profile.model.quantization, self.device,
                               allow_pickle=self.profile.model.allow_pickle_weights)
        base = prepare_for_training(base, self.profile.model.quantization, False)
        self.placeholder_id = add_placeholder_token(self.tokenizer, base)
        torch.manual_seed(self.seed)
        self.init_run = self.source_run
        no_dropout = dataclasses.replace(self.profile.cpt.lora, dropout=0.0)  # no shared masks
        self.peft_model = load_trainable_lora(base, self.source_run.adapter, no_dropout)
        disable_dropout(self.peft_model)
        base.set_attn_implementation(TREE_ATTENTION)
        self.projector = Projector(self.item_table.shape[1],
                                   base.get_input_embeddings().embedding_dim)
        self.projector.load_state_dict(load_file(self.source_run.projector))
        self.projector.requires_grad_(False)
        self.model = HybridLM(self.peft_model, self.projector, self.item_table, self.placeholder_id)
        self.diagnostics = {"before": self._injection()}
        lora = [p for p in self.peft_model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in lora)
        self.optimizer = torch.optim.AdamW([{"params": lora, "lr": self.dpo.lr}], weight_decay=0.0)
        warmup = max(1, round(self.dpo.warmup_ratio * self.total_steps))
        self.scheduler = get_wsd_schedule(
            self.optimizer, num_warmup_steps=warmup, num_stable_steps=0,
            num_decay_steps=max(1, self.total_steps - warmup), decay_type="cosine",
            min_lr_ratio=self.dpo.min_lr_ratio)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.curriculum = np.random.default_rng(self.seed + 1)  # unused; kept in checkpoints
        self.answers: dict[int, list[int]] = {}
        self.start_step = self.load_checkpoint()

    def dry_run(self, processes: int | None = None) -> dict:
        """The windows the pairs come from, the widest tree row (prompt, chosen answer and
        the longest ``hard + random`` other answers) and a memory estimate for one
        micro-batch of it; no model, no pairs needed (cprec_core.training.dry_run)."""
        self.tokenizer = AutoTokenizer.from_pretrained(self.profile.layout.tokenizer_dir)
        placeholder = add_placeholder_to_tokenizer(self.tokenizer)
        windows, titles = training_windows(self.profile, self.partition)
        if not windows:
            raise SFTError(f"domain {self.partition!r} has no training window for DPO")
        rejected = self.dpo.hard_negatives + self.dpo.random_negatives
        longest = 0
        for case in windows[:256]:
            prompt, _ = encode_prompt(case, titles, self.tokenizer, placeholder, True,
                                      self.listing)
            others = sorted((len(encode_answer(titles[i], self.tokenizer))
                             for i in case.candidates if i != case.target), reverse=True)
            longest = max(longest, len(prompt) + len(encode_answer(titles[case.target],
                                                                   self.tokenizer))
                          + sum(others[:rejected]))
        steps = -(-len(windows) // self.dpo.batch_size) * self.dpo.epochs
        source = (f"from {self.source_run.adapter}" if self.source_run.exists() else
                  f"from {self.source} (not trained yet)")
        lines = [f"DPO {self.system} seed {self.seed} on {self.partition}: {len(windows)} windows x"
                 f" {rejected} pairs, {steps} steps of {self.dpo.batch_size} windows, widest"
                 f" row {longest} tokens; {source}"]
        shape = dry_run.Shape(self.dpo.micro_batch, longest, False, self.profile.sft.dtype)
        result = dry_run.report(self.profile, "dpo", shape, self.profile.cpt.lora, lines,
                                self.tokenizer, self.profile.layout.tokenizer_dir, processes,
                                self.reporter.log)
        return {"dry_run": True, "steps": steps, **result}

    def _selects(self, step: int) -> bool:
        """The final weights are scored on the validation sample (no selection)."""
        return bool(self.validation) and step == self.total_steps

    # -- the loop ---------------------------------------------------------------------------
    def pair_inputs(self, windows: list[Window]) -> CandidateInputs:
        """Each window's prompt (the SFT system's, listing its candidates where that system's
        does) and, as its continuations, the chosen answer and the rejected ones."""
        prompt_ids, slots, conts = [], [], []
        for w in windows:
            ids, items = encode_prompt(w.case, self.titles, self.tokenizer, self.placeholder_id,
                                       True, self.listing)
            prompt_ids.append(torch.tensor(ids, device=self.device))
            slots += [self.local[i] for i in items]
            answers = []
            for item in (w.case.target, *w.rejected):
                if item not in self.answers:
                    self.answers[item] = encode_answer(self.titles[item], self.tokenizer)
                answers.append(self.answers[item])
            conts.append(answers)
        return CandidateInputs(prompt_ids, torch.tensor(slots, dtype=torch.long,
                                                        device=self.device), conts)

    def policy_scores(self, inputs: CandidateInputs) -> torch.Tensor:
        """(W, 1 + rejected) summed answer log-likelihoods under the policy."""
        with autocast(self.device, self.dtype):
            return self.model(candidates=inputs, hybrid=True).float()

    def train_step(self, step: int) -> tuple[float, bool]:
        acc = self.accelerator
        windows = [self.windows[i] for i in self.steps[step]]
        n_pairs = sum(len(w.rejected) for w in windows)
        sums = torch.zeros(5, device=self.device)  # loss, margin, accuracy, chosen reward, tokens
        for part, sync in micro_batches(acc, self.model, windows, self.dpo.micro_batch):
            inputs = self.pair_inputs(part)
            with sync:
                scores = self.policy_scores(inputs)
                pairs = [(j, r) for j, w in enumerate(part) for r in range(len(w.rejected))]
                rows = torch.tensor([j for j, _ in pairs], device=self.device)
                cols = torch.tensor([1 + r for _, r in pairs], device=self.device)
                ref_c = torch.tensor([part[j].ref_chosen for j, _ in pairs], device=self.device)
                ref_r = torch.tensor([part[j].ref_rejected[r] for j, r in pairs], device=self.device)
                tok_c = torch.tensor([part[j].tokens[0] for j, _ in pairs], device=self.device)
                tok_r = torch.tensor([part[j].tokens[1 + r] for j, r in pairs], device=self.device)
                out = preference_loss(scores[rows, 0], scores[rows, cols], ref_c, ref_r,
                                      self.dpo.beta, self.dpo.loss_type, tok_c.float(), tok_r.float())
                acc.backward(out.losses.sum() * acc.num_processes / n_pairs)
            margins = out.chosen_rewards - out.rejected_rewards
            tokens = sum(len(p) for p in inputs.prompt_ids) + sum(sum(w.tokens) for w in part)
            sums += torch.stack([out.losses.detach().sum(), margins.sum(), (margins > 0).float().sum(),
                                 out.chosen_rewards.sum(), torch.tensor(float(tokens), device=self.device)])
        sums = acc.reduce(sums, reduction="sum")
        loss, margin, accuracy, chosen = (sums[:4] / n_pairs).tolist()
        self.last_tokens = int(sums[4])
        self._optimizer_step(True)
        self.last_parts = {"margin": round(margin, 5), "accuracy": round(accuracy, 4),
                           "chosen_reward": round(chosen, 5), "pairs": n_pairs}
        return loss, True

    def _step_tokens(self, step: int, hybrid: bool) -> int:
        return self.last_tokens

    def _manifest_extra(self) -> dict:
        info = json.loads(self.run.pairs_info.read_text())
        return {"objective": "dpo", "sft_system": self.source,
                "sft_adapter": str(self.source_run.adapter),
                "sft_fingerprint": info["sft_fingerprint"], "pairs": str(self.run.pairs),
                "pairs_sha256": file_sha256(self.run.pairs), "pair_summary": info["summary"],
                "windows": len(self.windows), "epochs": self.dpo.epochs,
                "config": dataclasses.asdict(self.dpo)}


def run(profile: Profile, domain: str, system: str, reporter: Reporter | None = None,
        stop_after: int | None = None, seeds: tuple[int, ...] | None = None,
        dry: bool = False, processes: int | None = None) -> dict:
    """Mine (or reuse) the pairs, then train, for each seed of the SFT system it starts
    from (``sft.seeds_for``); the result is the first seed's manifest. ``dry``: the first
    seed's plan and memory estimate for ``processes`` processes instead, nothing mined."""
    reporter = reporter or Reporter()
    entry = registered(system)
    if dry:
        first = (seeds or profile.sft.seeds_for(entry.sft_init))[0]
        return DPOTrainer(profile, domain, system, reporter, first).dry_run(processes)

    def train_one(seed: int) -> dict:
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # several processes: mined before
            ensure_pairs(profile, domain, system, seed, reporter)
        trainer = DPOTrainer(profile, domain, system, reporter, seed)
        trainer.setup()
        reporter.log(f"DPO {system} seed {seed} on {trainer.domain}: {len(trainer.windows)}"
                     f" windows, {sum(len(w.rejected) for w in trainer.windows)} pairs,"
                     f" {trainer.total_steps} steps, {trainer.dtype}, from"
                     f" {trainer.source_run.adapter}, starting at step {trainer.start_step}")
        return trainer.train(stop_after)

    return over_seeds(seeds if seeds is not None else profile.sft.seeds_for(entry.sft_init),
                      train_one)[0]


def main(argv: list[str] | None = None) -> int:
    parser = add_domain_run_arguments(add_reporter_argument(add_profile_arguments(
        argparse.ArgumentParser(description="DPO after SFT, per domain"))),
        "cprec_dpo", "cprec_dpo or llara_dpo", "the SFT system's seeds")
    parser.add_argument("--stop-after", type=int, help="stop after N steps (kill simulation)")
    dry_run.add_arguments(parser)
    args = parser.parse_args(argv)
    profile = profile_from_args(args)
    seeds = tuple(args.seed) if args.seed else None
    return run_trainer(lambda reporter: run(profile, args.domain, args.system, reporter,
                                            args.stop_after, seeds, args.dry_run,
                                            args.processes),
                       (SFTError, KeyError, dry_run.PlanError),
                       args.reporter)  # KeyError: an unknown --system


if __name__ == "__main__":
    sys.exit(main())
