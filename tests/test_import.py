"""python -m training import / export-format: every format on tiny files written here, the splits and
filters against hand-computed answers, the trainer's own loader on the output, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.data import DataError, load_dataset, load_split
from training.importers import prepare, write_dataset
from training.importers.mmrec import export_mmrec, read_mmrec
from training.importers.recbole import read_recbole
from training.importers.tabular import read_tabular
from training.synthetic import write_synthetic

ROOT = Path(__file__).resolve().parents[1]

# Three users; "ann" has 4 interactions in time order i1 < i2 < i3 < i4, "bob" 3, "cy" 2.
LOG_ROWS = [
    ("ann", "i3", 30, 5),
    ("bob", "i1", 5, 4),
    ("ann", "i1", 10, 4),
    ("cy", "i2", 7, 1),
    ("bob", "i4", 50, 2),
    ("ann", "i4", 40, 3),
    ("bob", "i2", 20, 5),
    ("ann", "i2", 20, 5),
    ("cy", "i4", 60, 4),
]


def write_csv(path: Path, rows=LOG_ROWS, header="user,item,ts,stars") -> Path:
    path.write_text(header + "\n" + "".join(",".join(map(str, r)) + "\n" for r in rows))
    return path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def pairs(dataset, split: str) -> set[tuple[str, str]]:
    inter = getattr(dataset, split)
    if inter is None:
        return set()
    users, items = inter.to_pairs()
    return {
        (dataset.user_ids[u], dataset.item_ids[i])
        for u, i in zip(users.tolist(), items.tolist(), strict=True)
    }


def import_csv(tmp_path: Path, split: str, **kwargs) -> object:
    log = read_tabular(write_csv(tmp_path / "log.csv"), time_col="ts", rating_col="stars")
    out = write_dataset(prepare(log, split=split, **kwargs), tmp_path / "ds")
    return load_dataset(out)


def test_csv_leave_last_out_keeps_external_ids(tmp_path):
    ds = import_csv(tmp_path, "loo")
    assert ds.user_ids == ["ann", "bob", "cy"]  # order of first appearance
    assert ds.item_ids == ["i3", "i1", "i2", "i4"]
    # ann: last by time i4 -> test, i3 -> val; bob: i4 test, i2 val; cy has 2 (< 3): all train
    assert pairs(ds, "test") == {("ann", "i4"), ("bob", "i4")}
    assert pairs(ds, "val") == {("ann", "i3"), ("bob", "i2")}
    assert pairs(ds, "train") == {("ann", "i1"), ("ann", "i2"), ("bob", "i1"), ("cy", "i2"), ("cy", "i4")}
    summary = json.loads((tmp_path / "ds" / "import_summary.json").read_text())
    assert summary["interactions"] == {"train": 5, "val": 2, "test": 2}
    assert summary["users"] == 3 and summary["items"] == 4
    assert summary["cold_items"] == 1  # i3 is never in train
    assert summary["density"] == pytest.approx(9 / 12)


def test_global_time_cut_orders_by_timestamp_then_row(tmp_path):
    ds = import_csv(tmp_path, "time")
    # 9 rows by time: 5,7,10,20(bob row 7),20(ann row 9),30,40,50,60 -> first int(0.8*9)=7 train,
    # rank 7 (ts 50) val, rank 8 (ts 60) test.
    assert pairs(ds, "val") == {("bob", "i4")}
    assert pairs(ds, "test") == {("cy", "i4")}
    assert len(pairs(ds, "train")) == 7


def test_random_split_is_seeded_and_per_user_8_1_1(tmp_path):
    rows = [(f"u{u}", f"i{i}", i, 1) for u in range(5) for i in range(u * 3, u * 3 + 20)]
    log = read_tabular(write_csv(tmp_path / "log.csv", rows), time_col="ts")
    a, b = prepare(log, split="random", seed=3), prepare(log, split="random", seed=3)
    c = prepare(log, split="random", seed=4)
    assert np.array_equal(a.split, b.split)
    assert not np.array_equal(a.split, c.split)
    for u in range(5):
        mine = a.split[a.users == u]
        assert [(mine == k).sum() for k in (0, 1, 2)] == [16, 2, 2]


def test_rating_threshold_and_kcore_are_counted(tmp_path):
    log = read_tabular(write_csv(tmp_path / "log.csv"), time_col="ts", rating_col="stars")
    p = prepare(log, split="loo", rating_threshold=3)
    assert p.summary["dropped"] == {"below_rating_threshold": 2}  # cy/i2 (1) and bob/i4 (2)
    assert p.users.size == 7
    # 2-core on the thresholded log: cy keeps only i4 -> dropped; then i4 has ann only... by hand:
    # users ann{i3,i1,i4,i2} bob{i1,i2} cy{i4}; items i3:1 -> drop; i4:2; then cy(1) drop -> i4:1 drop
    # -> ann{i1,i2} bob{i1,i2}: stable.
    k = prepare(log, split="random", rating_threshold=3, kcore=2)
    assert k.user_ids == ["ann", "bob"] and sorted(k.item_ids) == ["i1", "i2"]
    assert k.summary["dropped"]["kcore_interactions"] == 3
    assert k.summary["dropped"]["kcore_users"] == 1 and k.summary["dropped"]["kcore_items"] == 2


def test_parquet_gives_the_same_dataset_as_csv(tmp_path):
    import pandas as pd

    csv = write_csv(tmp_path / "log.csv")
    pd.read_csv(csv, dtype=str).to_parquet(tmp_path / "log.parquet")
    outs = []
    for name in ("log.csv", "log.parquet"):
        log = read_tabular(tmp_path / name, time_col="ts")
        outs.append(write_dataset(prepare(log, split="loo"), tmp_path / f"ds-{name}"))
    for f in ("train.json", "val.json", "test.json", "user_ids.json", "item_ids.json"):
        assert (outs[0] / f).read_bytes() == (outs[1] / f).read_bytes()


def test_iso_timestamps_and_item_table_cold_items(tmp_path):
    rows = [
        ("a", "x", "2024-01-02T00:00:00Z"),
        ("a", "y", "2024-01-01"),
        ("a", "z", "2024-01-03T12:00:00+02:00"),
    ]
    log_path = write_csv(tmp_path / "log.csv", rows, header="user,item,when")
    (tmp_path / "items.csv").write_text("sku,title\nx,X\nw,W only in the catalogue\ny,Y\nz,Z\n")
    log = read_tabular(log_path, time_col="when", items_table=tmp_path / "items.csv", item_id_col="sku")
    assert log.item_ids == ["x", "y", "z", "w"]
    assert log.timestamps.tolist() == [1704153600.0, 1704067200.0, 1704283200.0 - 7200]
    ds = load_dataset(write_dataset(prepare(log, split="loo"), tmp_path / "ds"))
    assert pairs(ds, "test") == {("a", "z")} and pairs(ds, "val") == {("a", "x")}
    assert ds.n_items == 4 and ds.summary()["cold_items"] == 3  # w never seen, x and z held out


def test_recbole_atomic_files(tmp_path):
    folder = tmp_path / "shop"
    folder.mkdir()
    (folder / "shop.inter").write_text(
        "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
        + "".join(f"{u}\t{i}\t{r}\t{t}\n" for u, i, t, r in LOG_ROWS)
    )
    log = read_recbole(folder)
    assert log.user_ids == ["ann", "bob", "cy"] and log.ratings.tolist()[:2] == [5.0, 4.0]
    ds = load_dataset(write_dataset(prepare(log, split="loo"), tmp_path / "ds"))
    assert pairs(ds, "test") == {("ann", "i4"), ("bob", "i4")}


def _same_training_input(a, b) -> None:
    assert (a.n_users, a.n_items) == (b.n_users, b.n_items)
    assert a.user_ids == b.user_ids and a.item_ids == b.item_ids
    for split in ("train", "val", "test"):
        x, y = getattr(a, split), getattr(b, split)
        assert (x is None) == (y is None)
        if x is not None:
            assert np.array_equal(x.indptr, y.indptr) and np.array_equal(x.indices, y.indices)
    assert a.features.keys() == b.features.keys()
    for m in a.features:
        assert a.features[m].dtype == b.features[m].dtype == np.float32
        assert np.array_equal(a.features[m], b.features[m])


def test_mmrec_round_trip_of_an_mmssl_folder_is_identical(tmp_path):
    src = write_synthetic(tmp_path / "syn", n_users=60, n_items=40, seed=1)
    original = load_dataset(src)
    assert original.summary()["cold_items"] > 0 and original.summary()["users_without_train"] > 0
    exported = export_mmrec(original, tmp_path / "mm", name="syn")
    header = (exported / "syn.inter").read_text().splitlines()[0]
    assert header == "userID\titemID\trating\ttimestamp\tx_label"
    back = load_dataset(write_dataset(prepare(read_mmrec(exported), split="source"), tmp_path / "back"))
    _same_training_input(original, back)


def test_mmrec_round_trip_keeps_string_ids(tmp_path):
    first = import_csv(tmp_path, "loo")
    exported = export_mmrec(first, tmp_path / "mm")
    back = load_dataset(write_dataset(prepare(read_mmrec(exported), split="source"), tmp_path / "back"))
    _same_training_input(first, back)
    assert back.user_ids == ["ann", "bob", "cy"]


def test_cli_import_then_export_format(tmp_path):
    write_csv(tmp_path / "log.csv")
    r = cli(
        "import",
        "--format",
        "csv",
        "--src",
        str(tmp_path / "log.csv"),
        "--out",
        str(tmp_path / "ds"),
        "--split",
        "loo",
        "--time-col",
        "ts",
        "--rating-col",
        "stars",
        "--rating-threshold",
        "2",
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["dropped"] == {"below_rating_threshold": 1}
    assert summary["interactions"]["test"] == 2
    r = cli(
        "export-format", "mmrec", "--data", str(tmp_path / "ds"), "--out", str(tmp_path / "mm"), "--name", "x"
    )
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "mm" / "x.inter").read_text().splitlines()
    assert len(lines) == 1 + 8 and {ln.split("\t")[4] for ln in lines[1:]} == {"0", "1", "2"}


def test_imported_ids_reach_the_artifact_and_extra_train(tmp_path):
    ds = import_csv(tmp_path, "loo")
    extra = load_dataset(tmp_path / "ds", extra_train={"cy": ["i1"], "dee": ["i3"]})
    assert extra.user_ids == ["ann", "bob", "cy", "dee"]
    assert ("cy", "i1") in pairs(extra, "train") and ("dee", "i3") in pairs(extra, "train")
    with pytest.raises(DataError, match="unknown item id '0'"):
        load_dataset(tmp_path / "ds", extra_train={"cy": ["0"]})  # "0" is not an id here
    # split files of an imported folder are keyed by internal index
    split = load_split(tmp_path / "ds" / "test.json", ds)
    assert split.nnz == 2
    r = cli(
        "train",
        "--data",
        str(tmp_path / "ds"),
        "--config",
        "configs/demo.yaml",
        "--out",
        str(tmp_path / "run"),
        "--no-progress",
        "--export-to",
        str(tmp_path / "art"),
        "id_only=true",
        "train.epochs=1",
        "model.view_topk=2",
    )
    assert r.returncode == 0, r.stderr[-2000:]
    artifact = Path(json.loads(r.stdout)["artifact"])
    assert json.loads((artifact / "item_ids.json").read_text()) == ["i3", "i1", "i2", "i4"]
    assert json.loads((artifact / "user_ids.json").read_text()) == ["ann", "bob", "cy"]


def test_id_files_are_validated(tmp_path):
    import_csv(tmp_path, "loo")
    (tmp_path / "ds" / "item_ids.json").write_text(json.dumps(["a", "b"]))
    with pytest.raises(DataError, match="item id 2 for user 0 is out of range: n_items=2"):
        load_dataset(tmp_path / "ds")
    (tmp_path / "ds" / "item_ids.json").write_text(json.dumps(["a", "b", "a", "c"]))
    with pytest.raises(DataError, match="id 'a' appears more than once"):
        load_dataset(tmp_path / "ds")
    (tmp_path / "ds" / "item_ids.json").write_text(json.dumps(["a", "b", "c", "d"]))
    (tmp_path / "ds" / "user_ids.json").write_text(json.dumps(["a"]))
    with pytest.raises(DataError, match="user_ids.json: 1 ids, but the splits use user index 2"):
        load_dataset(tmp_path / "ds")


BAD = {
    "missing column": ("user,thing,ts\na,x,1\n", ["--time-col", "ts"], "log.csv: missing column 'item'"),
    "bad timestamp": (
        "user,item,ts\na,x,1\na,y,yesterday\n",
        ["--time-col", "ts"],
        "log.csv: row 3: column 'ts': cannot parse timestamp 'yesterday'",
    ),
    "duplicate": (
        "user,item\na,x\nb,x\na,x\n",
        [],
        "log.csv: row 4: duplicate (user 'a', item 'x'), first at row 2",
    ),
    "separator in id": ('user,item\n"a\tb",x\n', [], "log.csv: row 2: user id 'a\\tb' contains '\\t'"),
    "empty id": ("user,item\n,x\n", [], "log.csv: row 2: empty user id"),
    "bad rating": (
        "user,item,r\na,x,good\n",
        ["--rating-col", "r"],
        "log.csv: row 2: column 'r': 'good' is not a number",
    ),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_csv_fails_in_one_line_with_exit_2_and_no_output(tmp_path, case):
    text, flags, expected = BAD[case]
    (tmp_path / "log.csv").write_text(text)
    r = cli(
        "import",
        "--format",
        "csv",
        "--src",
        str(tmp_path / "log.csv"),
        "--out",
        str(tmp_path / "ds"),
        "--split",
        "random",
        *flags,
    )
    assert r.returncode == 2
    err = [ln for ln in r.stderr.splitlines() if ln.startswith("error:")]
    assert len(err) == 1 and expected in err[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]  # nothing partial, no temp folder


def test_dedupe_keeps_the_earliest_and_says_so(tmp_path):
    (tmp_path / "log.csv").write_text("user,item,ts\na,x,9\na,x,1\na,y,5\na,z,7\n")
    log = read_tabular(tmp_path / "log.csv", time_col="ts")
    p = prepare(log, split="loo", dedupe=True)
    assert p.summary["dropped"] == {"duplicates": 1}
    assert sorted(zip(p.items.tolist(), p.split.tolist(), strict=True)) == [
        (0, 0),
        (1, 1),
        (2, 2),
    ]  # x@1, y@5, z@7


def _mmrec_folder(tmp_path: Path, rows: str, feat_rows: int) -> Path:
    folder = tmp_path / "mm"
    folder.mkdir()
    (folder / "mm.inter").write_text("userID\titemID\trating\ttimestamp\tx_label\n" + rows)
    np.save(folder / "image_feat.npy", np.ones((feat_rows, 3), dtype=np.float32))
    return folder


@pytest.mark.parametrize(
    ("rows", "feat_rows", "expected"),
    [
        ("0\t0\t1\t0\t0\n0\t3\t1\t0\t1\n", 3, "image_feat.npy: 3 rows, but mm.inter uses itemID 3"),
        ("0\t0\t1\t0\t0\n0\t1\t1\t0\n", 3, "mm.inter: row 3: 4 tab-separated fields, the header has 5"),
        ("0\t0\t1\t0\t0\n0\t1\t1\t0\t7\n", 3, "mm.inter: row 3: x_label 7 is not 0, 1 or 2"),
        ("0\tx\t1\t0\t0\n", 3, "mm.inter: row 2: itemID 'x' is not a non-negative integer"),
    ],
)
def test_bad_mmrec_folder(tmp_path, rows, feat_rows, expected):
    folder = _mmrec_folder(tmp_path, rows, feat_rows)
    r = cli(
        "import",
        "--format",
        "mmrec",
        "--src",
        str(folder),
        "--out",
        str(tmp_path / "ds"),
        "--split",
        "source",
    )
    assert r.returncode == 2 and expected in r.stderr, r.stderr
    assert not (tmp_path / "ds").exists()


def test_refuses_a_non_empty_output_and_a_missing_split(tmp_path):
    write_csv(tmp_path / "log.csv")
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "keep.txt").write_text("mine")
    log = read_tabular(tmp_path / "log.csv", time_col="ts")
    with pytest.raises(DataError, match="already exists and is not empty"):
        write_dataset(prepare(log, split="loo"), tmp_path / "ds")
    assert (tmp_path / "ds" / "keep.txt").read_text() == "mine"
    with pytest.raises(DataError, match="no split of its own"):
        prepare(log, split="source")
    with pytest.raises(DataError, match="--split time needs a timestamp column"):
        prepare(read_tabular(tmp_path / "log.csv"), split="time")
