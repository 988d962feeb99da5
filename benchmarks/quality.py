"""Quality benchmark: train variants x seeds, select the epoch on validation, score an eval split.

    python -m benchmarks.quality --data ../shared/data/tiktok --eval-split ../shared/data/tiktok/val.json \
        --config configs/tiktok.yaml --seeds 1 2 3 --variants full id_only no_asl no_cl no_gt

Each run is its own ``python -m training train`` process (so its peak memory is its own), then
``python -m training evaluate`` on ``--eval-split``. Writes ``results.json``, ``results.md`` and
``val_recall20.png`` into ``--out``. The evaluation split is an argument, so the same command
scores a held-out file.

Statistics: each run's per-user metrics are kept (``per_user.npz``); the table gives paired
bootstrap 95% intervals over users of every variant's metrics (per-user values averaged over the
seeds) and of every difference ``variant - full`` (positive: the variant scores higher), with the
number of users.

``--tune-seed N`` tunes without touching validation: one training item per user with >= 3 is
carved out (seeded) into ``OUT/tune-data``, which is trained on and scored (and used for epoch
selection) instead of ``--data`` / ``--eval-split``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import add_run_arguments, carve_tuning_split, paired_intervals, per_user_metrics

VARIANTS: dict[str, list[str]] = {
    "full": [],
    "id_only": ["id_only=true"],
    "no_asl": ["use_adversarial=false"],  # w/o-ASL
    "no_cl": ["use_contrastive=false"],  # w/o-CL
    "no_gt": ["use_gumbel=false"],  # w/o-GT
}
METRICS = [f"{m}@{k}" for k in (10, 20, 50) for m in ("recall", "precision", "ndcg")]
INTERVAL_METRICS = ["recall@20", "ndcg@20"]
PER_USER = "per_user.npz"
ROOT = Path(__file__).resolve().parents[1]
_torch_lock = threading.Lock()  # in-process scoring: one at a time, beside the training processes


def _run(cmd: list[str], log_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log_path, "a") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
    if proc.returncode != 0:
        tail = log_path.read_text().splitlines()[-5:]
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n" + "\n".join(tail))


def parse_define(text: str) -> tuple[str, list[str]]:
    """``name:k=v,k=v`` -> (name, ["k=v", "k=v"]) for ``--define``."""
    name, sep, body = text.partition(":")
    pairs = [x.strip() for x in body.split(",") if x.strip()]
    name = name.strip()
    bad = [x for x in pairs if "=" not in x or not x.partition("=")[0].strip()]
    if not sep or not name or "-seed" in name or "/" in name or not pairs or bad:
        raise argparse.ArgumentTypeError(
            f"--define wants NAME:KEY=VALUE[,KEY=VALUE...] (NAME without '/' or '-seed'); got {text!r}"
        )
    if name in VARIANTS:
        raise argparse.ArgumentTypeError(f"--define {name!r}: that name is a built-in variant")
    return name, pairs


def run_one(
    args: argparse.Namespace, variant: str, seed: int, out: Path, overrides: list[str] | None = None
) -> dict[str, Any]:
    """Train one run (``VARIANTS[variant]`` or the given overrides) and score it on ``--eval-split``.

    ``args`` needs ``data``, ``eval_split``, ``config`` and ``overrides`` (for every run).
    """
    run_dir = out / "runs" / f"{variant}-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "log.txt"
    train_cmd = [
        sys.executable,
        "-m",
        "training",
        "train",
        "--data",
        args.data,
        "--out",
        str(run_dir),
        "--no-progress",
    ]
    if args.config:
        train_cmd += ["--config", args.config]
    own = VARIANTS[variant] if overrides is None else overrides
    train_cmd += [f"seed={seed}", *args.overrides, *own]
    _run(train_cmd, log)
    eval_json = run_dir / "eval.json"
    _run(
        [
            sys.executable,
            "-m",
            "training",
            "evaluate",
            "--run",
            str(run_dir),
            "--data",
            args.data,
            "--split",
            args.eval_split,
            "--json",
            str(eval_json),
        ],
        log,
    )
    with _torch_lock:
        users, per_user = per_user_metrics(run_dir, args.data, args.eval_split)
    np.savez(run_dir / PER_USER, users=users, **{k.replace("@", "_at_"): v for k, v in per_user.items()})
    return collect(run_dir, variant, seed)


def collect(run_dir: Path, variant: str, seed: int) -> dict[str, Any]:
    """One finished run's record from its history.json and eval.json."""
    history = json.loads((run_dir / "history.json").read_text())
    evaluated = json.loads((run_dir / "eval.json").read_text())
    return {
        "run_dir": str(run_dir),
        "variant": variant,
        "seed": seed,
        "best_epoch": evaluated["epoch"],
        "epochs_run": len(history),
        "seconds_per_epoch": statistics.mean(h["train_seconds"] for h in history),
        # training plus validation time, as logged by the trainer (no process start-up)
        "total_seconds": round(sum(h["train_seconds"] + h.get("eval_seconds", 0.0) for h in history), 1),
        "peak_rss_mb": max(h["peak_rss_mb"] for h in history),
        "eval": {k: evaluated[k] for k in METRICS},
        "val_curve": [(h["epoch"], h["val"]["recall@20"]) for h in history if "val" in h],
    }


def run_many(
    args: argparse.Namespace, jobs: list[tuple[str, int, list[str] | None]], out: Path
) -> list[dict[str, Any]]:
    """``run_one`` for every (name, seed, overrides), ``args.jobs`` training processes at a time.

    Results come back in the order of ``jobs``. With several jobs, give each run fewer threads
    (``num_threads=1``): the processes share the machine's cores.
    """

    def one(job: tuple[str, int, list[str] | None]) -> dict[str, Any]:
        name, seed, overrides = job
        result = run_one(args, name, seed, out, overrides)
        print(
            f"{name} seed {seed}: eval R@20 {result['eval']['recall@20']:.4f} "
            f"N@20 {result['eval']['ndcg@20']:.4f} ({result['epochs_run']} epochs, "
            f"{result['seconds_per_epoch']:.2f} s/epoch)",
            flush=True,
        )
        return result

    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        return list(pool.map(one, jobs))


def summarise(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    table: dict[str, dict[str, Any]] = {}
    for variant in dict.fromkeys(r["variant"] for r in runs):
        rs = [r for r in runs if r["variant"] == variant]
        row: dict[str, Any] = {"seeds": [r["seed"] for r in rs]}
        for key in METRICS:
            values = [r["eval"][key] for r in rs]
            row[key] = statistics.mean(values)
            row[key + "_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
        for key in ("best_epoch", "epochs_run", "seconds_per_epoch", "total_seconds", "peak_rss_mb"):
            row[key] = statistics.mean(r[key] for r in rs)
        table[variant] = row
    return table


def intervals(runs: list[dict[str, Any]], reference: str = "full") -> dict[str, Any] | None:
    """Paired bootstrap intervals (``benchmarks.common.paired_intervals``) of the runs' per-user
    metrics, averaged over each variant's seeds; None when a run has no per-user metrics."""
    paths = [Path(r["run_dir"]) / PER_USER for r in runs]
    if not runs or not all(p.is_file() for p in paths):
        return None
    loaded = []
    for path in paths:
        with np.load(path) as z:
            loaded.append({k.replace("_at_", "@"): z[k] for k in z.files})
    per_variant: dict[str, dict[str, np.ndarray]] = {}
    users = loaded[0]["users"]
    for variant in dict.fromkeys(r["variant"] for r in runs):
        mine = [(r, pu) for r, pu in zip(runs, loaded, strict=True) if r["variant"] == variant]
        for r, pu in mine:
            if not np.array_equal(pu["users"], users):
                raise ValueError(f"{variant} seed {r['seed']} was scored on other users than the rest")
        per_variant[variant] = {m: np.mean([pu[m] for _, pu in mine], axis=0) for m in INTERVAL_METRICS}
    ref = reference if reference in per_variant else next(iter(per_variant))
    return paired_intervals(per_variant, INTERVAL_METRICS, ref)


def interval_markdown(stats: dict[str, Any]) -> str:
    def cell(v: list[float]) -> str:
        return f"{v[0]:.4f} [{v[1]:.4f}, {v[2]:.4f}]"

    lines = [
        f"Paired bootstrap 95% intervals over {stats['n_users']} users ({stats['n_boot']} resamples; "
        "per-user metrics averaged over seeds): mean [low, high].",
        "",
        "| | " + " | ".join(INTERVAL_METRICS) + " |",
        "|---|" + "---|" * len(INTERVAL_METRICS),
    ]
    for name, by in [*stats["variants"].items(), *stats["differences"].items()]:
        lines.append(f"| {name} | " + " | ".join(cell(by[m]) for m in INTERVAL_METRICS) + " |")
    return "\n".join(lines) + "\n"


def markdown(table: dict[str, dict[str, Any]], eval_split: str) -> str:
    head = ["variant", "seeds"] + METRICS + ["best epoch", "epochs", "s/epoch", "total s", "peak MB"]
    lines = [
        f"Evaluated on `{eval_split}` (mean ± std over seeds; epoch selected on validation Recall@20).",
        "",
    ]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for variant, row in table.items():
        cells = [variant, ",".join(map(str, row["seeds"]))]
        cells += [f"{row[k]:.4f} ± {row[k + '_std']:.4f}" for k in METRICS]
        cells += [
            f"{row['best_epoch']:.1f}",
            f"{row['epochs_run']:.1f}",
            f"{row['seconds_per_epoch']:.2f}",
            f"{row['total_seconds']:.0f}",
            f"{row['peak_rss_mb']:.0f}",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for r in runs:
        xs, ys = zip(*r["val_curve"], strict=True)
        ax.plot(xs, ys, label=f"{r['variant']} s{r['seed']}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation Recall@20")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_run_arguments(p, seeds=[1, 2, 3], out="benchmarks/results/quality")
    p.add_argument(
        "--tune-seed",
        type=int,
        help="tune on a split carved from training with this seed (see the module docstring)",
    )
    p.add_argument(
        "--define",
        action="append",
        default=[],
        type=parse_define,
        metavar="NAME:KEY=VALUE[,KEY=VALUE...]",
        help="a variant of your own (repeatable), e.g. graph:item_graph_k=10; then name it in --variants",
    )
    p.add_argument("--variants", nargs="+", default=["full", "id_only"])
    p.add_argument(
        "--reference",
        help="the variant every interval difference is taken against (default: full if run, else the first)",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="RUN_DIR",
        help="no training: tabulate finished run directories named <variant>-seed<N> (with eval.json)",
    )
    args = p.parse_args(argv)
    variants = {**VARIANTS, **dict(args.define)}
    unknown = [v for v in args.variants if v not in variants]
    if unknown:
        p.error(f"unknown variant(s) {unknown}: choose from {sorted(variants)} or --define them")
    if args.reference is not None and not args.merge and args.reference not in args.variants:
        p.error(f"--reference {args.reference!r} is not one of --variants {args.variants}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.tune_seed is not None:
        tune = carve_tuning_split(args.data, out / "tune-data", args.tune_seed)
        args.data, args.eval_split = str(tune), str(tune / "val.json")
    runs = []
    if args.merge:
        for run_dir in map(Path, args.merge):
            variant, _, seed = run_dir.name.rpartition("-seed")
            if not (run_dir / PER_USER).is_file():  # runs from before per-user metrics were kept
                users, per_user = per_user_metrics(run_dir, args.data, args.eval_split)
                np.savez(
                    run_dir / PER_USER,
                    users=users,
                    **{k.replace("@", "_at_"): v for k, v in per_user.items()},
                )
            runs.append(collect(run_dir, variant, int(seed)))
    if not args.merge:
        jobs = [(variant, seed, variants[variant]) for variant in args.variants for seed in args.seeds]
        runs += run_many(args, jobs, out)
    table = summarise(runs)
    stats = intervals(runs, args.reference or "full")
    meta = {
        "command": " ".join([sys.executable, "-m", "benchmarks.quality", *(argv or sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count(), "platform": sys.platform},
    }
    result = {"meta": meta, "runs": runs, "summary": table, "intervals": stats}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    md = markdown(table, args.eval_split)
    if stats is not None:
        md += "\n" + interval_markdown(stats)
    (out / "results.md").write_text(md)
    plot(runs, out / "val_recall20.png")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
