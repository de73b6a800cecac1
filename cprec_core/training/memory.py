"""Will a training step fit? A rough estimate of one micro-batch's memory against what the
device has free, so a misfit fails at start-up with the setting to change, not mid-run."""

from __future__ import annotations

from pathlib import Path

import torch


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def estimate_memory(model, cfg, dtype: torch.dtype) -> int:
    """Weights + activations kept for backward of one micro-batch + one chunk of logits +
    the framework itself. Per token and layer a Llama block under bf16 autocast with LoRA on
    every projection keeps about 34 d + 8 d_ff values (fp32 norms, dropout masks, LoRA
    inputs), calibrated on SmolLM2-135M's peak memory (CHANGELOG.md). Deliberately rough: it
    catches the obvious misfit."""
    config = model.config
    nbytes = torch.finfo(dtype).bits // 8
    weights = sum(p.numel() for p in model.parameters()) * nbytes
    d, ff, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    tokens = cfg.micro_batch * cfg.block_size
    per_layer = tokens * (34 * d + 8 * ff) * nbytes
    if cfg.gradient_checkpointing:
        per_layer = tokens * d * nbytes
    logits = 3 * 1024 * config.vocab_size * 4
    framework = 1 << 30 if device_is_cpu(model) else 0
    return int(weights * 1.1 + layers * per_layer + logits + framework)


def device_is_cpu(model) -> bool:
    return next(model.parameters()).device.type == "cpu"
