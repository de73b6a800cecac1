"""The gate on a trained adapter before anything builds on it: finite weights, finite loss."""

from __future__ import annotations

import math

import torch
from safetensors.torch import load_file

from cprec_core.layout import TrainedAdapter


def adapter_health(run: TrainedAdapter) -> dict:
    """Tensors in the adapter, how many hold a NaN or an infinity, and the final loss."""
    weights = load_file(run.adapter_weights)
    bad = [k for k, t in weights.items() if not torch.isfinite(t).all()]
    loss = run.read_manifest().final_loss
    return {"tensors": len(weights), "non_finite": len(bad), "final_loss": loss,
            "passed": not bad and loss is not None and math.isfinite(loss)}
