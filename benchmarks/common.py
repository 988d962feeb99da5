"""Small helpers shared by the benchmark scripts."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np


def score(user_emb: np.ndarray, item_emb: np.ndarray, train: Any, target: Any) -> dict[str, float]:
    """rank_metrics for numpy embeddings: full ranking of h_u . h_i with ``train``'s items masked."""
    import torch  # here, so that the subprocess-driving benchmarks that share this module stay light

    from training.evaluate import rank_metrics

    return rank_metrics(
        torch.as_tensor(user_emb, dtype=torch.float32),
        torch.as_tensor(item_emb, dtype=torch.float32),
        train.indptr,
        train.indices,
        target.indptr,
        target.indices,
    )


def emit(text: str, result: dict[str, Any], out: Path | None) -> None:
    """Print the markdown ``text``; write ``result`` as JSON to ``out`` when given."""
    print(text)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")


def add_run_arguments(p: argparse.ArgumentParser, *, seeds: list[int], out: str) -> None:
    """The arguments every multi-run benchmark takes (quality, sensitivity): what to train on, what to
    score, which seeds, how many trainings at a time, where to write, and trainer overrides."""
    p.add_argument("--data", required=True)
    p.add_argument(
        "--eval-split", required=True, help="split file to score (e.g. DATA/val.json or a held-out test.json)"
    )
    p.add_argument("--config")
    p.add_argument("--seeds", type=int, nargs="+", default=seeds)
    p.add_argument("--jobs", type=int, default=1, help="training runs at a time (default 1)")
    p.add_argument("--out", default=out)
    p.add_argument("overrides", nargs="*", help="extra key=value trainer overrides for every run")


def per_user_metrics(
    run_dir: Path, data: str | Path, split: str | Path
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Each user's metrics for the best checkpoint of ``run_dir`` on ``split``, for paired statistics.

    Same model, views and masking as ``python -m training evaluate``; returns (users, {metric: (n,)}).
    """
    import torch

    from training.data import load_dataset, load_split
    from training.evaluate import rank_metrics_per_user
    from training.trainer import BEST, TrainingState, load_checkpoint, model_from_checkpoint

    dataset = load_dataset(data)
    target = load_split(split, dataset)
    device = torch.device("cpu")
    model, views = model_from_checkpoint(load_checkpoint(Path(run_dir) / BEST), device)
    state = TrainingState(dataset, model.config, device)
    with torch.no_grad():
        out = model(state.graph, state.item_raw, views)
    return rank_metrics_per_user(
        out.user, out.item, dataset.train.indptr, dataset.train.indices, target.indptr, target.indices
    )


def bootstrap_interval(
    values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float, float]:
    """(mean, low, high): percentile bootstrap interval of the mean of per-user ``values`` (n,).

    A paired comparison passes the per-user differences: the same resampled users on both sides.
    """
    values = np.asarray(values, dtype=np.float64)
    n = values.size
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = np.empty(n_boot)
    chunk = max(1, 2_000_000 // n)  # bound the (chunk, n) index block
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        means[start:stop] = values[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(values.mean()), float(low), float(high)


def paired_intervals(
    per_user: dict[str, dict[str, np.ndarray]],
    metrics: list[str],
    reference: str,
    n_boot: int = 2000,
    seed: int = 0,
) -> dict[str, Any]:
    """Bootstrap 95% intervals over users for every variant's metrics and every difference.

    per_user: variant -> metric -> (n_users,) values in one shared user order (averaged over seeds
    by the caller). Differences are ``reference - variant`` per user, resampled with the same users
    (a paired bootstrap). Returns {"n_users", "variants": {v: {m: [mean, lo, hi]}},
    "differences": {"ref - v": {m: [mean, lo, hi]}}}.
    """
    sizes = {v: next(iter(d.values())).size for v, d in per_user.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"variants were scored on different users: {sizes}")
    out: dict[str, Any] = {"n_users": next(iter(sizes.values()), 0), "n_boot": n_boot, "variants": {}}
    out["differences"] = {}
    for variant, by_metric in per_user.items():
        out["variants"][variant] = {m: list(bootstrap_interval(by_metric[m], n_boot, seed)) for m in metrics}
    if reference in per_user:
        for variant in per_user:
            if variant == reference:
                continue
            out["differences"][f"{reference} - {variant}"] = {
                m: list(bootstrap_interval(per_user[reference][m] - per_user[variant][m], n_boot, seed))
                for m in metrics
            }
    return out


def carve_tuning_split(data: str | Path, out: str | Path, seed: int, min_train: int = 3) -> Path:
    """A dataset folder for tuning: one training item per user with >= ``min_train`` training
    items moves (seeded, uniform) from train.json to this folder's val.json; the features are
    linked, not copied. Validation is then left for epoch selection and reporting only.
    """
    data, out = Path(data), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = json.loads((data / "train.json").read_text())
    rng = np.random.default_rng(seed)
    kept: dict[str, list[int]] = {}
    tune: dict[str, list[int]] = {}
    for user, items in train.items():  # file order: the draw is reproducible from the seed
        items = list(items)
        if len(items) >= min_train:
            held = items.pop(int(rng.integers(len(items))))
            tune[user] = [held]
        kept[user] = items
    (out / "train.json").write_text(json.dumps(kept))
    (out / "val.json").write_text(json.dumps(tune))
    for feat in sorted(data.glob("*_feat.npy")):
        link = out / feat.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(feat.resolve())
    return out
