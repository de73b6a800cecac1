"""The one outer step loop (``run_steps``) and what every trainer's step does the same way,
written once: this rank's micro-batches with the gradient synchronisation they need, bf16
autocast, the optimiser update with its clipping, the fingerprint that names a run's plan,
and publishing files whole. The trainers (cpt.py, sft.py, dpo.py, cpt_scaling.py) keep their
own ``setup``, ``train_step``, ``save_checkpoint``, ``load_checkpoint`` and ``save_final``
and read top to bottom; they share these pieces, not a base class.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Protocol, Sequence

import torch
from transformers import get_constant_schedule, get_wsd_schedule

from cprec_core import tracking
from cprec_core.layout import RunManifest, TrainedAdapter


def micro_batches(accelerator, model: torch.nn.Module, items: Sequence, size: int
                  ) -> Iterator[tuple[Any, AbstractContextManager]]:
    """This rank's share of a step's ``items`` (every ``num_processes``-th from its own
    index) in micro-batches of ``size``, each with the context its forward and backward run
    in: under DDP or FSDP gradients synchronise on the last micro-batch only (``no_sync``
    before it), so a step costs one all-reduce however many micro-batches it takes."""
    mine = items[accelerator.process_index::accelerator.num_processes]
    parts = [mine[i:i + size] for i in range(0, len(mine), size)]
    for k, part in enumerate(parts):
        yield part, nullcontext() if k == len(parts) - 1 else accelerator.no_sync(model)


def autocast(device: torch.device, dtype: torch.dtype) -> AbstractContextManager:
    """bf16 autocast where the run computes in bf16 (the weights stay as loaded); nothing
    otherwise."""
    if dtype == torch.bfloat16:
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


def fingerprint(value: Any, sort_keys: bool = False) -> str:
    """16 hex digits of the SHA-256 of ``value`` as JSON: what names a run's plan, so a
    checkpoint of another plan is never resumed."""
    return hashlib.sha256(json.dumps(value, sort_keys=sort_keys).encode()).hexdigest()[:16]


@contextmanager
def publishing(scratch: Path, final: Path) -> Iterator[Path]:
    """A folder written whole at ``scratch`` (emptied first) and renamed to ``final`` when
    the block ends without an error (the old ``final`` removed just before), so a reader
    finds the old folder or the new one, never half of one."""
    shutil.rmtree(scratch, ignore_errors=True)
    yield scratch
    shutil.rmtree(final, ignore_errors=True)
    final.parent.mkdir(parents=True, exist_ok=True)
    scratch.rename(final)


def lr_schedule(optimizer, total_steps: int, warmup_ratio: float, min_lr_ratio: float,
                constant_below: int) -> tuple[Any, str]:
    """(scheduler, its name) of an SFT or DPO run: linear warmup, then cosine to
    ``min_lr_ratio`` (``get_wsd_schedule`` without a stable phase); a run of fewer than
    ``constant_below`` steps instead trains at the peak rate on every step. With 10 steps
    the warmup rounds to one step at a few per cent of the rate and the cosine leaves
    about five near the peak: too little to learn from."""
    if total_steps < constant_below:
        return get_constant_schedule(optimizer), "constant"
    warmup = max(1, round(warmup_ratio * total_steps))
    return get_wsd_schedule(optimizer, num_warmup_steps=warmup, num_stable_steps=0,
                            num_decay_steps=max(1, total_steps - warmup), decay_type="cosine",
                            min_lr_ratio=min_lr_ratio), "warmup-cosine"


def cut_log(path: Path, step: int) -> None:
    """Keeps the rows of a JSONL log up to ``step``: what a resumed run redoes is dropped."""
    if path.exists():
        keep = [x for x in path.read_text().splitlines() if x and json.loads(x)["step"] <= step]
        path.write_text("".join(x + "\n" for x in keep))


def read_log(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines() if x] if path.exists() else []


def optimizer_step(trainer, grad_clip: float) -> None:
    """Clip (the norm over every parameter: under FSDP accelerate takes it over all shards
    only when given them all), step the optimiser and the schedule, clear the gradients."""
    if grad_clip:
        trainer.accelerator.clip_grad_norm_(trainer.model.parameters(), grad_clip)
    trainer.optimizer.step()
    trainer.scheduler.step()
    trainer.optimizer.zero_grad(set_to_none=True)


def one_step(trainer, step: int, grad_clip: float) -> dict:
    """One optimiser step: the trainer's ``train_step`` (forwards and backwards, returning
    its log fields, ``loss`` and ``tokens`` among them), then the update. The row it returns
    is the log row: the trainer's fields with the step (1-based), lr and seconds."""
    t0 = time.perf_counter()
    lr = trainer.scheduler.get_last_lr()[0]
    fields = trainer.train_step(step)
    optimizer_step(trainer, grad_clip)
    return {"step": step + 1, **fields, "lr": lr, "loss": round(fields["loss"], 5),
            "seconds": round(time.perf_counter() - t0, 3)}


class Recipe(Protocol):
    """What ``run_steps`` needs of a trainer (torchtune's recipe interface, no base class)."""

    accelerator: Any
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    run: TrainedAdapter
    reporter: Any
    tracker: tracking.NullTracker  # the MLflow run (tracked_run below), or the null tracker
    label: str  # how the log lines name the run
    start_step: int  # where load_checkpoint left it
    total_steps: int

    def train_step(self, step: int) -> dict: ...

    def save_checkpoint(self, step: int) -> None: ...

    def save_final(self) -> dict: ...


LOG_SECONDS = 10.0  # at most one progress line per this many seconds (and the last step)


def run_steps(trainer: Recipe, checkpoint_every: int, grad_clip: float,
              stop_after: int | None = None, after_step=None, forget_after=None,
              curves: str = "training_curves") -> dict:
    """The one outer loop: from ``trainer.start_step`` to the end of the plan (or
    ``stop_after`` steps, to simulate a kill), a row per step in the train log, a progress
    line at most every ``LOG_SECONDS``, a checkpoint every ``checkpoint_every`` steps and at
    the end, and the final files once the last step is done.

    ``after_step(step)`` runs after each step (1-based; SFT scores its validation sample
    there); ``forget_after(step)`` drops what else the run wrote after the checkpoint it
    resumes from (the train log is cut here). Each row also goes to the trainer's MLflow
    run (``trainer.tracker``); once the final files are written, they go there too, with the
    plot that ``cprec_core.training.plots.<curves>`` draws of the train log."""
    acc, total = trainer.accelerator, trainer.total_steps
    if acc.is_main_process:  # one writer: another process reading the half-written
        cut_log(trainer.run.train_log, trainer.start_step)  # file would drop rows
        if forget_after is not None:
            forget_after(trainer.start_step)
    acc.wait_for_everyone()
    trainer.model.train()
    started = last_line = time.perf_counter()
    end = total if stop_after is None else min(total, trainer.start_step + stop_after)
    for step in range(trainer.start_step, end):
        row = one_step(trainer, step, grad_clip)
        if acc.is_main_process:
            with open(trainer.run.train_log, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            trainer.tracker.log_step(row["step"], step_metrics(row))
            if time.perf_counter() - last_line >= LOG_SECONDS or step in (trainer.start_step,
                                                                           total - 1):
                trainer.reporter.log(progress_line(trainer.label, row, total))
                last_line = time.perf_counter()
        if after_step is not None:
            after_step(step + 1)
        if (step + 1) % checkpoint_every == 0 or step + 1 == total:
            trainer.save_checkpoint(step + 1)
    result = {"finished": end == total, "steps_run": end - trainer.start_step,
              "seconds": time.perf_counter() - started}
    if result["finished"]:
        result.update(trainer.save_final())
        if acc.is_main_process and trainer.tracker is not tracking.NULL_TRACKER:
            track_final_files(trainer, curves)
    return result


def step_metrics(row: dict) -> dict[str, float]:
    """A train-log row as MLflow metrics: its numbers (loss, lr, tokens, seconds, ...) and
    the tokens per second."""
    metrics = tracking.numbers(row)
    if row.get("seconds"):
        metrics["tokens_per_second"] = row["tokens"] / row["seconds"]
    return metrics


def track_final_files(trainer: Recipe, curves: str) -> None:
    """The run folder's record as artifacts of its MLflow run: the manifest, the logs, the
    curves and the adapter (what the model registry points at, cprec_core.tracking)."""
    from cprec_core.training import plots  # matplotlib: only where a run is tracked

    run = trainer.run
    getattr(plots, curves)(run.train_log, run.curves, trainer.label)
    trainer.tracker.log_artifacts([run.manifest, run.train_log, run.validation_log, run.curves])
    trainer.tracker.log_artifacts([run.adapter, run.projector], "adapter")
    trainer.tracker.finished()


def tracked_run(trainer, kind: str, name: str, section: str, config: Any, *,
                data_version: str | None, seed: int | None, key: str, tags: dict, **params: Any):
    """The MLflow run ``name`` of one training (cprec_core.tracking.training_run): on rank 0
    only, continued on resume while the plan (``key``) is the
    same. ``config`` is the stage's settings (a dataclass), recorded as ``section.*``."""
    profile = trainer.profile
    return tracking.training_run(
        profile, name=name, key=key, state_file=trainer.run.tracking_file,
        resume=True, main=trainer.accelerator.is_main_process, log=trainer.reporter.log,
        params=tracking.run_params(profile, section, dataclasses.asdict(config),
                                   data_version=data_version, seed=seed,
                                   device=str(trainer.device),
                                   processes=trainer.accelerator.num_processes, **params),
        tags=tracking.run_tags(kind, profile=profile.name, seed=seed, **tags))


def progress_line(label: str, row: dict, total: int) -> str:
    """``label step i/n``, the row's words (phase, data, prompt), lr, loss and tokens/s."""
    words = " ".join(v for k, v in row.items() if isinstance(v, str))
    rate = row["tokens"] / row["seconds"] if row["seconds"] else 0.0
    return (f"{label} step {row['step']}/{total} {words} lr {row['lr']:.2e}"
            f" loss {row['loss']:.4f} {rate:.0f} tok/s")


def log_totals(rows: list[dict]) -> dict:
    """The final loss, tokens, seconds and tokens/s of a train log, for the manifest."""
    tokens, seconds = sum(r["tokens"] for r in rows), sum(r["seconds"] for r in rows)
    return {"final_loss": rows[-1]["loss"] if rows else None, "tokens": tokens,
            "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
            "train_seconds": round(seconds, 1)}


def publish_run(run: TrainedAdapter, write, manifest: RunManifest) -> None:
    """A run's final files written whole into ``run.scratch`` by ``write(staged)`` (a
    ``TrainedAdapter`` there: its adapter folder, the projector where there is one), then
    renamed into place, the manifest last: a reader that finds the manifest finds the files
    it describes."""
    staged = TrainedAdapter(run.scratch)
    shutil.rmtree(staged.path, ignore_errors=True)
    staged.path.mkdir(parents=True)
    write(staged)
    shutil.rmtree(run.adapter, ignore_errors=True)
    staged.adapter.rename(run.adapter)
    if staged.projector.exists():
        staged.projector.replace(run.projector)
    shutil.rmtree(staged.path)
    run.write_manifest(manifest)
