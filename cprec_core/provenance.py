"""Which code produced an artifact: trainers, the evaluation and `make results` record it."""

from __future__ import annotations

import os
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
