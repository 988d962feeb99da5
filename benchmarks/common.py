"""Small helpers shared by the benchmark scripts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from training.evaluate import rank_metrics


def score(user_emb: np.ndarray, item_emb: np.ndarray, train: Any, target: Any) -> dict[str, float]:
    """rank_metrics for numpy embeddings: full ranking of h_u . h_i with ``train``'s items masked."""
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
