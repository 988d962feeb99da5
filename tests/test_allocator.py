"""training.allocator: glibc keeps the blocks a training step frees, instead of faulting them in again.

Each case runs in its own interpreter (malloc settings are per process). The workload is the one
the module exists for: every "step" allocates 45 MB in three blocks below glibc's dynamic mmap
threshold and frees them, so with the defaults the top of the heap crosses the trim threshold and
is returned to the kernel at every step, and touched again (page faults) at the next.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

glibc_only = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="glibc malloc only"
)

SCRIPT = """
import json, resource, sys
import numpy as np
from training import allocator
tuned = allocator.tune() if sys.argv[1] == "tune" else None
first = np.ones(5_000_000, np.float32)  # 20 MB, mmap'd: freeing it raises glibc's dynamic thresholds
del first
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(int(sys.argv[2])):
    step = [np.ones(3_750_000, np.float32) for _ in range(3)]  # 3 x 15 MB from the heap
    del step  # 45 MB free at the top of the heap, above the 40 MB trim threshold
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"tuned": tuned, "faults": faults, "again": allocator.tune() if tuned is not None else None}))
"""


def _run_script(
    script: str, args: list[str], drop: Callable[[str], bool], env: dict[str, str]
) -> dict[str, object]:
    """``script`` in a fresh interpreter with this environment minus the names ``drop`` picks,
    plus ``env``; its printed JSON."""
    child_env = {k: v for k, v in os.environ.items() if not drop(k)}
    child_env.update(env, PYTHONPATH=str(REPO))
    out = subprocess.run(
        [sys.executable, "-c", script, *args],
        env=child_env,
        cwd=REPO,
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(out.stdout)


def run(mode: str, steps: int, **env: str) -> dict[str, object]:
    return _run_script(
        SCRIPT, [mode, str(steps)], lambda k: k == "GLIBC_TUNABLES" or k.startswith("MALLOC_"), env
    )


@glibc_only
def test_tuned_heap_is_reused_instead_of_faulted_in_every_step() -> None:
    plain_10, plain_40 = run("plain", 10), run("plain", 40)
    tuned_10, tuned_40 = run("tune", 10), run("tune", 40)
    assert tuned_10["tuned"] is True and tuned_10["again"] is True  # idempotent
    # the defaults: faults grow with the steps (45 MB returned and touched again each: about 1,200
    # faults a step here, the kernel mapping several pages per fault)
    assert int(plain_40["faults"]) - int(plain_10["faults"]) > 30 * 500, (plain_10, plain_40)
    # tuned: the first step's pages are reused by every later one
    assert int(tuned_40["faults"]) - int(tuned_10["faults"]) < 2_000, (tuned_10, tuned_40)
    assert int(tuned_40["faults"]) * 10 < int(plain_40["faults"])


@glibc_only
def test_a_users_own_malloc_tunables_are_left_alone() -> None:
    r = run("tune", 10, MALLOC_TRIM_THRESHOLD_="131072")
    assert r["tuned"] is False
    r = run("tune", 10, GLIBC_TUNABLES="glibc.malloc.trim_threshold=131072")
    assert r["tuned"] is False


# ------------------------------------------------------------------ transparent huge pages

THP_SCRIPT = """
import json, os, sys
import training  # sets THP_MEM_ALLOC_ENABLE unless given (training.allocator.request_huge_pages)
import torch

def anon_huge_kb():
    for line in open("/proc/self/smaps_rollup"):
        if line.startswith("AnonHugePages:"):
            return int(line.split()[1])
    return 0

before = anon_huge_kb()
x = torch.empty(64 << 20, dtype=torch.uint8)
x.fill_(1)  # touch all 64 MiB
print(json.dumps({"env": os.environ.get("THP_MEM_ALLOC_ENABLE"), "huge_kb": anon_huge_kb() - before}))
"""


def allocator_modes() -> str:
    from training import allocator

    return allocator.THP_MODES.read_text()


def run_thp(**env: str) -> dict[str, object]:
    return _run_script(THP_SCRIPT, [], lambda k: k == "THP_MEM_ALLOC_ENABLE", env)


@pytest.mark.skipif(
    platform.system() != "Linux" or not __import__("training.allocator").allocator.huge_pages_available(),
    reason="needs transparent huge pages (always or madvise)",
)
def test_importing_training_gives_torch_tensors_huge_pages_unless_the_user_said_no() -> None:
    on = run_thp()
    off = run_thp(THP_MEM_ALLOC_ENABLE="0")
    assert on["env"] == "1" and off["env"] == "0"  # the user's setting is kept
    # a 64 MiB tensor: mostly huge pages with the setting (the kernel may lack a few free 2 MiB
    # blocks), next to none without it where THP serves only madvise'd ranges (in "always" mode
    # the kernel may back it with huge pages either way)
    assert int(on["huge_kb"]) >= 32 << 10, on
    if "[madvise]" in allocator_modes():
        assert int(off["huge_kb"]) < int(on["huge_kb"]) // 2, (on, off)


def test_huge_pages_are_requested_only_where_they_can_take_effect(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from training import allocator

    modes = tmp_path / "enabled"
    for text, available in (
        ("always [madvise] never\n", True),
        ("[always] madvise never\n", True),
        ("always madvise [never]\n", False),
    ):
        modes.write_text(text)
        assert allocator.huge_pages_available(modes) is available
    assert not allocator.huge_pages_available(tmp_path / "missing")
    modes.write_text("always [madvise] never\n")
    monkeypatch.delenv(allocator.THP_ENV, raising=False)
    # this process may have torch already: make it so either way, then take it away
    monkeypatch.setitem(sys.modules, "torch", sys.modules.get("torch", object()))  # type: ignore[arg-type]
    assert not allocator.request_huge_pages(modes)  # torch imported: too late, nothing set
    assert allocator.THP_ENV not in os.environ
    monkeypatch.delitem(sys.modules, "torch")
    assert allocator.request_huge_pages(modes) and os.environ[allocator.THP_ENV] == "1"
    monkeypatch.setenv(allocator.THP_ENV, "0")
    assert not allocator.request_huge_pages(modes) and os.environ[allocator.THP_ENV] == "0"
    modes.write_text("always madvise [never]\n")
    monkeypatch.delenv(allocator.THP_ENV)
    assert not allocator.request_huge_pages(modes) and allocator.THP_ENV not in os.environ


# ------------------------------------------------------------------ heap-only steps

HEAP_SCRIPT = """
import json, resource, sys
import numpy as np
from training import allocator
tuned = allocator.tune()
inside = sys.argv[1] == "heap_only"
floats = int(sys.argv[2]) << 18  # MiB -> float32 count
few, many = int(sys.argv[3]), int(sys.argv[4])

def faults_of(steps):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(steps):
        if inside:
            with allocator.heap_only():
                block = np.ones(floats, np.float32)
                del block
        else:
            block = np.ones(floats, np.float32)
            del block
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

faults_of(1)
steps_few, steps_many = faults_of(few), faults_of(many)
released = allocator.release()
print(json.dumps({"tuned": tuned, "few": steps_few, "many": steps_many, "released": released}))
"""


def run_heap(mode: str, mib: int, few: int, many: int, **env: str) -> dict[str, object]:
    return _run_script(
        HEAP_SCRIPT,
        [mode, str(mib), str(few), str(many)],
        lambda k: k == "GLIBC_TUNABLES" or k.startswith("MALLOC_"),
        env,
    )


def extra_faults(r: dict[str, object]) -> int:
    return int(r["many"]) - int(r["few"])  # type: ignore[call-overload]


@glibc_only
def test_heap_only_steps_reuse_blocks_above_the_mmap_threshold() -> None:
    """A 48 MiB block allocated and freed every step: mapped and faulted in again at every step by
    default (and with tune(): 32 MiB is glibc's largest mmap threshold), reused from the heap inside
    heap_only(); a user's MALLOC_MMAP_MAX_ turns heap_only() off."""
    mapped, heap = run_heap("plain", 48, 10, 30), run_heap("heap_only", 48, 10, 30)
    assert mapped["tuned"] is True and heap["tuned"] is True
    # mapped: 20 more steps, 20 more times 48 MiB touched afresh (hundreds of faults each even with
    # huge pages; about 12,300 a step with 4 KiB pages)
    assert extra_faults(mapped) > 20 * 10, mapped
    # heap: the first step's pages are reused by every later one
    assert extra_faults(heap) < 100, heap
    assert heap["released"] is True  # the freed 48 MiB at the heap's top can be handed back
    users_own = run_heap("heap_only", 48, 10, 30, MALLOC_MMAP_MAX_="65536")
    assert extra_faults(users_own) > 20 * 10, users_own


@glibc_only
def test_heap_only_steps_keep_a_freed_top_larger_than_the_trim_threshold() -> None:
    """A step that frees more than tune()'s 512 MiB trim threshold at the heap's top (a 16x TikTok
    step frees gigabytes): inside heap_only() the heap is not trimmed, so the next step reuses it."""
    heap = run_heap("heap_only", 600, 1, 3)
    assert extra_faults(heap) < 100, heap
    assert heap["released"] is True
