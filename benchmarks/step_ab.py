"""Interleaved A/B of the CPU time of one training step, per phase, in two checkouts.

    python -m benchmarks.step_ab --trees /work/main . --data ../shared/data/tiktok \
        --config configs/tiktok.yaml --rounds 2 --steps 8

Runs, in each tree in turn (A, B, A, B, ...) and with that tree's own virtualenv and code, its
``benchmarks.train_speed.Bench`` on one thread: two warm-up steps, ``--steps`` timed steps and two
Eq. 8 view refreshes, timed by the thread's CPU time (``time.thread_time``) instead of the wall
clock. On one thread that is the work the step did; on a machine shared with other jobs it moves
far less than wall time (cache and memory-bandwidth sharing still move it some). Prints a markdown
table of medians per phase and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import add_ab_arguments, emit

PHASES = ("forward", "adversarial", "backward")

# Run inside the tree under test: its Bench, its trainer, its model code.
CHILD = """
import json, statistics, sys, time
import torch
import benchmarks.train_speed as ts
from training.config import load_config
from training.data import load_dataset
time.perf_counter = time.thread_time  # Bench times its phases with perf_counter
torch.set_num_threads(1)
data, config, steps, overrides = sys.argv[1], sys.argv[2] or None, int(sys.argv[3]), sys.argv[4:]
cfg = load_config(config, [*overrides, "num_threads=1", "device=cpu"])
bench = ts.Bench(load_dataset(data), cfg, torch.device("cpu"))
for _ in range(2):
    bench.step()
timed = [bench.step() for _ in range(steps)]
refresh = min(bench.refresh() for _ in range(2))
phases = [statistics.median(t[i] for t in timed) for i in range(3)]
print(json.dumps({"phases": phases, "refresh": refresh}))
"""


def run_tree(tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    python = tree / ".venv" / "bin" / "python"
    cmd = [
        str(python if python.exists() else sys.executable),
        "-c",
        CHILD,
        str(Path(args.data).resolve()),
        str(Path(args.config).resolve()) if args.config else "",
        str(args.steps),
        *args.overrides,
    ]
    done = subprocess.run(cmd, cwd=tree, check=True, capture_output=True, text=True)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_ab_arguments(p)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/step_ab.json"))
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    trees = [Path(t).resolve() for t in args.trees]
    runs: dict[str, list[dict[str, Any]]] = {"A": [], "B": []}
    for _ in range(args.rounds):
        for label, tree in zip("AB", trees, strict=True):
            runs[label].append(run_tree(tree, args))

    def med(label: str, key: str, i: int | None = None) -> float:
        values = [r[key] if i is None else r[key][i] for r in runs[label]]
        return 1000 * statistics.median(values)

    lines = [
        f"A = `{trees[0]}`, B = `{trees[1]}`; one thread; CPU ms, medians over {args.rounds} runs "
        f"of the median of {args.steps} steps.",
        "",
        "| phase | A ms | B ms | B / A |",
        "|---|---|---|---|",
    ]
    rows = [(name, med("A", "phases", i), med("B", "phases", i)) for i, name in enumerate(PHASES)]
    step_a, step_b = sum(r[1] for r in rows), sum(r[2] for r in rows)
    rows += [("step (sum)", step_a, step_b), ("view refresh", med("A", "refresh"), med("B", "refresh"))]
    for name, a, b in rows:
        lines.append(f"| {name} | {a:.0f} | {b:.0f} | {b / a:.2f} |")
    emit("\n".join(lines) + "\n", {"trees": [str(t) for t in trees], "runs": runs}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
