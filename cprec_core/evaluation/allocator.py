"""Keep freed memory in the process heap, so that large tensors reuse pages already touched.

PyTorch's CPU allocator hands every freed tensor back to ``malloc``. glibc serves blocks
above its mmap threshold with fresh mappings and trims the top of the heap after frees, so
a forward over a large batch faults in new pages for nearly every activation. With both
thresholds raised, large blocks come from the heap and stay there when freed, for the next
forward (``benchmarks/bench_eval.py`` times scoring with and without it). The cost: the
process keeps its peak memory until ``release_freed_heap``, which the evaluation calls
after each system. glibc only: elsewhere both functions do nothing and return False.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import gc
import platform

# mallopt(3) parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 1 << 30  # blocks above 1 GiB still get their own mapping
TRIM_THRESHOLD = (1 << 31) - 1  # the largest int: never trim the heap's top
TOP_PAD = 64 << 20  # grow the heap 64 MiB at a time

_applied = False


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    """The C library where it is glibc (``mallopt`` and ``malloc_trim`` exist), else None."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")


def keep_freed_heap() -> bool:
    """Raise glibc's mmap and trim thresholds for this process (once); True where applied."""
    global _applied
    libc = _glibc()
    if not _applied and libc is not None:
        _applied = all(libc.mallopt(param, value) == 1 for param, value in (
            (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD),
            (M_TOP_PAD, TOP_PAD)))
    return _applied


def release_freed_heap() -> bool:
    """Give the heap's free memory back to the system (``malloc_trim``); True where glibc."""
    libc = _glibc()
    if libc is None:
        return False
    gc.collect()  # tensors held only by reference cycles are freed first
    libc.malloc_trim(0)
    return True
