"""Hyperparameter sensitivity, like Figure 4 of the paper: one setting varied at a time.

    python -m benchmarks.sensitivity --data ../shared/data/tiktok --eval-split ../shared/data/tiktok/val.json \
        --config configs/tiktok.yaml --seeds 1 --jobs 2 --out benchmarks/results/sensitivity \
        --sweep n_layers=1,2,3 --sweep zeta=0,1,10,100 --sweep cl_temperature=0.1,0.2,0.5,1.0 \
        --sweep embed_dim=32,64,128 num_threads=1

Every other setting stays at ``--config`` (plus the trailing overrides). Each (setting, value) is a
full training run selected on validation Recall@20 and scored on ``--eval-split``, as in
``benchmarks.quality``; values that resolve to the base configuration share one run. Writes
``results.json``, ``results.md`` and ``sensitivity.png`` (Recall@20 and NDCG@20 per value, one
panel per setting).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from benchmarks.common import add_run_arguments
from benchmarks.quality import run_many, summarise
from training.config import load_config


def parse_sweep(text: str) -> tuple[str, list[str]]:
    """``key=v1,v2,...`` -> (key, [v1, v2, ...])."""
    key, sep, values = text.partition("=")
    parts = [v.strip() for v in values.split(",") if v.strip()]
    if not sep or not key.strip() or not parts:
        raise argparse.ArgumentTypeError(f"--sweep wants key=v1,v2,... ; got {text!r}")
    return key.strip(), parts


def plan(config: str | None, overrides: list[str], sweeps: list[tuple[str, list[str]]]) -> dict[str, Any]:
    """Which runs to train: {run name: overrides}, and per setting the run name of each value.

    A value is checked (and resolved) through ``load_config`` before anything trains, so a typo in a
    key or value fails at once. Values that resolve to the base configuration map to the run "base".
    """
    base = load_config(config, overrides).to_dict()
    runs: dict[str, list[str]] = {}
    points: dict[str, list[tuple[str, str]]] = {}
    for key, values in sweeps:
        points[key] = []
        for value in values:
            extra = [f"{key}={value}"]
            name = "base" if load_config(config, overrides + extra).to_dict() == base else f"{key}={value}"
            runs.setdefault(name, [] if name == "base" else extra)
            points[key].append((value, name))
    return {"runs": runs, "points": points}


def markdown(
    points: dict[str, list[tuple[str, str]]], by_name: dict[str, dict[str, Any]], eval_split: str
) -> str:
    lines = [f"Evaluated on `{eval_split}` (mean over seeds; epoch selected on validation Recall@20).", ""]
    for key, pts in points.items():
        lines += [f"| {key} | Recall@20 | NDCG@20 | best epoch | s/epoch |", "|---|---|---|---|---|"]
        for value, name in pts:
            row = by_name[name]
            base = " (base)" if name == "base" else ""
            lines.append(
                f"| {value}{base} | {row['recall@20']:.4f} | {row['ndcg@20']:.4f} | "
                f"{row['best_epoch']:.1f} | {row['seconds_per_epoch']:.1f} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(points: dict[str, list[tuple[str, str]]], by_name: dict[str, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(points), figsize=(3.6 * len(points), 3.2), squeeze=False)
    for ax, (key, pts) in zip(axes[0], points.items(), strict=True):
        labels = [value for value, _ in pts]
        xs = range(len(pts))
        ax.plot(xs, [by_name[n]["recall@20"] for _, n in pts], "o-", color="tab:blue", label="Recall@20")
        ax.set_xticks(list(xs), labels)
        ax.set_xlabel(key)
        ax.set_ylabel("Recall@20", color="tab:blue")
        twin = ax.twinx()
        twin.plot(xs, [by_name[n]["ndcg@20"] for _, n in pts], "s--", color="tab:red", label="NDCG@20")
        twin.set_ylabel("NDCG@20", color="tab:red")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(p, seeds=[1], out="benchmarks/results/sensitivity")
    p.add_argument(
        "--sweep", type=parse_sweep, action="append", required=True, help="key=v1,v2,... (repeatable)"
    )
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    todo = plan(args.config, args.overrides, args.sweep)
    jobs = [(name, seed, extra) for name, extra in todo["runs"].items() for seed in args.seeds]
    runs = run_many(args, jobs, out)
    by_name = summarise(runs)  # per run name: means (and stds) over its seeds
    result = {
        "command": " ".join([sys.executable, "-m", "benchmarks.sensitivity", *(argv or sys.argv[1:])]),
        "points": todo["points"],
        "summary": by_name,
        "runs": runs,
    }
    (out / "results.json").write_text(json.dumps(result, indent=1))
    md = markdown(todo["points"], by_name, args.eval_split)
    (out / "results.md").write_text(md)
    plot(todo["points"], by_name, out / "sensitivity.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
