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


def add_ab_arguments(p: argparse.ArgumentParser) -> None:
    """The arguments every interleaved A/B of two checkouts takes (``benchmarks.step_ab``,
    ``benchmarks.epoch_ab``): the two trees, the data, the config and the number of rounds."""
    p.add_argument("--trees", nargs=2, required=True, metavar=("A", "B"))
    p.add_argument("--data", required=True)
    p.add_argument("--config")
    p.add_argument("--rounds", type=int, default=2)


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
        out = model(state.graph, state.item_raw, views, state.item_graph)
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
    by the caller). Differences are ``variant - reference`` per user (the sign of ``paired_bootstrap``:
    positive means the variant scores higher), resampled with the same users (a paired bootstrap).
    Returns {"n_users", "variants": {v: {m: [mean, lo, hi]}}, "differences": {"v - ref": {m: [mean,
    lo, hi]}}}.
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
            out["differences"][f"{variant} - {reference}"] = {
                m: list(bootstrap_interval(per_user[variant][m] - per_user[reference][m], n_boot, seed))
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
    # an imported folder's external ids (user_ids.json / item_ids.json) go along with the features
    for feat in [*sorted(data.glob("*_feat.npy")), *(data / n for n in ("user_ids.json", "item_ids.json"))]:
        if not feat.is_file():
            continue
        link = out / feat.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(feat.resolve())
    return out


def paired_bootstrap(
    per_user: dict[str, np.ndarray], reference: str, n_boot: int = 1000, seed: int = 0
) -> dict[str, dict[str, float]]:
    """Paired bootstrap over users: mean and 95% percentile interval of each method, and of each
    method's difference to ``reference``, resampling the same users for every method (every call of
    ``bootstrap_interval`` with the same seed and size draws the same resamples).

    per_user: method -> (n_users,) per-user metric, the same users in the same order for all.
    Returns method -> {"mean", "lo", "hi", "diff", "diff_lo", "diff_hi"}; ``diff`` is
    ``method - reference`` (as in ``paired_intervals``: positive means the method scores higher).
    """
    sizes = {len(v) for v in per_user.values()}
    if len(sizes) != 1 or reference not in per_user:
        raise ValueError(f"need equal-length per-user arrays including {reference!r} (sizes {sizes})")
    if sizes.pop() == 0:
        raise ValueError("no users to bootstrap over")
    ref = np.asarray(per_user[reference], dtype=np.float64)
    out: dict[str, dict[str, float]] = {}
    for name, values in per_user.items():
        v = np.asarray(values, dtype=np.float64)
        mean, lo, hi = bootstrap_interval(v, n_boot, seed)
        diff, diff_lo, diff_hi = bootstrap_interval(v - ref, n_boot, seed)
        out[name] = {"mean": mean, "lo": lo, "hi": hi, "diff": diff, "diff_lo": diff_lo, "diff_hi": diff_hi}
    return out


def candidate_pairs(split: Any, column: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(user, candidate column) of every pair of a CSR ``split`` whose item is a candidate:
    ``column[item]`` is the item's column among the candidates, -1 for the others."""
    users = np.repeat(np.arange(len(split.indptr) - 1), np.diff(split.indptr))
    cols = column[np.asarray(split.indices, dtype=np.int64)]
    keep = cols >= 0
    return users[keep], cols[keep]


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

    t_users, t_cols = candidate_pairs(target, column)
    s_users, s_cols = candidate_pairs(train, column)
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
