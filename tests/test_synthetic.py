"""The synthetic generator: format round trip, determinism, planted edge cases and structure."""

from __future__ import annotations

import json

import numpy as np
import pytest

from training.data import load_dataset
from training.synthetic import write_synthetic


@pytest.fixture(scope="module")
def default_dataset(tmp_path_factory):
    root = write_synthetic(tmp_path_factory.mktemp("synthetic") / "ds", seed=0)
    return root, load_dataset(root)


def test_round_trip(default_dataset):
    root, ds = default_dataset
    assert sorted(p.name for p in root.iterdir()) == [
        "audio_feat.npy",
        "image_feat.npy",
        "synthetic.json",
        "test.json",
        "train.json",
        "val.json",
    ]
    # Both on-disk dtypes are exercised; the loader hands out float32.
    assert np.load(root / "image_feat.npy").dtype == np.float16
    assert np.load(root / "audio_feat.npy").dtype == np.float32
    assert {name: f.shape for name, f in ds.features.items()} == {"audio": (300, 16), "image": (300, 32)}
    assert all(f.dtype == np.float32 for f in ds.features.values())
    assert (ds.n_users, ds.n_items) == (400, 300)
    assert ds.test is not None
    # Every user has exactly one validation item; all but the cold-start users one test item.
    assert ds.val.degrees().tolist() == [1] * 400
    assert ds.test.nnz == 398
    total = ds.train.degrees() + ds.val.degrees() + ds.test.degrees()
    warm_users = ds.train.users_with_items()
    assert warm_users.size == 398
    assert total[warm_users].min() >= 3
    assert 9.0 < total[warm_users].mean() < 11.0
    # Sparse relative to n_items.
    assert ds.summary()["train_density"] < 0.05


def test_planted_edge_cases(default_dataset):
    root, ds = default_dataset
    meta = json.loads((root / "synthetic.json").read_text())
    cold_items = np.array(meta["cold_items"])
    cold_users = meta["cold_users"]
    assert cold_items.size == 15 and len(cold_users) == 2
    train_counts = ds.train.item_counts(ds.n_items)
    assert train_counts[cold_items].tolist() == [0] * 15
    assert np.count_nonzero(train_counts == 0) < 30  # warm items are rarely left out by chance
    # Cold items are reachable only through val/test, and they do show up there.
    assert np.isin(np.concatenate([ds.val.indices, ds.test.indices]), cold_items).sum() > 0
    no_train = np.flatnonzero(ds.train.degrees() == 0).tolist()
    assert no_train == sorted(cold_users)
    assert all(ds.val.items_of(u).size == 1 and ds.test.items_of(u).size == 0 for u in cold_users)
    train_json = json.loads((root / "train.json").read_text())
    assert all(str(u) not in train_json for u in cold_users)


def test_same_seed_same_bytes_different_seed_different(tmp_path):
    kwargs = {"n_users": 60, "n_items": 80, "modalities": {"v": 6, "t": 5}}
    a = write_synthetic(tmp_path / "a", seed=7, **kwargs)
    b = write_synthetic(tmp_path / "b", seed=7, **kwargs)
    c = write_synthetic(tmp_path / "c", seed=8, **kwargs)
    names = ["train.json", "val.json", "test.json", "v_feat.npy", "t_feat.npy", "synthetic.json"]
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    for name in ["train.json", "v_feat.npy", "t_feat.npy"]:
        assert (a / name).read_bytes() != (c / name).read_bytes(), name
    assert load_dataset(a).fingerprint == load_dataset(b).fingerprint != load_dataset(c).fingerprint


def test_planted_structure_features_predict_held_out_items(default_dataset):
    _, ds = default_dataset
    rng = np.random.default_rng(0)
    for feats in ds.features.values():
        unit = feats / np.linalg.norm(feats, axis=1, keepdims=True)  # (n_items, d)
        users = [u for u in ds.train.users_with_items() if ds.val.items_of(u).size]
        held, random = [], []
        for u in users:
            profile = feats[ds.train.items_of(u)].mean(axis=0)
            profile /= np.linalg.norm(profile)
            held.append(unit[ds.val.items_of(u)[0]] @ profile)
            random.append(unit[rng.integers(ds.n_items)] @ profile)
        assert np.mean(held) > 0.15
        assert abs(np.mean(random)) < 0.06
        assert np.mean(held) - np.mean(random) > 0.12


def test_id_only_without_test(tmp_path):
    root = write_synthetic(tmp_path / "ids", n_users=30, n_items=40, modalities={}, with_test=False)
    assert not (root / "test.json").exists()
    assert not list(root.glob("*_feat.npy"))
    ds = load_dataset(root)
    assert ds.test is None and ds.features == {}
    assert ds.n_users == 30 and ds.n_items <= 40
    assert ds.val.nnz == 30
    assert ds.train.degrees()[ds.train.users_with_items()].min() >= 2  # at least 3, minus 1 held out


def test_refuses_stale_files(tmp_path):
    root = write_synthetic(tmp_path / "ds", n_users=20, n_items=40)
    with pytest.raises(ValueError, match="test.json"):
        write_synthetic(root, n_users=20, n_items=40, with_test=False)
    with pytest.raises(ValueError, match="image_feat.npy"):
        write_synthetic(root, n_users=20, n_items=40, modalities={"audio": 4})
    # Rewriting the same layout in place is fine and reproduces the same bytes.
    before = (root / "train.json").read_bytes()
    write_synthetic(root, n_users=20, n_items=40)
    assert (root / "train.json").read_bytes() == before


def test_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="n_users"):
        write_synthetic(tmp_path / "a", n_users=2)
    with pytest.raises(ValueError, match="modality"):
        write_synthetic(tmp_path / "b", modalities={"bad name": 4})
