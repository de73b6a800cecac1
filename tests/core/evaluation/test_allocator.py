"""keep_freed_heap: a freed tensor's memory stays in the heap for the next one, and
release_freed_heap gives it back.

Each probe runs in its own process (mallopt changes the whole process) and checks what glibc
guarantees for one large block, read from mallinfo2 and the resident set: with the default
thresholds the block is a mapping of its own, unmapped when freed, so the next block faults
every page in again; with keep_freed_heap it comes from the heap and its memory stays there,
resident, when freed. Whether a later block fits exactly into that free memory depends on
how the heap happens to be fragmented (posix_memalign asks for a little more than it
frees), so that is measured, not asserted: benchmarks/bench_eval.py prints the page faults
per case with and without it."""

import ctypes
import ctypes.util
import platform
import subprocess
import sys

import pytest

BLOCK_MIB = 96
PROBE = f"BLOCK_MIB = {BLOCK_MIB}\n" + """
import ctypes, ctypes.util, sys, torch
from cprec_core.evaluation.allocator import keep_freed_heap, release_freed_heap

class MallInfo2(ctypes.Structure):  # glibc >= 2.33
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]

libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.mallinfo2.restype = MallInfo2
mib = lambda n: n >> 20
rss = lambda: int(open("/proc/self/statm").read().split()[1]) * 4096 >> 20
keep = sys.argv[1] == "keep"
if keep:
    assert keep_freed_heap() and keep_freed_heap()  # applied, and idempotent
block = torch.empty(BLOCK_MIB << 20, dtype=torch.uint8).fill_(1)  # a forward's activations
mapped = mib(libc.mallinfo2().hblkhd)  # bytes in blocks of their own mapping
held = rss()
del block
kept, dropped = mib(libc.mallinfo2().fordblks), held - rss()  # free in the heap; RSS given back
assert not keep or release_freed_heap()
print(mapped, kept, dropped, held - rss())
"""


def _has_mallinfo2() -> bool:
    return (platform.libc_ver()[0] == "glibc"
            and hasattr(ctypes.CDLL(ctypes.util.find_library("c")), "mallinfo2"))


@pytest.mark.skipif(not _has_mallinfo2(), reason="glibc's mallopt and mallinfo2 only")
def test_freed_pages_are_reused_then_released():
    def probe(mode: str) -> tuple[int, ...]:
        out = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True,
                             text=True, check=True)
        return tuple(int(x) for x in out.stdout.split())

    mapped, kept, dropped, _ = probe("default")
    assert mapped >= BLOCK_MIB and kept < BLOCK_MIB  # a mapping of its own
    assert dropped > BLOCK_MIB // 2  # unmapped when freed: the next block faults it in again
    mapped, kept, dropped, released = probe("keep")
    assert mapped < BLOCK_MIB and kept >= BLOCK_MIB  # from the heap, which keeps it when freed
    assert dropped < BLOCK_MIB // 2  # still resident, for the next forward to reuse
    assert released > BLOCK_MIB // 2  # release_freed_heap gives it back
