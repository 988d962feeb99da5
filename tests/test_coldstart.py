"""Cold-start benchmark pieces: the item hold-out, per-user ranking, paired bootstrap, kNN average."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from benchmarks.coldstart import cold_split, knn_average, write_derived
from benchmarks.common import paired_bootstrap, per_user_topk
from training.data import Interactions, load_dataset, load_split
from training.evaluate import rank_metrics


def test_paired_bootstrap_on_hand_checkable_values():
    a = np.array([1.0, 0.0, 1.0, 0.0])
    out = paired_bootstrap(
        {"a": a, "same": a.copy(), "plus": a + 0.5, "const": np.full(4, 0.3)}, "a", n_boot=500
    )
    assert out["a"]["mean"] == 0.5 and 0.0 <= out["a"]["lo"] < 0.5 < out["a"]["hi"] <= 1.0
    assert out["same"]["diff_lo"] == out["same"]["diff_hi"] == 0.0
    # a constant shift: the paired difference has no spread at all, the unpaired means do
    assert out["plus"]["diff"] == out["plus"]["diff_lo"] == out["plus"]["diff_hi"] == 0.5
    assert out["const"]["lo"] == pytest.approx(0.3) and out["const"]["hi"] == pytest.approx(0.3)
    with pytest.raises(ValueError):
        paired_bootstrap({"a": a, "b": a[:3]}, "a")


def test_per_user_topk_equals_rank_metrics_on_all_items_and_restricts_to_candidates():
    rng = np.random.default_rng(0)
    n_users, n_items = 40, 30
    u, i = rng.standard_normal((n_users, 4)), rng.standard_normal((n_items, 4))
    train = Interactions.from_lists(
        [sorted(rng.choice(n_items, 5, replace=False).tolist()) for _ in range(n_users)]
    )
    target = Interactions.from_lists(
        [
            sorted(set(rng.choice(n_items, 3, replace=False).tolist()) - set(train.items_of(x).tolist()))
            for x in range(n_users)
        ]
    )
    ref = rank_metrics(torch.as_tensor(u, dtype=torch.float32), torch.as_tensor(i, dtype=torch.float32),
                       train.indptr, train.indices, target.indptr, target.indices)  # fmt: skip
    got = per_user_topk(u, i, np.arange(n_items), train, target, k=20, batch_users=7)
    assert got["users"].size == ref["n_users"]
    assert got["recall"].mean() == pytest.approx(ref["recall@20"], abs=1e-6)
    assert got["ndcg"].mean() == pytest.approx(ref["ndcg@20"], abs=1e-6)
    # Hand example: 1 user, candidates {2, 3}; item 2 scores higher; the target 3 is 2nd of 2.
    one_u, items = np.ones((1, 1)), np.array([[9.0], [8.0], [5.0], [1.0]])
    tr, tg = Interactions.from_lists([[]]), Interactions.from_lists([[0, 3]])
    r = per_user_topk(one_u, items, np.array([2, 3]), tr, tg, k=1)
    assert r["recall"].tolist() == [0.0]  # item 0 is not a candidate, only 3 counts
    r = per_user_topk(one_u, items, np.array([2, 3]), tr, tg, k=2)
    assert r["recall"].tolist() == [1.0] and r["ndcg"][0] == pytest.approx(1 / np.log2(3))


def test_cold_split_holds_out_seeded_items_entirely(tiny_data, tmp_path):
    split = cold_split(tiny_data, seed=4, share=0.2)
    train = json.loads((tiny_data / "train.json").read_text())
    val = json.loads((tiny_data / "val.json").read_text())
    seen = {i for s in (train, val) for its in s.values() for i in its}
    cold_val, cold_test = set(split["cold_val_items"]), set(split["cold_test_items"])
    assert not cold_val & cold_test and len(cold_val | cold_test) == round(0.2 * len(seen))
    assert abs(len(cold_val) - len(cold_test)) <= 1
    cold = cold_val | cold_test
    assert not any(set(v) & cold for v in split["train"].values())
    assert not any(set(v) & cold for v in split["val"].values())
    # every interaction of a held-out item is an evaluation pair, and nothing else is lost
    for u in set(train) | set(val):
        everything = set(train.get(u, [])) | set(val.get(u, []))
        parts = [split[k][u] for k in ("train", "val", "cold_val", "cold_test")]
        assert sorted(everything) == sorted(x for p in parts for x in p)
    assert cold_split(tiny_data, seed=4, share=0.2) == split
    assert cold_split(tiny_data, seed=5, share=0.2)["cold_test_items"] != split["cold_test_items"]
    load_dataset(tiny_data)  # untouched


def test_knn_average_is_the_mean_of_the_nearest_warm_rows():
    content = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9], [1.0, 0.05], [0.05, 1.0]])
    emb = np.arange(12, dtype=np.float64).reshape(6, 2)
    out = knn_average(emb, content, warm=np.array([0, 1, 2, 3]), cold=np.array([4, 5]), k=2)
    assert np.allclose(out[4], emb[[0, 1]].mean(0)) and np.allclose(out[5], emb[[2, 3]].mean(0))
    assert np.array_equal(out[:4], emb[:4])


def test_paired_bootstrap_and_paired_intervals_share_the_sign_variant_minus_reference():
    from benchmarks.common import paired_intervals

    ref = np.array([0.0, 0.5, 1.0, 0.25])
    better = ref + 0.25  # the variant scores higher on every user: a positive difference
    boot = paired_bootstrap({"ref": ref, "better": better}, "ref", n_boot=200)
    inter = paired_intervals({"ref": {"m": ref}, "better": {"m": better}}, ["m"], "ref", n_boot=200)
    assert boot["better"]["diff"] == pytest.approx(0.25)
    assert list(inter["differences"]) == ["better - ref"]
    assert inter["differences"]["better - ref"]["m"][0] == pytest.approx(0.25)


def test_train_variant_reuse_keeps_the_checkpoint_and_redoes_the_exports(tiny_data, tmp_path):
    from benchmarks.coldstart import train_variant
    from tests.conftest import FAST_OVERRIDES

    overrides = [*FAST_OVERRIDES, "epochs=1"]
    first = train_variant(tiny_data, tmp_path, "id_only", None, 1, overrides, ["bpr"])
    best = tmp_path / "run-id_only" / "best.pt"
    stamp = best.stat().st_mtime_ns
    again = train_variant(tiny_data, tmp_path, "id_only", None, 1, overrides, ["profile"], reuse=True)
    assert best.stat().st_mtime_ns == stamp  # not retrained
    assert set(first) == {"bpr", "none"} and set(again) == {"profile", "none"}
    assert again["profile"].manifest.content is not None
    assert again["profile"].manifest.content["kind"] == "profile"
    # the same trained model under both: identical user vectors
    assert np.array_equal(first["none"].arrays.user_embeddings, again["none"].arrays.user_embeddings)
    log = (tmp_path / "log-id_only.txt").read_text()
    # the second run exported profile only: "none" of the same checkpoint was loaded again
    assert log.count("python -m training train") == 1 and log.count("python -m training export") == 3
    assert again["none"].path == first["none"].path


def _slots_reference(u, i, warm, new, train, target, k, floor, cap):
    """Per user, a walk down all candidates by score: a new item joins while fewer than the cap
    (and than k - nothing) are in, a warm one while fewer than k - floor' are, floor' being the
    floor lowered to the new items the user has; metrics of the list in score order."""
    warm_set = set(warm.tolist())
    cands = list(warm) + list(new)
    out = {}
    for user in range(u.shape[0]):
        seen = set(train.items_of(user).tolist())
        rel = set(target.items_of(user).tolist()) & set(cands)
        if not rel:
            continue
        avail = [c for c in cands if c not in seen]
        n_new_avail = sum(1 for c in avail if c not in warm_set)
        floor_u = min(floor, n_new_avail, k)
        cap_u = k if cap is None else cap
        # ties: warm first, then by position
        ranked = sorted(avail, key=lambda c: (-float(u[user] @ i[c]), c not in warm_set, cands.index(c)))
        listed, n_w, n_n = [], 0, 0
        for c in ranked:
            if len(listed) == k:
                break
            if c in warm_set and n_w < k - floor_u:
                listed.append(c)
                n_w += 1
            elif c not in warm_set and n_n < cap_u:
                listed.append(c)
                n_n += 1
        hits = [c in rel for c in listed]
        dcg = sum(1 / np.log2(r + 2) for r, h in enumerate(hits) if h)
        idcg = sum(1 / np.log2(r + 2) for r in range(min(len(rel), k)))
        out[user] = (sum(hits) / len(rel), dcg / idcg)
    return out


@pytest.mark.parametrize("floor,cap", [(0, None), (0, 0), (2, 2), (3, None), (0, 2), (1, 4), (6, 6)])
def test_per_user_slots_equals_a_per_user_walk_down_the_ranking(floor, cap):
    from benchmarks.coldstart import per_user_slots

    rng = np.random.default_rng(3)
    n_users, n_items, k = 30, 40, 8
    u = rng.standard_normal((n_users, 3))
    i = rng.standard_normal((n_items, 3))
    i[30:] *= 0.5 + rng.uniform(0, 1, (10, 1))  # new items sometimes above, sometimes below
    warm, new = np.arange(0, 30), np.arange(30, 40)
    # user 0 has seen all but 3 new items: a floor of 6 cannot be met for them
    lists = [sorted(rng.choice(n_items, 4, replace=False).tolist()) for _ in range(n_users)]
    lists[0] = list(range(30, 37))
    train = Interactions.from_lists(lists)
    target = Interactions.from_lists(
        [sorted(set(rng.choice(n_items, 4, replace=False).tolist()) - set(t)) for t in lists]
    )
    ref = _slots_reference(u, i, warm, new, train, target, k, floor, cap)
    got = per_user_slots(u, i, warm, new, train, target, k, floor, cap, batch_users=7)
    assert got["users"].tolist() == sorted(ref)
    assert np.allclose(got["recall"], [ref[x][0] for x in got["users"]])
    assert np.allclose(got["ndcg"], [ref[x][1] for x in got["users"]])
    if floor == 0 and cap is None:  # the blend by score is the plain ranking over both sets
        plain = per_user_topk(u, i, np.concatenate((warm, new)), train, target, k=k)
        assert np.allclose(got["recall"], plain["recall"]) and np.allclose(got["ndcg"], plain["ndcg"])


def test_per_user_slots_hand_example():
    from benchmarks.coldstart import per_user_slots

    # one user, scores = item values; warm 0..3 (4, 3, 2, 1), new 4..5 (3.5, 0.5); k = 3
    u = np.ones((1, 1))
    i = np.array([[4.0], [3.0], [2.0], [1.0], [3.5], [0.5]])
    warm, new = np.arange(4), np.array([4, 5])
    train, target = Interactions.from_lists([[]]), Interactions.from_lists([[2, 5]])
    r = per_user_slots(u, i, warm, new, train, target, k=3)  # blend: 0, 4, 1
    assert r["recall"].tolist() == [0.0]
    r = per_user_slots(u, i, warm, new, train, target, k=3, floor=2, cap=2)  # 0, 4, 5
    assert r["recall"].tolist() == [0.5] and r["ndcg"][0] == pytest.approx((1 / 2) / (1 + 1 / np.log2(3)))
    r = per_user_slots(u, i, warm, new, train, target, k=3, floor=0, cap=0)  # 0, 1, 2
    assert r["recall"].tolist() == [0.5] and r["ndcg"][0] == pytest.approx(
        (1 / np.log2(4)) / (1 + 1 / np.log2(3))
    )


def test_learned_content_model_ranks_held_out_items_by_their_features(tmp_path):
    """The --learned-content ceiling on planted synthetic data (features carry the taste): trained
    without the held-out items, it ranks them among themselves well above random, and the same
    lists with the held-out items' vectors permuted among them (features unrelated to taste) do not."""
    from benchmarks.coldstart import learned_content
    from training.synthetic import write_synthetic

    data = write_synthetic(tmp_path / "syn", n_users=300, n_items=400, seed=7)
    split = cold_split(data, seed=3, share=0.3)
    derived = write_derived(data, tmp_path / "data-cold", split)
    dataset = load_dataset(derived)
    target = load_split(tmp_path / "cold_val.json", dataset)
    cold = np.asarray(split["cold_val_items"], dtype=np.int64)
    users, items = learned_content(dataset, seed=1, epochs=30)
    assert users.shape == (dataset.n_users, 64) and items.shape == (dataset.n_items, 64)
    assert np.isfinite(users).all() and np.isfinite(items).all()
    learned = per_user_topk(users, items, cold, dataset.train, target, k=10)["recall"].mean()
    rng = np.random.default_rng(0)
    shuffled = items.copy()
    shuffled[cold] = items[rng.permutation(cold)]
    baseline = per_user_topk(users, shuffled, cold, dataset.train, target, k=10)["recall"].mean()
    assert learned > 1.5 * baseline, (learned, baseline)
