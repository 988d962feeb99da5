"""glibc malloc settings for the training process: keep freed memory instead of returning it.

A training step allocates and frees the same large tensors every step (the attention's
(U + I, M, d) intermediates, the |I|-wide discriminator rows, the InfoNCE logits: several MB
each at TikTok's size). glibc's defaults hand such blocks back to the kernel (mmap'd blocks above
a threshold, and the top of the heap above a trim threshold), so the next step takes a page fault
on every 4 KiB it touches again. In the TikTok profile ``aten::fill_`` of fresh gradients was a
quarter of the step's CPU time (docs/BENCHMARKS.md, "Idle machine, glibc's malloc settings,
two-thread determinism"). ``tune()`` raises both thresholds once per process, so those blocks
stay in the heap and are reused. Blocks above 32 MiB (glibc's largest mmap threshold) are still
mapped each time.

The cost is resident memory: up to ``TRIM_THRESHOLD`` bytes of freed heap can stay mapped.
A user who sets one of the same settings in the environment (``ENV_TUNABLES``) keeps their own:
``tune()`` then changes nothing. Elsewhere than glibc (macOS, musl) it does nothing either.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

# mallopt parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 512 << 20
TOP_PAD = 64 << 20

ENV_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")

_done: bool | None = None


def settings() -> dict[int, int]:
    """mallopt parameter -> value that ``tune()`` sets."""
    return {M_MMAP_THRESHOLD: MMAP_THRESHOLD, M_TRIM_THRESHOLD: TRIM_THRESHOLD, M_TOP_PAD: TOP_PAD}


def tune() -> bool:
    """Apply ``settings()`` through glibc's mallopt (once per process). True if they are in force."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    if any(name in os.environ for name in ENV_TUNABLES):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = all(mallopt(param, value) == 1 for param, value in settings().items())
    return _done
