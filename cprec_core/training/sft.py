"""Per-domain SFT with LLaRA's hybrid prompt and curriculum, LoRA from a CPT adapter or fresh.

    accelerate launch -m cprec_core.training.sft --profile demo --domain crime --system cprec
    python -m cprec_core.training.sft --profile demo --domain crime --system llara

Samples: cprec_core.training.sft_samples (sliding windows, 20 fixed-seed candidates). Each
optimiser step reads the hybrid prompt with probability step / total (curriculum), else the
text-only prompt, for which the projector gets no gradient. The placeholder embeddings are
replaced by ``projector(SASRec item embedding)`` (cprec_core.models.hybrid) and the loss
covers the answer title and EOS only. The system's registry entry (cprec_core.systems) says
where its LoRA starts: a CPT adapter (loaded through peft) or fresh.

Same qualities as CPT: bf16 where supported, checkpoints with exact resume (adapter,
projector, optimiser, scheduler, RNGs incl. the curriculum's), a log line per step,
Pipes-aware reporting. Output: one ``TrainedAdapter`` folder per system, domain and seed
(cprec_core.layout), with the projector beside the adapter.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import shutil
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from peft import set_peft_model_state_dict
from safetensors.torch import save_file
from transformers import AutoTokenizer, get_wsd_schedule

from cprec_core.cli import (add_profile_arguments, add_reporter_argument, profile_from_args,
                            run_trainer)
from cprec_core.config import Profile
from cprec_core.data.db import connect
from cprec_core.data.domain_users import load_domain_data
from cprec_core.layout import TrainedAdapter
from cprec_core.models.hybrid import HybridLM, Projector, add_placeholder_token
from cprec_core.models.loader import load_base_model, resolve_dtype
from cprec_core.models.lora import apply_lora, load_trainable_lora
from cprec_core.progress import Reporter
from cprec_core.prompts import encode_sft_example
from cprec_core.provenance import git_revision, processor
from cprec_core.systems import cpt_variant as cpt_variant_entry, system as registered
from cprec_core.training import checkpointing
from cprec_core.training.memory import available_memory, estimate_memory
from cprec_core.training.next_item import load_next_item_model
from cprec_core.training.sft_samples import build_samples, choose_hybrid, hybrid_probability


class SFTError(RuntimeError):
    """SFT cannot start: missing inputs (SASRec, CPT adapter), too small a domain."""


class SFTTrainer:
    def __init__(self, profile: Profile, domain: str, system: str,
                 reporter: Reporter | None = None, seed: int | None = None):
        self.profile, self.cfg = profile, profile.sft
        self.slug, self.system = domain, system
        self.seed = self.cfg.seeds[0] if seed is None else seed
        self.run = profile.layout.sft_run(system, domain, self.seed)  # checks the key
        self.reporter = reporter or Reporter()

    # -- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        # text-only steps leave the projector out of the graph: DDP must allow that
        self.accelerator = Accelerator(cpu=self.profile.device == "cpu", kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=True)])
        self.device = self.accelerator.device
        self.dtype = resolve_dtype(self.cfg.dtype, str(self.device))
        self.tokenizer = AutoTokenizer.from_pretrained(self.profile.layout.tokenizer_dir)
        self._setup_sasrec()
        self._setup_data()
        base = load_base_model(self.profile.model.name, self.profile.layout.cache_dir, self.dtype,
                               self.tokenizer, self.profile.model.trust_remote_code)
        self.placeholder_id = add_placeholder_token(self.tokenizer, base)
        self._tokenize()
        longest = max(len(r["input_ids"]) for r in self.rows[True])
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
        self.projector = Projector(self.item_table.shape[1],
                                   base.get_input_embeddings().embedding_dim)
        self.model = HybridLM(self.peft_model, self.projector, self.item_table, self.placeholder_id)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.trainable = sum(p.numel() for p in params)
        self.optimizer = torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=0.0)
        warmup = max(1, round(self.cfg.warmup_ratio * self.total_steps))
        self.scheduler = get_wsd_schedule(
            self.optimizer, num_warmup_steps=warmup, num_stable_steps=0,
            num_decay_steps=self.total_steps - warmup, decay_type="cosine",
            min_lr_ratio=self.cfg.min_lr_ratio)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        self.curriculum = np.random.default_rng(self.seed + 1)
        self.start_step = self.load_checkpoint()

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
        files = self.profile.layout.next_item_model("sasrec", self.slug)
        if not files.exists():
            raise SFTError(f"{files.path}: no SASRec for domain {self.slug!r}; materialise"
                           " sasrec first")
        sasrec, index = load_next_item_model(files)
        self.item_table = sasrec.item_embeddings().float()  # row j + 1 = item index[j]
        self.local = {item: j + 1 for j, item in enumerate(index)}

    def _setup_data(self) -> None:
        with connect(self.profile.layout.database, read_only=True) as con:  # waits for a writer
            data = load_domain_data(con, self.slug)
            self.titles = dict(con.execute("SELECT item_idx, title FROM items WHERE domain = ?",
                                           [data.domain]).fetchall())
        self.domain = data.domain
        self.data_version = data.data_version
        seen = [set(h) | {v for v in (valid, test) if v is not None}
                for h, valid, test in zip(data.histories, data.valid, data.test)]
        try:
            samples = build_samples(data.histories, data.items, seen, self.cfg.history,
                                    self.cfg.min_history, self.cfg.negatives, self.seed)
        except ValueError as exc:
            raise SFTError(f"domain {data.domain!r}: {exc}") from exc
        if self.cfg.max_samples and len(samples) > self.cfg.max_samples:
            pick = np.random.default_rng(self.seed).choice(len(samples), self.cfg.max_samples,
                                                               replace=False)
            samples = [samples[i] for i in sorted(pick)]
        if not samples:
            raise SFTError(f"domain {data.domain!r} has no SFT sample (users need >= "
                           f"{self.cfg.min_history + 1} train items)")
        self.samples = samples
        order = np.concatenate([np.random.default_rng(self.seed + e).permutation(len(samples))
                                for e in range(self.cfg.epochs)])
        self.steps = [order[i:i + self.cfg.batch_size]
                      for i in range(0, len(order), self.cfg.batch_size)]
        self.total_steps = len(self.steps)

    def _tokenize(self) -> None:
        self.rows = {
            hybrid: [encode_sft_example(s, self.titles, self.tokenizer, self.placeholder_id, hybrid)
                     for s in self.samples]
            for hybrid in (True, False)}
        self.fingerprint = hashlib.sha256(json.dumps(
            [[r["input_ids"] for r in self.rows[True]], dataclasses.asdict(self.cfg), self.system,
             self.profile.model.name]).encode()).hexdigest()[:16]

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

    def train_step(self, step: int) -> tuple[float, bool]:
        acc = self.accelerator
        hybrid = choose_hybrid(step, self.total_steps, self.curriculum)
        ids = self.steps[step]
        n_targets = sum(sum(1 for t in self.rows[hybrid][i]["labels"][1:] if t != -100) for i in ids)
        mine = ids[acc.process_index::acc.num_processes]
        micro = [mine[i:i + self.cfg.micro_batch] for i in range(0, len(mine), self.cfg.micro_batch)]
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16)
                    if self.dtype == torch.bfloat16 else nullcontext())
        total = torch.zeros((), device=self.device)
        for k, part in enumerate(micro):
            sync = nullcontext() if k == len(micro) - 1 else acc.no_sync(self.model)
            with sync, autocast:
                loss = self.model(*self.batch(part, hybrid), hybrid)
            acc.backward(loss * acc.num_processes / n_targets)
            total += loss.detach().float()
        if not hybrid:  # the projector is frozen for text-only steps (no AdamW update either)
            for p in self.projector.parameters():
                p.grad = None
        if self.cfg.grad_clip:
            acc.clip_grad_norm_([p for g in self.optimizer.param_groups for p in g["params"]],
                                self.cfg.grad_clip)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(acc.reduce(total, reduction="sum")) / n_targets, hybrid

    def train(self, stop_after: int | None = None) -> dict:
        log_path = self.run.train_log
        if log_path.exists():
            keep = [x for x in log_path.read_text().splitlines()
                    if x and json.loads(x)["step"] <= self.start_step]
            log_path.write_text("".join(x + "\n" for x in keep))
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
                   "tokens": sum(len(self.rows[hybrid][i]["input_ids"]) for i in self.steps[step]),
                   "seconds": round(time.perf_counter() - t0, 3)}
            if self.accelerator.is_main_process:
                with open(log_path, "a") as fh:
                    fh.write(json.dumps(row) + "\n")
                self.reporter.log(f"{self.system}[{self.slug}] step {row['step']}/{self.total_steps}"
                                  f" {row['prompt']:<6} lr {lr:.2e} loss {loss:.4f}"
                                  f" {row['tokens'] / row['seconds']:.0f} tok/s")
            if (step + 1) % self.cfg.checkpoint_every == 0 or step + 1 == self.total_steps:
                self.save_checkpoint(step + 1)
        result = {"finished": end == self.total_steps, "steps_run": end - self.start_step,
                  "seed": self.seed}
        if result["finished"]:
            result.update(self.save_final(log_path))
        return result

    # -- checkpoints ------------------------------------------------------------------------
    def _projector_state(self) -> dict[str, torch.Tensor]:
        return {k: v.float() for k, v in self.projector.state_dict().items()}

    def save_checkpoint(self, step: int) -> None:
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            checkpointing.save(self.run.checkpoints, step, {"plan": self.fingerprint},
                               self.peft_model, self.optimizer,
                               self.scheduler, extra=self._projector_state(),
                               generators={"curriculum": self.curriculum})

    def load_checkpoint(self) -> int:
        found = checkpointing.latest(self.run.checkpoints)
        if found is None:
            return 0
        last, state = found
        if state["plan"] != self.fingerprint:
            self.reporter.log(f"checkpoints in {last.parent} are from another plan: starting over")
            if self.accelerator.is_main_process:
                shutil.rmtree(last.parent)
            return 0
        set_peft_model_state_dict(self.peft_model, checkpointing.adapter_weights(last))
        extra = checkpointing.restore(last, self.optimizer, self.scheduler,
                                      {"curriculum": self.curriculum})
        self.projector.load_state_dict(extra)
        self.reporter.log(f"resumed from {last} (step {state['step']})")
        return state["step"]

    def save_final(self, log_path: Path) -> dict:
        rows = [json.loads(x) for x in log_path.read_text().splitlines()]
        seconds = sum(r["seconds"] for r in rows)
        tokens = sum(r["tokens"] for r in rows)
        manifest = {
            "system": self.system, "domain": self.domain, "partition": self.slug,
            "data_version": self.data_version, "seed": self.seed,
            "base_model": self.profile.model.name,
            "init_adapter": str(self.init_run.adapter) if self.init_run else None,
            "init_manifest": (json.loads(self.init_run.manifest.read_text())
                              ["corpus_fingerprint"] if self.init_run else None),
            "samples": len(self.samples), "steps": self.total_steps, "fingerprint": self.fingerprint,
            "hybrid_steps": sum(r["prompt"] == "hybrid" for r in rows),
            "final_loss": rows[-1]["loss"], "tokens": tokens,
            "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
            "train_seconds": round(seconds, 1), "trainable_parameters": self.trainable,
            "placeholder_id": self.placeholder_id, "config": dataclasses.asdict(self.cfg),
            "dtype": str(self.dtype).replace("torch.", ""), "git_revision": git_revision(),
            "processor": processor(str(self.device)),
        }
        if self.accelerator.is_main_process:
            staged = TrainedAdapter(self.run.scratch)  # written whole, then renamed into place
            shutil.rmtree(staged.path, ignore_errors=True)
            self.peft_model.save_pretrained(staged.adapter, save_embedding_layers=False)
            save_file(self._projector_state(), staged.projector)
            shutil.rmtree(self.run.adapter, ignore_errors=True)
            self.run.projector.unlink(missing_ok=True)
            staged.adapter.rename(self.run.adapter)
            staged.projector.rename(self.run.projector)
            shutil.rmtree(staged.path)
            self.run.manifest.write_text(json.dumps(manifest, indent=2))
        return manifest


def run(profile: Profile, domain: str, system: str, reporter: Reporter | None = None,
        stop_after: int | None = None, seeds: tuple[int, ...] | None = None) -> dict:
    """Train one adapter per seed (``sft.seeds_for(system)`` by default), one after another;
    the result is the first seed's manifest plus every seed's final loss."""
    results = []
    for seed in seeds if seeds is not None else profile.sft.seeds_for(system):
        trainer = SFTTrainer(profile, domain, system, reporter, seed)
        trainer.run.path.mkdir(parents=True, exist_ok=True)
        trainer.setup()
        trainer.reporter.log(
            f"SFT {system} seed {seed} on {trainer.domain}: {len(trainer.samples)} samples,"
            f" {trainer.total_steps} steps, {trainer.dtype}, LoRA from"
            f" {trainer.init_run.adapter if trainer.init_run else 'scratch'}, starting at step"
            f" {trainer.start_step}")
        results.append(trainer.train(stop_after))
        if not results[-1]["finished"]:
            break
    result = dict(results[0])
    result["finished"] = all(r["finished"] for r in results)
    result["seeds"] = ",".join(str(r["seed"]) for r in results)
    for r in results[1:]:
        if r["finished"]:
            result[f"final_loss_seed_{r['seed']}"] = r["final_loss"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = add_reporter_argument(add_profile_arguments(
        argparse.ArgumentParser(description="Per-domain SFT with LLaRA's hybrid prompt")))
    parser.add_argument("--domain", required=True, help="partition key, e.g. crime")
    parser.add_argument("--system", default="cprec", help="llara, cprec or cprec_<variant>")
    parser.add_argument("--seed", type=int, action="append",
                        help="train this seed only (repeatable); default: sft.seeds")
    parser.add_argument("--stop-after", type=int, help="stop after N steps (kill simulation)")
    args = parser.parse_args(argv)
    profile = profile_from_args(args)
    seeds = tuple(args.seed) if args.seed else None
    return run_trainer(lambda reporter: run(profile, args.domain, args.system, reporter,
                                            args.stop_after, seeds), (SFTError,), args.reporter)


if __name__ == "__main__":
    sys.exit(main())
