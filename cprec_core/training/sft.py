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

The objective is the system's (``objective`` in the registry): the paper's next-token
loss (cprec_core.training.next_token_objective) or the candidate-aware one
(cprec_core.training.candidate_objective: negatives re-drawn every epoch, a softmax over
the candidates' answer likelihoods, with ``sft.rank.select_every`` the adapter that scores
best on a fixed validation sample kept). Every system is scored on that sample after
training: the validation log says which of
summed or mean log-likelihood ranks better (the evaluation's headline family), and the
manifest shows what the injected vectors carry before and after training
(``injection_diagnostics``).

Same qualities as CPT: bf16 where supported, several processes under DDP or FSDP
(``train.distributed``, cprec_core.training.distributed), checkpoints with exact resume (adapter,
projector, optimiser, scheduler, RNGs incl. the curriculum's; the best validation adapters
kept until a checkpoint covers them), the step loop of cprec_core.training.loop, Pipes-aware
reporting. Output:
one ``TrainedAdapter`` folder per system, domain and seed (cprec_core.layout), with the
projector beside the adapter.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from accelerate import Accelerator, DistributedDataParallelKwargs
from peft import set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer

from cprec_core.cli import (add_domain_run_arguments, add_profile_arguments,
                            add_reporter_argument, profile_from_args, run_trainer)
from cprec_core.config import Profile
from cprec_core.layout import RunManifest, TrainedAdapter
from cprec_core.metrics import one_se_choice
from cprec_core.models.candidate_tree import TREE_ATTENTION
from cprec_core.models.hybrid import HybridLM, Projector, add_placeholder_to_tokenizer
from cprec_core.models.loader import resolve_dtype
from cprec_core.models.lora import apply_lora, load_trainable_lora
from cprec_core.progress import Reporter
from cprec_core.provenance import git_revision, processor
from cprec_core.systems import cpt_variant as cpt_variant_entry, system as registered
from cprec_core.training import checkpointing, distributed, dry_run
from cprec_core.training.candidate_objective import CandidateObjective
from cprec_core.training.hybrid_run import (SFTError, check_launch, injection, load_base,
                                            load_domain_inputs, projector_weights, publish,
                                            trained_weights, validate, without_per_case,
                                            write_adapter)
from cprec_core.tracking import NULL_TRACKER, numbers
from cprec_core.training.loop import (cut_log, log_totals, lr_schedule, publishing, read_log,
                                      run_steps, tracked_run)
from cprec_core.training.memory import available_memory, estimate_memory
from cprec_core.training.next_token_objective import NextTokenObjective
from cprec_core.training.residual import ResidualError, choose_partner, keep_gate
from cprec_core.training.sft_samples import build_samples, choose_hybrid, hybrid_probability

__all__ = ["SFTError", "SFTTrainer", "over_seeds", "run"]


def objective_for(system: str, cfg):
    """The system's training objective (cprec_core.systems: ``ranks_candidates``)."""
    entry = registered(system)
    if entry.ranks_candidates:
        return CandidateObjective(cfg, residual=entry.residual)
    return NextTokenObjective(cfg)


class SFTTrainer:
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
        self.tracker = NULL_TRACKER  # the MLflow run while train() runs
        self.objective = objective_for(system, self.cfg)
        self.listing = self.cfg.listing_for(system)
        self.candidate_vectors = self.cfg.candidate_vectors_for(system)
        self.label = f"{system}[{domain}]"
        self.sharded = None  # under FSDP: the checkpointing.ShardedModel of the prepared model
        self.partner = None  # a residual system's classic model (cprec_core.training.residual)
        self.answers: dict[int, list[int]] = {}  # answer token ids by item (tree forwards)

    # -- setup -----------------------------------------------------------------------------
    def setup(self) -> None:
        # text-only steps leave the projector out of the graph: DDP must allow that
        self.accelerator = Accelerator(cpu=self.profile.device == "cpu", kwargs_handlers=[
            DistributedDataParallelKwargs(find_unused_parameters=True)])
        self.device = self.accelerator.device
        self.dtype = resolve_dtype(self.cfg.dtype, str(self.device))
        check_launch(self.accelerator, "sft", self.profile)
        self.tokenizer = AutoTokenizer.from_pretrained(self.profile.layout.tokenizer_dir)
        self._setup_data()
        base, self.placeholder_id = load_base(self.profile, self.tokenizer, self.dtype,
                                              self.device)
        self.fingerprint = self.objective.prepare(self)
        self._check_memory(base)
        torch.manual_seed(self.seed)
        self.init_run = self._init_run()
        if self.init_run is None:
            self.peft_model = apply_lora(base, self.profile.cpt.lora)
        else:  # LoRA as the CPT run saved it (peft reads its rank, alpha and targets)
            self.peft_model = load_trainable_lora(base, self.init_run.adapter,
                                                  self.profile.cpt.lora)
        if self.objective.tree_attention:  # cprec_core.models.candidate_tree
            base.set_attn_implementation(TREE_ATTENTION)
        self.projector = Projector(self.inputs.item_table.shape[1],
                                   base.get_input_embeddings().embedding_dim)
        self.model = HybridLM(self.peft_model, self.projector, self.inputs.item_table,
                              self.placeholder_id)
        self.diagnostics = {"before": injection(self)}
        lora = [p for p in self.peft_model.parameters() if p.requires_grad]
        projector = list(self.projector.parameters())
        self.trainable = sum(p.numel() for p in lora + projector)
        self.optimizer = torch.optim.AdamW(self.objective.param_groups(lora, self.projector),
                                           weight_decay=0.0)
        self.scheduler, self.schedule = lr_schedule(
            self.optimizer, self.total_steps, self.cfg.warmup_ratio, self.cfg.min_lr_ratio,
            self.cfg.constant_below)
        if distributed.uses_fsdp(self.accelerator):  # LoRA and projector sharded with the rest
            distributed.name_decoder_layers(self.accelerator, self.model)
            self.sharded = checkpointing.ShardedModel(self.model, self.peft_model, self.projector)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if self.sharded is not None:
            self.sharded.attach(self.model)
        self.curriculum = np.random.default_rng(self.seed + 1)
        self.start_step = self.load_checkpoint()

    def _check_memory(self, base) -> None:
        longest = self.objective.longest_row(self)
        shape = SimpleNamespace(micro_batch=self.cfg.micro_batch, block_size=longest,
                                gradient_checkpointing=False)
        need, have = estimate_memory(base, shape, self.dtype), available_memory(self.device)
        if need > 0.9 * have:
            raise SFTError(f"micro-batches of {self.cfg.micro_batch} x {longest} tokens need about"
                           f" {need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB is available:"
                           " lower sft.micro_batch")

    def dry_run(self, processes: int | None = None) -> dict:
        """The samples, the widest row and a memory estimate for one micro-batch of it,
        without loading the model (cprec_core.training.dry_run)."""
        self.device = torch.device("cpu")  # where the plan's tensors are built
        self.tokenizer = AutoTokenizer.from_pretrained(self.profile.layout.tokenizer_dir)
        self._setup_data()
        self.placeholder_id = add_placeholder_to_tokenizer(self.tokenizer)
        self.objective.prepare(self)
        longest = self.objective.longest_row(self)
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

    def _setup_data(self) -> None:
        """The domain's inputs, then the windows of each epoch and the steps over them (the
        objective says how many epochs, how many windows, and whether negatives are drawn
        again for each epoch)."""
        self.inputs = load_domain_inputs(self.profile, self.partition,
                                         self.objective.standardise, self.reporter.log)
        self.domain, data = self.inputs.domain, self.inputs.data
        epochs, redraw = self.objective.epochs, self.objective.redraw
        draws = [self.seed + 1000 * e for e in range(epochs)] if redraw else [self.seed]
        try:
            drawn = [build_samples(data.histories, data.items, self.cfg.history,
                                   self.cfg.min_history, self.cfg.negatives, seed)
                     for seed in draws]
        except ValueError as exc:
            raise SFTError(f"domain {data.domain!r}: {exc}") from exc
        cap = self.objective.max_samples
        if cap and len(drawn[0]) > cap:  # the same windows every epoch
            pick = sorted(np.random.default_rng(self.seed).choice(len(drawn[0]), cap,
                                                                  replace=False))
            drawn = [[samples[i] for i in pick] for samples in drawn]
        if not drawn[0]:
            raise SFTError(f"domain {data.domain!r} has no SFT sample (users need >= "
                           f"{self.cfg.min_history + 1} train items)")
        if registered(self.system).residual:
            try:
                self.partner = choose_partner(self.profile, self.partition, self.inputs.validation)
            except ResidualError as exc:
                raise SFTError(str(exc)) from exc
        self.epochs, self.samples = drawn, drawn[0]
        self.steps, self.step_epoch = [], []
        for e in range(epochs):
            order = np.random.default_rng(self.seed + e).permutation(len(self.samples))
            for i in range(0, len(order), self.cfg.batch_size):
                self.steps.append(order[i:i + self.cfg.batch_size])
                self.step_epoch.append(e if redraw else 0)
        self.total_steps = len(self.steps)

    # -- the loop ---------------------------------------------------------------------------
    def train_step(self, step: int) -> dict:
        """Forwards and backwards of one step: the prompt the curriculum draws (the hybrid
        one on every step where the objective has no curriculum), the objective's loss; the
        projector gets no update on a text-only step."""
        if self.objective.curriculum:
            p_hybrid = hybrid_probability(step, self.total_steps)
            hybrid = choose_hybrid(step, self.total_steps, self.curriculum)
        else:
            p_hybrid, hybrid = 1.0, True
        fields = self.objective.step(self, step, hybrid)
        if not hybrid:  # the projector was not in the graph: no AdamW update either
            for p in self.projector.parameters():
                p.grad = None
        return {"prompt": "hybrid" if hybrid else "text", "p_hybrid": round(p_hybrid, 4),
                "schedule": self.schedule, "samples": len(self.steps[step]), **fields}

    def train(self, stop_after: int | None = None) -> dict:
        """Runs to the end (or ``stop_after`` steps), logging to one MLflow run that a resume
        of the same plan continues."""
        init = self.init_run
        with tracked_run(self, "sft", f"sft {self.system} {self.partition} seed {self.seed}",
                         "sft", self.cfg, data_version=self.inputs.data_version, seed=self.seed,
                         key=self.fingerprint, tags={"system": self.system,
                                                     "domain": self.partition},
                         system=self.system, domain=self.partition,
                         objective=self.objective.name, steps=self.total_steps,
                         samples=len(self.samples), schedule=self.schedule,
                         init_adapter=str(init.adapter) if init else "(fresh LoRA)"
                         ) as self.tracker:
            result = run_steps(self, self.cfg.checkpoint_every, self.cfg.grad_clip, stop_after,
                               after_step=self._after_step, forget_after=self._forget_after)
        return {**result, "seed": self.seed}

    def _after_step(self, step: int) -> None:
        if self._selects(step):
            self._record_validation(step)

    # -- validation and model selection -----------------------------------------------------
    def _selects(self, step: int) -> bool:
        """Whether the validation sample is scored after ``step`` (1-based) for selection."""
        every = self.objective.select_every
        return bool(self.inputs.validation) and bool(every) and (
            step % every == 0 or step == self.total_steps)

    def _best_runs(self) -> list[tuple[int, Path]]:
        return sorted((int(p.name.split("-")[1]), p) for p in self.run.best.glob("step-*"))

    def _record_validation(self, step: int) -> None:
        """Score, log, and keep the adapter when its validation loss per answer (a smooth
        criterion over every case scored) is the lowest so far."""
        report = validate(self, self.cfg.micro_batch)
        if self.accelerator.is_main_process:
            with open(self.run.validation_log, "a") as fh:
                fh.write(json.dumps({"step": step, **report}) + "\n")
            self.tracker.log_step(step, numbers(report, "valid/"))
        best = self._best_validation()
        mrr = ", ".join(f"{k} {report[f'mrr ({k})']:.3f}" for k in ("sum", "mean", "residual")
                        if f"mrr ({k})" in report)
        self.reporter.log(f"{self.label} validation at step {step} ({report['cases']} cases):"
                          f" loss per answer {report['loss per answer']:.3f}, MRR {mrr}")
        if best is None or report["loss per answer"] < best["loss per answer"]:
            adapter, projector = trained_weights(self)
            if self.accelerator.is_main_process:
                folder = self.run.best / f"step-{step:06d}"
                with publishing(self.run.best / f".{folder.name}.tmp", folder) as staged:
                    write_adapter(self.peft_model, staged / "adapter", adapter)
                    save_file(projector, staged / "projector.safetensors")

    def _best_validation(self) -> dict | None:
        """The validation row of the best kept adapter (the lowest loss, the later step on
        ties)."""
        kept = {step for step, _ in self._best_runs()}
        rows = [r for r in read_log(self.run.validation_log) if r["step"] in kept]
        return min(rows, key=lambda r: (r["loss per answer"], -r["step"])) if rows else None

    def _forget_after(self, step: int) -> None:
        """Drops what the run wrote after checkpoint ``step`` beside the train log (the
        validation log, best adapters): it is redone on resume."""
        cut_log(self.run.validation_log, step)
        for kept_step, path in self._best_runs():
            if kept_step > step:
                shutil.rmtree(path)

    def _select_best(self) -> dict | None:
        """The validation row of the weights that are saved. With selection: the kept
        adapter with the lowest validation loss, loaded into the model, unless the last
        step's weights are within one standard error of it (metrics.one_se_choice: the
        simpler choice); without, the final weights scored."""
        best = self._best_validation() if self._selects(self.total_steps) else None
        last = next((r for r in read_log(self.run.validation_log)
                     if r["step"] == self.total_steps), None) if best else None
        if best is None or last is None:
            report = validate(self, self.cfg.micro_batch)
            return None if report is None else {"step": self.total_steps, **report}
        choice, _ = one_se_choice({"last": last["per_case"]["loss"],
                                   "best": best["per_case"]["loss"]}, "last",
                                  higher_is_better=False)
        if choice == "last":
            beaten = best["step"] != last["step"]
            return {**last, "selected": f"the last step (step {best['step']}'s loss within one"
                                         " standard error)" if beaten else "the last step"}
        folder = self.run.best / f"step-{best['step']:06d}"
        adapter = load_file(folder / "adapter" / "adapter_model.safetensors")
        projector = load_file(folder / "projector.safetensors")
        if self.sharded is None:
            set_peft_model_state_dict(self.peft_model, adapter)
            self.projector.load_state_dict(projector)
        else:
            self.sharded.load_adapter(adapter)
            self.sharded.load_extra(projector)
        return {**best, "selected": f"step {best['step']}: validation loss lower than the last"
                                    " step's by more than one standard error"}

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> None:
        """Adapter, projector, optimiser, scheduler and RNGs (the curriculum's too); then
        only the newest best adapter that the checkpoint covers is kept."""
        self.accelerator.wait_for_everyone()
        gathered = None if self.sharded is None else self.sharded.gather(self.optimizer)
        projector = projector_weights(self)
        if self.accelerator.is_main_process:
            checkpointing.save(self.run.checkpoints, step, {"plan": self.fingerprint},
                               self.peft_model, self.optimizer,
                               self.scheduler, extra=projector,
                               generators={"curriculum": self.curriculum}, gathered=gathered)
        covered = [path for s, path in self._best_runs() if s <= step]
        for path in covered[:-1]:
            shutil.rmtree(path, ignore_errors=True)

    def load_checkpoint(self) -> int:
        """The step to start from: 0, or the step of the newest intact checkpoint of this
        plan (a damaged one is reported and the one before it used: checkpointing.load).
        Adapter, projector, optimiser, scheduler and RNGs (the curriculum's too) come from
        that one checkpoint; the loop then cuts the logs and the best adapters back to its
        step."""
        found = checkpointing.load(
            self.run.checkpoints, self.fingerprint,
            lambda checkpoint: checkpointing.restore(
                checkpoint, self.peft_model, self.optimizer, self.scheduler,
                {"curriculum": self.curriculum}, extra_module=self.projector,
                sharded=self.sharded),
            self.reporter.log, main=self.accelerator.is_main_process,
            barrier=self.accelerator.wait_for_everyone)
        return 0 if found is None else found.step

    def _residual_choice(self, chosen: dict | None) -> dict | None:
        """A residual system's partner and gate: the learned gate where the residual
        ranking beats the partner alone on validation by more than one standard error, else
        0, written into the projector (residual.keep_gate). Every process calls it: under
        FSDP the projector's weights are gathered and loaded back collectively."""
        if self.partner is None:
            return None
        weights = projector_weights(self)
        learned = float(weights["residual_weight"][0])
        record = {**self.partner.record(), "learned_gate": round(learned, 6)}
        if chosen is None:  # no validation cases: nothing to check the gate on
            return {**record, "gate": round(learned, 6), "kept": "the learned gate (no"
                                                                 " validation cases)"}
        keep, why, means = keep_gate(self.partner.reciprocal_ranks(self.inputs.validation),
                                     chosen["per_case"]["rr (residual)"])
        if not keep:
            weights["residual_weight"].zero_()
            if self.sharded is None:
                self.projector.load_state_dict(weights)
            else:
                self.sharded.load_extra(weights)
        return {**record, "gate": round(learned, 6) if keep else 0.0, "kept": why,
                "valid_mrr": {k: round(v, 4) for k, v in means.items()}}

    def save_final(self) -> dict:
        if self.run.best.exists() and not self._selects(self.total_steps):
            shutil.rmtree(self.run.best)  # left from a run with selection: not this plan's
        chosen = self._select_best()
        residual = self._residual_choice(chosen)
        with distributed.full_parameters(self.accelerator, self.model):
            self.diagnostics["after"] = injection(self)
        rows = read_log(self.run.train_log)
        init = self.init_run
        manifest = RunManifest(
            kind="sft", system=self.system, domain=self.domain, partition=self.partition,
            data_version=self.inputs.data_version, seed=self.seed,
            base_model=self.profile.model.name,
            init_adapter=str(init.adapter) if init else None,
            init_manifest=init.read_manifest().corpus_fingerprint if init else None,
            objective=self.objective.name, listing=self.listing, samples=len(self.samples),
            epochs=self.objective.epochs, steps=self.total_steps, schedule=self.schedule,
            fingerprint=self.fingerprint,
            validation=without_per_case(chosen), scoring=chosen["scoring"] if chosen else None,
            validation_curve=[without_per_case(r) for r in read_log(self.run.validation_log)],
            injection=self.diagnostics, residual=residual,
            hybrid_steps=sum(r["prompt"] == "hybrid" for r in rows), **log_totals(rows),
            trainable_parameters=self.trainable, placeholder_id=self.placeholder_id,
            config=dataclasses.asdict(self.cfg), dtype=str(self.dtype).replace("torch.", ""),
            git_revision=git_revision(), processor=processor(str(self.device)),
            mlflow_run_id=self.tracker.wait_open())
        publish(self, manifest)
        if self.accelerator.is_main_process:
            shutil.rmtree(self.run.best, ignore_errors=True)
        return manifest.to_dict()


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
            f" {trainer.total_steps} steps ({trainer.schedule} rate), {trainer.dtype},"
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
