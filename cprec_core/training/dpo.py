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

A trainer of its own, built from the pieces SFT uses too (cprec_core.training.hybrid_run:
the domain's inputs, the hybrid model, validation scoring; cprec_core.training.loop: the
step loop with ``dpo.checkpoint_every`` and ``dpo.grad_clip``): bf16 where supported,
checkpoints with exact resume, ``train_log.jsonl`` (with the reward margin and the accuracy
of chosen over rejected), validation scoring of the final weights, the manifest (naming
the SFT adapter and the pairs it came from). The output is an SFT-style run folder
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
from transformers import AutoTokenizer

from cprec_core.cli import (add_domain_run_arguments, add_profile_arguments,
                            add_reporter_argument, profile_from_args, run_trainer)
from cprec_core.config import Profile
from cprec_core.data.sources.base import file_sha256
from cprec_core.layout import RunManifest
from cprec_core.models.candidate_tree import TREE_ATTENTION
from cprec_core.models.hybrid import (CandidateInputs, HybridLM, Projector,
                                      add_placeholder_to_tokenizer)
from cprec_core.models.loader import resolve_dtype
from cprec_core.models.lora import load_trainable_lora
from cprec_core.progress import Reporter
from cprec_core.prompts import Case, encode_answer, encode_prompt
from cprec_core.provenance import git_revision, processor
from cprec_core.systems import system as registered
from cprec_core.training import checkpointing, distributed, dry_run
from cprec_core.training.dpo_pairs import ensure_pairs, training_windows
from cprec_core.training.hybrid_run import (SFTError, check_launch, injection, load_base,
                                            load_domain_inputs, publish, validate,
                                            without_per_case)
from cprec_core.tracking import NULL_TRACKER, numbers
from cprec_core.training.loop import (autocast, fingerprint, log_totals, lr_schedule,
                                      micro_batches, read_log, run_steps, tracked_run)
from cprec_core.training.preference_loss import preference_loss
from cprec_core.training.sft import over_seeds


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


class DPOTrainer:
    """Pairs for samples, the preference loss for the objective, the SFT adapter as both
    the start and the (stored) reference."""

    def __init__(self, profile: Profile, domain: str, system: str,
                 reporter: Reporter | None = None, seed: int | None = None):
        entry = registered(system)
        if entry.kind != "dpo":
            raise SFTError(f"{system!r} is not a DPO system of cprec_core.systems")
        self.profile, self.cfg = profile, profile.dpo
        self.partition, self.system, self.domain = domain, system, domain
        self.source = entry.sft_init
        if not registered(self.source).ranks_candidates:
            raise SFTError(f"{system}: DPO starts from a candidate-aware SFT system, not"
                           f" {self.source!r}")
        self.seed = profile.sft.seeds_for(self.source)[0] if seed is None else seed
        self.run = profile.layout.sft_run(system, domain, self.seed)  # checks the key
        self.source_run = profile.layout.sft_run(self.source, domain, self.seed)
        self.reporter = reporter or Reporter()
        self.tracker = NULL_TRACKER  # the MLflow run while train() runs
        self.listing = profile.sft.listing_for(self.source)  # the prompt the SFT system reads
        self.candidate_vectors = profile.sft.candidate_vectors_for(self.source)
        self.label = f"{system}[{domain}]"
        self.sharded = None  # DPO runs under DDP only (check_launch)
        self.partner = None  # no residual DPO system (validate reads it)
        self.answers: dict[int, list[int]] = {}  # answer token ids by item

    # -- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        if not self.source_run.exists():
            raise SFTError(f"{self.source_run.adapter}: no {self.source} adapter for"
                           f" {self.partition!r} seed {self.seed}; train it first")
        self.accelerator = Accelerator(cpu=self.profile.device == "cpu")
        self.device = self.accelerator.device
        self.dtype = resolve_dtype(self.profile.sft.dtype, str(self.device))
        check_launch(self.accelerator, "dpo", self.profile)
        self.tokenizer = AutoTokenizer.from_pretrained(self.profile.layout.tokenizer_dir)
        self.inputs = load_domain_inputs(self.profile, self.partition, True, self.reporter.log)
        self.domain = self.inputs.domain
        self._setup_steps()
        base, self.placeholder_id = load_base(self.profile, self.tokenizer, self.dtype,
                                              self.device)
        torch.manual_seed(self.seed)
        no_dropout = dataclasses.replace(self.profile.cpt.lora, dropout=0.0)  # no shared masks
        self.peft_model = load_trainable_lora(base, self.source_run.adapter, no_dropout)
        disable_dropout(self.peft_model)
        base.set_attn_implementation(TREE_ATTENTION)
        self.projector = Projector(self.inputs.item_table.shape[1],
                                   base.get_input_embeddings().embedding_dim)
        self.projector.load_state_dict(load_file(self.source_run.projector))
        self.projector.requires_grad_(False)  # the SFT adapter's, kept
        self.model = HybridLM(self.peft_model, self.projector, self.inputs.item_table,
                              self.placeholder_id)
        self.diagnostics = {"before": injection(self)}
        lora = [p for p in self.peft_model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in lora)
        self.optimizer = torch.optim.AdamW([{"params": lora, "lr": self.cfg.lr}],
                                           weight_decay=0.0)
        self.scheduler, self.schedule = lr_schedule(
            self.optimizer, self.total_steps, self.cfg.warmup_ratio, self.cfg.min_lr_ratio,
            self.cfg.constant_below)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.start_step = self.load_checkpoint()

    def _setup_steps(self) -> None:
        """The mined pairs grouped by window, ``dpo.epochs`` shuffled passes over them in
        steps of ``dpo.batch_size`` windows, and the fingerprint of that plan."""
        if not self.run.pairs.is_file():
            raise SFTError(f"{self.run.pairs}: no pairs; mine them first: python -m"
                           f" cprec_core.training.dpo_pairs --domain {self.partition} --system"
                           f" {self.system}")
        self.windows = windows_from_pairs(pq.read_table(self.run.pairs))
        self.steps = []
        for e in range(self.cfg.epochs):
            order = np.random.default_rng(self.seed + e).permutation(len(self.windows))
            self.steps += [order[i:i + self.cfg.batch_size]
                           for i in range(0, len(order), self.cfg.batch_size)]
        self.total_steps = len(self.steps)
        self.fingerprint = fingerprint(
            [file_sha256(self.run.pairs), dataclasses.asdict(self.cfg), self.system,
             self.profile.model.name])

    def dry_run(self, processes: int | None = None) -> dict:
        """The windows the pairs come from, the widest tree row (prompt, chosen answer and
        the longest ``hard + random`` other answers) and a memory estimate for one
        micro-batch of it; no model, no pairs needed (cprec_core.training.dry_run)."""
        self.tokenizer = AutoTokenizer.from_pretrained(self.profile.layout.tokenizer_dir)
        placeholder = add_placeholder_to_tokenizer(self.tokenizer)
        windows, titles = training_windows(self.profile, self.partition)
        if not windows:
            raise SFTError(f"domain {self.partition!r} has no training window for DPO")
        rejected = self.cfg.hard_negatives + self.cfg.random_negatives
        longest = 0
        for case in windows[:256]:
            prompt, _ = encode_prompt(case, titles, self.tokenizer, placeholder, True,
                                      self.listing)
            others = sorted((len(encode_answer(titles[i], self.tokenizer))
                             for i in case.candidates if i != case.target), reverse=True)
            longest = max(longest, len(prompt) + len(encode_answer(titles[case.target],
                                                                   self.tokenizer))
                          + sum(others[:rejected]))
        steps = -(-len(windows) // self.cfg.batch_size) * self.cfg.epochs
        source = (f"from {self.source_run.adapter}" if self.source_run.exists() else
                  f"from {self.source} (not trained yet)")
        lines = [f"DPO {self.system} seed {self.seed} on {self.partition}: {len(windows)} windows x"
                 f" {rejected} pairs, {steps} steps of {self.cfg.batch_size} windows, widest"
                 f" row {longest} tokens; {source}"]
        shape = dry_run.Shape(self.cfg.micro_batch, longest, False, self.profile.sft.dtype)
        result = dry_run.report(self.profile, "dpo", shape, self.profile.cpt.lora, lines,
                                self.tokenizer, self.profile.layout.tokenizer_dir, processes,
                                self.reporter.log)
        return {"dry_run": True, "steps": steps, **result}

    # -- the loop ---------------------------------------------------------------------------
    def pair_inputs(self, windows: list[Window]) -> CandidateInputs:
        """Each window's prompt (the SFT system's, listing its candidates where that system's
        does) and, as its continuations, the chosen answer and the rejected ones."""
        prompt_ids, slots, conts, answer_slots = [], [], [], []
        titles, local = self.inputs.titles, self.inputs.local
        for w in windows:
            ids, items = encode_prompt(w.case, titles, self.tokenizer, self.placeholder_id,
                                       True, self.listing)
            prompt_ids.append(torch.tensor(ids, device=self.device))
            slots += [local[i] for i in items]
            answers = []
            for item in (w.case.target, *w.rejected):
                if item not in self.answers:
                    self.answers[item] = encode_answer(titles[item], self.tokenizer)
                answers.append(self.answers[item])
                answer_slots.append(local[item])
            conts.append(answers)
        candidate_slots = (torch.tensor(answer_slots, dtype=torch.long, device=self.device)
                           if self.candidate_vectors else None)  # as the SFT system reads them
        return CandidateInputs(prompt_ids, torch.tensor(slots, dtype=torch.long,
                                                        device=self.device), conts,
                               candidate_slots)

    def policy_scores(self, inputs: CandidateInputs) -> torch.Tensor:
        """(W, 1 + rejected) summed answer log-likelihoods under the policy."""
        with autocast(self.device, self.dtype):
            return self.model(candidates=inputs, hybrid=True).float()

    def train_step(self, step: int) -> dict:
        """Forwards and backwards of one step (loop.one_step updates); the mean loss, reward
        margin, accuracy and chosen reward per pair, and the tokens."""
        acc = self.accelerator
        windows = [self.windows[i] for i in self.steps[step]]
        n_pairs = sum(len(w.rejected) for w in windows)
        sums = torch.zeros(5, device=self.device)  # loss, margin, accuracy, chosen reward, tokens
        for part, sync in micro_batches(acc, self.model, windows, self.cfg.micro_batch):
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
                                      self.cfg.beta, self.cfg.loss_type, tok_c.float(), tok_r.float())
                acc.backward(out.losses.sum() * acc.num_processes / n_pairs)
            margins = out.chosen_rewards - out.rejected_rewards
            tokens = sum(len(p) for p in inputs.prompt_ids) + sum(sum(w.tokens) for w in part)
            sums += torch.stack([out.losses.detach().sum(), margins.sum(), (margins > 0).float().sum(),
                                 out.chosen_rewards.sum(), torch.tensor(float(tokens), device=self.device)])
        sums = acc.reduce(sums, reduction="sum")
        loss, margin, accuracy, chosen = (sums[:4] / n_pairs).tolist()
        return {"prompt": "hybrid", "schedule": self.schedule, "samples": len(windows),
                "loss": loss,
                "tokens": int(sums[4]), "margin": round(margin, 5),
                "accuracy": round(accuracy, 4), "chosen_reward": round(chosen, 5),
                "pairs": n_pairs}

    def train(self, stop_after: int | None = None) -> dict:
        """Runs to the end (or ``stop_after`` steps), logging to one MLflow run that a resume
        of the same plan continues."""
        with tracked_run(self, "dpo", f"dpo {self.system} {self.partition} seed {self.seed}",
                         "dpo", self.cfg, data_version=self.inputs.data_version, seed=self.seed,
                         key=self.fingerprint, tags={"system": self.system,
                                                     "domain": self.partition},
                         system=self.system, domain=self.partition, steps=self.total_steps,
                         windows=len(self.windows), schedule=self.schedule,
                         sft_adapter=str(self.source_run.adapter)) as self.tracker:
            result = run_steps(self, self.cfg.checkpoint_every, self.cfg.grad_clip, stop_after,
                               curves="preference_curves")
        return {**result, "seed": self.seed}

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> None:
        """Adapter, optimiser, scheduler and RNGs (the projector is the SFT run's, frozen)."""
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            checkpointing.save(self.run.checkpoints, step, {"plan": self.fingerprint},
                               self.peft_model, self.optimizer, self.scheduler)

    def load_checkpoint(self) -> int:
        """The step to start from: 0, or the step of the newest intact checkpoint of this
        plan (checkpointing.load); the loop then cuts the train log back to it."""
        found = checkpointing.load(
            self.run.checkpoints, self.fingerprint,
            lambda checkpoint: checkpointing.restore(checkpoint, self.peft_model,
                                                     self.optimizer, self.scheduler),
            self.reporter.log, main=self.accelerator.is_main_process,
            barrier=self.accelerator.wait_for_everyone)
        return 0 if found is None else found.step

    def save_final(self) -> dict:
        """The final weights scored on the validation sample (no selection), the manifest,
        the adapter with the (unchanged) projector beside it."""
        report = validate(self, self.cfg.micro_batch)
        chosen = None if report is None else {"step": self.total_steps, **report}
        if chosen is not None and self.accelerator.is_main_process:
            self.tracker.log_step(self.total_steps, numbers(report, "valid/"))
        with distributed.full_parameters(self.accelerator, self.model):
            self.diagnostics["after"] = injection(self)
        rows = read_log(self.run.train_log)
        info = json.loads(self.run.pairs_info.read_text())
        manifest = RunManifest(
            kind="dpo", objective="dpo", system=self.system, domain=self.domain,
            partition=self.partition, data_version=self.inputs.data_version, seed=self.seed,
            base_model=self.profile.model.name, init_adapter=str(self.source_run.adapter),
            listing=self.listing, samples=len(self.windows), windows=len(self.windows),
            epochs=self.cfg.epochs, steps=self.total_steps, schedule=self.schedule,
            fingerprint=self.fingerprint,
            validation=without_per_case(chosen), scoring=chosen["scoring"] if chosen else None,
            validation_curve=[without_per_case(chosen)] if chosen else [],
            injection=self.diagnostics,
            hybrid_steps=len(rows), **log_totals(rows), trainable_parameters=self.trainable,
            placeholder_id=self.placeholder_id, config=dataclasses.asdict(self.cfg),
            dtype=str(self.dtype).replace("torch.", ""), git_revision=git_revision(),
            processor=processor(str(self.device)), sft_system=self.source,
            sft_adapter=str(self.source_run.adapter), sft_fingerprint=info["sft_fingerprint"],
            pairs=str(self.run.pairs), pairs_sha256=file_sha256(self.run.pairs),
            pair_summary=info["summary"], mlflow_run_id=self.tracker.wait_open())
        publish(self, manifest)
        return manifest.to_dict()


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
                     f" {trainer.total_steps} steps ({trainer.schedule} rate), {trainer.dtype}, from"
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
