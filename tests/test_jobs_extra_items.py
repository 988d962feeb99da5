"""Items added through the service's PUT /items carried into a retrain (issue 11): new item rows
with the spec's features, re-featured existing items, fresh interactions naming them."""

from __future__ import annotations

import base64
import json

import numpy as np
import pytest

from artifact.content import load_content_path
from artifact.contract import load_artifact, read_current
from tests.conftest import FAST_OVERRIDES
from training.data import DataError, load_dataset

DIMS = {"image": 32, "audio": 16}  # training.synthetic's default modalities (tiny_data)


def _block(matrix: np.ndarray) -> dict[str, object]:
    """The wire form of service.catalogue.Catalogue.retrain_items()."""
    m = np.ascontiguousarray(matrix, dtype="<f4")
    return {"dtype": "float32", "shape": list(m.shape), "base64": base64.b64encode(m.tobytes()).decode()}


def _extra_items(seed: int = 0) -> tuple[dict[str, object], dict[str, np.ndarray]]:
    """Two new items (one unavailable) and item "3" re-featured; an availability-only change of "4"."""
    rng = np.random.default_rng(seed)
    rows = {m: rng.normal(size=(3, d)).astype(np.float32) for m, d in DIMS.items()}
    spec = {
        "item_ids": ["new-a", "3", "4", "new-b"],
        "available": [True, True, False, False],
        "has_features": [True, True, False, True],
        "features": {m: _block(r) for m, r in rows.items()},
    }
    return spec, rows  # rows: new-a, 3, new-b in that order


def test_new_items_get_rows_and_existing_ones_are_refeatured(tiny_data):
    plain = load_dataset(tiny_data)
    spec, rows = _extra_items()
    extra_train = {"0": ["new-a", "new-b"], "someone-new": ["new-b", "5"]}
    ds = load_dataset(tiny_data, extra_items=spec, extra_train=extra_train)
    n = plain.n_items
    assert ds.n_items == n + 2 and ds.item_ids == plain.item_ids + ["new-a", "new-b"]
    for m in DIMS:
        assert ds.features[m].shape == (n + 2, DIMS[m])
        np.testing.assert_array_equal(ds.features[m][n], rows[m][0])  # new-a
        np.testing.assert_array_equal(ds.features[m][n + 1], rows[m][2])  # new-b
        np.testing.assert_array_equal(ds.features[m][3], rows[m][1])  # "3" re-featured
        np.testing.assert_array_equal(ds.features[m][4], plain.features[m][4])  # availability only
        np.testing.assert_array_equal(ds.features[m][:3], plain.features[m][:3])
    assert set(ds.train.items_of(0).tolist()) == set(plain.train.items_of(0).tolist()) | {n, n + 1}
    newcomer = ds.user_ids.index("someone-new")
    assert ds.train.items_of(newcomer).tolist() == [5, n + 1]
    assert ds.extra_items_stats == {"items": 4, "added": 2, "updated": 1, "unavailable": 2}
    assert ds.summary()["extra_items"]["added"] == 2
    # the fingerprint changes with the items, and with their features
    alone = load_dataset(tiny_data, extra_items=spec)
    assert len({plain.fingerprint, alone.fingerprint, ds.fingerprint}) == 3
    other, _ = _extra_items(seed=1)
    assert load_dataset(tiny_data, extra_items=other).fingerprint != alone.fingerprint
    assert load_dataset(tiny_data, extra_items=spec).fingerprint == alone.fingerprint


def test_interactions_naming_an_unknown_item_still_fail(tiny_data):
    spec, _ = _extra_items()
    with pytest.raises(DataError, match="unknown item id 'new-c'"):
        load_dataset(tiny_data, extra_items=spec, extra_train={"0": ["new-c"]})


def _bad(mutate):
    spec, rows = _extra_items()
    mutate(spec, rows)
    return spec


BAD = [
    (
        lambda s, r: s["features"].__setitem__("image", _block(r["image"][:, :31])),
        r"extra_items.features\['image'\]: shape \[3, 31\], expected \[3, 32\]",
    ),
    (
        lambda s, r: s["features"]["audio"].__setitem__("base64", "not base64!"),
        r"extra_items.features\['audio'\]: invalid base64",
    ),
    (
        lambda s, r: s["features"]["audio"].__setitem__("base64", base64.b64encode(b"\0" * 12).decode()),
        r"extra_items.features\['audio'\]: 12 bytes, expected 192",
    ),
    (
        lambda s, r: s["features"].__setitem__("video", _block(r["image"])),
        r"extra_items.features: unknown modality 'video'",
    ),
    (
        lambda s, r: s["features"].pop("audio"),
        r"extra_items: new item 'new-a' has no 'audio' features",
    ),
    (
        lambda s, r: s["features"]["image"].__setitem__("dtype", "float16"),
        r"extra_items.features\['image'\]: dtype 'float16', expected 'float32'",
    ),
    (
        lambda s, r: (
            r["image"].__setitem__((1, 0), np.nan),
            s["features"].__setitem__("image", _block(r["image"])),
        ),
        r"extra_items.features\['image'\]: row 1 holds NaN or inf",
    ),
    (
        lambda s, r: s["has_features"].__setitem__(0, False),
        r"extra_items: new item 'new-a' has no features",
    ),
    (lambda s, r: s["item_ids"].__setitem__(2, "new-a"), r"item 'new-a' appears more than once"),
    (lambda s, r: s["available"].pop(), r"extra_items.available: expected a list of 4 booleans"),
]


@pytest.mark.parametrize(("mutate", "message"), BAD)
def test_malformed_extra_items_fail_with_one_clear_error(tiny_data, mutate, message):
    with pytest.raises(DataError, match=message) as info:
        load_dataset(tiny_data, extra_items=_bad(mutate))
    assert "\n" not in str(info.value)


def test_retrain_job_trains_the_added_items_and_exports_them(tiny_data, tmp_path):
    from training.jobs import retrain_job

    store = tmp_path / "store"
    overrides = {k: json.loads(v) if v[0].isdigit() else v for k, v in (o.split("=") for o in FAST_OVERRIDES)}
    overrides["epochs"] = 1
    base = {"data_dir": str(tiny_data), "artifact_root": str(store), "overrides": overrides, "tolerance": 0.0}
    first = retrain_job({**base, "job_id": "j1", "extra_interactions": {}})
    assert first["items"] == {"added": 0, "updated": 0}
    spec, rows = _extra_items()
    extra = {"0": ["new-a", "new-b"], "1": ["new-a"], "someone-new": ["new-b", "5"]}
    result = retrain_job(
        {**base, "job_id": "j2", "extra_interactions": extra, "extra_items": spec, "force": True}
    )
    assert result["items"] == {"items": 4, "added": 2, "updated": 1, "unavailable": 2}
    assert result["promoted"] and read_current(store) == result["model_version"]
    art = load_artifact(result["artifact_path"])
    a = art.arrays
    n = len(load_artifact(first["artifact_path"]).arrays.item_ids)
    assert list(a.item_ids[n:]) == ["new-a", "new-b"] and len(a.item_ids) == n + 2
    assert art.manifest.n_items == n + 2 and art.manifest.notes["extra_items"]["added"] == 2
    # the artifact's Eq. 2 rows of the new and the re-featured items are the spec's features projected
    content = load_content_path(art)
    expected = content.modality_features(rows)  # rows: new-a, 3, new-b
    for m in a.modality_features:
        np.testing.assert_allclose(a.modality_features[m][[n, 3, n + 1]], expected[m], rtol=1e-4, atol=1e-5)
    # their interactions were trained on: in the exported training graph and popularity
    index = {item: i for i, item in enumerate(a.item_ids)}
    assert {index["new-a"], index["new-b"]} <= set(art.user_items(a.user_ids.index("0")).tolist())
    assert sorted(art.user_items(a.user_ids.index("someone-new")).tolist()) == [5, index["new-b"]]
    assert a.item_popularity[index["new-a"]] == 2 and a.item_popularity[index["new-b"]] == 2
    # trained rows, not the content mapper's fill: they had interactions
    assert not np.isin([n, n + 1], a.extra["content_filled_items.npy"]).any()


def test_id_only_dataset_takes_new_items_without_features_and_refuses_features(tmp_path):
    from training.synthetic import write_synthetic

    root = write_synthetic(tmp_path / "idonly", n_users=30, n_items=20, seed=1, modalities={})
    spec = {"item_ids": ["x"], "available": [True], "has_features": [False], "features": {}}
    ds = load_dataset(root, extra_items=spec, extra_train={"0": ["x"]})
    assert ds.n_items == 21 and ds.item_ids[-1] == "x" and ds.features == {}
    assert 20 in ds.train.items_of(0).tolist()
    with_features = {**spec, "has_features": [True], "features": {"image": _block(np.ones((1, 4)))}}
    with pytest.raises(DataError, match="unknown modality 'image'; the dataset's modalities: none"):
        load_dataset(root, extra_items=with_features)
