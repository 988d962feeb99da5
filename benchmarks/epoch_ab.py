"""Interleaved A/B timing of whole training epochs: the same trainer command in two checkouts.

    python -m benchmarks.epoch_ab --trees /work/main . --data ../shared/data/tiktok \
        --config configs/tiktok.yaml --rounds 2 --variant full= --variant id_only=id_only=true

Runs ``python -m training train ... epochs=N num_threads=1 device=cpu`` in each tree in turn
(A, B, A, B, ...: the machines are shared and absolute times drift) with that tree's own
virtualenv, and reads the trainer's own ``train_seconds`` per epoch from ``history.json`` (no
process start-up, no validation). Prints a markdown table and writes JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from benchmarks.common import add_ab_arguments, emit


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name=k1=v1,k2=v2`` -> (name, ["k1=v1", "k2=v2"]); ``name=`` has no overrides."""
    name, sep, rest = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"--variant wants NAME=OVERRIDES (got {text!r})")
    return name, [o for o in rest.split(",") if o]


def run_epochs(
    tree: Path, args: argparse.Namespace, overrides: list[str], out: Path
) -> tuple[list[float], float]:
    """(train_seconds per epoch, CPU seconds of the whole run: start-up, training, validation)."""
    python = tree / ".venv" / "bin" / "python"
    cmd = [
        str(python if python.exists() else sys.executable),
        "-m",
        "training",
        "train",
        "--data",
        str(Path(args.data).resolve()),
        "--out",
        str(out),
        "--no-progress",
    ]
    if args.config:
        cmd += ["--config", str(Path(args.config).resolve())]
    cmd += [f"epochs={args.epochs}", "num_threads=1", "device=cpu", *overrides]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run(cmd, cwd=tree, check=True, capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    history = json.loads((out / "history.json").read_text())
    return [float(h["train_seconds"]) for h in history], cpu


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_ab_arguments(p)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--variant", type=parse_variant, action="append", help="NAME=k=v,k=v (repeatable)")
    p.add_argument("--b-only", type=parse_variant, action="append", default=[], help="variants for B alone")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/epoch_ab.json"))
    args = p.parse_args(argv)
    variants = args.variant or [("full", [])]
    trees = [Path(t).resolve() for t in args.trees]
    times: dict[str, dict[str, list[float]]] = {}
    # CPU seconds per run: on a loaded machine wall time waits for the other jobs, CPU time less so
    cpu: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, overrides in variants:
                for label, tree in zip("AB", trees, strict=True):
                    run = Path(tmp) / f"{name}-{label}-{r}"
                    seconds, cpu_s = run_epochs(tree, args, overrides, run)
                    times.setdefault(name, {}).setdefault(label, []).extend(seconds)
                    cpu.setdefault(name, {}).setdefault(label, []).append(cpu_s)
            for name, overrides in args.b_only:
                run = Path(tmp) / f"{name}-B-{r}"
                seconds, cpu_s = run_epochs(trees[1], args, overrides, run)
                times.setdefault(name, {}).setdefault("B", []).extend(seconds)
                cpu.setdefault(name, {}).setdefault("B", []).append(cpu_s)
    lines = [
        f"A = `{trees[0]}`, B = `{trees[1]}`; one thread; seconds per training epoch, in run order.",
        "",
        "| variant | A s/epoch | B s/epoch | A median | B median | B / A |",
        "|---|---|---|---|---|---|",
    ]
    result: dict[str, Any] = {"trees": [str(t) for t in trees], "variants": {}}
    for name, by in times.items():
        a, b = by.get("A", []), by.get("B", [])
        ma = statistics.median(a) if a else float("nan")
        mb = statistics.median(b) if b else float("nan")
        ratio = f"{mb / ma:.2f}" if a and b else "-"
        lines.append(
            f"| {name} | {', '.join(f'{x:.1f}' for x in a) or '-'} | {', '.join(f'{x:.1f}' for x in b)} "
            f"| {ma:.1f} | {mb:.1f} | {ratio} |"
        )
        result["variants"][name] = {"A": a, "B": b, "cpu_A": cpu[name].get("A", []), "cpu_B": cpu[name]["B"]}
    lines += [
        "",
        "CPU seconds of each whole run (start-up, training, validation), in run order:",
        "",
        "| variant | A CPU s/run | B CPU s/run | B / A (medians) |",
        "|---|---|---|---|",
    ]
    for name, by in cpu.items():
        a, b = by.get("A", []), by.get("B", [])
        ratio = f"{statistics.median(b) / statistics.median(a):.2f}" if a and b else "-"
        lines.append(
            f"| {name} | {', '.join(f'{x:.1f}' for x in a) or '-'} | {', '.join(f'{x:.1f}' for x in b)} | {ratio} |"
        )
    emit("\n".join(lines) + "\n", result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
