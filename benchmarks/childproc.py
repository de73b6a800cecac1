"""Run one benchmark worker in a child process and read its own peak memory.

``os.wait4`` gives the rusage of exactly that child, so each implementation's peak RSS is
its own (``RUSAGE_CHILDREN`` would be the maximum over all children so far). The worker
writes its result as JSON to ``result_file``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path


def mb_from_kb(kb: int) -> float:
    return round(kb / 1024, 1)  # Linux reports ru_maxrss in KiB


def self_peak_rss_mb() -> float:
    return mb_from_kb(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def run_child(cmd: list[str], result_file: Path, label: str) -> tuple[dict, float]:
    """(the worker's JSON result, its peak RSS in MB); exits if the worker failed."""
    result_file.unlink(missing_ok=True)
    proc = subprocess.Popen(cmd)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    if proc.returncode != 0 or not result_file.is_file():
        sys.exit(f"worker {label} failed with exit code {proc.returncode}")
    result = json.loads(result_file.read_text())
    result_file.unlink()
    return result, mb_from_kb(usage.ru_maxrss)
