"""Fresh-interaction users: users unseen at training time, folded in through the artifact path.

    python -m benchmarks.fresh_users --data ../shared/data/tiktok \
        --eval-split ../shared/data/tiktok/val.json --config configs/tiktok.yaml --seed 1

1. Hold out ``--holdout`` (10%) of the users with >= 3 training interactions (and items in the
   evaluation split) from training entirely: a derived dataset folder without their training rows.
2. Train on it and export; train a reference run on the full data with the same config and seed.
3. Build each held-out user's vector from their training interactions through the service's code
   path (``artifact.contract.user_vector`` with no user index: Eq. 2 modality side + fold-in ID side)
   and score them on the evaluation split, training items masked.
4. Compare with (a) the same users in the reference run and (b) popularity for the same users.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from artifact.contract import load_artifact, user_vector
from benchmarks.common import score
from training.data import load_dataset, load_split

ROOT = Path(__file__).resolve().parents[1]


def derived_dataset(src: Path, dst: Path, holdout_users: set[int]) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    train = json.loads((src / "train.json").read_text())
    kept = {u: items for u, items in train.items() if int(u) not in holdout_users}
    (dst / "train.json").write_text(json.dumps(kept))
    for f in src.iterdir():
        if f.name != "train.json" and (f.suffix == ".npy" or f.name in ("val.json", "test.json")):
            target = dst / f.name
            if not target.exists():
                os.symlink(f.resolve(), target)
    return dst


def _training_cli(*args: str) -> Path:
    """Run ``python -m training ARGS`` and return the artifact path it prints."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "training", *args], capture_output=True, text=True, env=env, cwd=ROOT
    )
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-2000:])
    return Path(json.loads(proc.stdout)["artifact"])


def train_and_export(
    data: Path, run: Path, store: Path, config: str | None, seed: int, overrides: list[str]
) -> Path:
    config_args = ["--config", config] if config else []
    return _training_cli(
        "train",
        "--data",
        str(data),
        "--out",
        str(run),
        "--no-progress",
        "--export-to",
        str(store),
        *config_args,
        f"seed={seed}",
        *overrides,
    )


def export_run(run: Path, data: Path, store: Path) -> Path:
    return _training_cli("export", "--run", str(run), "--data", str(data), "--out", str(store))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--eval-split", required=True)
    p.add_argument("--config")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--out", default="benchmarks/results/fresh_users")
    p.add_argument(
        "--reference-run",
        help="run directory already trained on the full data with the same config and seed "
        "(e.g. a benchmarks.quality run): exported instead of training the reference again",
    )
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    full = load_dataset(args.data)
    target = load_split(args.eval_split, full)
    eligible = np.intersect1d(np.nonzero(full.train.degrees() >= 3)[0], target.users_with_items())
    rng = np.random.default_rng(args.seed)
    held = np.sort(rng.choice(eligible, int(round(args.holdout * len(eligible))), replace=False))
    derived = derived_dataset(Path(args.data), out / "data-holdout", set(held.tolist()))

    art_hold = load_artifact(
        train_and_export(derived, out / "run-holdout", out / "store", args.config, args.seed, args.overrides)
    )
    if args.reference_run:
        art_full = load_artifact(export_run(Path(args.reference_run), Path(args.data), out / "store"))
    else:
        art_full = load_artifact(
            train_and_export(
                Path(args.data), out / "run-full", out / "store", args.config, args.seed, args.overrides
            )
        )
    held_target = target.restrict_to_users(held)

    dim = art_hold.manifest.dim
    folded = np.zeros((full.n_users, dim), dtype=np.float32)
    for u in held:
        folded[u] = user_vector(art_hold, full.train.items_of(int(u)), user_index=None)
    results = {
        "fold_in": score(folded, art_hold.arrays.item_embeddings, full.train, held_target),
        "trained_normally": score(
            art_full.arrays.user_embeddings, art_full.arrays.item_embeddings, full.train, held_target
        ),
        "popularity": score(
            np.ones((full.n_users, 1), np.float32),
            art_hold.arrays.item_popularity.astype(np.float32)[:, None],
            full.train,
            held_target,
        ),
    }
    r = {k: v["recall@20"] for k, v in results.items()}
    summary = {
        "held_out_users": int(len(held)),
        "recall@20": r,
        "ndcg@20": {k: v["ndcg@20"] for k, v in results.items()},
        "ratio_vs_trained": r["fold_in"] / r["trained_normally"] if r["trained_normally"] else None,
        "ratio_vs_popularity": r["fold_in"] / r["popularity"] if r["popularity"] else None,
        "command": " ".join([sys.executable, "-m", "benchmarks.fresh_users", *(argv or sys.argv[1:])]),
    }
    (out / "results.json").write_text(json.dumps({"summary": summary, "metrics": results}, indent=1))
    print(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
