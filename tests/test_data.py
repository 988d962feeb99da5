"""The dataset layer: format, validation messages, extra_train, load_split, the real TikTok split."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from training.data import DataError, Interactions, load_dataset, load_split

# The real data: $MMSSL_TIKTOK_DIR if set, else shared/ beside the checkout (CI and the worktrees lay
# it out so), else /work/shared. The skip below names every place looked at.
TIKTOK_CANDIDATES = [
    Path(p)
    for p in (
        os.environ.get("MMSSL_TIKTOK_DIR", ""),
        Path(__file__).resolve().parents[2] / "shared" / "data" / "tiktok",
        Path(__file__).resolve().parents[3] / "shared" / "data" / "tiktok",
        "/work/shared/data/tiktok",
    )
    if str(p)
]
TIKTOK = next((p for p in TIKTOK_CANDIDATES if (p / "train.json").is_file()), TIKTOK_CANDIDATES[0])

N_ITEMS = 10


def write_folder(
    root: Path,
    train: dict | str | None = None,
    val: dict | str | None = None,
    test: dict | str | None = None,
    features: dict[str, np.ndarray] | None = None,
) -> Path:
    """A tiny dataset folder; dict splits are dumped as JSON, str splits written verbatim."""
    if train is None:
        train = {"0": [3, 1, 2], "1": [4, 5], "3": [0, 6, 7]}
    if val is None:
        val = {"0": [8], "1": [9], "2": [5]}  # user 2 is only in val
    if features is None:
        features = {
            "image": np.arange(N_ITEMS * 4, dtype=np.float16).reshape(N_ITEMS, 4),
            "audio": np.ones((N_ITEMS, 3), dtype=np.float32),
        }
    root.mkdir(parents=True, exist_ok=True)
    for name, split in (("train", train), ("val", val), ("test", test)):
        if split is not None:
            text = split if isinstance(split, str) else json.dumps(split)
            (root / f"{name}.json").write_text(text)
    for name, arr in features.items():
        np.save(root / f"{name}_feat.npy", arr)
    return root


def load_error(root: Path, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        load_dataset(root, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_interactions_from_lists_sorts_and_dedupes():
    inter = Interactions.from_lists([[3, 1, 3], [], [2, 0]])
    assert inter.n_users == 3
    assert inter.nnz == 4
    assert inter.indptr.dtype == np.int64 and inter.indices.dtype == np.int64
    assert inter.indptr.tolist() == [0, 2, 2, 4]
    assert inter.items_of(0).tolist() == [1, 3]
    assert inter.items_of(1).tolist() == []
    assert inter.degrees().tolist() == [2, 0, 2]
    assert inter.users_with_items().tolist() == [0, 2]
    users, items = inter.to_pairs()
    assert users.tolist() == [0, 0, 2, 2] and items.tolist() == [1, 3, 0, 2]
    assert inter.item_counts(5).tolist() == [1, 1, 1, 1, 0]
    with pytest.raises(ValueError, match="out of range"):
        inter.item_counts(3)
    with pytest.raises(ValueError):
        inter.items_of(0)[0] = 7  # read-only view
    with pytest.raises(IndexError):
        inter.items_of(3)


def test_interactions_row_selection():
    inter = Interactions.from_lists([[0, 1], [2], [3, 4, 5]])
    without = inter.without_users([0, 2])
    assert without.n_users == 3
    assert without.indptr.tolist() == [0, 0, 1, 1]
    assert without.indices.tolist() == [2]
    kept = inter.restrict_to_users(np.array([0, 2]))
    assert kept.n_users == 3
    assert [kept.items_of(u).tolist() for u in range(3)] == [[0, 1], [], [3, 4, 5]]
    assert inter.padded(5).degrees().tolist() == [2, 1, 3, 0, 0]
    with pytest.raises(IndexError):
        inter.without_users([3])


def test_interactions_rejects_unsorted_rows():
    with pytest.raises(ValueError, match="sorted and unique"):
        Interactions(np.array([0, 2]), np.array([3, 1]))
    with pytest.raises(ValueError, match="sorted and unique"):
        Interactions(np.array([0, 2]), np.array([1, 1]))
    with pytest.raises(ValueError, match="indptr"):
        Interactions(np.array([0, 3]), np.array([1, 2]))
    # A decrease across a row boundary is fine.
    assert Interactions(np.array([0, 1, 2]), np.array([5, 1])).nnz == 2


def test_load_valid_folder(tmp_path):
    root = write_folder(tmp_path / "ds", test={"3": [9], "1": [0]})
    ds = load_dataset(root)
    assert ds.n_users == 4  # max user id over all splits (3) + 1
    assert ds.n_items == N_ITEMS
    assert ds.user_ids == ["0", "1", "2", "3"]
    assert ds.item_ids == [str(i) for i in range(N_ITEMS)]
    assert ds.train.items_of(0).tolist() == [1, 2, 3]
    assert ds.train.degrees().tolist() == [3, 2, 0, 3]
    assert ds.val.items_of(2).tolist() == [5]
    assert ds.test is not None and ds.test.items_of(3).tolist() == [9]
    assert list(ds.features) == ["audio", "image"]
    assert all(f.dtype == np.float32 for f in ds.features.values())
    assert ds.features["image"][2].tolist() == [8.0, 9.0, 10.0, 11.0]
    assert len(ds.fingerprint) == 64
    summary = ds.summary()
    assert summary["n_train"] == 8 and summary["n_val"] == 3 and summary["n_test"] == 2
    assert summary["modalities"] == {"audio": 3, "image": 4}
    assert summary["users_without_train"] == 1
    assert summary["cold_items"] == 2  # items 8 and 9
    json.dumps(summary)


def test_n_users_is_max_user_id_plus_one(tmp_path):
    root = write_folder(tmp_path / "ds", val={"0": [8], "6": [5]})
    ds = load_dataset(root)
    assert ds.n_users == 7
    assert ds.train.n_users == ds.val.n_users == 7
    assert ds.train.degrees().tolist() == [3, 2, 0, 3, 0, 0, 0]
    assert ds.summary()["users_without_train"] == 4


def test_id_only_dataset_and_dtypes(tmp_path):
    ds = load_dataset(write_folder(tmp_path / "ids", features={}))
    assert ds.features == {}
    assert ds.n_items == 10  # max item id 9 + 1
    f64 = np.linspace(0, 1, N_ITEMS * 2).reshape(N_ITEMS, 2)
    ds = load_dataset(write_folder(tmp_path / "f64", features={"text": f64}))
    assert ds.features["text"].dtype == np.float32
    np.testing.assert_allclose(ds.features["text"], f64, rtol=1e-6)


def test_fingerprint_tracks_file_bytes(tmp_path):
    a = load_dataset(write_folder(tmp_path / "a"))
    b = load_dataset(write_folder(tmp_path / "b"))
    assert a.fingerprint == b.fingerprint  # content, not location
    c = load_dataset(write_folder(tmp_path / "c", val={"0": [8], "1": [9], "2": [6]}))
    assert c.fingerprint != a.fingerprint
    feats = {"image": np.zeros((N_ITEMS, 4), np.float16), "audio": np.ones((N_ITEMS, 3), np.float32)}
    d = load_dataset(write_folder(tmp_path / "d", features=feats))
    assert d.fingerprint != a.fingerprint


def test_modalities_selection(tmp_path):
    root = write_folder(tmp_path / "ds")
    ds = load_dataset(root, modalities=["image"])
    assert list(ds.features) == ["image"]
    assert ds.n_items == N_ITEMS
    none = load_dataset(root, modalities=[])
    assert none.features == {} and none.n_items == N_ITEMS  # item space from all files
    assert len({ds.fingerprint, none.fingerprint, load_dataset(root).fingerprint}) == 3
    message = load_error(root, modalities=["image", "text"])
    assert "unknown modality 'text'" in message and "available: audio, image" in message


def test_missing_split_files(tmp_path):
    root = write_folder(tmp_path / "ds")
    (root / "val.json").unlink()
    message = load_error(root)
    assert "val.json" in message and "file not found" in message
    (root / "train.json").unlink()
    message = load_error(root)
    assert "train.json" in message and "file not found" in message
    assert "not found" in load_error(tmp_path / "nowhere")


@pytest.mark.parametrize("content", ["", "  \n"])
def test_empty_file(tmp_path, content):
    message = load_error(write_folder(tmp_path / "ds", val=content))
    assert "val.json" in message and "file is empty" in message


def test_malformed_json_names_line_and_column(tmp_path):
    message = load_error(write_folder(tmp_path / "ds", train='{"0": [1, 2],\n "1": [3,, 4]}'))
    assert "train.json: malformed JSON at line 2, column 10" in message


def test_top_level_not_an_object(tmp_path):
    message = load_error(write_folder(tmp_path / "ds", train="[[1, 2], [3]]"))
    assert "train.json: top level must be a JSON object" in message and "got a JSON array" in message


@pytest.mark.parametrize("key", ["a", "-1", "01", "1.0", " 1", ""])
def test_key_not_a_user_id(tmp_path, key):
    message = load_error(write_folder(tmp_path / "ds", train={key: [1], "0": [2]}))
    assert f"train.json: key {key!r} is not a non-negative integer user id" in message


def test_duplicate_user_key(tmp_path):
    message = load_error(write_folder(tmp_path / "ds", train='{"0": [1], "3": [2], "0": [4]}'))
    assert "train.json: user 0 appears twice" in message


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("5", "user 1: expected a list of non-negative integer item ids, got a JSON integer"),
        ('{"a": 1}', "user 1: expected a list of non-negative integer item ids, got a JSON object"),
        ('"3"', "got a JSON string"),
        ("[1, 2.5]", "user 1: item 2.5 at position 1 is not a non-negative integer item id"),
        ("[1, -3]", "user 1: item -3 at position 1 is not a non-negative integer"),
        ('[1, "4"]', 'user 1: item "4" at position 1 is not'),
        ("[true]", "user 1: item true at position 0 is not"),
        ("[null]", "user 1: item null at position 0"),
        ("[[1]]", "user 1: item [1] at position 0"),
    ],
)
def test_value_not_a_list_of_item_ids(tmp_path, value, expected):
    message = load_error(write_folder(tmp_path / "ds", val='{"0": [8], "1": ' + value + "}"))
    assert "val.json" in message and expected in message


def test_item_out_of_range(tmp_path):
    message = load_error(write_folder(tmp_path / "ds", train={"0": [1], "2": [3, 10]}))
    assert "train.json: item id 10 for user 2 is out of range: n_items=10" in message
    assert "image_feat.npy" in message or "audio_feat.npy" in message
    message = load_error(write_folder(tmp_path / "ds2", val={"0": [99999999999999999999999]}))
    assert "val.json" in message and "out of range" in message


def test_duplicate_item_within_a_user(tmp_path):
    message = load_error(write_folder(tmp_path / "ds", train={"0": [1, 2, 1], "1": [4, 4, 4]}))
    assert "train.json: 3 duplicate item id(s) within a user's list" in message
    assert "user 0 lists item 1 more than once" in message


def test_empty_splits(tmp_path):
    message = load_error(write_folder(tmp_path / "ds", train={"0": []}))
    assert "train.json: no interactions" in message
    message = load_error(write_folder(tmp_path / "ds2", val={}))
    assert "val.json: no interactions" in message


@pytest.mark.parametrize(
    ("splits", "first", "second", "count", "example"),
    [
        ({"val": {"0": [8, 3, 2], "1": [9]}}, "train.json", "val.json", 2, "user 0 item 2"),
        ({"test": {"3": [7], "1": [0]}}, "train.json", "test.json", 1, "user 3 item 7"),
        ({"test": {"2": [5], "1": [9]}}, "val.json", "test.json", 2, "user 1 item 9"),
    ],
)
def test_overlapping_splits(tmp_path, splits, first, second, count, example):
    message = load_error(write_folder(tmp_path / "ds", **splits))
    assert f"{second}: overlaps " in message and first in message
    assert f"in {count} (user, item) pair(s), e.g. {example}" in message


@pytest.mark.parametrize(
    ("arr", "expected"),
    [
        (np.zeros(N_ITEMS, np.float32), "expected a 2-D array (n_items, dim), got shape (10,)"),
        (np.zeros((N_ITEMS, 2, 2), np.float32), "expected a 2-D array (n_items, dim), got shape (10, 2, 2)"),
        (np.zeros((0, 4), np.float32), "empty feature matrix of shape (0, 4)"),
        (np.zeros((N_ITEMS, 0), np.float32), "empty feature matrix of shape (10, 0)"),
        (np.zeros((N_ITEMS, 4), np.int32), "dtype int32 is not a float type"),
        (np.zeros((N_ITEMS, 4), bool), "dtype bool is not a float type"),
    ],
)
def test_bad_feature_array(tmp_path, arr, expected):
    message = load_error(write_folder(tmp_path / "ds", features={"image": arr}))
    assert "image_feat.npy" in message and expected in message


def test_feature_rows_disagree(tmp_path):
    feats = {"audio": np.zeros((N_ITEMS, 2), np.float32), "image": np.zeros((N_ITEMS + 2, 2), np.float32)}
    message = load_error(write_folder(tmp_path / "ds", features=feats))
    assert "image_feat.npy: 12 rows but audio_feat.npy has 10" in message


def test_feature_nan_and_inf(tmp_path):
    arr = np.zeros((N_ITEMS, 3), np.float32)
    arr[2, 1] = np.nan
    arr[5, 0] = np.inf
    arr[5, 2] = np.nan
    message = load_error(write_folder(tmp_path / "ds", features={"audio": arr}))
    assert "audio_feat.npy: 2 of 10 rows contain NaN or inf" in message and "row 2" in message
    # float64 values beyond the float32 range become inf once cast.
    big = np.ones((N_ITEMS, 3), np.float64)
    big[7, 0] = 1e300
    message = load_error(write_folder(tmp_path / "ds64", features={"audio": big}))
    assert "audio_feat.npy: 1 of 10 rows contain NaN or inf" in message


def test_unreadable_npy(tmp_path):
    root = write_folder(tmp_path / "ds", features={})
    (root / "image_feat.npy").write_bytes(b"definitely not numpy")
    message = load_error(root)
    assert "image_feat.npy: unreadable .npy file" in message
    np.save(root / "image_feat.npy", np.array([{"a": 1}], dtype=object))
    assert "image_feat.npy: unreadable .npy file" in load_error(root)


def test_extra_train_semantics(tmp_path):
    root = write_folder(tmp_path / "ds", test={"3": [9], "0": [0]})
    base = load_dataset(root)
    extra = {
        "alice": ["2", "4"],
        "0": ["1", "8", "0", "5"],  # 1 already in train, 8 in val, 0 in test, 5 new
        "9400": [],
        "3": ["9"],  # in test
    }
    ds = load_dataset(root, extra_train=extra)
    assert ds.n_users == base.n_users + 2
    assert ds.user_ids[: base.n_users] == base.user_ids
    assert ds.user_ids[base.n_users :] == ["9400", "alice"]  # new users, sorted by external id
    alice = ds.user_ids.index("alice")
    assert ds.train.items_of(alice).tolist() == [2, 4]
    assert ds.train.items_of(ds.user_ids.index("9400")).tolist() == []
    assert ds.train.items_of(0).tolist() == [0, 1, 2, 3, 5, 8]
    assert ds.train.items_of(3).tolist() == [0, 6, 7, 9]
    assert ds.val.items_of(0).tolist() == []  # 8 moved to train: the splits stay disjoint
    assert ds.val.items_of(1).tolist() == [9]
    assert ds.test is not None and ds.test.items_of(3).tolist() == []
    assert ds.test.items_of(0).tolist() == []
    assert ds.val.n_users == ds.test.n_users == ds.train.n_users == ds.n_users
    assert ds.extra_train_stats == {
        "pairs": 7,
        "added_to_train": 6,
        "already_in_train": 1,
        "new_users": 2,
        "removed_from_val": 1,
        "removed_from_test": 2,
    }
    assert ds.summary()["extra_train"]["new_users"] == 2
    assert ds.fingerprint != base.fingerprint
    assert load_dataset(root, extra_train=dict(reversed(extra.items()))).fingerprint == ds.fingerprint


def test_extra_train_rejects_unknown_items(tmp_path):
    root = write_folder(tmp_path / "ds")
    for bad in ["10", "x", "-1", "03"]:
        message = load_error(root, extra_train={"bob": ["1", bad]})
        assert f"extra_train: unknown item id {bad!r} for user 'bob'" in message
    assert "expected a list of item ids" in load_error(root, extra_train={"bob": "12"})


def test_load_split(tmp_path):
    ds = load_dataset(write_folder(tmp_path / "ds"))
    held = tmp_path / "held_out.json"
    held.write_text(json.dumps({"3": [9, 8], "2": [1]}))
    split = load_split(held, ds)
    assert split.n_users == ds.n_users
    assert split.items_of(3).tolist() == [8, 9]
    assert split.items_of(2).tolist() == [1]
    assert split.nnz == 3


def test_load_split_in_extended_id_space(tmp_path):
    ds = load_dataset(write_folder(tmp_path / "ds"), extra_train={"alice": ["1"], "4": ["2"]})
    held = tmp_path / "held_out.json"
    held.write_text(json.dumps({"4": [3]}))
    split = load_split(held, ds)
    assert split.n_users == ds.n_users == 6
    assert split.items_of(4).tolist() == [3]


def test_load_split_errors(tmp_path):
    ds = load_dataset(write_folder(tmp_path / "ds"))
    path = tmp_path / "held_out.json"
    cases = {
        '{"0": [1, 9], "3": [6]}': "held_out.json: overlaps the training split in 2 (user, item) pair(s)",
        '{"0": [9], "7": [1]}': "held_out.json: user 7 is not a user of the dataset",
        '{"0": [10]}': "held_out.json: item id 10 for user 0 is out of range: n_items=10",
        '{"0": [9, 9]}': "held_out.json: 1 duplicate item id(s)",
        '{"0": [9]': "held_out.json: malformed JSON at line 1, column 10: Expecting ',' delimiter",
        "": "held_out.json: file is empty",
    }
    for text, expected in cases.items():
        path.write_text(text)
        with pytest.raises(DataError) as info:
            load_split(path, ds)
        assert expected in str(info.value)
    with pytest.raises(DataError, match="file not found"):
        load_split(tmp_path / "missing.json", ds)


@pytest.mark.skipif(
    not (TIKTOK / "train.json").is_file(),
    reason="real TikTok data not found: no train.json in "
    + ", ".join(map(str, TIKTOK_CANDIDATES))
    + " (set MMSSL_TIKTOK_DIR)",
)
def test_real_tiktok():
    ds = load_dataset(TIKTOK)
    assert (ds.n_users, ds.n_items) == (9308, 6710)
    assert (ds.train.nnz, ds.val.nnz) == (59541, 3051)
    assert ds.test is None
    assert {name: f.shape for name, f in ds.features.items()} == {"audio": (6710, 128), "image": (6710, 128)}
    summary = ds.summary()
    assert summary["users_without_train"] == 10
    assert summary["cold_items"] == 465
    assert summary["val_users"] == 3051
    assert ds.val.degrees().max() == 1
