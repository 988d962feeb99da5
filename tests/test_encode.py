"""python -m training encode: shape, dtype, determinism, alignment with the dataset's items, zero rows
for items without content, resumable chunks, bad content and an unreachable model hub."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from training.data import load_dataset
from training.encode import EncodeError, encode_items, image_contents, make_encoder, text_contents
from training.encode.encoders import HistogramImageEncoder, packaged_model_path
from training.importers import prepare, write_dataset
from training.importers.tabular import read_tabular

ROOT = Path(__file__).resolve().parents[1]
ITEMS = ["toy", "heat", "golden", "cold"]  # "cold" has no row in the item table
TABLE = (
    "item_id,title,genres\n"
    "golden,GoldenEye,Action Adventure Thriller\n"
    "toy,Toy Story,Animation Children Comedy\n"
    "heat,Heat,Action Crime Thriller\n"
    "other,Not in the dataset,Drama\n"
)


@pytest.fixture
def data(tmp_path) -> Path:
    rows = "".join(f"u{u},{i}\n" for u in range(4) for i in ITEMS[: 3 + (u == 0)])
    (tmp_path / "log.csv").write_text("user,item\n" + rows)
    (tmp_path / "items.csv").write_text(TABLE)
    write_dataset(prepare(read_tabular(tmp_path / "log.csv"), split="random", seed=0), tmp_path / "ds")
    assert load_dataset(tmp_path / "ds").item_ids == ITEMS
    return tmp_path


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "training", *args], capture_output=True, text=True, cwd=ROOT, timeout=300
    )


def encode_text(data: Path, spec: str, **kwargs) -> tuple[np.ndarray, dict]:
    texts, extra = text_contents(ITEMS, data / "items.csv", "item_id", ["title", "genres"])
    report = encode_items(
        data / "ds",
        "text",
        ITEMS,
        texts,
        make_encoder("text", spec, dim=2),
        progress=False,
        force=True,
        **kwargs,
    )
    return np.load(data / "ds" / "text_feat.npy"), report


def test_text_contents_follow_the_dataset_order(data):
    texts, extra = text_contents(ITEMS, data / "items.csv", "item_id", ["title", "genres"])
    assert texts == [
        "Toy Story. Animation Children Comedy",
        "Heat. Action Crime Thriller",
        "GoldenEye. Action Adventure Thriller",
        None,
    ]
    templated, _ = text_contents(ITEMS, data / "items.csv", "item_id", [], "{title} [{genres}]")
    assert templated[1] == "Heat [Action Crime Thriller]"
    assert extra == {"table_rows": 4, "table_rows_not_in_dataset": 1}


@pytest.mark.parametrize("spec", ["tfidf", "packaged"])
def test_text_encoders_shape_dtype_zero_rows_and_determinism(data, spec):
    first, report = encode_text(data, spec)
    again, _ = encode_text(data, spec)
    assert first.dtype == np.float32 and first.shape[0] == len(ITEMS)
    assert first.shape[1] == (2 if spec == "tfidf" else 64)
    assert np.array_equal(first, again)
    assert not first[3].any() and all(first[k].any() for k in range(3))
    assert report["missing_items"] == ["cold"] and report["zero_rows"] == 1
    # the dataset now has a text modality the trainer's loader accepts, one row per item
    assert load_dataset(data / "ds").features["text"].shape == first.shape


def test_packaged_encoder_matches_model2vec_and_puts_similar_titles_closer(data):
    from model2vec import StaticModel

    rows, _ = encode_text(data, "packaged")
    texts, _ = text_contents(ITEMS, data / "items.csv", "item_id", ["title", "genres"])
    reference = StaticModel.from_pretrained(str(packaged_model_path())).encode(texts[:3])
    np.testing.assert_allclose(rows[:3], reference, rtol=1e-6, atol=1e-6)
    unit = rows[:3] / np.linalg.norm(rows[:3], axis=1, keepdims=True)
    # heat and golden share "Action ... Thriller"; toy shares nothing with heat
    assert unit[1] @ unit[2] > unit[0] @ unit[1]


def test_a_hub_model_name_fails_in_one_line_here(data):
    with pytest.raises(EncodeError) as info:
        make_encoder("text", "model2vec:no-such-org/no-such-model-i14")
    assert "\n" not in str(info.value) and "could not be fetched from the model hub" in str(info.value)
    r = cli(
        "encode",
        "--data",
        str(data / "ds"),
        "--kind",
        "text",
        "--encoder",
        "model2vec:no-such-org/x",
        "--items",
        str(data / "items.csv"),
        "--text-cols",
        "title",
    )
    assert r.returncode == 2
    assert [ln for ln in r.stderr.splitlines() if ln.startswith("error:")] == [
        ln for ln in r.stderr.splitlines() if "model hub" in ln
    ]
    assert not (data / "ds" / "text_feat.npy").exists()


def test_empty_text_is_an_error_naming_file_and_row(data):
    (data / "items.csv").write_text("item_id,title,genres\ntoy,Toy Story,x\nheat,,\n")
    with pytest.raises(EncodeError, match=r"items.csv: row 3: empty text for item 'heat'"):
        text_contents(ITEMS, data / "items.csv", "item_id", ["title", "genres"])


def test_resumes_from_the_chunks_already_written(data, monkeypatch):
    clean, _ = encode_text(data, "tfidf", chunk=1)
    (data / "ds" / "text_feat.npy").unlink()
    calls = {"n": 0}
    original = type(make_encoder("text", "tfidf")).encode

    def flaky(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # killed while encoding the third chunk
        return original(self, batch)

    monkeypatch.setattr(type(make_encoder("text", "tfidf")), "encode", flaky)
    with pytest.raises(KeyboardInterrupt):
        encode_text(data, "tfidf", chunk=1)
    assert not (data / "ds" / "text_feat.npy").exists()
    assert len(list((data / "ds" / ".text_feat.parts").glob("chunk_*.npy"))) == 2
    monkeypatch.setattr(type(make_encoder("text", "tfidf")), "encode", original)
    resumed, report = encode_text(data, "tfidf", chunk=1)
    assert report["chunks_resumed"] == 2 and report["chunks"] == 4
    assert np.array_equal(resumed, clean)
    assert not (data / "ds" / ".text_feat.parts").exists()


def _png(path: Path, colour: tuple[int, int, int], stripes: bool = False) -> None:
    from PIL import Image

    arr = np.zeros((20, 30, 3), dtype=np.uint8)
    arr[:] = colour
    if stripes:
        arr[:, ::2] = 255  # vertical stripes: horizontal gradients only
    Image.fromarray(arr).save(path)


def test_histogram_image_encoder_against_hand_computed_values(tmp_path):
    _png(tmp_path / "red.png", (255, 0, 0))
    _png(tmp_path / "stripes.png", (0, 0, 0), stripes=True)
    enc = HistogramImageEncoder(bins=4)
    red, stripes = enc.encode([tmp_path / "red.png", tmp_path / "stripes.png"])
    assert red.dtype == np.float32 and red.shape == (4**3 + 6 + 8,)
    expected = np.zeros(64)
    expected[(3 * 4 + 0) * 4 + 0] = 1.0  # all pixels in the (R=3, G=0, B=0) bin
    np.testing.assert_allclose(red[:64], expected)
    np.testing.assert_allclose(red[64:70], [1, 0, 0, 0, 0, 0], atol=1e-6)  # means, then stds
    assert red[70:].sum() == 0  # a flat image has no gradient
    np.testing.assert_allclose(stripes[70:].sum(), 1.0, rtol=1e-5)
    assert stripes[70] > 0.99  # orientation bin 0: horizontal gradient


def test_images_by_folder_zero_row_for_missing_and_error_for_undecodable(data):
    folder = data / "img"
    folder.mkdir()
    _png(folder / "toy.png", (255, 0, 0))
    _png(folder / "heat.png", (0, 0, 255))
    _png(folder / "golden.png", (0, 255, 0))
    r = cli(
        "encode",
        "--data",
        str(data / "ds"),
        "--kind",
        "image",
        "--encoder",
        "histogram",
        "--images",
        str(folder),
        "--no-progress",
    )
    assert r.returncode == 0, r.stderr
    feats = np.load(data / "ds" / "image_feat.npy")
    assert feats.shape == (4, 78) and not feats[3].any()
    assert json.loads((data / "ds" / "image_encode_report.json").read_text())["missing_items"] == ["cold"]
    paths, _ = image_contents(ITEMS, folder=folder)
    np.testing.assert_array_equal(feats[:3], HistogramImageEncoder().encode(paths[:3]))
    (folder / "cold.jpg").write_bytes(b"not an image")
    r = cli(
        "encode",
        "--data",
        str(data / "ds"),
        "--kind",
        "image",
        "--encoder",
        "histogram",
        "--images",
        str(folder),
        "--force",
        "--modality",
        "image2",
    )
    assert r.returncode == 2
    assert "cold.jpg: cannot decode image" in r.stderr
    assert not (data / "ds" / "image2_feat.npy").exists()


def test_refuses_to_replace_a_feature_file_without_force(data):
    encode_text(data, "tfidf")
    texts, _ = text_contents(ITEMS, data / "items.csv", "item_id", ["title"])
    with pytest.raises(Exception, match="already exists; pass --force"):
        encode_items(data / "ds", "text", ITEMS, texts, make_encoder("text", "tfidf"), progress=False)


def test_recbole_item_table_with_typed_headers(tmp_path):
    table = tmp_path / "shop.item"
    table.write_text(
        "item_id:token\tmovie_title:token_seq\tclass:token_seq\n"
        "heat\tHeat\tAction Crime\n"
        "toy\tToy Story\tAnimation\n"
    )
    texts, extra = text_contents(ITEMS, table, "item_id", [], "{movie_title} / {class}")
    assert texts == ["Toy Story / Animation", "Heat / Action Crime", None, None]
    assert extra == {"table_rows": 2, "table_rows_not_in_dataset": 0}
    table.write_text("item_id:token\tmovie_title:token_seq\nheat\tHeat\nheat\tHeat again\n")
    with pytest.raises(Exception, match=r"shop.item: row 3: item 'heat' appears again \(first at row 2\)"):
        text_contents(ITEMS, table, "item_id", ["movie_title"])
