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


def paired_bootstrap(
    per_user: dict[str, np.ndarray], reference: str, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Paired bootstrap over users: mean and 95% percentile interval of each method, and of each
    method's difference to ``reference``, resampling the same users for every method.

    per_user: method -> (n_users,) per-user metric, the same users in the same order for all.
    Returns method -> {"mean", "lo", "hi", "diff", "diff_lo", "diff_hi"}.
    """
    sizes = {len(v) for v in per_user.values()}
    if len(sizes) != 1 or reference not in per_user:
        raise ValueError(f"need equal-length per-user arrays including {reference!r} (sizes {sizes})")
    n = sizes.pop()
    if n == 0:
        raise ValueError("no users to bootstrap over")
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    ref = np.asarray(per_user[reference], dtype=np.float64)
    out: dict[str, dict[str, float]] = {}
    for name, values in per_user.items():
        v = np.asarray(values, dtype=np.float64)
        boots = v[idx].mean(axis=1)
        diffs = (v - ref)[idx].mean(axis=1)
        out[name] = {
            "mean": float(v.mean()),
            "lo": float(np.percentile(boots, 2.5)),
            "hi": float(np.percentile(boots, 97.5)),
            "diff": float((v - ref).mean()),
            "diff_lo": float(np.percentile(diffs, 2.5)),
            "diff_hi": float(np.percentile(diffs, 97.5)),
        }
    return out


def per_user_topk(
    user_emb: np.ndarray,
    item_emb: np.ndarray,
    candidates: np.ndarray,
    train: Any,
    target: Any,
    k: int = 20,
    batch_users: int = 1024,
) -> dict[str, np.ndarray]:
    """Recall@k and NDCG@k per user, ranking only the ``candidates`` items (training items masked).

    Users are those with at least one ``target`` item among the candidates; targets outside the
    candidates are dropped (the cold-start protocol: cold items ranked among cold items). NDCG as
    in ``training.evaluate.rank_metrics`` (IDCG over min(|rel|, k) hits). Returns {"users",
    "recall", "ndcg"}, arrays of one entry per user. With all items as candidates this equals
    ``rank_metrics``' averages.
    """
    import torch

    n_items = item_emb.shape[0]
    candidates = np.asarray(candidates, dtype=np.int64)
    column = np.full(n_items, -1, dtype=np.int64)
    column[candidates] = np.arange(candidates.size)

    def pairs(split: Any) -> tuple[np.ndarray, np.ndarray]:
        users = np.repeat(np.arange(len(split.indptr) - 1), np.diff(split.indptr))
        cols = column[np.asarray(split.indices, dtype=np.int64)]
        keep = cols >= 0
        return users[keep], cols[keep]

    t_users, t_cols = pairs(target)
    s_users, s_cols = pairs(train)
    users = np.unique(t_users)
    kk = min(k, candidates.size)
    discount = 1.0 / np.log2(np.arange(2, kk + 2))
    ideal = np.cumsum(discount)
    cand_emb = torch.as_tensor(np.asarray(item_emb, dtype=np.float32)[candidates])
    user_t = torch.as_tensor(np.asarray(user_emb, dtype=np.float32))
    recall = np.zeros(users.size)
    ndcg = np.zeros(users.size)
    row_of = np.full(len(target.indptr) - 1, -1, dtype=np.int64)
    for start in range(0, users.size, batch_users):
        block = users[start : start + batch_users]
        row_of[block] = np.arange(block.size)
        scores = user_t[torch.as_tensor(block)] @ cand_emb.T  # (B, n_candidates)
        in_block = row_of[s_users] >= 0
        scores[torch.as_tensor(row_of[s_users[in_block]]), torch.as_tensor(s_cols[in_block])] = float("-inf")
        top = scores.topk(kk, dim=1).indices.numpy()  # (B, kk)
        relevant = np.zeros((block.size, candidates.size), dtype=bool)
        t_in = row_of[t_users] >= 0
        relevant[row_of[t_users[t_in]], t_cols[t_in]] = True
        hits = np.take_along_axis(relevant, top, axis=1)
        n_rel = relevant.sum(axis=1)
        recall[start : start + block.size] = hits.sum(axis=1) / n_rel
        dcg = (hits * discount).sum(axis=1)
        ndcg[start : start + block.size] = dcg / ideal[np.minimum(n_rel, kk) - 1]
        row_of[block] = -1
    return {"users": users, "recall": recall, "ndcg": ndcg}


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


def paired_difference(a: np.ndarray, b: np.ndarray, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """``paired_bootstrap`` of two per-user arrays (same users, same order), flattened: means of
    ``a``, ``b`` and ``a - b``, each with its 95% interval, and the number of users."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError("paired_difference: a and b must be non-empty 1-D arrays of the same length")
    boot = paired_bootstrap({"a": a, "b": b}, reference="b", n_boot=n_boot, seed=seed)
    return {
        "n_users": int(a.size),
        "n_boot": n_boot,
        "a": boot["a"]["mean"],
        "a_ci": [boot["a"]["lo"], boot["a"]["hi"]],
        "b": boot["b"]["mean"],
        "b_ci": [boot["b"]["lo"], boot["b"]["hi"]],
        "diff": boot["a"]["diff"],
        "diff_ci": [boot["a"]["diff_lo"], boot["a"]["diff_hi"]],
    }
