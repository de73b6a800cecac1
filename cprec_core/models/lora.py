"""LoRA through peft, with two changes that matter on CPUs (benchmarks/bench_cpt.py):

1. peft casts every LoRA input to the adapter's dtype (fp32 master weights here), two copies
   of each activation per projection under bf16 autocast; we switch that off and let
   autocast cast the small adapter weights instead (same arithmetic).
2. peft's LoRA dropout draws one mask per projection. ``SharedLoraDropout`` draws one mask
   per *input tensor*, shared by the adapters that read it (q/k/v read the same hidden
   states, gate/up too), from 16 random bits per element. Each adapter still sees dropout
   with probability p; only the masks of q, k and v (and of gate and up) are the same
   instead of independent. ``LoraSettings.shared_dropout: false`` restores peft's.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, PeftModel, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn

from cprec_core.config import LoraSettings


def fast_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout with the keep decision taken from 16 random bits per element."""
    n = x.numel()
    words = torch.randint(-2**31, 2**31 - 1, ((n + 1) // 2,), dtype=torch.int32, device=x.device)
    bits = words.view(torch.int16)[:n].view(x.shape)
    threshold = -32768 + round(p * 65536)
    mask = (bits >= threshold).to(x.dtype).mul_(1.0 / (1.0 - p))
    return x * mask


class SharedLoraDropout(nn.Module):
    """One dropout mask per input tensor, shared by the LoRA layers of a block that read it."""

    def __init__(self, p: float, shared: dict):
        super().__init__()
        self.p = p
        self.shared = shared  # one dict per decoder block; holds the last input and output

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.shared.get("x") is x:
            return self.shared["y"]
        y = fast_dropout(x, self.p)
        self.shared["x"], self.shared["y"] = x, y
        return y


ALL_LINEAR = "all-linear"  # peft's name for every linear layer but the LM head


def linear_module_names(model: nn.Module) -> list[str]:
    """The distinct last names of the model's linear layers (what ``target_modules`` names;
    GPT-2-style models hold theirs as transformers' ``Conv1D``, which peft adapts too)."""
    from transformers.pytorch_utils import Conv1D

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, (nn.Linear, Conv1D)) and name})


def resolve_target_modules(model: nn.Module, names) -> list[str] | str:
    """``names`` checked against the model: each must be the last name of some linear
    layer (architectures name them differently: ``q_proj`` in Llama, Qwen2 and Gemma 3,
    ``c_attn`` in GPT-2), or the one value ``all-linear``. A clear error otherwise, naming
    the setting and the model's linear layers."""
    names = list(names)
    if names == [ALL_LINEAR]:
        return ALL_LINEAR
    available = linear_module_names(model)
    missing = [n for n in names if n not in available]
    if missing or not names:
        kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
        raise ValueError(f"cpt.lora.target_modules {missing or names}: not linear layers of"
                         f" this {kind} model; its linear layers are {available}"
                         f" (or use [{ALL_LINEAR}])")
    return names


def apply_lora(model: nn.Module, settings: LoraSettings, adapter: str = "default") -> nn.Module:
    """A peft model with fresh LoRA weights in fp32 (the optimiser's master copies)."""
    peft_model = get_peft_model(model, LoraConfig(
        r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
        target_modules=resolve_target_modules(model, settings.target_modules),
        task_type="CAUSAL_LM"))
    return _for_training(peft_model, settings, adapter)


def load_trainable_lora(model: nn.Module, folder, settings: LoraSettings) -> nn.Module:
    """A saved adapter (``folder``, peft's format) loaded to train on: rank, alpha and target
    modules as saved; dropout and the CPU tunings of ``settings``, as ``apply_lora``."""
    return _for_training(PeftModel.from_pretrained(model, folder, is_trainable=True), settings)


def _for_training(peft_model: nn.Module, settings: LoraSettings,
                  adapter: str = "default") -> nn.Module:
    """Trainable weights in fp32 (the optimiser's master copies), then the CPU tunings."""
    for p in peft_model.parameters():
        if p.requires_grad:
            p.data = p.data.float()
    tune_lora_layers(peft_model, settings, adapter)
    return peft_model


def tune_lora_layers(peft_model: nn.Module, settings: LoraSettings, adapter: str = "default") -> None:
    shared: dict[str, dict] = {}
    for name, module in peft_model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        module.cast_input_dtype_enabled = False
        if settings.shared_dropout and settings.dropout > 0 and adapter in module.lora_dropout:
            block = name.rsplit(".", 2)[0]  # "...layers.3": q/k/v, o, gate/up, down in turn
            module.lora_dropout[adapter] = SharedLoraDropout(settings.dropout,
                                                             shared.setdefault(block, {}))
