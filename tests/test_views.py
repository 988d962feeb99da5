"""The bounded-cost Eq. 8 search (FAISS IVF) against a numpy brute-force top-k, the refresh
schedule, and the trainer's opt-in settings for scale (issue 12)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from training.views import default_n_lists, flat_modality_topk, ivf_modality_topk, topk_recall


def _exact_topk_sets(f_u: np.ndarray, f_i: np.ndarray, k: int) -> list[set[int]]:
    """Brute-force cosine top-k per user in numpy (the reference)."""
    u = f_u / np.linalg.norm(f_u, axis=1, keepdims=True)
    i = f_i / np.linalg.norm(f_i, axis=1, keepdims=True)
    scores = u @ i.T
    return [set(np.argsort(-row, kind="stable")[:k].tolist()) for row in scores]


def _clustered(n_users: int, n_items: int, dim: int, n_clusters: int, seed: int):
    """Items and users around a few directions, as trained modality features are (not isotropic)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim))
    items = centres[rng.integers(n_clusters, size=n_items)] + 0.3 * rng.normal(size=(n_items, dim))
    users = centres[rng.integers(n_clusters, size=n_users)] + 0.3 * rng.normal(size=(n_users, dim))
    return users.astype(np.float32), items.astype(np.float32)


def test_probing_every_cell_is_the_exact_top_k():
    users, items = _clustered(60, 300, 8, 6, seed=1)
    active = torch.tensor([u for u in range(60) if u % 7 != 3])
    k = 5
    tops = ivf_modality_topk(
        [torch.from_numpy(users)], [torch.from_numpy(items)], k, active, n_lists=12, n_probe=12
    )
    exact = _exact_topk_sets(users, items, k)
    for u in range(60):
        if u in set(active.tolist()):
            assert set(tops[0][u].tolist()) == exact[u], u
        else:
            assert tops[0][u].tolist() == [-1] * k  # inactive users: no view row


def test_flat_faiss_top_k_equals_numpy_and_torch_blocks_for_every_modality():
    """The CPU default of the exact refresh (FAISS flat search) against a numpy brute force and
    against model.graph.modality_topk, two modalities of different widths, inactive users."""
    from model.graph import modality_topk

    rng = np.random.default_rng(4)
    feats_u = [rng.normal(size=(80, d)).astype(np.float32) for d in (8, 5)]
    feats_i = [rng.normal(size=(240, d)).astype(np.float32) for d in (8, 5)]
    active = torch.tensor([u for u in range(80) if u % 9 != 2])
    k = 7
    users = [torch.from_numpy(f) for f in feats_u]
    items = [torch.from_numpy(f) for f in feats_i]
    flat = flat_modality_topk(users, items, k, active)
    blocks = modality_topk(users, items, k, active, chunk=16)
    for m in range(2):
        exact = _exact_topk_sets(feats_u[m], feats_i[m], k)
        assert flat[m].dtype == torch.int64 and flat[m].shape == (80, k)
        for u in range(80):
            if u in set(active.tolist()):
                assert set(flat[m][u].tolist()) == exact[u] == set(blocks[m][u].tolist()), (m, u)
            else:
                assert flat[m][u].tolist() == blocks[m][u].tolist() == [-1] * k
    # each modality searched with its own features: swapping them changes the answer
    swapped = flat_modality_topk(users[::-1], items[::-1], k, active)
    assert not torch.equal(swapped[0], flat[0])


def test_the_exact_refresh_uses_faiss_on_cpu_and_torch_without_it(tiny_data, monkeypatch):
    import training.trainer as trainer
    from model.mmssl import MMSSL
    from training.config import load_config
    from training.data import load_dataset
    from training.trainer import TrainingState, model_config_for, refresh_views

    dataset = load_dataset(tiny_data)
    cfg = load_config(None, [])
    model_cfg = model_config_for(dataset, cfg.model)
    torch.manual_seed(0)
    model = MMSSL(model_cfg)
    state = TrainingState(dataset, model_cfg, torch.device("cpu"))
    used: list[str] = []
    for name in ("flat_modality_topk", "modality_topk"):
        real = getattr(trainer, name)
        monkeypatch.setattr(trainer, name, lambda *a, _real=real, _name=name: used.append(_name) or _real(*a))
    with_faiss = refresh_views(model, state, cfg.train)
    monkeypatch.setattr(trainer, "faiss_available", lambda: False)
    without = refresh_views(model, state, cfg.train)
    assert used == ["flat_modality_topk", "modality_topk"]
    for a, b in zip(with_faiss.topk_items, without.topk_items, strict=True):
        assert [set(r) for r in a.tolist()] == [set(r) for r in b.tolist()]


def test_ivf_recall_of_the_exact_top_k_on_clustered_features_is_at_least_090():
    # 2,000 items in 40 clusters, 45 cells (4 sqrt(|I|) would be 179; fewer cells keep each
    # cluster in few cells), 8 probed: about 18% of the items scored per user.
    users, items = _clustered(400, 2000, 16, 40, seed=2)
    k = 10
    active = torch.arange(400)
    tops = ivf_modality_topk(
        [torch.from_numpy(users)], [torch.from_numpy(items)], k, active, n_lists=45, n_probe=8
    )
    exact = _exact_topk_sets(users, items, k)
    recall = np.mean([len(set(tops[0][u].tolist()) & exact[u]) / k for u in range(400)])
    assert recall >= 0.90


def test_users_whose_probed_cells_hold_fewer_than_k_items_get_the_exact_top_k():
    # one cell per item and one probe: every user's probe yields < k items, all fall back
    users, items = _clustered(30, 40, 4, 4, seed=3)
    k = 3
    active = torch.arange(30)
    tops = ivf_modality_topk(
        [torch.from_numpy(users)], [torch.from_numpy(items)], k, active, n_lists=40, n_probe=1
    )
    exact = _exact_topk_sets(users, items, k)
    for u in range(30):
        assert set(tops[0][u].tolist()) == exact[u]


def test_each_modality_is_searched_with_its_own_features():
    u1, i1 = _clustered(50, 200, 8, 5, seed=4)
    u2, i2 = _clustered(50, 200, 8, 5, seed=5)
    active = torch.arange(50)
    tops = ivf_modality_topk(
        [torch.from_numpy(u1), torch.from_numpy(u2)],
        [torch.from_numpy(i1), torch.from_numpy(i2)],
        4,
        active,
        n_lists=10,
        n_probe=10,
    )
    for top, (u, i) in zip(tops, [(u1, i1), (u2, i2)], strict=True):
        exact = _exact_topk_sets(u, i, 4)
        assert all(set(top[x].tolist()) == exact[x] for x in range(50))


def test_default_cell_count_is_four_sqrt_items():
    assert default_n_lists(6710) == round(4 * math.sqrt(6710)) == 328
    assert default_n_lists(107_248) == 1310  # 16x TikTok


def test_topk_recall_by_hand():
    exact = torch.tensor([[1, 2, 3], [4, 5, 6], [-1, -1, -1]])
    approx = torch.tensor([[3, 2, 9], [7, 8, 9], [0, 1, 2]])
    # row 0: 2 of 3; row 1: 0 of 3; row 2 inactive, skipped
    assert topk_recall(approx, exact) == pytest.approx((2 / 3 + 0) / 2)


def test_refresh_interval_from_refreshes_per_epoch():
    from training.config import TrainConfig
    from training.trainer import view_refresh_interval

    tc = TrainConfig(view_refresh_steps=20)
    assert view_refresh_interval(tc, 100) == 20  # default: every view_refresh_steps steps
    tc.view_refreshes_per_epoch = 1
    assert view_refresh_interval(tc, 100) == 100
    assert view_refresh_interval(tc, 1600) == 1600  # once an epoch, however many steps
    tc.view_refreshes_per_epoch = 3
    assert view_refresh_interval(tc, 100) == 34  # ceil(100 / 3): at most 3 an epoch
    tc.view_refreshes_per_epoch = 500
    assert view_refresh_interval(tc, 100) == 1


def test_unknown_view_index_is_a_config_error():
    from training.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="view_index must be one of exact, ivf"):
        load_config(None, ["view_index=hnsw"])
    with pytest.raises(ConfigError, match="view_ivf_probe"):
        load_config(None, ["view_ivf_probe=0"])
    for name in ("cl_users", "eval_users", "view_refreshes_per_epoch", "view_ivf_lists"):
        with pytest.raises(ConfigError, match=f"{name} must be >= 0"):
            load_config(None, [f"{name}=-1"])


def test_eval_user_sample_is_fixed_and_drawn_from_users_with_targets():
    from training.data import Interactions
    from training.trainer import eval_user_sample

    rows = [[1], [], [2, 3], [], [4], [5], [6], [], [7]]
    indptr = np.cumsum([0] + [len(r) for r in rows])
    target = Interactions(indptr, np.array([i for r in rows for i in r], dtype=np.int64))
    with_items = {0, 2, 4, 5, 6, 8}
    sample = eval_user_sample(target, 4, seed=3)
    assert sample is not None and sample.size == 4 and set(sample.tolist()) <= with_items
    assert sample.tolist() == sorted(sample.tolist())
    assert np.array_equal(sample, eval_user_sample(target, 4, seed=3))  # the same every epoch
    assert eval_user_sample(target, 0, seed=3) is None  # 0 = all users
    assert eval_user_sample(target, 6, seed=3) is None  # as many as there are: all


def _count_refreshes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    import training.trainer as trainer

    calls: list[str] = []
    real = trainer.refresh_views

    def counting(model, state, tc=None):  # type: ignore[no-untyped-def]
        calls.append(tc.view_index if tc is not None else "none")
        return real(model, state, tc)

    monkeypatch.setattr(trainer, "refresh_views", counting)
    return calls


def test_trainer_refreshes_once_an_epoch_with_ivf_and_validates_on_the_sample(
    tiny_data, tmp_path, monkeypatch
):
    from tests.conftest import FAST_OVERRIDES
    from training.config import load_config
    from training.data import load_dataset
    from training.trainer import BEST, load_checkpoint, train

    calls = _count_refreshes(monkeypatch)
    dataset = load_dataset(tiny_data)
    overrides = [
        *FAST_OVERRIDES,
        "epochs=3",
        "batch_size=64",
        "view_index=ivf",
        "view_refreshes_per_epoch=1",
        "eval_users=40",
    ]
    cfg = load_config(None, overrides)
    result = train(dataset, cfg, tmp_path / "run", progress_bar=False)
    steps_per_epoch = math.ceil(dataset.train.nnz / cfg.train.batch_size)
    assert steps_per_epoch > 5  # so that view_refresh_steps=5 alone would refresh more often
    assert calls == ["ivf"] * 3  # the initial views, then at the start of epochs 2 and 3
    assert all(h["val"]["n_users"] == 40 for h in result.history)
    topk = load_checkpoint(tmp_path / "run" / BEST)["views_topk"]
    active = torch.as_tensor(dataset.train.users_with_items())
    for top in topk:
        assert bool((top[active] >= 0).all()) and bool((top[active] < dataset.n_items).all())
        assert all(len(set(row.tolist())) == top.shape[1] for row in top[active])  # k distinct items


def test_trainer_defaults_keep_the_exact_search_every_view_refresh_steps(tiny_data, tmp_path, monkeypatch):
    from tests.conftest import FAST_OVERRIDES
    from training.config import load_config
    from training.data import load_dataset
    from training.trainer import train

    calls = _count_refreshes(monkeypatch)
    dataset = load_dataset(tiny_data)
    cfg = load_config(None, [*FAST_OVERRIDES, "epochs=2"])
    result = train(dataset, cfg, tmp_path / "run", progress_bar=False)
    total_steps = 2 * math.ceil(dataset.train.nnz / cfg.train.batch_size)
    assert calls == ["exact"] * (1 + (total_steps - 1) // 5)  # initial + every 5 steps after step 0
    n_val = int((np.diff(dataset.val.indptr) > 0).sum())
    assert all(h["val"]["n_users"] == n_val for h in result.history)


def test_contrastive_users_are_all_or_a_uniform_sample_without_repeats():
    from training.trainer import contrastive_users

    batch = torch.tensor([3, 8, 9, 12, 40, 41, 57])
    gen = torch.Generator().manual_seed(0)
    assert contrastive_users(batch, 0, gen) is batch  # 0 = every batch user (the paper)
    assert contrastive_users(batch, 7, gen) is batch
    picked = contrastive_users(batch, 4, gen)
    assert picked.numel() == 4 and len(set(picked.tolist())) == 4
    assert set(picked.tolist()) <= set(batch.tolist())
    seen = set()
    for _ in range(50):  # uniform: every batch user is drawn at some point
        seen |= set(contrastive_users(batch, 2, gen).tolist())
    assert seen == set(batch.tolist())
