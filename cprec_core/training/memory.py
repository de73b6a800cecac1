"""Will a training step fit? A rough estimate of one micro-batch's memory against what the
device has free, so a misfit fails at start-up with the setting to change, not mid-run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch


def available_memory(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 1 << 62


def estimate_memory(model, cfg, dtype: torch.dtype, shards: int = 1) -> int:
    """Weights + activations kept for backward of one micro-batch + one chunk of logits +
    the framework itself. Per token and layer a Llama block under bf16 autocast with LoRA on
    every projection keeps about 34 d + 8 d_ff values (fp32 norms, dropout masks, LoRA
    inputs), calibrated on SmolLM2-135M's peak memory (CHANGELOG.md). Deliberately rough: it
    catches the obvious misfit. ``shards``: FSDP's processes, which split the weights."""
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
    return int(weights * 1.1 / shards + layers * per_layer + logits + framework)


def device_is_cpu(model) -> bool:
    return next(model.parameters()).device.type == "cpu"


# -- planning without weights (the trainers' --dry-run) -----------------------------------

GB = 1e9
ADAM_STATE = 2  # exp_avg and exp_avg_sq, fp32 like the LoRA weights they follow
SHARDINGS = ("none", "ddp", "fsdp")


@dataclass(frozen=True)
class ModelSize:
    """What a model's config implies, counted on the meta device (no memory, no weights):
    all parameters, those of the decoder's linear layers (the ones 4-bit quantisation
    packs), and the LoRA parameters for the given targets and rank."""

    parameters: int
    linear_parameters: int
    lora_parameters: int
    layer_class: str
    hidden_size: int
    intermediate_size: int
    layers: int
    vocab_size: int


def model_size(config, target_modules, r: int) -> ModelSize:
    """Builds the model from ``config`` on the meta device: exact counts for any architecture
    transformers knows, in about a second for a 7B config, and nothing allocated."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())
    linear = lora = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.endswith("lm_head"):
            continue
        linear += module.weight.numel()
        if name.rsplit(".", 1)[-1] in target_modules:
            lora += r * (module.in_features + module.out_features)
    layer_class = list(model._no_split_modules or ["?"])[0]
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return ModelSize(total, linear, lora, layer_class, text.hidden_size,
                     text.intermediate_size, text.num_hidden_layers, text.vocab_size)


@dataclass(frozen=True)
class Estimate:
    """Bytes per process of one training step, part by part. ``sharded`` names the parts
    FSDP full-shard divides between the processes (already divided here)."""

    parts: dict
    sharded: tuple
    processes: int
    sharding: str

    @property
    def total(self) -> int:
        return int(sum(self.parts.values()))

    def lines(self) -> list[str]:
        out = []
        for name, value in self.parts.items():
            note = f" (1/{self.processes} per process)" if name in self.sharded else ""
            out.append(f"  {name:<24} {value / GB:8.2f} GB{note}")
        out.append(f"  {'total per process':<24} {self.total / GB:8.2f} GB"
                   f" ({self.total / 2**30:.2f} GiB)")
        return out


def estimate_plan(size: ModelSize, dtype: torch.dtype, micro_batch: int, tokens: int,
                  gradient_checkpointing: bool, processes: int = 1, sharding: str = "none",
                  quantization: str = "none", cpu: bool = False) -> Estimate:
    """One process's memory for a LoRA step of ``micro_batch`` rows of ``tokens`` tokens:
    frozen weights in ``dtype`` (decoder linears at ~0.5 byte under 4-bit), LoRA weights,
    gradients and AdamW state in fp32, activations kept for backward with the per-layer
    constants of ``estimate_memory`` (with gradient checkpointing: each layer's input plus
    one layer recomputed in full), the fp32 logits of one head chunk (forward, softmax,
    gradient), and 1 GiB of framework on CPU. Under FSDP full-shard the weights, LoRA,
    gradients and optimiser state are divided by ``processes``, plus the units gathered
    whole while they run (the root's embeddings and head, and two decoder layers with
    backward prefetch); under DDP every process holds them all (plus DDP's gradient
    buckets, the size of the gradients)."""
    if sharding not in SHARDINGS:
        raise ValueError(f"sharding {sharding!r} is not one of {SHARDINGS}")
    nbytes = torch.finfo(dtype).bits // 8
    if quantization == "4bit":  # nf4 with double quantisation: ~4.13 bits per weight
        weights = size.linear_parameters * 0.516 + (size.parameters - size.linear_parameters) * 2
    else:
        weights = size.parameters * nbytes
    row = micro_batch * tokens
    full_layer = row * (34 * size.hidden_size + 8 * size.intermediate_size) * nbytes
    if gradient_checkpointing:
        activations = size.layers * row * size.hidden_size * nbytes + full_layer
    else:
        activations = size.layers * full_layer
    chunk = min(1024, row)
    split = processes if sharding == "fsdp" else 1
    parts = {"weights": weights / split,
             "lora weights": size.lora_parameters * 4 / split,
             "lora gradients": size.lora_parameters * 4 / split,
             "adam state": size.lora_parameters * 4 * ADAM_STATE / split}
    if sharding == "ddp" and processes > 1:
        parts["ddp gradient buckets"] = size.lora_parameters * 4
    if split > 1:
        layer = size.linear_parameters / size.layers
        rest = size.parameters - size.linear_parameters  # embeddings, head, norms
        parts["fsdp gathered units"] = (rest + 2 * layer) * nbytes
    parts["activations"] = activations
    parts["logits chunk"] = 3 * chunk * size.vocab_size * 4
    parts["framework"] = (1 << 30) if cpu else 0
    sharded = ("weights", "lora weights", "lora gradients", "adam state") if split > 1 else ()
    return Estimate({k: int(v) for k, v in parts.items()}, sharded, processes, sharding)


def _status_kb(field: str) -> int | None:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return None


class PeakRSS:
    """This process's resident memory over one run (Linux): ``start()`` resets the kernel's
    high-water mark (``/proc/self/clear_refs``) and reads the RSS then; ``peak_mb()`` is the
    high-water mark since. Both are None where /proc does not allow it (another OS, a
    sandbox): a figure that cannot be measured is not guessed. The process is the whole of
    it (a Dagster run holds its database and libraries too): ``start_mb`` says what was
    there before the run began."""

    def __init__(self) -> None:
        self.start_mb: float | None = None
        self._reset = False

    def start(self) -> "PeakRSS":
        try:
            Path("/proc/self/clear_refs").write_text("5")
            self._reset = True
            rss = _status_kb("VmRSS")
            self.start_mb = None if rss is None else round(rss / 1024, 1)
        except OSError:
            self._reset = False
        return self

    def peak_mb(self) -> float | None:
        if not self._reset:
            return None
        try:
            hwm = _status_kb("VmHWM")
        except OSError:
            return None
        return None if hwm is None else round(hwm / 1024, 1)
