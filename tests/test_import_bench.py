"""The small helpers behind the MovieLens and MMRec round-trip benchmarks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.common import paired_difference
from benchmarks.mmrec_roundtrip import compare
from training.data import Interactions, load_dataset
from training.evaluate import rank_metrics_per_user
from training.synthetic import write_synthetic


def test_per_user_metrics_hand_example():
    # 1 user, 4 items; scores 4,3,2,1 for items 0..3; item 0 is a training item (masked)
    user = torch.tensor([[1.0]])
    items = torch.tensor([[4.0], [3.0], [2.0], [1.0]])
    train = Interactions.from_lists([[0]])
    target = Interactions.from_lists([[2, 3]])
    _, m = rank_metrics_per_user(
        user, items, train.indptr, train.indices, target.indptr, target.indices, ks=(2,)
    )
    # top-2 after masking: items 1, 2 -> one hit at rank 2: recall 1/2, NDCG (1/log2 3) / (1 + 1/log2 3)
    assert m["recall@2"].tolist() == [0.5]
    assert m["ndcg@2"][0] == pytest.approx((1 / np.log2(3)) / (1 + 1 / np.log2(3)))


def test_paired_difference():
    rng = np.random.default_rng(1)
    b = rng.random(200)
    same = paired_difference(b, b)
    assert same["diff"] == 0 and same["diff_ci"] == [0, 0] and same["n_users"] == 200
    shifted = paired_difference(b + 0.25, b)
    assert shifted["diff"] == pytest.approx(0.25) and shifted["diff_ci"] == pytest.approx([0.25, 0.25])
    noisy = paired_difference(b + rng.normal(0.1, 0.5, 200), b, n_boot=4000)
    lo, hi = noisy["diff_ci"]
    assert lo < noisy["diff"] < hi and 0.05 < hi - lo < 0.3  # about 2 * 1.96 * 0.5 / sqrt(200) = 0.14
    assert noisy["a_ci"][0] < noisy["a"] < noisy["a_ci"][1]
    with pytest.raises(ValueError):
        paired_difference(b, b[:10])


def test_round_trip_comparison_notices_a_difference(tmp_path):
    a = load_dataset(write_synthetic(tmp_path / "a", n_users=40, n_items=30, seed=0))
    b = load_dataset(write_synthetic(tmp_path / "b", n_users=40, n_items=30, seed=0))
    assert all(compare(a, b).values())
    c = load_dataset(write_synthetic(tmp_path / "c", n_users=40, n_items=30, seed=1))
    result = compare(a, c)
    assert not result["train"] and not result["image_feat"]
