"""Cost as data grows: TikTok-shaped synthetic data at 1x, 4x, 16x; step, epoch, refresh, memory.

    python -m benchmarks.scale --data ../shared/data/tiktok --config configs/tiktok.yaml \
        --scales 1 4 16 --steps 3 num_threads=1

At scale s the data has s times TikTok's users, items and interactions (users' degrees drawn from
TikTok's training degrees, items from a Zipf popularity, 128-d float16 image and audio features as
there), one validation item per user. Each scale runs in its own process (so peak memory is its
own): ``--steps`` timed training steps (``benchmarks.train_speed.Bench``, the trainer's step), one
view refresh, one full validation ranking, and the process's peak RSS. The epoch is estimated as
steps/epoch x step + refreshes/epoch x refresh. ``--scale-batch`` (default) multiplies
``batch_size`` by s, so an epoch has the same number of full-graph passes at every scale; with
``--no-scale-batch`` the step count grows with s too. Prints a table and writes JSON to ``--out``.
``--write DIR`` writes the datasets only (DIR/x1, DIR/x16, ...), to train whole epochs on them with
``python -m training train`` (the trainer's own ``train_seconds`` and ``peak_rss_mb`` per epoch).

Refreshes per epoch follow the trainer's schedule (``view_refresh_steps`` or
``view_refreshes_per_epoch``); validation ranks the trainer's users (all, or the ``eval_users``
sample). With an approximate view search (``view_index=ivf``) the table also gives, per modality,
the recall of the exact top-k in the refreshed views over 2,000 sampled active users (on the
untrained model's features: random synthetic item features are close to the worst case for an
ANN index).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import emit

ROOT = Path(__file__).resolve().parents[1]
TIKTOK_ITEMS = 6710
FEATURE_DIM = 128


def write_scaled(data: Path, scale: int, out: Path, seed: int = 0) -> dict[str, int]:
    """A TikTok-shaped dataset folder at ``scale`` x ``data``'s users and items."""
    train = json.loads((data / "train.json").read_text())
    base_users = set(train) | set(json.loads((data / "val.json").read_text()))
    # sorted: a set of strings iterates in a per-process hash order, and the data must not change
    degrees = np.array([len(train.get(u, [])) for u in sorted(base_users)], dtype=np.int64)
    n_items = int(max((max(v) for v in train.values() if v), default=TIKTOK_ITEMS - 1)) + 1
    n_users, n_items = degrees.size * scale, n_items * scale
    rng = np.random.default_rng(seed)
    deg = rng.choice(degrees, size=n_users)  # TikTok's degree distribution
    popularity = 1.0 / (rng.permutation(n_items) + 1.0) ** 0.8
    popularity /= popularity.sum()
    out.mkdir(parents=True, exist_ok=True)
    users = np.repeat(np.arange(n_users), deg + 1)  # one extra per user for validation
    items = rng.choice(n_items, size=users.size, p=popularity)
    keys = np.unique(users * n_items + items)  # drop repeats: a user's items are distinct
    users, items = np.divmod(keys, n_items)
    starts = np.searchsorted(users, np.arange(n_users + 1))
    tr: dict[str, list[int]] = {}
    va: dict[str, list[int]] = {}
    for u in range(n_users):
        mine = items[starts[u] : starts[u + 1]]
        if mine.size >= 2:
            pick = int(rng.integers(mine.size))
            va[str(u)] = [int(mine[pick])]
            mine = np.delete(mine, pick)
        tr[str(u)] = mine.tolist()
    (out / "train.json").write_text(json.dumps(tr))
    (out / "val.json").write_text(json.dumps(va))
    for name in ("image", "audio"):
        np.save(out / f"{name}_feat.npy", rng.standard_normal((n_items, FEATURE_DIM)).astype(np.float16))
    return {"n_users": n_users, "n_items": n_items, "n_train": sum(map(len, tr.values()))}


RECALL_USERS = 2000  # active users whose approximate views are checked against the exact top-k


def _view_recall(bench: Any, n_users: int, modality_topk: Any, topk_recall: Any) -> list[float]:
    """Per modality: recall of the exact Eq. 8 top-k in the refreshed views, over a seeded sample
    of active users (the exact top-k for them only: n_users x |I| work)."""
    import torch

    model, state = bench.model, bench.state
    gen = torch.Generator().manual_seed(0)
    pick = torch.randperm(state.active_users.numel(), generator=gen)[:n_users]
    sample = torch.sort(state.active_users[pick]).values
    was_training = model.training
    model.eval()
    with torch.no_grad():
        feats = model.modality_features(state.item_raw, state.graph)
    model.train(was_training)
    exact = modality_topk(feats.users, feats.items, model.config.view_topk, sample)
    return [topk_recall(a, e) for a, e in zip(bench.views.topk_items, exact, strict=True)]


def measure(data: Path, config: str | None, overrides: list[str], steps: int) -> dict[str, Any]:
    """In this process: the timings and peak memory of one scale."""
    import torch

    from benchmarks.train_speed import Bench
    from model.graph import modality_topk
    from training import allocator
    from training.config import load_config
    from training.data import load_dataset
    from training.trainer import eval_user_sample, evaluate_model, view_refresh_interval
    from training.views import topk_recall

    cfg = load_config(config, overrides)
    tc = cfg.train
    if tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    dataset = load_dataset(data)
    device = torch.device("cpu")
    bench = Bench(dataset, cfg, device)
    bench.step()  # warm-up
    timings = [bench.step() for _ in range(steps)]
    step_s = statistics.mean(sum(t) for t in timings)
    refresh_s = bench.refresh()
    view_recall = None
    if tc.view_index != "exact" and bench.views is not None:
        view_recall = _view_recall(bench, RECALL_USERS, modality_topk, topk_recall)
    val_users = eval_user_sample(dataset.val, tc.eval_users, tc.seed)
    allocator.release()  # as the trainer does before evaluation
    t = time.perf_counter()
    evaluate_model(
        bench.model, bench.state, bench.views, dataset, dataset.val, tc.eval_batch_users, val_users
    )
    eval_s = time.perf_counter() - t
    steps_per_epoch = math.ceil(bench.state.users.numel() / tc.batch_size)
    refreshes = math.ceil(steps_per_epoch / view_refresh_interval(tc, steps_per_epoch))
    return {
        "n_users": dataset.n_users,
        "n_items": dataset.n_items,
        "n_train": int(bench.state.users.numel()),
        "batch_size": tc.batch_size,
        "steps_per_epoch": steps_per_epoch,
        "step_s": step_s,
        "phase_s": [statistics.mean(t[i] for t in timings) for i in range(3)],
        "refresh_s": refresh_s,
        "refreshes_per_epoch": refreshes,
        "epoch_estimate_s": steps_per_epoch * step_s + refreshes * refresh_s,
        "eval_s": eval_s,
        "eval_users": int(val_users.size)
        if val_users is not None
        else int((np.diff(dataset.val.indptr) > 0).sum()),
        "view_index": tc.view_index,
        "view_recall": view_recall,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "threads": torch.get_num_threads(),
    }


def recall_text(recall: list[float] | None) -> str:
    return "exact" if recall is None else " / ".join(f"{x:.3f}" for x in recall)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, help="the dataset whose shape is scaled (TikTok)")
    p.add_argument("--config")
    p.add_argument("--scales", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--scale-batch", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/scale.json"))
    p.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: measure this folder
    p.add_argument(
        "--write",
        type=Path,
        metavar="DIR",
        help="only write the scaled datasets, as DIR/x<scale> (to train on them with python -m training)",
    )
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(measure(args.one, args.config, args.overrides, args.steps)))
        return 0
    if args.write:
        for s in args.scales:
            shape = write_scaled(Path(args.data), s, args.write / f"x{s}")
            print(f"{args.write / f'x{s}'}: {shape}")
        return 0
    from training.config import load_config

    base_batch = load_config(args.config, args.overrides).train.batch_size
    rows = []
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryDirectory() as tmp:
        for s in args.scales:
            folder = Path(tmp) / f"x{s}"
            write_scaled(Path(args.data), s, folder)
            extra = [f"batch_size={base_batch * s}"] if args.scale_batch else []
            cmd = [sys.executable, "-m", "benchmarks.scale", "--data", args.data, "--one", str(folder)]
            cmd += ["--steps", str(args.steps)] + (["--config", args.config] if args.config else [])
            cmd += [*args.overrides, *extra]
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
            if proc.returncode != 0:
                raise SystemExit(f"scale {s} failed:\n{proc.stderr[-2000:]}")
            rows.append({"scale": s, **json.loads(proc.stdout.strip().splitlines()[-1])})
            print(f"x{s}: {rows[-1]}", flush=True)
            folder_files = list(folder.iterdir())
            for f in folder_files:
                f.unlink()
    base = rows[0]
    lines = [
        f"One process per scale, {base['threads']} thread(s); epoch = steps x step + refreshes x refresh.",
        "",
        "| scale | users | items | train pairs | batch | steps/epoch | s/step | view refresh s "
        "| epoch s (est.) | epoch / 1x | validation s (users) | view recall | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['scale']}x | {r['n_users']} | {r['n_items']} | {r['n_train']} | {r['batch_size']} "
            f"| {r['steps_per_epoch']} | {r['step_s']:.2f} | {r['refresh_s']:.2f} "
            f"| {r['epoch_estimate_s']:.1f} | {r['epoch_estimate_s'] / base['epoch_estimate_s']:.1f} "
            f"| {r['eval_s']:.1f} ({r['eval_users']}) | {recall_text(r['view_recall'])} | {r['peak_rss_mb']:.0f} |"
        )
    meta = {"command": " ".join([sys.executable, "-m", "benchmarks.scale", *(argv or sys.argv[1:])])}
    emit("\n".join(lines) + "\n", {"meta": meta, "rows": rows}, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
