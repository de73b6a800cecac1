"""Checkpoints shared by the trainers: one folder per step, written atomically.

``checkpoints/step-NNNNNN/`` holds the peft adapter, ``optimizer.pt``, ``scheduler.pt``,
``rng_state.pt`` (python, numpy, torch and any extra generators), optional extra tensors
(``extra.safetensors``, e.g. LLaRA's projector) and ``trainer_state.json`` (step and the
fingerprint of what is being trained). Everything is loaded with ``weights_only=True`` or
from safetensors: a checkpoint folder is never trusted to run code.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

ADAPTER_DIR = "adapter"
OPTIMIZER_FILE = "optimizer.pt"
SCHEDULER_FILE = "scheduler.pt"
RNG_FILE = "rng_state.pt"
EXTRA_FILE = "extra.safetensors"
STATE_FILE = "trainer_state.json"
KEEP_CHECKPOINTS = 2


def _np_state(state) -> list:
    return [state[0], torch.from_numpy(state[1].astype(np.int64)), *state[2:]]


def _np_restore(saved) -> tuple:
    kind, keys, *rest = saved
    return (kind, keys.numpy().astype(np.uint32), *rest)


def save(root: Path, step: int, state: dict, peft_model, optimizer, scheduler,
         extra: dict[str, torch.Tensor] | None = None,
         generators: dict[str, np.random.Generator] | None = None) -> Path:
    tmp = root / f".step-{step:06d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    peft_model.save_pretrained(tmp / ADAPTER_DIR, save_embedding_layers=False)
    torch.save(optimizer.state_dict(), tmp / OPTIMIZER_FILE)
    torch.save(scheduler.state_dict(), tmp / SCHEDULER_FILE)
    torch.save({"python": random.getstate(), "torch": torch.get_rng_state(),
                "numpy": _np_state(np.random.get_state()),
                "generators": {k: json.dumps(g.bit_generator.state)
                               for k, g in (generators or {}).items()}}, tmp / RNG_FILE)
    if extra:
        save_file({k: v.detach().contiguous().cpu() for k, v in extra.items()}, tmp / EXTRA_FILE)
    (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}))
    final = root / f"step-{step:06d}"
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    for old in sorted(root.glob("step-*"))[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest(root: Path) -> tuple[Path, dict] | None:
    """The newest complete checkpoint and its state, or None."""
    checkpoints = sorted(root.glob("step-*"))
    if not checkpoints:
        return None
    return checkpoints[-1], json.loads((checkpoints[-1] / STATE_FILE).read_text())


def restore(folder: Path, optimizer, scheduler,
            generators: dict[str, np.random.Generator] | None = None) -> dict[str, torch.Tensor]:
    """Optimiser, scheduler and RNG states; returns the extra tensors (adapter weights are
    loaded by the caller, which knows its model)."""
    optimizer.load_state_dict(torch.load(folder / OPTIMIZER_FILE, weights_only=True))
    scheduler.load_state_dict(torch.load(folder / SCHEDULER_FILE, weights_only=True))
    rng = torch.load(folder / RNG_FILE, weights_only=True)
    random.setstate(rng["python"])
    torch.set_rng_state(rng["torch"])
    np.random.set_state(_np_restore(rng["numpy"]))
    for name, generator in (generators or {}).items():
        generator.bit_generator.state = json.loads(rng["generators"][name])
    return load_file(folder / EXTRA_FILE) if (folder / EXTRA_FILE).is_file() else {}


def adapter_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / ADAPTER_DIR / "adapter_model.safetensors")
