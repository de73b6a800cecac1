"""``--dry-run`` of the trainers: the plan, the model's config and a memory estimate for the
chosen device, dtype and sharding, without loading a weight, so a 7B run on a cluster can be
checked on a laptop first (docs/SCALING.md).

Each trainer builds its plan (CPT: the corpus and its steps; SFT and DPO: the samples and
the widest row) and hands it here with the shape of one micro-batch; this module reads the
config (``AutoConfig``, or the built-in models' own), checks it against the plan, counts
the parameters on the meta device and prints the estimate (cprec_core.training.memory).
"""

from __future__ import annotations

import argparse

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from cprec_core.config import Profile
from cprec_core.training.memory import GB, available_memory, estimate_plan, model_size


class PlanError(RuntimeError):
    """The dry-run found the plan or the model's config unusable."""


@dataclass(frozen=True)
class Shape:
    """One micro-batch of a trainer: ``rows`` rows of up to ``tokens`` tokens."""

    rows: int
    tokens: int
    gradient_checkpointing: bool
    dtype: str  # the trainer's dtype setting: auto, bf16 or fp32


def _positive(text: str) -> int:
    """``--processes``: a whole number of at least 1 (argparse reports anything else)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1, got {text!r}")
    return int(text)


def add_arguments(parser):
    """``--dry-run`` and ``--processes``, shared by the trainers' command lines."""
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan, the model's config and a memory estimate; load"
                             " no weights, train nothing")
    parser.add_argument("--processes", type=_positive,
                        help="processes to plan the memory for (default: the launched world"
                             " size, else 1)")
    return parser


def model_config(profile: Profile, tokenizer):
    """The model's config without its weights: ``tiny-random``'s is built as the loader
    builds it, a packaged model's (``smollm2-135m``, ``gemma3-270m``) read from the
    converted checkpoint or the GGUF header, anything else read with ``AutoConfig`` from
    the folder or the local cache."""
    from transformers import AutoConfig, LlamaConfig

    from cprec_core.models.loader import TINY
    from cprec_core.models.packaged import packaged

    name = profile.model.name
    try:
        if name == "tiny-random":
            return LlamaConfig(vocab_size=len(tokenizer), **TINY)
        if packaged(name) is not None:
            folder = profile.layout.cache_dir / "models" / name
            if (folder / "config.json").is_file():
                return AutoConfig.from_pretrained(folder)
            gguf = packaged(name).gguf(profile.layout.cache_dir)
            return AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
        return AutoConfig.from_pretrained(name, local_files_only=True,
                                          trust_remote_code=profile.model.trust_remote_code)
    except (OSError, ValueError, RuntimeError) as exc:
        raise PlanError(f"model.name {name!r}: cannot read its config offline: {exc}") from exc


def target_device(profile: Profile) -> tuple[str, bool]:
    """The device the run would use and whether it is on this machine: ``auto`` is the GPU
    if there is one; ``cuda`` asked for on a machine without one is planned for anyway."""
    name = profile.device
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    here = name == "cpu" or torch.cuda.is_available()
    return name, here


def plan_dtype(setting: str, device: str, here: bool) -> torch.dtype:
    """The trainer's dtype; ``auto`` for a GPU not on this machine is bf16 (Ampere or newer)."""
    from cprec_core.models.loader import resolve_dtype

    if setting == "auto" and device.startswith("cuda") and not here:
        return torch.bfloat16
    return resolve_dtype(setting, device)


def sharding(profile: Profile, processes: int, trainer: str) -> str:
    """``fsdp`` and ``ddp`` as the profile says for ``trainer`` (FSDP is CPT's and SFT's);
    ``none`` with several processes is plain data parallelism (accelerate's default), which
    holds memory as DDP does."""
    from cprec_core.training.distributed import distributed_mode

    setting = distributed_mode(profile, trainer)
    if setting == "none" and processes > 1:
        return "ddp"
    return setting


def processes_default() -> int:
    """Under ``accelerate launch`` the launched world size, else 1."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def report(profile: Profile, trainer: str, shape: Shape, lora, plan_lines: list[str],
           tokenizer, tokenizer_dir: Path | str, processes: int | None = None,
           log=print) -> dict:
    """Checks the model's config against the plan, estimates one process's memory and
    prints both (``log``); returns the figures. Raises ``PlanError`` on a config that
    cannot train this plan."""
    from cprec_core.models.quantization import QuantizationError, check_quantization

    processes = processes or processes_default()
    device, here = target_device(profile)
    dtype = plan_dtype(shape.dtype, device, here)
    try:
        check_quantization(profile.model.quantization, device, installed=here)
    except QuantizationError as exc:
        raise PlanError(str(exc)) from exc
    config = model_config(profile, tokenizer)
    size = model_size(config, lora.target_modules, lora.r)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    limit = getattr(text, "max_position_embeddings", None)
    if limit and shape.tokens > limit:
        raise PlanError(f"rows of {shape.tokens} tokens exceed the model's"
                        f" max_position_embeddings {limit}")
    capped = [f"{key}={getattr(text, key)}" for key in ("final_logit_softcapping", "logit_scale")
              if getattr(text, key, None) not in (None, 1, 1.0)]
    if capped:  # as cprec_core.models.loader.check_head refuses after loading
        raise PlanError(f"model.name {profile.model.name!r}: unsupported LM head"
                        f" ({', '.join(capped)}); the chunked loss reads logits as hidden @ W.T")
    if size.lora_parameters == 0:
        raise PlanError(f"no LoRA target of {list(lora.target_modules)} is a linear layer of"
                        f" {type(config).__name__}")
    notes = []
    if len(tokenizer) > size.vocab_size:
        notes.append(f"the tokenizer has {len(tokenizer)} tokens, the model's vocabulary"
                     f" {size.vocab_size}: the embeddings would grow")
    mode = sharding(profile, processes, trainer)
    estimate = estimate_plan(size, dtype, shape.rows, shape.tokens, shape.gradient_checkpointing,
                             processes, mode, profile.model.quantization, cpu=device == "cpu")
    free = available_memory(torch.device(device)) if here else None
    dtype_name = str(dtype).replace("torch.", "")
    lines = [f"dry run of profile {profile.name!r}: nothing loaded, nothing trained",
             *plan_lines,
             f"tokenizer: the corpus tokenizer at {tokenizer_dir} ({len(tokenizer)} tokens),"
             " which the plan is counted in",
             f"model: {profile.model.name} ({getattr(config, 'model_type', '?')},"
             f" {size.parameters / 1e9:.3f} B parameters, {size.layers} layers of"
             f" {size.layer_class}, d {size.hidden_size}, vocabulary {size.vocab_size})",
             f"LoRA: r {lora.r} on {', '.join(lora.target_modules)}:"
             f" {size.lora_parameters / 1e6:.2f} M trainable parameters",
             *(f"note: {n}" for n in notes),
             f"memory per process on {device}, {dtype_name}, quantization"
             f" {profile.model.quantization}, {processes} process(es), sharding {mode},"
             f" micro-batch {shape.rows} x {shape.tokens} tokens, gradient checkpointing"
             f" {'on' if shape.gradient_checkpointing else 'off'}:",
             *estimate.lines()]
    if free is None:
        lines.append(f"free memory: {device} is not on this machine, not checked")
    else:
        verdict = "fits" if estimate.total <= 0.9 * free else "does NOT fit"
        lines.append(f"free memory on {device} here: {free / GB:.2f} GB: {verdict}")
    for line in lines:
        log(line)
    return {"device": device, "dtype": dtype_name, "processes": processes, "sharding": mode,
            "parameters": size.parameters, "lora_parameters": size.lora_parameters,
            "parts": estimate.parts, "total": estimate.total, "free": free}
