"""Continual pre-training with LoRA under the Warmup-Stable-Annealing schedule.

    accelerate launch -m cprec_core.training.cpt --profile demo --variant wsa
    python -m cprec_core.training.cpt --config my.yaml --variant ds_only        # same, one process
    python -m cprec_core.training.cpt --profile paper-7b --dry-run --processes 8  # plan only

One epoch of next-token prediction over the corpus snapshot, in the order of the plan
(cprec_core.training.cpt_plan): domain-specific blocks in warmup and stable, mixed blocks in
annealing. The LR is ``transformers.get_wsd_schedule`` (linear warmup, constant, cosine to
``min_lr_ratio``). Checkpoints every ``checkpoint_every`` steps hold the adapter,
optimiser, scheduler, RNG states and the step; a killed run started again resumes from the
last one and ends with the same adapter as an uninterrupted run. Checkpoints of another plan
(the corpus, the config or the model changed) are discarded and training starts over; an
unchanged plan that already finished resumes at its end and re-emits its adapter.

Outputs: the variant's ``TrainedAdapter`` folder (cprec_core.layout): the peft adapter, a
manifest (base model, corpus fingerprint, config, final loss, git revision), the log of
every optimiser step and the checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys

import torch
from accelerate import Accelerator
from transformers import AutoTokenizer, get_wsd_schedule

from cprec_core.cli import (add_profile_arguments, add_reporter_argument, profile_from_args,
                            run_trainer)
from cprec_core.config import CPTConfig, Profile
from cprec_core.layout import Layout, RunManifest, TrainedAdapter
from cprec_core.models.causal_lm import PackedCausalLM
from cprec_core.models.loader import load_base_model, resolve_dtype
from cprec_core.models.lora import apply_lora
from cprec_core.models.quantization import (QuantizationError, check_quantization,
                                            prepare_for_training)
from cprec_core.progress import Reporter
from cprec_core.provenance import git_revision, processor
from cprec_core.training import checkpointing, distributed, dry_run
from cprec_core.training.cpt_plan import (Corpus, CorpusError, Plan, build_plan, for_variant,
                                          read_corpus, shuffled_control, subsample)
from cprec_core.tracking import NULL_TRACKER
from cprec_core.training.loop import (autocast, fingerprint, log_totals, micro_batches,
                                      publish_run, read_log, run_steps, tracked_run)
from cprec_core.training.memory import available_memory, estimate_memory



class CPTError(RuntimeError):
    """Training cannot start: bad corpus, model, memory or a checkpoint from another run."""


class CPTTrainer:
    """setup() builds tokenizer, plan, model and optimiser; train() is the one loop."""

    def __init__(self, profile: Profile, variant: str, reporter: Reporter | None = None,
                 run: TrainedAdapter | None = None):
        self.profile = profile
        self.cfg = profile.cpt
        self.variant = variant
        self.run = run or profile.layout.cpt_adapter(variant)
        self.reporter = reporter or Reporter()
        self.tracker = NULL_TRACKER  # the MLflow run while train() runs

    # -- setup -----------------------------------------------------------------------------
    def setup(self, corpus: Corpus | None = None, resume: bool = True) -> None:
        """``corpus`` replaces the snapshot (benchmarks); ``resume=False`` ignores checkpoints."""
        device = self.profile.device
        self.accelerator = Accelerator(cpu=device == "cpu")
        self.device = self.accelerator.device
        self.dtype = resolve_dtype(self.cfg.dtype, str(self.device))
        try:  # before any weight is read
            check_quantization(self.profile.model.quantization, str(self.device))
        except QuantizationError as exc:
            raise CPTError(str(exc)) from exc
        torch.manual_seed(self.cfg.seed)
        self.tokenizer = self._setup_tokenizer()
        self.plan = self._setup_plan(corpus)
        self.model = self._setup_model()
        self.optimizer = torch.optim.AdamW(
            [p for p in self.model.parameters() if p.requires_grad], lr=self.cfg.lr,
            weight_decay=self.cfg.weight_decay)
        self.scheduler = get_wsd_schedule(
            self.optimizer, num_warmup_steps=self.plan.warmup_steps,
            num_decay_steps=self.plan.anneal_steps, num_stable_steps=self.plan.stable_steps,
            decay_type="cosine", min_lr_ratio=self.cfg.min_lr_ratio)
        self.sharded = None
        if distributed.uses_fsdp(self.accelerator):
            distributed.name_decoder_layers(self.accelerator, self.model)
            self.sharded = checkpointing.ShardedModel(self.model, self.peft_model)
        self.model, self.optimizer = self.accelerator.prepare(self.model, self.optimizer)
        if self.sharded is not None:
            self.sharded.attach(self.model)
        self.start_step = self.load_checkpoint() if resume else 0

    def _setup_tokenizer(self):
        layout = self.profile.layout
        if not layout.tokenizer_config.is_file():
            raise CPTError(f"{layout.tokenizer_dir}: corpus tokenizer not found; materialise"
                           " cpt_corpus first")
        return AutoTokenizer.from_pretrained(layout.tokenizer_dir)

    def _setup_plan(self, corpus: Corpus | None) -> Plan:
        layout = self.profile.layout
        corpus = for_variant(corpus or read_corpus(layout.corpus_parquet), self.variant)
        if self.variant == "shuffled_control":
            import pyarrow.parquet as pq

            items = pq.read_table(layout.corpus_items).to_pydict()
            titles = dict(zip(items["item_idx"], items["title"]))
            corpus = shuffled_control(corpus, titles, self.profile.corpus, self.tokenizer,
                                      self.cfg.seed)
        self.corpus = subsample(corpus, self.cfg.max_tokens, self.cfg.seed)
        plan = build_plan(self.corpus, self.cfg, self.variant, self.tokenizer.eos_token_id)
        if plan.total_steps == 0:
            raise CPTError("the training plan has no steps: the corpus is empty")
        self.plan_fingerprint = plan_fingerprint(self.corpus, self.cfg, self.variant,
                                                 self.profile.model.name)
        return plan

    def _setup_model(self) -> PackedCausalLM:
        base = load_base_model(self.profile.model.name, self.profile.layout.cache_dir, self.dtype,
                               self.tokenizer, self.profile.model.trust_remote_code,
                               self.profile.model.quantization, self.device,
                               allow_pickle=self.profile.model.allow_pickle_weights)
        shards = (self.accelerator.num_processes if distributed.uses_fsdp(self.accelerator)
                  else 1)
        need = estimate_memory(base, self.cfg, self.dtype, shards)
        have = available_memory(self.device)
        if need > 0.9 * have:
            raise CPTError(
                f"training needs about {need / 2**30:.1f} GiB but {have / 2**30:.1f} GiB is"
                f" available on {self.device}: lower cpt.micro_batch or cpt.block_size, or set"
                " cpt.gradient_checkpointing: true")
        self.memory_estimate = need
        base = prepare_for_training(base, self.profile.model.quantization,
                                    self.cfg.gradient_checkpointing)
        if self.cfg.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        torch.manual_seed(self.cfg.seed)  # LoRA init must not depend on what loading consumed
        model = apply_lora(base, self.cfg.lora)
        self.trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        wrapped = PackedCausalLM(model)
        if self.cfg.compile:
            wrapped = torch.compile(wrapped)
        return wrapped

    def dry_run(self, processes: int | None = None) -> dict:
        """The plan and a memory estimate for one step, without loading the model
        (cprec_core.training.dry_run); the corpus tokenizer is the one the plan counts in."""
        self.tokenizer = self._setup_tokenizer()
        self.plan = plan = self._setup_plan(None)
        lines = [f"CPT {self.variant}: {len(self.corpus)} documents,"
                 f" {int(plan.blocks.tokens.sum())} tokens in {len(plan.blocks)} blocks of"
                 f" {self.cfg.block_size} (fill {plan.blocks.fill:.1%}), {plan.total_steps}"
                 f" steps of {self.cfg.blocks_per_step} blocks (warmup {plan.warmup_steps},"
                 f" stable {plan.stable_steps}, anneal {plan.anneal_steps})"]
        shape = dry_run.Shape(self.cfg.micro_batch, self.cfg.block_size,
                              self.cfg.gradient_checkpointing, self.cfg.dtype)
        result = dry_run.report(self.profile, "cpt", shape, self.cfg.lora, lines, self.tokenizer,
                                self.profile.layout.tokenizer_dir, processes, self.reporter.log)
        return {"dry_run": True, "steps": plan.total_steps, **result}

    @property
    def peft_model(self):
        model = self.accelerator.unwrap_model(self.model)
        return getattr(model, "_orig_mod", model).model

    # -- the loop ---------------------------------------------------------------------------
    def train_step(self, step: int) -> dict:
        """Forwards and backwards of one step of the plan (loop.one_step updates); its log
        fields: the phase, the data it read, the mean loss per target token, the tokens."""
        plan, acc, blocks = self.plan, self.accelerator, self.plan.blocks
        world = acc.num_processes
        ids = plan.steps[step]
        n_targets = int((blocks.targets[ids] != -100).sum())  # all ranks' blocks
        loss_sum, parts = torch.zeros((), device=self.device), 0
        for part, sync in micro_batches(acc, self.model, ids, self.cfg.micro_batch):
            width = int(blocks.tokens[part].max())  # padding sits at block ends: skip it
            with sync, autocast(self.device, self.dtype):
                loss, _ = self.model(*(torch.from_numpy(x[part, :width]).to(self.device) for x in
                                       (blocks.input_ids, blocks.position_ids, blocks.targets)))
            acc.backward(loss * world / n_targets)
            loss_sum += loss.detach().float()
            parts += 1
        if not parts:  # more ranks than blocks in this step: join the gradient all-reduce
            acc.backward(sum(p.sum() * 0 for p in self.model.parameters() if p.requires_grad))
        loss = float(acc.reduce(loss_sum, reduction="sum")) / n_targets
        return {"phase": plan.phase(step), "data": plan.data[step], "loss": loss,
                "tokens": plan.tokens(step)}

    def train(self, stop_after: int | None = None) -> dict:
        """Runs to the end of the plan (or ``stop_after`` steps, to simulate a kill), logging
        to one MLflow run that a resume of the same plan continues."""
        plan = self.plan
        with tracked_run(self, "cpt", f"cpt {self.variant}", "cpt", self.cfg,
                         data_version=self.corpus.fingerprint, seed=self.cfg.seed,
                         key=self.plan_fingerprint, tags={"variant": self.variant},
                         variant=self.variant, plan=self.plan_fingerprint,
                         steps=plan.total_steps, documents=len(self.corpus),
                         phase_steps={"warmup": plan.warmup_steps, "stable": plan.stable_steps,
                                      "anneal": plan.anneal_steps}) as self.tracker:
            return run_steps(self, self.cfg.checkpoint_every, self.cfg.grad_clip, stop_after)

    @property
    def total_steps(self) -> int:
        return self.plan.total_steps

    @property
    def label(self) -> str:
        return f"CPT {self.variant}"

    # -- checkpoints ------------------------------------------------------------------------
    def save_checkpoint(self, step: int) -> None:
        self.accelerator.wait_for_everyone()
        gathered = None if self.sharded is None else self.sharded.gather(self.optimizer)
        if self.accelerator.is_main_process:
            checkpointing.save(self.run.checkpoints, step,
                               {"plan": self.plan_fingerprint, "total_steps": self.plan.total_steps},
                               self.peft_model, self.optimizer, self.scheduler,
                               gathered=gathered)

    def load_checkpoint(self) -> int:
        """The step to start from: 0, or the step of the newest intact checkpoint of this
        plan (a damaged one is reported and the one before it used: checkpointing.load)."""
        found = checkpointing.load(
            self.run.checkpoints, self.plan_fingerprint,
            lambda checkpoint: checkpointing.restore(checkpoint, self.peft_model,
                                                     self.optimizer, self.scheduler,
                                                     sharded=self.sharded),
            self.reporter.log, main=self.accelerator.is_main_process,
            barrier=self.accelerator.wait_for_everyone)
        return 0 if found is None else found.step

    def save_final(self) -> dict:
        self.accelerator.wait_for_everyone()
        gathered = None if self.sharded is None else self.sharded.adapter()
        manifest = RunManifest(
            kind="cpt", variant=self.variant, base_model=self.profile.model.name,
            corpus_fingerprint=self.corpus.fingerprint, plan_fingerprint=self.plan_fingerprint,
            profile=self.profile.name, config=dataclasses.asdict(self.cfg),
            steps=self.plan.total_steps,
            phase_steps={"warmup": self.plan.warmup_steps, "stable": self.plan.stable_steps,
                         "anneal": self.plan.anneal_steps},
            documents=len(self.corpus), block_fill=round(self.plan.blocks.fill, 4),
            **log_totals(read_log(self.run.train_log)), trainable_parameters=self.trainable,
            dtype=str(self.dtype).replace("torch.", ""), device=str(self.device),
            processor=processor(str(self.device)), processes=self.accelerator.num_processes,
            memory_estimate_gib=round(self.memory_estimate / 2**30, 2),
            git_revision=git_revision(), torch=torch.__version__,
            mlflow_run_id=self.tracker.wait_open())

        def write(staged: TrainedAdapter) -> None:
            if gathered is None:
                self.peft_model.save_pretrained(staged.adapter)
            else:
                checkpointing.write_adapter(self.peft_model, staged.adapter, gathered)

        if self.accelerator.is_main_process:
            publish_run(self.run, write, manifest)
        return manifest.to_dict()


def plan_fingerprint(corpus: Corpus, cfg: CPTConfig, variant: str, model: str) -> str:
    """What a run trains: the corpus it reads, the settings that shape it, the variant and
    the model. Which variants a profile trains and where runs may be reused from do not
    change a run, so they are left out."""
    settings = {k: v for k, v in dataclasses.asdict(cfg).items()
                if k not in ("variants", "reuse_from")}
    return fingerprint([corpus.fingerprint, settings, variant, model], sort_keys=True)


def reusable_run(profile: Profile, variant: str, fingerprint: str, log) -> TrainedAdapter | None:
    """A finished run of the same plan in a profile of ``cpt.reuse_from`` (same data
    folder), or None. A sparse-target study shares its source-only CPT with the full study
    this way."""
    for other in profile.cpt.reuse_from:
        found = Layout(profile.layout.data_dir, other).cpt_adapter(variant)
        if not (found.exists() and found.manifest.is_file()):
            continue
        theirs = found.read_manifest().plan_fingerprint
        if theirs == fingerprint:
            return found
        log(f"CPT {variant}: profile {other!r} has another plan ({theirs}, here"
            f" {fingerprint}); not reused")
    return None


def copy_run(found: TrainedAdapter, run: TrainedAdapter, profile: str) -> dict:
    """``found``'s adapter, log and manifest copied into ``run`` (the adapter staged and
    renamed into place, the manifest last); the manifest says where it came from."""
    if found.train_log.is_file():
        shutil.copyfile(found.train_log, run.train_log)
    manifest = found.read_manifest().replace(reused_from=str(found.path), profile=profile)
    publish_run(run, lambda staged: shutil.copytree(found.adapter, staged.adapter), manifest)
    return manifest.to_dict()


def run(profile: Profile, variant: str, reporter: Reporter | None = None,
        stop_after: int | None = None, restart: bool = False, dry: bool = False,
        processes: int | None = None) -> dict:
    """Trains the variant; ``dry``: prints the plan and the memory estimate for
    ``processes`` processes instead, touching nothing."""
    if dry:
        return CPTTrainer(profile, variant, reporter).dry_run(processes)
    run = profile.layout.cpt_adapter(variant)
    if restart:
        shutil.rmtree(run.path, ignore_errors=True)
    run.path.mkdir(parents=True, exist_ok=True)
    trainer = CPTTrainer(profile, variant, reporter)
    trainer.setup()
    plan = trainer.plan
    found = None if restart else reusable_run(profile, variant, trainer.plan_fingerprint,
                                              trainer.reporter.log)
    if found is not None:  # every process sees it; the main one copies
        manifest = {}
        if trainer.accelerator.is_main_process:
            manifest = copy_run(found, run, profile.name)
            trainer.reporter.log(f"CPT {variant}: the same plan ({trainer.plan_fingerprint})"
                                 f" finished in {found.path}; its adapter reused, not trained")
        trainer.accelerator.wait_for_everyone()
        return {**manifest, "finished": True}
    trainer.reporter.log(
        f"CPT {variant}: {len(trainer.corpus)} documents, {plan.blocks.tokens.sum()} tokens in"
        f" {len(plan.blocks)} blocks of {profile.cpt.block_size} (fill {plan.blocks.fill:.1%}),"
        f" {plan.total_steps} steps (warmup {plan.warmup_steps}, stable {plan.stable_steps},"
        f" anneal {plan.anneal_steps}), {trainer.dtype}, {trainer.accelerator.num_processes}"
        f" process(es) on {trainer.device}, starting at step {trainer.start_step}")
    return trainer.train(stop_after=stop_after)


def main(argv: list[str] | None = None) -> int:
    parser = add_reporter_argument(add_profile_arguments(
        argparse.ArgumentParser(description="Continual pre-training (CPRec)")))
    parser.add_argument("--variant", default="wsa")
    parser.add_argument("--stop-after", type=int, help="stop after N steps (kill simulation)")
    parser.add_argument("--restart", action="store_true", help="ignore existing checkpoints")
    dry_run.add_arguments(parser)
    args = parser.parse_args(argv)
    profile = profile_from_args(args)
    return run_trainer(lambda reporter: run(profile, args.variant, reporter, args.stop_after,
                                            args.restart, args.dry_run, args.processes),
                       (CPTError, CorpusError, dry_run.PlanError), args.reporter)


if __name__ == "__main__":
    sys.exit(main())
