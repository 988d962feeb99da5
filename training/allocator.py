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

Those larger blocks are what ``request_huge_pages()`` is for: it sets PyTorch's
``THP_MEM_ALLOC_ENABLE``, so that its CPU allocator aligns allocations of 2 MiB and more to 2 MiB
and asks the kernel for transparent huge pages on them (``madvise(MADV_HUGEPAGE)``): a fresh
65-130 MB tensor then takes hundreds of faults instead of tens of thousands, and fewer TLB misses.
Measured on the scale benchmark at 16x TikTok, a step is 0.87-0.88x (two code versions, six steps
each; none at 1x, where the tensors are small; docs/BENCHMARKS.md, "Cost as data grows, idle, with
huge pages"). PyTorch reads the variable once, at its first allocation, so this works only before
torch is imported: ``training/__init__.py`` calls it; the user's own setting wins, and where the
kernel has no transparent huge pages (or they are off) nothing is set.

Even with huge pages those blocks are mapped, faulted in (the kernel zeroing every page) and
unmapped again at every step; at 16x TikTok every user-sized (|U|, d) tensor is one of them.
``heap_only()``, which the trainer holds around each training step, turns glibc's mmap off
(``M_MMAP_MAX`` 0) for the step, so its large blocks also come from the heap and the next step
reuses them, and the heap is not trimmed until ``release()``; mmap is back on outside the steps (the
view refresh, evaluation, checkpoints). ``release()`` (``malloc_trim``) hands the heap's free pages
back and restores the trim threshold; the trainer calls it before each evaluation, whose own large
blocks would otherwise add to a heap still holding the steps' freed ones, and when ``train()``
returns or fails. With mmap off for the whole process instead, the 16x run's peak went over 8 GiB
(docs/BENCHMARKS.md). A user's own ``MALLOC_MMAP_MAX_`` (or any setting ``tune()`` defers to)
turns ``heap_only()`` into a no-op.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# mallopt parameter numbers (glibc malloc.h)
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4

MMAP_THRESHOLD = 32 << 20  # glibc's largest allowed value on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX)
TRIM_THRESHOLD = 512 << 20
TOP_PAD = 64 << 20
MMAP_MAX_DEFAULT = 65536  # glibc's DEFAULT_MMAP_MAX: the number of mmap'd blocks allowed at once

ENV_TUNABLES = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "GLIBC_TUNABLES")

THP_ENV = "THP_MEM_ALLOC_ENABLE"  # PyTorch's CPU allocator (c10/core/alloc_cpu.cpp)
THP_MODES = Path("/sys/kernel/mm/transparent_hugepage/enabled")

_done: bool | None = None
_libc: Any = None


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
        mallopt, malloc_trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    malloc_trim.argtypes, malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    _done = all(mallopt(param, value) == 1 for param, value in settings().items())
    if _done:
        global _libc
        _libc = libc
    return _done


@contextmanager
def heap_only() -> Iterator[None]:
    """Within: no block is mmap'd (glibc's ``M_MMAP_MAX`` 0), so large freed blocks stay in the
    heap for the next step. From its first use the heap is not trimmed either (``M_TRIM_THRESHOLD``
    -1) until ``release()``: a 16x step frees gigabytes at the heap's top, which the 512 MiB
    threshold would hand back at once, at the step's end or at the next large free outside it (the
    view refresh), and the next step would fault it in again. Only where ``tune()`` is in force
    and ``MALLOC_MMAP_MAX_`` is not set by the user; otherwise nothing changes."""
    libc = _libc if tune() and "MALLOC_MMAP_MAX_" not in os.environ else None
    if libc is None:
        yield
        return
    libc.mallopt(M_MMAP_MAX, 0)
    libc.mallopt(M_TRIM_THRESHOLD, -1)  # -1: never trim, until release()
    try:
        yield
    finally:
        libc.mallopt(M_MMAP_MAX, MMAP_MAX_DEFAULT)


def release() -> bool:
    """Hand the heap's free pages back to the kernel (``malloc_trim(0)``) and restore ``tune()``'s
    trim threshold (which ``heap_only()`` lifts). True if any pages were handed back."""
    if not tune() or _libc is None:
        return False
    _libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return bool(_libc.malloc_trim(0))


def huge_pages_available(modes: Path = THP_MODES) -> bool:
    """True when the kernel's transparent huge pages are ``always`` or ``madvise`` (the selected
    mode is the bracketed one, e.g. ``always [madvise] never``)."""
    try:
        text = modes.read_text()
    except OSError:
        return False
    return "[always]" in text or "[madvise]" in text


def request_huge_pages(modes: Path = THP_MODES) -> bool:
    """Set ``THP_MEM_ALLOC_ENABLE=1`` for PyTorch's CPU allocator if it can still take effect:
    torch not imported yet, the variable not set by the user, huge pages available. True if set."""
    if THP_ENV in os.environ or "torch" in sys.modules or not huge_pages_available(modes):
        return False
    os.environ[THP_ENV] = "1"
    return True
