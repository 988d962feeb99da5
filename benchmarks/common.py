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
