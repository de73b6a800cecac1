"""keep_freed_heap: the pages of freed tensors are reused, not faulted in again."""

import platform
import subprocess
import sys

import pytest

SIZES_MIB = (8, 24, 48, 96)
PROBE = f"SIZES_MIB = {SIZES_MIB}\n" + """
import resource, sys, torch
from cprec_core.evaluation.allocator import keep_freed_heap, release_freed_heap
if sys.argv[1] == "keep":
    assert keep_freed_heap() and keep_freed_heap()  # applied, and idempotent
faults = []
for _ in range(8):  # like forwards: tensors of several sizes, written, then all freed
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    held = [torch.empty(mib << 20, dtype=torch.uint8).fill_(1) for mib in SIZES_MIB]
    del held
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20  # MiB
kept = rss()
assert sys.argv[1] != "keep" or release_freed_heap()
print(faults[-1], kept - rss())
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt only")
def test_freed_pages_are_reused_then_released():
    def probe(mode: str) -> tuple[int, int]:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True,
                             text=True, check=True)
        faults, released_mib = out.stdout.split()
        return int(faults), int(released_mib)

    pages = (sum(SIZES_MIB) << 20) // 4096
    assert probe("default")[0] > pages // 2  # fresh mappings (or a trimmed heap) every round
    faults, released_mib = probe("keep")
    assert faults < pages // 20  # the heap has kept the pages of earlier rounds
    assert released_mib > sum(SIZES_MIB) // 2  # and release_freed_heap gives them back
