"""Keep freed memory inside the process (glibc's malloc), for long CPU runs.

Attacks, certification and training allocate and free the same large tensors at every step: a batch of
noisy copies, a recurrent layer's outputs, a video batch's activations. glibc serves allocations above
its mmap threshold (dynamic, at most 32 MB) with fresh mappings and hands freed memory at the top of the
heap back to the kernel past its trim threshold, so each step's tensors arrive as new zero-filled pages:
system time that grows with the batch (`benchmarks/malloc_faults.py` measures it). `keep_freed_memory`
raises both thresholds, so freed blocks are reused; the process keeps its peak memory instead of
returning it. Single tensors of tens of MB and more are not always kept in the heap (glibc may still map
them when the heap cannot grow in place), so the gain is largest for the many medium-sized tensors of
attacks and certification. The `audioadv` command and Ray workers call it; call it in your own scripts the same way.
A no-op (False) where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3     # mallopt parameters, glibc's malloc.h
THRESHOLD = 1 << 30                             # bytes: larger than any one tensor of a step


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds (see the module docstring); True when they were set."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, THRESHOLD))


__all__ = ["keep_freed_memory"]
