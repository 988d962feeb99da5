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
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    train_indptr: np.ndarray,
    train_indices: np.ndarray,
    target_indptr: np.ndarray,
    target_indices: np.ndarray,
    k: int = 20,
) -> dict[str, np.ndarray]:
    """Recall@k and NDCG@k of each user with target items (numpy; the same definitions as
    training.evaluate.rank_metrics): scores h_u . h_i, the user's training items excluded.
    Returns {"users", f"recall@{k}", f"ndcg@{k}"}, each (n_target_users,)."""
    n_items = item_emb.shape[0]
    users = np.flatnonzero(np.diff(target_indptr) > 0)
    recall = np.zeros(users.size)
    ndcg = np.zeros(users.size)
    discount = 1.0 / np.log2(np.arange(2, k + 2))
    for row, u in enumerate(users):
        scores = item_emb @ user_emb[u]
        scores[train_indices[train_indptr[u] : train_indptr[u + 1]]] = -np.inf
        top = np.argsort(-scores, kind="stable")[: min(k, n_items)]
        relevant = np.zeros(n_items, dtype=bool)
        relevant[target_indices[target_indptr[u] : target_indptr[u + 1]]] = True
        hits = relevant[top]
        n_rel = int(relevant.sum())
        recall[row] = hits.sum() / n_rel
        ndcg[row] = (hits * discount[: hits.size]).sum() / discount[: min(n_rel, k)].sum()
    return {"users": users, f"recall@{k}": recall, f"ndcg@{k}": ndcg}


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> dict[str, Any]:
    """Means of per-user values ``a`` and ``b`` (same users, same order) and of ``a - b``, each with a
    percentile bootstrap interval from resampling the users (the same resample for a and b)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError("paired_bootstrap: a and b must be non-empty 1-D arrays of the same length")
    idx = np.random.default_rng(seed).integers(0, a.size, size=(n_boot, a.size))
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2
    out: dict[str, Any] = {"n_users": int(a.size), "n_boot": n_boot}
    for name, values in (("a", a), ("b", b), ("diff", a - b)):
        means = values[idx].mean(axis=1)
        out[name] = float(values.mean())
        out[name + "_ci"] = [float(np.percentile(means, lo)), float(np.percentile(means, hi))]
    return out
