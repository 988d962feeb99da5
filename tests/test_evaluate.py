"""Ranking metrics against a hand-computed example and a per-user Python reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.evaluate import rank_metrics


def _csr(rows: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
    indptr = np.cumsum([0] + [len(r) for r in rows])
    return indptr, np.array([i for r in rows for i in sorted(r)], dtype=np.int64)


def test_hand_computed_example():
    # one user, 6 items, item scores decreasing with index: ranking 0,1,2,3,4,5
    user = torch.tensor([[1.0]])
    items = torch.tensor([[6.0], [5.0], [4.0], [3.0], [2.0], [1.0]])
    train = _csr([[0]])  # item 0 is masked -> ranking 1,2,3,4,5
    target = _csr([[2, 5]])  # relevant at ranks 2 and 5 (1-based)
    m = rank_metrics(user, items, *train, *target, ks=(1, 2, 5))
    assert m["recall@1"] == 0.0
    assert m["recall@2"] == pytest.approx(0.5)
    assert m["precision@2"] == pytest.approx(0.5)
    assert m["recall@5"] == pytest.approx(1.0)
    assert m["precision@5"] == pytest.approx(2 / 5)
    dcg2 = 1 / math.log2(3)
    idcg2 = 1 + 1 / math.log2(3)
    assert m["ndcg@2"] == pytest.approx(dcg2 / idcg2)
    dcg5 = 1 / math.log2(3) + 1 / math.log2(6)
    assert m["ndcg@5"] == pytest.approx(dcg5 / idcg2)  # ideal: 2 hits at the top
    assert m["n_users"] == 1


def _reference(user_emb, item_emb, train_rows, target_rows, k):
    """Independent per-user Python implementation of the standard metrics."""
    out = {"recall": [], "precision": [], "ndcg": []}
    scores = (user_emb @ item_emb.T).numpy()
    for u, relevant in enumerate(target_rows):
        if not relevant:
            continue
        s = scores[u].copy()
        s[list(train_rows[u])] = -np.inf
        ranked = list(np.argsort(-s, kind="stable")[:k])
        hits = [1 if i in relevant else 0 for i in ranked]
        dcg = sum(h / math.log2(r + 2) for r, h in enumerate(hits))
        idcg = sum(1 / math.log2(r + 2) for r in range(min(len(relevant), k)))
        out["recall"].append(sum(hits) / len(relevant))
        out["precision"].append(sum(hits) / k)
        out["ndcg"].append(dcg / idcg)
    return {name: float(np.mean(v)) for name, v in out.items()}


def test_batched_metrics_equal_per_user_reference():
    rng = np.random.default_rng(0)
    n_users, n_items = 37, 60
    user_emb = torch.tensor(rng.normal(size=(n_users, 8)), dtype=torch.float32)
    item_emb = torch.tensor(rng.normal(size=(n_items, 8)), dtype=torch.float32)
    train_rows = [
        set(rng.choice(n_items, rng.integers(0, 6), replace=False).tolist()) for _ in range(n_users)
    ]
    target_rows = []
    for u in range(n_users):
        pool = [i for i in range(n_items) if i not in train_rows[u]]
        target_rows.append(set(rng.choice(pool, rng.integers(0, 4), replace=False).tolist()))
    m = rank_metrics(
        user_emb,
        item_emb,
        *_csr([list(r) for r in train_rows]),
        *_csr([list(r) for r in target_rows]),
        ks=(5, 20),
        batch_users=8,
    )
    for k in (5, 20):
        ref = _reference(user_emb, item_emb, train_rows, target_rows, k)
        for name in ("recall", "precision", "ndcg"):
            assert m[f"{name}@{k}"] == pytest.approx(ref[name], rel=1e-6), (name, k)
    assert m["n_users"] == sum(1 for r in target_rows if r)


def test_training_items_are_never_counted_as_hits():
    user = torch.tensor([[1.0]])
    items = torch.tensor([[9.0], [1.0], [0.5]])
    # the best-scoring item is a training item and also (wrongly) in the target: masked
    m = rank_metrics(user, items, *_csr([[0]]), *_csr([[0, 2]]), ks=(1,))
    assert m["recall@1"] == 0.0


def test_per_user_metrics_average_to_rank_metrics_and_match_the_reference_user_by_user():
    from training.evaluate import rank_metrics_per_user

    rng = np.random.default_rng(5)
    n_users, n_items = 23, 40
    user_emb = torch.tensor(rng.normal(size=(n_users, 6)), dtype=torch.float32)
    item_emb = torch.tensor(rng.normal(size=(n_items, 6)), dtype=torch.float32)
    train_rows = [
        set(rng.choice(n_items, rng.integers(0, 5), replace=False).tolist()) for _ in range(n_users)
    ]
    target_rows = []
    for u in range(n_users):
        pool = [i for i in range(n_items) if i not in train_rows[u]]
        target_rows.append(set(rng.choice(pool, rng.integers(0, 3), replace=False).tolist()))
    args = (user_emb, item_emb, *_csr([list(r) for r in train_rows]), *_csr([list(r) for r in target_rows]))
    users, per_user = rank_metrics_per_user(*args, ks=(5,), batch_users=4)
    assert users.tolist() == [u for u in range(n_users) if target_rows[u]]
    means = rank_metrics(*args, ks=(5,), batch_users=7)
    for key in ("recall@5", "precision@5", "ndcg@5"):
        assert per_user[key].shape == users.shape
        assert per_user[key].mean() == pytest.approx(means[key], rel=1e-12)
    for j, u in enumerate(users.tolist()):  # each user against the one-user reference
        one = [r if v == u else set() for v, r in enumerate(target_rows)]
        ref = _reference(user_emb, item_emb, train_rows, one, 5)
        assert per_user["recall@5"][j] == pytest.approx(ref["recall"])
        assert per_user["ndcg@5"][j] == pytest.approx(ref["ndcg"])


def test_ndcg_caps_the_ideal_at_k_when_more_items_are_relevant_than_k():
    # ranking 0..5; five relevant items {0, 2, 3, 4, 5}, K = 2 and 3
    user = torch.tensor([[1.0]])
    items = torch.tensor([[6.0], [5.0], [4.0], [3.0], [2.0], [1.0]])
    m = rank_metrics(user, items, *_csr([[]]), *_csr([[0, 2, 3, 4, 5]]), ks=(2, 3))
    # K = 2: hit at rank 1 only; the ideal has 2 hits, not 5
    assert m["ndcg@2"] == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert m["recall@2"] == pytest.approx(1 / 5)
    assert m["precision@2"] == pytest.approx(1 / 2)
    # K = 3: hits at ranks 1 and 3
    idcg3 = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / idcg3)
    assert m["precision@3"] == pytest.approx(2 / 3)


def test_metrics_average_over_users_with_targets_only():
    # user 0: hit at rank 1 of 1 relevant; user 1: no target (ignored); user 2: 0 hits of 2
    # (its scores are reversed: item 3 ranks first, and it is not relevant)
    users = torch.tensor([[1.0], [1.0], [-1.0]])
    items = torch.tensor([[3.0], [2.0], [1.0], [0.5]])
    m = rank_metrics(users, items, *_csr([[], [], []]), *_csr([[0], [], [0, 1]]), ks=(1,))
    assert m["n_users"] == 2
    assert m["recall@1"] == pytest.approx((1 + 0) / 2)
    assert m["ndcg@1"] == pytest.approx((1 + 0) / 2)


def test_batched_metrics_equal_reference_with_long_target_lists():
    rng = np.random.default_rng(1)
    n_users, n_items = 23, 30
    user_emb = torch.tensor(rng.normal(size=(n_users, 4)), dtype=torch.float32)
    item_emb = torch.tensor(rng.normal(size=(n_items, 4)), dtype=torch.float32)
    train_rows = [set(rng.choice(n_items, 3, replace=False).tolist()) for _ in range(n_users)]
    target_rows = []
    for u in range(n_users):
        pool = [i for i in range(n_items) if i not in train_rows[u]]
        target_rows.append(set(rng.choice(pool, rng.integers(1, 12), replace=False).tolist()))
    assert max(len(r) for r in target_rows) > 3  # more relevant items than K for some users
    m = rank_metrics(
        user_emb,
        item_emb,
        *_csr([list(r) for r in train_rows]),
        *_csr([list(r) for r in target_rows]),
        ks=(1, 3),
        batch_users=5,
    )
    for k in (1, 3):
        ref = _reference(user_emb, item_emb, train_rows, target_rows, k)
        for name in ("recall", "precision", "ndcg"):
            assert m[f"{name}@{k}"] == pytest.approx(ref[name], rel=1e-6), (name, k)


def test_metrics_on_a_user_subset_equal_the_reference_over_those_users_only():
    rng = np.random.default_rng(11)
    n_users, n_items = 31, 50
    user_emb = torch.tensor(rng.normal(size=(n_users, 6)), dtype=torch.float32)
    item_emb = torch.tensor(rng.normal(size=(n_items, 6)), dtype=torch.float32)
    train_rows = [
        set(rng.choice(n_items, rng.integers(0, 5), replace=False).tolist()) for _ in range(n_users)
    ]
    target_rows = []
    for u in range(n_users):
        pool = [i for i in range(n_items) if i not in train_rows[u]]
        target_rows.append(set(rng.choice(pool, rng.integers(0, 3), replace=False).tolist()))
    chosen = np.array([25, 3, 7, 8, 14, 20, 29, 3])  # any order, a repeat, maybe users without targets
    m = rank_metrics(
        user_emb,
        item_emb,
        *_csr([list(r) for r in train_rows]),
        *_csr([list(r) for r in target_rows]),
        ks=(5,),
        batch_users=3,
        users=chosen,
    )
    only = [r if u in set(chosen.tolist()) else set() for u, r in enumerate(target_rows)]
    ref = _reference(user_emb, item_emb, train_rows, only, 5)
    for name in ("recall", "precision", "ndcg"):
        assert m[f"{name}@5"] == pytest.approx(ref[name], rel=1e-6), name
    assert m["n_users"] == sum(1 for r in only if r)
    assert m["n_users"] < sum(1 for r in target_rows if r)  # the subset is a real restriction
