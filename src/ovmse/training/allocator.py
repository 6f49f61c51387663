"""Keep freed memory in the process for reuse (glibc malloc), instead of handing it back to the
kernel and faulting it in again.

Why: an update allocates tensors of tens of MB (a 2s3z batch of 128 episodes: the GRU's input
gates ``[R, 3H]`` with R ≈ 32,000 rows are 25 MB). By default glibc serves such blocks with
``mmap`` or returns the top of its heap to the kernel when they are freed, so the next update
gets fresh pages, and its first write to each 4 KiB page is a page fault (addmm copying its bias
into a new 25 MB output is then mostly faulting). With trimming off and the mmap threshold at its
largest, freed blocks are reused and the pages stay mapped; the process keeps its peak size
instead of shrinking between updates. ``python benchmarks/allocator_update.py`` measures the
update with and without (benchmarks/results/allocator_update.md). PyTorch's CPU performance
guide reaches the same end with jemalloc or tcmalloc preloaded; this needs no extra library.

Other C libraries (musl, macOS) are left as they are: :func:`keep_freed_memory` says so in its
return value.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

__all__ = ["MMAP_THRESHOLD_MAX", "keep_freed_memory"]

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses a larger mmap threshold on 64-bit systems (HEAP_MAX_SIZE / 2): blocks above it
# are always mmapped.
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
_TRIM_NEVER = 2**31 - 1  # mallopt takes an int: the largest, i.e. in effect never trim

_applied: str | None = None


def keep_freed_memory() -> str:
    """Turn off glibc's heap trimming and raise its mmap threshold to the largest allowed, once
    per process. Returns what was done: ``"glibc"`` (applied now or before), or
    ``"not glibc (<libc>): unchanged"``. A ``RuntimeError`` if glibc refuses a setting."""
    global _applied
    if _applied is not None:
        return _applied
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        _applied = f"not glibc ({libc_name or 'unknown C library'}): unchanged"
        return _applied
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    for param, value, name in ((_M_TRIM_THRESHOLD, _TRIM_NEVER, "M_TRIM_THRESHOLD"),
                               (_M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX, "M_MMAP_THRESHOLD")):
        if libc.mallopt(ctypes.c_int(param), ctypes.c_int(value)) != 1:
            raise RuntimeError(f"glibc's mallopt refused {name}={value}")
    _applied = "glibc"
    return _applied
