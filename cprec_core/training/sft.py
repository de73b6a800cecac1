"""Per-domain SFT with LLaRA's hybrid prompt and curriculum, LoRA from a CPT adapter or fresh.

    accelerate launch -m cprec_core.training.sft --profile demo --domain crime --system cprec
    python -m cprec_core.training.sft --profile demo --domain crime --system llara
    python -m cprec_core.training.sft --profile demo --domain crime --dry-run   # plan only

Samples: cprec_core.training.sft_samples (sliding windows, 20 fixed-seed candidates). Each
optimiser step reads the hybrid prompt with probability step / total (curriculum), else the
text-only prompt, for which the projector gets no gradient. The placeholder embeddings are
replaced by ``projector(SASRec item embedding)`` (cprec_core.models.hybrid) and the loss
covers the answer title and EOS only. The system's registry entry (cprec_core.systems) says
where its LoRA starts: a CPT adapter (loaded through peft) or fresh.

The candidate-aware systems (``objective: rank`` in the registry) read the same windows
with negatives re-drawn every epoch, train on cprec_core.training.rank_loss (softmax over
the candidates' answer likelihoods from one tree forward, plus a weighted next-token loss)
with standardised SASRec inputs and the projector at its own learning rate, and, with
``sft.rank.select_every``, keep the adapter that scores best on a fixed validation sample.
Every system is scored on that sample after training: the validation log says which of
summed or mean log-likelihood ranks better (the evaluation's headline family), and the
manifest shows what the injected vectors carry before and after training
(``injection_diagnostics``).

Same qualities as CPT: bf16 where supported, several processes under DDP or FSDP
(``train.distributed``, cprec_core.training.distributed), checkpoints with exact resume (adapter,
projector, optimiser, scheduler, RNGs incl. the curriculum's; the best validation adapters
kept until a checkpoint covers them), a log line per step, Pipes-aware reporting. Output:
one ``TrainedAdapter`` folder per system, domain and seed (cprec_core.layout), with the
projector beside the adapter.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import duckdb
import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from peft import set_peft_model_state_dict
from safetensors.torch import save_file
from transformers import AutoTokenizer, get_wsd_schedule

from cprec_core.cli import (add_domain_run_arguments, add_profile_arguments,
                            add_reporter_argument, profile_from_args, run_trainer)
from cprec_core.config import Profile
from cprec_core.data.cases import load_cases
from cprec_core.data.db import connect
from cprec_core.data.domain_users import load_domain_data
from cprec_core.layout import TrainedAdapter
from cprec_core.models.candidate_tree import TREE_ATTENTION
from cprec_core.models.hybrid import (HybridLM, Projector, add_placeholder_to_tokenizer,
                                      add_placeholder_token, collab_inputs,
                                      injection_diagnostics)
from cprec_core.models.loader import load_base_model, resolve_dtype
from cprec_core.models.lora import apply_lora, load_trainable_lora
from cprec_core.models.quantization import (QuantizationError, check_quantization,
                                            prepare_for_training)
from cprec_core.progress import Progress, Reporter
from cprec_core.prompts import Case, encode_sft_example
from cprec_core.provenance import git_revision, processor
from cprec_core.systems import cpt_variant as cpt_variant_entry, system as registered
from cprec_core.training import checkpointing, distributed, dry_run
from cprec_core.training.loop import autocast, fingerprint, micro_batches, publishing
from cprec_core.training.memory import available_memory, estimate_memory
from cprec_core.training.next_item import load_next_item_model
from cprec_core.training.rank_loss import candidate_loss, rank_batch, validation_report
from cprec_core.training.sft_samples import build_samples, choose_hybrid, hybrid_probability


class SFTError(RuntimeError):
    """SFT cannot start: missing inputs (SASRec, CPT adapter), too small a domain."""


class SFTTrainer:
    TRAINER = "sft"  # its name for train.distributed (cprec_core.training.distributed)

    def __init__(self, profile: Profile, domain: str, system: str,
                 reporter: Reporter | None = None, seed: int | None = None,
                 run: TrainedAdapter | None = None):
        """``domain``: the partition key (``crime``; ``self.partition``), the display name
        (``Crime``) is ``self.domain`` once the data is loaded. ``run``: where the adapter is
        written; the profile's run of (system, domain, seed) unless given (a lever benchmark
        trains a variant beside the study's run)."""
        self.profile, self.cfg = profile, profile.sft
        self.partition, self.system = domain, system
        self.seed = self.cfg.seeds[0] if seed is None else seed
        own = profile.layout.sft_run(system, domain, self.seed)  # checks the key
        self.run = own if run is None else run
        self.reporter = reporter or Reporter()
        self.ranking = registered(system).ranks_candidates
        self.listing = self.cfg.listing_for(system)
        self.sharded = None  # under FSDP: the checkpointing.ShardedModel of the prepared model

    # -- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        # text-only steps leave the projector out of the graph: DDP must allow that
        self.accelerator = Accelerator(cpu=self.profile.device == "cpu", kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=True)])
        self.device = self.accelerator.device
        self.dtype = resolve_dtype(self.cfg.dtype, str(self.device))
        self.check_setup()
        self.tokenizer = AutoTokenizer.from_pretrained(self.profile.layout.tokenizer_dir)
        self._setup_sasrec()
        self._setup_data()
        base = load_base_model(self.profile.model.name, self.profile.layout.cache_dir, self.dtype,
                               self.tokenizer, self.profile.model.trust_remote_code,
                               self.profile.model.quantization, self.device,
                               allow_pickle=self.profile.model.allow_pickle_weights)
        base = prepare_for_training(base, self.profile.model.quantization, False)
        self.placeholder_id = add_placeholder_token(self.tokenizer, base)
        self._tokenize()
        longest = self._longest_row()
        shape = SimpleNamespace(micro_batch=self.cfg.micro_batch, block_size=longest,
                                gradient_checkpointing=False)
        need, have = estimate_memory(base, shape, self.dtype), available_memory(self.device)
        if need > 0.9 * have:
            raise SFTError(f"micro-batches of {self.cfg.micro_batch} x {longest} tokens need about"
                           f" {need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB is available:"
                           " lower sft.micro_batch")
        torch.manual_seed(self.seed)
        self.init_run = self._init_run()
        if self.init_run is None:
            self.peft_model = apply_lora(base, self.profile.cpt.lora)
        else:  # LoRA as the CPT run saved it (peft reads its rank, alpha and targets)
            self.peft_model = load_trainable_lora(base, self.init_run.adapter,
                                                  self.profile.cpt.lora)
        if self.ranking:  # every step is a tree forward (cprec_core.models.candidate_tree)
            base.set_attn_implementation(TREE_ATTENTION)
        self.projector = Projector(self.item_table.shape[1],
                                   base.get_input_embeddings().embedding_dim)
        self.model = HybridLM(self.peft_model, self.projector, self.item_table, self.placeholder_id)
        self.diagnostics = {"before": self._injection()}
        lora = [p for p in self.peft_model.parameters() if p.requires_grad]
        projector = list(self.projector.parameters())
        self.trainable = sum(p.numel() for p in lora + projector)
        if self.ranking:  # the projector learns from scratch: its own learning rate
            groups = [{"params": lora, "lr": self.cfg.rank.lr},
                      {"params": projector, "lr": self.cfg.rank.projector_lr}]
        else:
            groups = [{"params": lora + projector, "lr": self.cfg.lr}]
        self.optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        warmup = max(1, round(self.cfg.warmup_ratio * self.total_steps))
        self.scheduler = get_wsd_schedule(
            self.optimizer, num_warmup_steps=warmup, num_stable_steps=0,
            num_decay_steps=self.total_steps - warmup, decay_type="cosine",
            min_lr_ratio=self.cfg.min_lr_ratio)
        if distributed.uses_fsdp(self.accelerator):  # LoRA and projector sharded with the rest
            distributed.name_decoder_layers(self.accelerator, self.model)
            self.sharded = checkpointing.ShardedModel(self.model, self.peft_model, self.projector)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if self.sharded is not None:
            self.sharded.attach(self.model)
        self.curriculum = np.random.default_rng(self.seed + 1)
        self.answers: dict[int, list[int]] = {}  # answer token ids by item (ranking)
        self.start_step = self.load_checkpoint()

    def dry_run(self, processes: int | None = None) -> dict:
        """The samples, the widest row and a memory estimate for one micro-batch of it,
        without loading the model (cprec_core.training.dry_run)."""
        self.device = torch.device("cpu")  # where the plan's tensors are built
        self.tokenizer = AutoTokenizer.from_pretrained(self.profile.layout.tokenizer_dir)
        self._setup_sasrec()
        self._setup_data()
        self.placeholder_id = add_placeholder_to_tokenizer(self.tokenizer)
        self._tokenize()
        longest = self._longest_row()
        try:
            init = self._init_run()
            start = f"LoRA from {init.adapter}" if init else "fresh LoRA"
        except SFTError as exc:
            start = f"LoRA from a CPT adapter not trained yet ({exc})"
        lines = [f"SFT {self.system} seed {self.seed} on {self.domain}: {len(self.samples)}"
                 f" samples, {self.total_steps} steps of {self.cfg.batch_size} samples, widest"
                 f" row {longest} tokens; {start}"]
        shape = dry_run.Shape(self.cfg.micro_batch, longest, False, self.cfg.dtype)
        result = dry_run.report(self.profile, "sft", shape, self.profile.cpt.lora, lines,
                                self.tokenizer, self.profile.layout.tokenizer_dir, processes,
                                self.reporter.log)
        return {"dry_run": True, "steps": self.total_steps, **result}

    def check_setup(self) -> None:
        """Before any weight is read: ``model.quantization`` must be possible here, and the
        processes sharded only where this trainer supports it (SFT does, DPO runs under
        DDP: cprec_core.training.distributed)."""
        if (distributed.uses_fsdp(self.accelerator)
                and self.TRAINER not in distributed.SHARDED_TRAINERS):
            raise SFTError(f"{self.TRAINER.upper()} does not run under FSDP: launch it with"
                           " cprec_core/training/accelerate/ddp.yaml (accelerate_config_file)")
        try:
            check_quantization(self.profile.model.quantization, str(self.device))
        except QuantizationError as exc:
            raise SFTError(str(exc)) from exc

    def _injection(self) -> dict:
        return injection_diagnostics(self.projector, self.item_table,
                                     self.peft_model.get_base_model().get_input_embeddings().weight)

    def _longest_row(self) -> int:
        """The widest training row (prompt and answer; ranking: prompt and every candidate's
        answer, measured on the first 64 windows), for the memory estimate."""
        if not self.ranking:
            return max(len(r["input_ids"]) for r in self.rows[True])
        batch = rank_batch(self.epochs[0][:64], self.titles, self.tokenizer, self.placeholder_id,
                           self.local, True, self.listing, "cpu")
        return max(len(p) for p in batch.inputs.prompt_ids) + int(batch.answer_tokens.sum(1).max())

    def _init_run(self):
        """The CPT run whose adapter this system's LoRA starts from (None: fresh LoRA)."""
        variant = registered(self.system).cpt_variant
        if variant is None:
            return None
        run = self.profile.layout.cpt_adapter(variant)
        if not run.exists():
            raise SFTError(f"{run.adapter}: no CPT adapter for variant {variant!r}; materialise"
                           f" {cpt_variant_entry(variant).asset} first")
        return run

    def _setup_sasrec(self) -> None:
        files = self.profile.layout.next_item_model("sasrec", self.partition)
        if not files.exists():
            raise SFTError(f"{files.path}: no SASRec for domain {self.partition!r}; materialise"
                           " sasrec first")
        sasrec, index = load_next_item_model(files)
        # row j + 1 = item index[j]; standardised for the candidate-aware systems
        self.item_table = collab_inputs(sasrec.item_embeddings(), self.ranking)
        self.local = {item: j + 1 for j, item in enumerate(index)}

    def _setup_data(self) -> None:
        self._build_samples(self._load_domain())

    def _load_domain(self):
        """Titles, the validation sample and the domain's users (``DomainData``)."""
        with connect(self.profile.layout.database, read_only=True) as con:  # waits for a writer
            data = load_domain_data(con, self.partition)
            self.titles = dict(con.execute("SELECT item_idx, title FROM items WHERE domain = ?",
                                           [data.domain]).fetchall())
            self.validation = self._validation_cases(con, data.domain)
        self.domain = data.domain
        self.data_version = data.data_version
        return data

    def _build_samples(self, data) -> None:
        seen = [set(h) | {v for v in (valid, test) if v is not None}
                for h, valid, test in zip(data.histories, data.valid, data.test)]
        # the paper recipe draws negatives once; the candidate-aware systems every epoch
        epochs = self.cfg.rank.epochs if self.ranking else self.cfg.epochs
        max_samples = self.cfg.rank.max_samples if self.ranking else self.cfg.max_samples
        draws = [self.seed + 1000 * e for e in range(epochs)] if self.ranking else [self.seed]
        try:
            drawn = [build_samples(data.histories, data.items, seen, self.cfg.history,
                                   self.cfg.min_history, self.cfg.negatives, seed)
                     for seed in draws]
        except ValueError as exc:
            raise SFTError(f"domain {data.domain!r}: {exc}") from exc
        if max_samples and len(drawn[0]) > max_samples:  # the same windows every epoch
            pick = sorted(np.random.default_rng(self.seed).choice(len(drawn[0]), max_samples,
                                                                  replace=False))
            drawn = [[samples[i] for i in pick] for samples in drawn]
        if not drawn[0]:
            raise SFTError(f"domain {data.domain!r} has no SFT sample (users need >= "
                           f"{self.cfg.min_history + 1} train items)")
        self.epochs, self.samples = drawn, drawn[0]
        self.steps, self.step_epoch = [], []
        for e in range(epochs):
            order = np.random.default_rng(self.seed + e).permutation(len(self.samples))
            for i in range(0, len(order), self.cfg.batch_size):
                self.steps.append(order[i:i + self.cfg.batch_size])
                self.step_epoch.append(e if self.ranking else 0)
        self.total_steps = len(self.steps)

    def _validation_cases(self, con, domain: str) -> list[Case]:
        """The fixed validation sample (``sft.validation_cases`` of the stored validation
        candidate sets, the evaluation's seed); none where candidate sets are missing."""
        if not self.cfg.validation_cases:
            return []
        try:
            cases = load_cases(con, domain, "valid", self.cfg.validation_cases,
                               self.profile.evaluation.seed)
        except (ValueError, duckdb.CatalogException):
            self.reporter.log(f"{domain}: no validation candidate sets, no validation scoring")
            return []
        return cases.prompt_cases(self.cfg.history)

    def _tokenize(self) -> None:
        if self.ranking:  # prompts are encoded per batch (candidates change every epoch)
            self.rows = {}
            self.fingerprint = fingerprint(
                [[[[s.user, s.history, s.candidates] for s in e] for e in self.epochs],
                 dataclasses.asdict(self.cfg), self.system, self.profile.model.name])
            return
        self.rows = {
            hybrid: [encode_sft_example(s, self.titles, self.tokenizer, self.placeholder_id, hybrid)
                     for s in self.samples]
            for hybrid in (True, False)}
        self.fingerprint = fingerprint(
            [[r["input_ids"] for r in self.rows[True]], dataclasses.asdict(self.cfg), self.system,
             self.profile.model.name])

    # -- the loop ---------------------------------------------------------------------------
    def batch(self, ids: np.ndarray, hybrid: bool) -> tuple[torch.Tensor, ...]:
        rows = [self.rows[hybrid][i] for i in ids]
        width = max(len(r["input_ids"]) for r in rows)
        pad = self.tokenizer.eos_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        slots = []
        for k, r in enumerate(rows):
            n = len(r["input_ids"])
            input_ids[k, :n] = torch.tensor(r["input_ids"])
            labels[k, :n] = torch.tensor(r["labels"])
            mask[k, :n] = 1
            slots += [self.local[i] for i in r["slot_items"]]
        return (input_ids.to(self.device), labels.to(self.device), mask.to(self.device),
                torch.tensor(slots, dtype=torch.long, device=self.device))

    def _rank_batch(self, cases: list[Case], hybrid: bool, listing: bool):
        return rank_batch(cases, self.titles, self.tokenizer, self.placeholder_id, self.local,
                          hybrid, listing, self.device, self.answers)

    def rank_step(self, step: int, hybrid: bool) -> dict:
        """One optimiser step of the candidate-aware objective; the mean losses per case."""
        acc = self.accelerator
        cases = [self.epochs[self.step_epoch[step]][i] for i in self.steps[step]]
        sums = torch.zeros(4, device=self.device)  # loss, its two parts, tokens
        for part, sync in micro_batches(acc, self.model, cases, self.cfg.micro_batch):
            batch = self._rank_batch(part, hybrid, self.listing)
            with sync, autocast(self.device, self.dtype):
                scores = self.model(candidates=batch.inputs, hybrid=hybrid)
            loss = candidate_loss(scores.float(), batch, self.cfg.rank.ntp_weight)
            acc.backward(loss.total * acc.num_processes / len(cases))
            tokens = sum(len(p) for p in batch.inputs.prompt_ids) + batch.answer_tokens.sum()
            sums += torch.stack([loss.total.detach(), loss.ranking, loss.ntp,
                                 tokens.to(sums.device)])
        sums = acc.reduce(sums, reduction="sum")
        total, ranking, ntp = (sums[:3] / len(cases)).tolist()
        self.last_tokens = int(sums[3])
        return {"loss": total, "rank_loss": round(ranking, 5), "ntp_loss": round(ntp, 5)}

    def train_step(self, step: int) -> tuple[float, bool]:
        acc = self.accelerator
        hybrid = choose_hybrid(step, self.total_steps, self.curriculum)
        if self.ranking:
            parts = self.rank_step(step, hybrid)
            self._optimizer_step(hybrid)
            self.last_parts = parts
            return parts["loss"], hybrid
        ids = self.steps[step]
        n_targets = sum(sum(1 for t in self.rows[hybrid][i]["labels"][1:] if t != -100) for i in ids)
        total = torch.zeros((), device=self.device)
        for part, sync in micro_batches(acc, self.model, ids, self.cfg.micro_batch):
            with sync, autocast(self.device, self.dtype):
                loss = self.model(*self.batch(part, hybrid), hybrid)
            acc.backward(loss * acc.num_processes / n_targets)
            total += loss.detach().float()
        self._optimizer_step(hybrid)
        return float(acc.reduce(total, reduction="sum")) / n_targets, hybrid

    @property
    def stage(self):
        """The settings the step loop reads (checkpoint_every, grad_clip): ``sft``'s here,
        ``dpo``'s in the DPO trainer."""
        return self.cfg

    def _optimizer_step(self, hybrid: bool) -> None:
        if not hybrid:  # the projector is frozen for text-only steps (no AdamW update either)
            for p in self.projector.parameters():
                p.grad = None
        if self.stage.grad_clip:  # the trainable ones are those with gradients; under FSDP
            # accelerate takes the norm over every shard only when given all the parameters
            self.accelerator.clip_grad_norm_(self.model.parameters(), self.stage.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)

    # -- validation -------------------------------------------------------------------------
    @torch.no_grad()
    def validate(self) -> dict | None:
        """Scores of the validation sample with the system's own prompt (hybrid), from the
        tree forward: HR@1 by summed and by mean log-likelihood, loss per answer."""
        if not self.validation:
            return None
        base = self.peft_model.get_base_model()
        before = base.config._attn_implementation
        base.set_attn_implementation(TREE_ATTENTION)
        self.model.eval()
        summed, tokens, target = [], [], []
        progress = Progress(self.reporter.log, f"{self.system}[{self.partition}] validation",
                            len(self.validation))
        try:
            for i in range(0, len(self.validation), self.cfg.micro_batch):
                batch = self._rank_batch(self.validation[i:i + self.cfg.micro_batch], True,
                                         self.listing)
                with autocast(self.device, self.dtype):
                    summed.append(self.model(candidates=batch.inputs, hybrid=True).float().cpu())
                tokens.append(batch.answer_tokens.cpu())
                target.append(batch.target_index.cpu())
                progress.update(min(i + self.cfg.micro_batch, len(self.validation)))
        finally:
            self.model.train()
            base.set_attn_implementation(before)
        return validation_report(torch.cat(summed).numpy(), torch.cat(tokens).numpy(),
                                 torch.cat(target).numpy())

    def _selects(self, step: int) -> bool:
        """Whether the validation sample is scored after ``step`` (1-based) for selection."""
        every = self.cfg.rank.select_every if self.ranking else 0
        return bool(self.validation) and bool(every) and (
            step % every == 0 or step == self.total_steps)

    def _best_runs(self) -> list[tuple[int, Path]]:
        return sorted((int(p.name.split("-")[1]), p) for p in self.run.best.glob("step-*"))

    def _record_validation(self, step: int) -> None:
        """Score, log, and keep the adapter when it is the best so far (HR@1 by its better
        scoring, then the lower loss per answer)."""
        report = self.validate()
        row = {"step": step, **report}
        key = (max(report["hr@1 (sum)"], report["hr@1 (mean)"]), -report["loss per answer"])
        if self.accelerator.is_main_process:
            with open(self.run.validation_log, "a") as fh:
                fh.write(json.dumps(row) + "\n")
        best = self._best_validation()
        self.reporter.log(f"{self.system}[{self.partition}] validation at step {step}: HR@1 sum"
                          f" {report['hr@1 (sum)']:.3f} mean {report['hr@1 (mean)']:.3f}, loss per"
                          f" answer {report['loss per answer']:.3f}")
        if best is None or key > best[0]:
            adapter, projector = self._trained_weights()
            if self.accelerator.is_main_process:
                folder = self.run.best / f"step-{step:06d}"
                with publishing(self.run.best / f".{folder.name}.tmp", folder) as staged:
                    self._write_adapter(staged / "adapter", adapter)
                    save_file(projector, staged / "projector.safetensors")

    def _best_validation(self) -> tuple[tuple, dict] | None:
        """(selection key, validation row) of the best kept adapter."""
        kept = {step for step, _ in self._best_runs()}
        if not kept or not self.run.validation_log.exists():
            return None
        rows = [json.loads(x) for x in self.run.validation_log.read_text().splitlines() if x]
        rows = [r for r in rows if r["step"] in kept]
        if not rows:
            return None
        best = max(rows, key=lambda r: (max(r["hr@1 (sum)"], r["hr@1 (mean)"]),
                                        -r["loss per answer"], r["step"]))
        return (max(best["hr@1 (sum)"], best["hr@1 (mean)"]), -best["loss per answer"]), best

    def _prune_best(self, checkpoint_step: int) -> None:
        """Only the newest best adapter that a checkpoint covers is needed after a resume."""
        covered = [(s, p) for s, p in self._best_runs() if s <= checkpoint_step]
        for _, path in covered[:-1]:
            shutil.rmtree(path, ignore_errors=True)

    def _forget_after(self, step: int) -> None:
        """Drops what the run wrote after checkpoint ``step``: it is redone on resume."""
        for log in (self.run.train_log, self.run.validation_log):
            if log.exists():
                keep = [x for x in log.read_text().splitlines()
                        if x and json.loads(x)["step"] <= step]
                log.write_text("".join(x + "\n" for x in keep))
        for kept_step, path in self._best_runs():
            if kept_step > step:
                shutil.rmtree(path)

    def train(self, stop_after: int | None = None) -> dict:
        log_path = self.run.train_log
        if self.accelerator.is_main_process:  # one writer: another process reading a
            self._forget_after(self.start_step)  # half-written log would drop its rows
        self.accelerator.wait_for_everyone()
        self.model.train()
        end = self.total_steps if stop_after is None else min(self.total_steps,
                                                               self.start_step + stop_after)
        for step in range(self.start_step, end):
            t0 = time.perf_counter()
            lr = self.scheduler.get_last_lr()[0]
            loss, hybrid = self.train_step(step)
            row = {"step": step + 1, "prompt": "hybrid" if hybrid else "text",
                   "p_hybrid": round(hybrid_probability(step, self.total_steps), 4), "lr": lr,
                   "loss": round(loss, 5), "samples": len(self.steps[step]),
                   "tokens": self._step_tokens(step, hybrid),
                   "seconds": round(time.perf_counter() - t0, 3)}
            if self.ranking:
                row.update(self.last_parts)
            if self.accelerator.is_main_process:
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                self.reporter.log(f"{self.system}[{self.partition}] step {row['step']}/{self.total_steps}"
                                  f" {row['prompt']:<6} lr {lr:.2e} loss {loss:.4f}"
                                  f" {row['tokens'] / row['seconds']:.0f} tok/s")
            if self._selects(step + 1):
                self._record_validation(step + 1)
            if (step + 1) % self.stage.checkpoint_every == 0 or step + 1 == self.total_steps:
                self.save_checkpoint(step + 1)
                self._prune_best(step + 1)
        result = {"finished": end == self.total_steps, "steps_run": end - self.start_step,
                  "seed": self.seed}
        if result["finished"] and self.run.best.exists() and not self._selects(self.total_steps):
            shutil.rmtree(self.run.best)  # left from a run with selection: not this plan's
        if result["finished"]:
            result.update(self.save_final(log_path))
        return result

    def _step_tokens(self, step: int, hybrid: bool) -> int:
        """Tokens through the model at ``step``, just run (ranking: each prompt once, every
        candidate's answer, as ``rank_step`` counted them)."""
        if self.ranking:
            return self.last_tokens
        return sum(len(self.rows[hybrid][i]["input_ids"]) for i in self.steps[step])

    # -- checkpoints ------------------------------------------------------------------------
    def _projector_weights(self) -> dict[str, torch.Tensor]:
        """The projector's weights in fp32 (under FSDP gathered whole: a collective)."""
        state = self.projector.state_dict() if self.sharded is None else self.sharded.extra()
        return {k: v.float() for k, v in state.items()}

    def _trained_weights(self) -> tuple[dict | None, dict[str, torch.Tensor]]:
        """(the adapter gathered whole under FSDP, else None: peft saves its own; the
        projector's weights). Under FSDP a collective: every process calls it."""
        adapter = None if self.sharded is None else self.sharded.adapter()
        return adapter, self._projector_weights()

    def _write_adapter(self, folder: Path, adapter: dict | None) -> None:
        if adapter is None:
            self.peft_model.save_pretrained(folder, save_embedding_layers=False)
        else:
            checkpointing.write_adapter(self.peft_model, folder, adapter)

    def save_checkpoint(self, step: int) -> None:
        self.accelerator.wait_for_everyone()
        gathered = None if self.sharded is None else self.sharded.gather(self.optimizer)
        projector = self._projector_weights()
        if self.accelerator.is_main_process:
            checkpointing.save(self.run.checkpoints, step, {"plan": self.fingerprint},
                               self.peft_model, self.optimizer,
                               self.scheduler, extra=projector,
                               generators={"curriculum": self.curriculum}, gathered=gathered)

    def load_checkpoint(self) -> int:
        """The step to start from: 0, or the step of the newest intact checkpoint of this
        plan (a damaged one is reported and the one before it used: checkpointing.load).
        Adapter, projector, optimiser, scheduler and RNGs (the curriculum's too) come from
        that one checkpoint; ``train`` then cuts the train and validation logs and the best
        adapters back to its step."""
        found = checkpointing.load(
            self.run.checkpoints, self.fingerprint,
            lambda checkpoint: checkpointing.restore(
                checkpoint, self.peft_model, self.optimizer, self.scheduler,
                {"curriculum": self.curriculum}, extra_module=self.projector,
                sharded=self.sharded),
            self.reporter.log, main=self.accelerator.is_main_process,
            barrier=self.accelerator.wait_for_everyone)
        return 0 if found is None else found.step

    def _select_best(self) -> dict | None:
        """Load the best validation adapter into the model (selection), or score the final
        one; the validation row of the weights that are saved."""
        best = self._best_validation() if self._selects(self.total_steps) else None
        if best is None:
            report = self.validate()
            return None if report is None else {"step": self.total_steps, **report}
        folder = self.run.best / f"step-{best[1]['step']:06d}"
        from safetensors.torch import load_file
        adapter = load_file(folder / "adapter" / "adapter_model.safetensors")
        projector = load_file(folder / "projector.safetensors")
        if self.sharded is None:
            set_peft_model_state_dict(self.peft_model, adapter)
            self.projector.load_state_dict(projector)
        else:
            self.sharded.load_adapter(adapter)
            self.sharded.load_extra(projector)
        return best[1]

    def _manifest_extra(self) -> dict:
        """Manifest fields a subclass adds or replaces (cprec_core.training.dpo)."""
        return {}

    def save_final(self, log_path: Path) -> dict:
        chosen = self._select_best()
        with distributed.full_parameters(self.accelerator, self.model):
            self.diagnostics["after"] = self._injection()
        curve = ([json.loads(x) for x in self.run.validation_log.read_text().splitlines() if x]
                 if self.run.validation_log.exists() else [])
        rows = [json.loads(x) for x in log_path.read_text().splitlines()]
        seconds = sum(r["seconds"] for r in rows)
        tokens = sum(r["tokens"] for r in rows)
        manifest = {
            "system": self.system, "domain": self.domain, "partition": self.partition,
            "data_version": self.data_version, "seed": self.seed,
            "base_model": self.profile.model.name,
            "init_adapter": str(self.init_run.adapter) if self.init_run else None,
            "init_manifest": (json.loads(self.init_run.manifest.read_text())
                              .get("corpus_fingerprint") if self.init_run else None),
            "objective": registered(self.system).objective, "listing": self.listing,
            "samples": len(self.samples), "epochs": len(self.epochs) if self.ranking else
            self.cfg.epochs, "steps": self.total_steps, "fingerprint": self.fingerprint,
            "validation": chosen, "scoring": chosen["scoring"] if chosen else None,
            "validation_curve": curve, "injection": self.diagnostics,
            "hybrid_steps": sum(r["prompt"] == "hybrid" for r in rows),
            "final_loss": rows[-1]["loss"], "tokens": tokens,
            "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
            "train_seconds": round(seconds, 1), "trainable_parameters": self.trainable,
            "placeholder_id": self.placeholder_id, "config": dataclasses.asdict(self.cfg),
            "dtype": str(self.dtype).replace("torch.", ""), "git_revision": git_revision(),
            "processor": processor(str(self.device)),
            **self._manifest_extra(),
        }
        adapter, projector = self._trained_weights()
        if self.accelerator.is_main_process:
            staged = TrainedAdapter(self.run.scratch)  # written whole, then renamed into place
            shutil.rmtree(staged.path, ignore_errors=True)
            self._write_adapter(staged.adapter, adapter)
            save_file(projector, staged.projector)
            shutil.rmtree(self.run.adapter, ignore_errors=True)
            self.run.projector.unlink(missing_ok=True)
            staged.adapter.rename(self.run.adapter)
            staged.projector.rename(self.run.projector)
            shutil.rmtree(staged.path)
            shutil.rmtree(self.run.best, ignore_errors=True)
            self.run.manifest.write_text(json.dumps(manifest, indent=2))
        return manifest


def over_seeds(seeds, train_one) -> tuple[dict, list[dict]]:
    """``train_one(seed)`` for each seed in turn, stopping after the first that did not
    finish (killed: its resume comes first); the first seed's result with ``finished`` over
    all and the seeds run, and every seed's result."""
    results = []
    for seed in seeds:
        results.append(train_one(seed))
        if not results[-1]["finished"]:
            break
    result = dict(results[0])
    result["finished"] = all(r["finished"] for r in results)
    result["seeds"] = ",".join(str(r["seed"]) for r in results)
    return result, results


def run(profile: Profile, domain: str, system: str, reporter: Reporter | None = None,
        stop_after: int | None = None, seeds: tuple[int, ...] | None = None,
        dry: bool = False, processes: int | None = None) -> dict:
    """Train one adapter per seed (``sft.seeds_for(system)`` by default), one after another;
    the result is the first seed's manifest plus every seed's final loss. ``dry``: the
    first seed's plan and memory estimate for ``processes`` processes instead."""
    if dry:
        first = (seeds or profile.sft.seeds_for(system))[0]
        return SFTTrainer(profile, domain, system, reporter, first).dry_run(processes)
    def train_one(seed: int) -> dict:
        trainer = SFTTrainer(profile, domain, system, reporter, seed)
        trainer.run.path.mkdir(parents=True, exist_ok=True)
        trainer.setup()
        trainer.reporter.log(
            f"SFT {system} seed {seed} on {trainer.domain}: {len(trainer.samples)} samples,"
            f" {trainer.total_steps} steps, {trainer.dtype},"
            f" {trainer.accelerator.num_processes} process(es)"
            f"{' under FSDP' if trainer.sharded else ''} on {trainer.device}, LoRA from"
            f" {trainer.init_run.adapter if trainer.init_run else 'scratch'}, starting at step"
            f" {trainer.start_step}")
        return trainer.train(stop_after)

    result, results = over_seeds(seeds if seeds is not None else profile.sft.seeds_for(system),
                                 train_one)
    for r in results[1:]:
        if r["finished"]:
            result[f"final_loss_seed_{r['seed']}"] = r["final_loss"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = add_domain_run_arguments(add_reporter_argument(add_profile_arguments(
        argparse.ArgumentParser(description="Per-domain SFT with LLaRA's hybrid prompt"))),
        "cprec", "llara, cprec or cprec_<variant>", "sft.seeds")
    parser.add_argument("--stop-after", type=int, help="stop after N steps (kill simulation)")
    dry_run.add_arguments(parser)
    args = parser.parse_args(argv)
    profile = profile_from_args(args)
    seeds = tuple(args.seed) if args.seed else None
    return run_trainer(lambda reporter: run(profile, args.domain, args.system, reporter,
                                            args.stop_after, seeds, args.dry_run,
                                            args.processes),
                       (SFTError, dry_run.PlanError), args.reporter)


if __name__ == "__main__":
    sys.exit(main())
