"""How the trainers spread over processes (``train.distributed``): the accelerate config file
the launch command passes, and what FSDP needs from a trainer before ``prepare``.

    accelerate launch --config_file $(python -c "...accelerate_config_file(profile)") \\
        --num_processes 8 -m cprec_core.training.cpt --profile paper-7b
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from contextlib import nullcontext

if TYPE_CHECKING:  # the launch command's builder imports this module without torch
    import torch

CONFIG_DIR = Path(__file__).resolve().parent / "accelerate"


SHARDED_TRAINERS = ("cpt", "sft")  # the trainers that run under FSDP; DPO under DDP


def distributed_mode(profile, trainer: str = "cpt") -> str:
    """``train.distributed`` as ``trainer`` runs it: ``fsdp`` only for the trainers that
    support it (CPT, SFT), DDP for the others (DPO keeps its adapter and its reference
    unsharded)."""
    setting = profile.train.distributed
    if setting == "fsdp" and trainer not in SHARDED_TRAINERS:
        return "ddp"
    return setting


def accelerate_config_file(profile, trainer: str = "cpt") -> Path | None:
    """The shipped accelerate config for ``trainer`` (``cpt``, ``sft``, ``dpo``) under
    ``train.distributed`` (``ddp.yaml``, ``fsdp.yaml``), or None for ``none``
    (accelerate's defaults); the launch command passes it as ``--config_file``."""
    setting = distributed_mode(profile, trainer)
    return None if setting == "none" else CONFIG_DIR / f"{setting}.yaml"


def uses_fsdp(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.FSDP


def name_decoder_layers(accelerator, model: torch.nn.Module) -> None:
    """Under FSDP, wrap each decoder layer as its own unit (peft's recipe for LoRA). The
    trainers hand accelerate a wrapper (PackedCausalLM, HybridLM) that lacks the
    transformers model's ``_no_split_modules``, so the layer class is named here from the
    model inside; a class set in the config file wins."""
    if not uses_fsdp(accelerator):
        return
    plugin = accelerator.state.fsdp_plugin
    if plugin.transformer_cls_names_to_wrap:
        return
    names = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    present = {type(m).__name__ for m in model.modules()}
    plugin.transformer_cls_names_to_wrap = sorted(names & present)


def full_parameters(accelerator, model: torch.nn.Module, writeback: bool = False):
    """A context in which every parameter of ``model`` (as accelerate prepared it) is whole
    on every process, for what reads or sets weights outside the forward (the adapter and
    projector a trainer saves or loads, its diagnostics); under FSDP a collective, which
    every process enters together. ``writeback``: changes made inside are kept."""
    if not uses_fsdp(accelerator):
        return nullcontext()
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel.summon_full_params(model, writeback=writeback)
