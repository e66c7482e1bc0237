"""Keep freed memory inside a stage's process: CPU training frees and reallocates the same large
buffers every step, and handing them back to the kernel makes each step fault them in again."""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

# glibc's mallopt parameters (malloc.h)
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
KEEP_BELOW = 1 << 30  # blocks up to 1 GiB come from (and go back to) the heap
MMAP_THRESHOLD_MAX = 32 << 20  # glibc's documented ceiling on 64-bit, if it refuses KEEP_BELOW


def keep_freed_memory() -> bool:
    """Ask glibc to keep freed blocks for reuse instead of returning them to the kernel.

    With glibc's defaults a training step's activation buffers are unmapped or trimmed off the
    heap's top when freed, and the next step faults them back in, zero-filled: about 6,000-18,000
    page faults and 17-35 ms of system time per ResNet-20 step at batch 128, 32x32, on CPU
    (`python bench/run.py alloc`). Raising both thresholds keeps them in the heap; the process
    holds its peak heap until it exits, which a stage's process does after its one stage. No
    arithmetic changes: only where memory comes from.

    The mmap threshold is set first: setting either one turns off glibc's own adaptive threshold,
    and the trim threshold alone then sends every block over 128 KiB to mmap (measured: 20x the
    faults). Does nothing off glibc (macOS, musl). Returns whether both were set.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    if not (mallopt(M_MMAP_THRESHOLD, KEEP_BELOW) or mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX)):
        return False
    return bool(mallopt(M_TRIM_THRESHOLD, KEEP_BELOW))
