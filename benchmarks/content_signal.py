"""How much do a dataset's raw item features say about what users interact with next?

    python -m benchmarks.content_signal --data ../shared/data/tiktok --eval-split ../shared/data/tiktok/val.json

Model-free reference points on the evaluation split (same protocol as the quality benchmark: full
ranking, training items masked): for each modality alone and for all of them concatenated, a user's
profile is the mean of their training items' L2-normalised (mean-centred) feature vectors and items
are ranked by cosine to it; plus popularity and random ranking. If the features barely beat random
ranking here, no fusion weight can make them carry much of a recommender's ranking.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import emit, score
from training.data import load_dataset, load_split

REPORTED = ("recall@20", "ndcg@20")


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)


def content_profiles(indptr: np.ndarray, indices: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Per user: the unit-normalised mean of the unit, mean-centred features of their items."""
    items = _unit(features - features.mean(0))
    users = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    profiles = np.zeros((len(indptr) - 1, items.shape[1]), dtype=np.float64)
    np.add.at(profiles, users, items[indices])
    return _unit(profiles)


def measure(data: Path, eval_split: Path) -> dict[str, Any]:
    dataset = load_dataset(data)
    target = load_split(eval_split, dataset)
    train = dataset.train

    def ranked(user: np.ndarray, item: np.ndarray) -> dict[str, float]:
        m = score(user, item, train, target)
        return {k: m[k] for k in REPORTED}

    feats = {name: np.asarray(f, dtype=np.float64) for name, f in sorted(dataset.features.items())}
    if len(feats) > 1:
        feats["all (concatenated)"] = np.concatenate([_unit(f - f.mean(0)) for f in feats.values()], axis=1)
    results: dict[str, dict[str, float]] = {}
    for name, f in feats.items():
        results[f"content cosine: {name}"] = ranked(
            content_profiles(train.indptr, train.indices, f), _unit(f - f.mean(0))
        )
    popularity = np.bincount(train.indices, minlength=dataset.n_items).astype(np.float64)
    results["popularity"] = ranked(np.ones((dataset.n_users, 1)), popularity[:, None])
    rng = np.random.default_rng(0)
    results["random"] = ranked(
        rng.standard_normal((dataset.n_users, 32)), rng.standard_normal((dataset.n_items, 32))
    )
    return {"data": str(data), "eval_split": str(eval_split), "results": results}


def markdown(result: dict[str, Any]) -> str:
    lines = [f"On `{result['eval_split']}`:", "", "| ranking | Recall@20 | NDCG@20 |", "|---|---|---|"]
    for name, m in result["results"].items():
        lines.append(f"| {name} | {m['recall@20']:.4f} | {m['ndcg@20']:.4f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--eval-split", required=True, type=Path)
    p.add_argument("--out", type=Path, help="write the result as JSON here")
    args = p.parse_args(argv)
    result = measure(args.data, args.eval_split)
    emit(markdown(result), result, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
