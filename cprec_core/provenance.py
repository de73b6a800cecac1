"""Which code produced an artifact: trainers, the evaluation and `make results` record it."""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path


def git_revision() -> str:
    """The short commit of the code; ``CPREC_GIT_REVISION`` where the tree travels without
    its .git (a copied checkout on a GPU machine)."""
    if os.environ.get("CPREC_GIT_REVISION"):
        return os.environ["CPREC_GIT_REVISION"]
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, timeout=5)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def processor(device: str = "cpu") -> str:
    """The chip that ran the work: the CUDA device's name, else the CPU's model name. Speed
    figures are only comparable on the same chip, and machines of one kind here may differ
    in their CPU (with or without fast bf16)."""
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(torch.device(device))
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
