"""Keep freed memory in the process for reuse (glibc malloc), instead of handing it back to the
kernel and faulting it in again.

Why: an update allocates and frees tensors of tens of MB each time (a 2s3z batch of 128
episodes: the GRU's input gates ``[R, 3H]`` with R ≈ 32,000 rows are 25 MB; the replay's sampled
observations ``[256, 121, 5, 80]`` 50 MB). glibc serves blocks above its mmap threshold with
``mmap`` (a fresh mapping each time) and returns the top of its heap to the kernel when more
than the trim threshold is free there; either way the next update writes to pages the kernel
must fault in again, one fault per 4 KiB page (addmm copying its bias into a new 25 MB output is
then mostly faulting). glibc raises both thresholds by itself after it frees an mmapped block,
but only up to 32 MiB, and setting one of them by hand turns that adjustment off; so both are
set: trimming off, and the mmap threshold at 1 GiB (32 MiB, the largest older glibc accepts on
64-bit systems, where 1 GiB is refused). Freed blocks are then reused with their pages mapped;
the process keeps its peak size instead of shrinking between updates. ``python
benchmarks/update_ab.py --variant allocator`` measures one update with and without
(benchmarks/results/allocator_update.md). PyTorch's CPU performance guide reaches the same end
with jemalloc or tcmalloc preloaded; this needs no extra library.

Other C libraries (musl, macOS) are left as they are: :func:`keep_freed_memory` says so in its
return value.
"""

from __future__ import annotations

import ctypes
import platform

__all__ = ["keep_freed_memory"]

# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLDS = (1 << 30, 32 << 20)  # the first one glibc accepts is set
_TRIM_NEVER = 2**31 - 1  # mallopt takes an int: the largest, in effect never trim

_applied: str | None = None


def keep_freed_memory() -> str:
    """Raise glibc's mmap threshold and turn off its heap trimming, once per process. Returns
    what was done, e.g. ``"glibc: mmap threshold 1024 MiB, no trimming"``, or ``"not glibc
    (<libc>): unchanged"``. A ``ValueError`` naming ``malloc_keep_freed`` if glibc refuses."""
    global _applied
    if _applied is not None:
        return _applied
    libc_name, _ = platform.libc_ver()
    if libc_name != "glibc":
        _applied = f"not glibc ({libc_name or 'unknown C library'}): unchanged"
        return _applied
    libc = ctypes.CDLL("libc.so.6")
    # The mmap threshold first: setting the trim threshold alone would also stop glibc's own
    # raising of the mmap threshold, and leave every block above 128 KiB mmapped.
    threshold = next((t for t in _MMAP_THRESHOLDS
                      if libc.mallopt(ctypes.c_int(_M_MMAP_THRESHOLD), ctypes.c_int(t)) == 1), None)
    if threshold is None:
        raise ValueError(f"malloc_keep_freed=true: glibc's mallopt refused M_MMAP_THRESHOLD at "
                         f"{', '.join(f'{t >> 20} MiB' for t in _MMAP_THRESHOLDS)}; set malloc_keep_freed=false")
    if libc.mallopt(ctypes.c_int(_M_TRIM_THRESHOLD), ctypes.c_int(_TRIM_NEVER)) != 1:
        raise ValueError("malloc_keep_freed=true: glibc's mallopt refused M_TRIM_THRESHOLD; "
                         "set malloc_keep_freed=false")
    _applied = f"glibc: mmap threshold {threshold >> 20} MiB, no trimming"
    return _applied
