"""What every trainer's step does the same way, written once: this rank's micro-batches with
the gradient synchronisation they need, bf16 autocast, the fingerprint that names a run's
plan, and publishing a folder whole. The trainers (cpt.py, sft.py, dpo.py, cpt_scaling.py)
keep their own steps and read top to bottom; they share these pieces, not a base class.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch


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
