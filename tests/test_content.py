"""The content path (issue 11): numpy twin == PyTorch model, export, manifest, bad input."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from artifact.content import (
    CONTENT_MAPPER,
    content_projection_file,
    filled_items,
    load_content_path,
)
from artifact.contract import ArtifactError, load_artifact
from model.content import ridge_solution
from tests.conftest import FAST_OVERRIDES
from training.config import load_config
from training.data import load_dataset
from training.export import export_checkpoint
from training.trainer import BEST, load_checkpoint, model_from_checkpoint, train


def _train_export(data: Path, tmp: Path, extra: list[str], content: str = "ridge") -> tuple[Path, Path]:
    dataset = load_dataset(data)
    cfg = load_config(None, [*FAST_OVERRIDES, "epochs=2", *extra])
    run_dir = tmp / "run"
    train(dataset, cfg, run_dir, progress_bar=False)
    return run_dir, export_checkpoint(run_dir / BEST, dataset, tmp / "artifacts", content=content)


@pytest.fixture(scope="module")
def standardized_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run_dir, artifact) of a tiny full model with feature_norm=standardize."""
    return _train_export(tiny_data, tmp_path_factory.mktemp("std"), ["feature_norm=standardize"])


def _ridge_reference(z: np.ndarray, y: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """Ridge with an unpenalised intercept as one augmented least-squares problem (independent of
    the closed form): minimise ||[Z 1] [A; c] - Y||^2 + ||[sqrt(lam) I 0] [A; c]||^2."""
    n, k = z.shape
    design = np.vstack(
        [np.hstack([z, np.ones((n, 1))]), np.hstack([np.sqrt(lam) * np.eye(k), np.zeros((k, 1))])]
    )
    target = np.vstack([y, np.zeros((k, y.shape[1]))])
    sol = np.linalg.lstsq(design, target, rcond=None)[0]
    return sol[:-1], sol[-1]


def test_ridge_solution_matches_the_augmented_least_squares_reference():
    rng = np.random.default_rng(0)
    z, y = rng.standard_normal((50, 6)), rng.standard_normal((50, 3)) + 2.0
    for lam in (0.0, 0.5, 40.0):
        weight, bias = ridge_solution(torch.as_tensor(z), torch.as_tensor(y), lam)
        ref_w, ref_b = _ridge_reference(z, y, lam)
        assert np.allclose(weight.numpy(), ref_w, atol=1e-9) and np.allclose(bias.numpy(), ref_b, atol=1e-9)
    with pytest.raises(ValueError, match="lambda"):
        ridge_solution(torch.as_tensor(z), torch.as_tensor(y), -1.0)


@pytest.mark.parametrize("run", ["trained_run", "standardized_run"])
def test_numpy_projection_equals_the_pytorch_model_and_the_exported_rows(run, request, tiny_data):
    """modality_features == MMSSL.project (no dropout) on new inputs, and == modality_<m>.npy."""
    fixture = request.getfixturevalue(run)
    run_dir, path = (fixture[2], fixture[3]) if run == "trained_run" else fixture
    art = load_artifact(path)
    cp = load_content_path(art)
    assert cp is not None and cp.dim == art.manifest.dim
    assert list(cp.modalities) == ["audio", "image"]
    model, _ = model_from_checkpoint(load_checkpoint(run_dir / BEST), torch.device("cpu"))
    dataset = load_dataset(tiny_data)
    fresh = {
        m: np.random.default_rng(3).standard_normal((7, d)).astype(np.float32) * 2
        for m, d in cp.modalities.items()
    }
    got = cp.modality_features(fresh)
    assert sorted(got) == sorted(art.manifest.modality_names)
    with torch.no_grad():
        for name, feats in got.items():
            expected = model.project(name, torch.as_tensor(fresh[name])).numpy()
            assert feats.shape == (7, cp.dim) and feats.dtype == np.float32
            assert np.abs(feats - expected).max() <= 1e-5
    stored = cp.modality_features(dataset.features)
    for name, feats in stored.items():
        assert np.abs(feats - art.arrays.modality_features[name]).max() <= 1e-5
    if run == "standardized_run":  # the statistics are the model's, not the identity
        mean, scale = model.feature_stats("image")
        assert float(scale.std()) > 0 and np.allclose(
            mean.numpy(), dataset.features["image"].mean(0), atol=1e-4
        )


def test_numpy_item_vectors_equal_an_independent_ridge_fit_and_fill_the_cold_rows(trained_run, tmp_path):
    dataset, _, run_dir, _ = trained_run
    art = load_artifact(export_checkpoint(run_dir / BEST, dataset, tmp_path, content="ridge"))
    assert art.manifest.content is not None and art.manifest.content["kind"] == "ridge"
    cp = load_content_path(art)
    assert cp is not None
    popularity = dataset.train.item_counts(dataset.n_items)
    cold, warm = np.flatnonzero(popularity == 0), np.flatnonzero(popularity > 0)
    assert cold.size >= 2
    assert np.array_equal(filled_items(art), cold)
    assert art.manifest.content is not None and art.manifest.content["n_filled"] == cold.size
    fit = art.manifest.content["fit"]
    # Reference: standardise on the warm items, then the augmented least-squares ridge on the
    # warm items' exported h_i (unchanged by the fill) at the chosen lambda.
    feats = [dataset.features[m].astype(np.float64) for m in cp.modalities]
    z = np.hstack([(f - f[warm].mean(0)) / f[warm].std(0) for f in feats])
    ref_w, ref_b = _ridge_reference(
        z[warm], art.arrays.item_embeddings[warm].astype(np.float64), fit["lambda"]
    )
    expected = z @ ref_w + ref_b
    got = cp.item_vectors(dataset.features)
    assert got.shape == (dataset.n_items, cp.dim) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-3 * max(1.0, float(np.abs(expected).max()))
    # Cold rows of item_embeddings.npy are the content path's vectors; warm rows are the model's.
    assert np.abs(art.arrays.item_embeddings[cold] - got[cold]).max() <= 1e-5
    assert np.abs(art.arrays.item_embeddings[warm] - got[warm]).max() > 1e-3


def test_id_only_artifact_has_a_mapper_and_no_projections(tiny_data, tmp_path):
    _, path = _train_export(tiny_data, tmp_path, ["id_only=true"])
    art = load_artifact(path)
    cp = load_content_path(art)
    assert cp is not None and art.manifest.modality_names == []
    raw = {m: np.ones((2, d), dtype=np.float32) for m, d in cp.modalities.items()}
    assert cp.modality_features(raw) == {}
    vectors = cp.item_vectors(raw)
    assert vectors.shape == (2, art.manifest.dim) and np.isfinite(vectors).all()


def test_export_without_content_path_loads_as_before(tiny_data, tmp_path):
    run_dir, path = _train_export(tiny_data, tmp_path, [], content="none")
    manifest = json.loads((path / "manifest.json").read_text())
    assert "content" not in manifest and not any(f.startswith("content_") for f in manifest["files"])
    art = load_artifact(path)
    assert load_content_path(art) is None and filled_items(art).size == 0
    model, views = model_from_checkpoint(load_checkpoint(run_dir / BEST), torch.device("cpu"))
    assert art.arrays.extra == {}


def test_bad_raw_features_are_refused_naming_the_modality(trained_run):
    cp = load_content_path(load_artifact(trained_run[3]))
    assert cp is not None
    good = {m: np.zeros((3, d), dtype=np.float32) for m, d in cp.modalities.items()}
    cases = [
        ({"image": good["image"]}, "missing \\['audio'\\]"),
        ({**good, "text": good["image"]}, "unknown \\['text'\\]"),
        ({**good, "audio": np.zeros((3, 5), np.float32)}, "modality 'audio': expected shape"),
        ({**good, "image": np.zeros((2, cp.modalities["image"]), np.float32)}, "modality .image.: 2 rows"),
        ({**good, "image": np.full((3, cp.modalities["image"]), np.nan, np.float32)}, "'image': .*NaN"),
    ]
    for raw, message in cases:
        for method in (cp.item_vectors, cp.modality_features):
            with pytest.raises(ValueError, match=message):
                method(raw)
    empty = {m: np.zeros((0, d), dtype=np.float32) for m, d in cp.modalities.items()}
    assert cp.item_vectors(empty).shape == (0, cp.dim)


def test_tampered_content_file_is_refused(trained_run, tmp_path):
    path = trained_run[3]
    for name in (CONTENT_MAPPER, content_projection_file("image")):
        copy = tmp_path / name
        shutil.copytree(path, copy)
        target = copy / name
        os.chmod(target, 0o644)
        data = bytearray(target.read_bytes())
        data[-1] ^= 0xFF
        target.write_bytes(bytes(data))
        with pytest.raises(ArtifactError, match=f"{name}: sha256 mismatch"):
            load_artifact(copy)
    copy = tmp_path / "missing"
    shutil.copytree(path, copy)
    os.chmod(copy / "manifest.json", 0o644)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"][CONTENT_MAPPER]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="content_mapper.npy: content path file missing"):
        load_content_path(load_artifact(copy))


def _planted_factors(seed: int, n_users: int, n_items: int, k: int, modalities: dict[str, int]):
    """The generator's latent item factors z, user tastes theta and projections W_m, re-drawn in the
    order training.synthetic.write_synthetic draws them (checked against the written features)."""
    rng = np.random.default_rng(seed)
    z, theta = rng.standard_normal((n_items, k)), rng.standard_normal((n_users, k))
    projections = {}
    for name, dim in modalities.items():
        projections[name] = rng.standard_normal((k, dim)) / np.sqrt(k)
        rng.standard_normal((n_items, dim))  # the feature noise
    return z, theta, projections


def test_new_item_matching_a_users_taste_enters_their_top_k_and_a_mismatched_one_does_not(tmp_path):
    """Planted data: a brand-new item whose latent factor points along user u's taste gets its h_i
    from its features alone (ContentPath.item_vectors) and ranks in u's top 20 among all items;
    the same item with the opposite taste does not."""
    from training.synthetic import write_synthetic

    n_users, n_items, k, modalities = 300, 200, 8, {"image": 32, "audio": 16}
    data = write_synthetic(tmp_path / "data", n_users=n_users, n_items=n_items, modalities=modalities, seed=5)
    z, theta, projections = _planted_factors(5, n_users, n_items, k, modalities)
    dataset = load_dataset(data)
    for name in modalities:  # the re-drawn factors are the generator's: residual = the 0.3 noise
        assert 0.2 < np.abs(dataset.features[name] - z @ projections[name]).mean() < 0.3
    _, path = _train_export(data, tmp_path, ["epochs=15", "patience=100"])
    art = load_artifact(path)
    cp = load_content_path(art)
    assert cp is not None
    users, items = art.arrays.user_embeddings, art.arrays.item_embeddings
    scores = users @ items.T
    for u in range(n_users):
        scores[u, dataset.train.items_of(u)] = -np.inf
    active = dataset.train.degrees() > 0
    taste = theta / np.linalg.norm(theta, axis=1, keepdims=True)
    ranks = {}
    for label, sign in (("match", 1.0), ("mismatch", -1.0)):
        latent = sign * 3.0 * taste  # one new item per user, (n_users, k)
        raw = {m: (latent @ projections[m]).astype(np.float32) for m in cp.modalities}
        new_scores = (users * cp.item_vectors(raw)).sum(axis=1)
        ranks[label] = (scores > new_scores[:, None]).sum(axis=1)[active]
    assert (ranks["match"] < 20).mean() >= 0.5
    assert (ranks["mismatch"] < 20).mean() <= 0.02
    assert np.median(ranks["mismatch"]) > 100 > 20 > np.median(ranks["match"])


def test_bpr_fitted_mapper_uses_the_same_files_and_learns_to_rank(trained_run, tmp_path):
    dataset, _, run_dir, _ = trained_run
    path = export_checkpoint(run_dir / BEST, dataset, tmp_path, content="bpr")
    art = load_artifact(path)
    cp = load_content_path(art)
    assert cp is not None and art.manifest.content is not None
    assert art.manifest.content["kind"] == "bpr"
    losses = art.manifest.content["fit"]["bpr_loss"]
    assert losses[-1] < losses[0] < np.log(2) + 1e-3  # starts at chance (zero map), then improves
    cold = filled_items(art)
    got = cp.item_vectors({m: f[cold] for m, f in dataset.features.items()})
    assert np.abs(art.arrays.item_embeddings[cold] - got).max() <= 1e-5
    with pytest.raises(ValueError, match="content kind"):
        from artifact.content import content_manifest_entry

        content_manifest_entry({"image": 4}, [], 0, {}, kind="mlp")


def test_profile_mapper_equals_an_independent_closed_form_and_ranks_by_the_content_profile(
    trained_run, tmp_path
):
    """kind="profile": the exported numpy map equals a reference built here with plain loops and
    numpy least squares (profiles per user, the augmented ridge, a fitted line for s and c), and
    among new items it ranks as s p_u . z_i through the user's vector (s > 0)."""
    dataset, _, run_dir, _ = trained_run
    art = load_artifact(export_checkpoint(run_dir / BEST, dataset, tmp_path, content="profile"))
    assert art.manifest.content is not None and art.manifest.content["kind"] == "profile"
    assert CONTENT_MAPPER in json.loads((art.path / "manifest.json").read_text())["files"]  # checksummed
    cp = load_content_path(art)
    assert cp is not None
    fit = art.manifest.content["fit"]
    popularity = dataset.train.item_counts(dataset.n_items)
    cold, warm = np.flatnonzero(popularity == 0), np.flatnonzero(popularity > 0)
    assert np.array_equal(filled_items(art), cold)
    feats = [dataset.features[m].astype(np.float64) for m in cp.modalities]
    z = np.hstack([(f - f[warm].mean(0)) / f[warm].std(0) for f in feats])
    users = art.arrays.user_embeddings.astype(np.float64)
    active = [u for u in range(dataset.n_users) if len(dataset.train.items_of(u))]
    profiles = np.stack([z[dataset.train.items_of(u)].mean(0) for u in active])
    h = users[active]
    lam = 1e-3 * len(active)
    assert fit["alpha"] == 1e-3 and fit["lambda"] == pytest.approx(lam) and fit["n_users"] == len(active)
    d = h.shape[1]
    w = np.linalg.lstsq(
        np.vstack([h, np.sqrt(lam) * np.eye(d)]), np.vstack([profiles, np.zeros((d, z.shape[1]))]), rcond=None
    )[0]
    mapped = z @ w.T  # (n_items, d)
    target = art.arrays.item_embeddings[warm].astype(np.float64)  # warm rows: the model's own
    # s, c: least squares of target on [s * mapped + c] over the warm items, all d columns at once
    design = np.zeros((warm.size * d, 1 + d))
    design[:, 0] = mapped[warm].ravel()
    design[:, 1:] = np.tile(np.eye(d), (warm.size, 1))
    sol = np.linalg.lstsq(design, target.ravel(), rcond=None)[0]
    assert (
        sol[0] > 0
        and fit["scale"] == pytest.approx(sol[0], rel=1e-6)
        and fit["scale_rule"] == "least squares"
    )
    expected = sol[0] * mapped + sol[1:]
    got = cp.item_vectors(dataset.features)
    assert np.abs(got - expected).max() <= 1e-3 * max(1.0, float(np.abs(expected).max()))
    assert np.abs(art.arrays.item_embeddings[cold] - got[cold]).max() <= 1e-5
    # Among new items, h_u . h_i = s (h_u W) . z_i + h_u . c: the fitted profile's score up to a
    # per-user constant, so every user's order of new items is the profile's.
    offset = users[active] @ got[cold].T - sol[0] * (h @ w) @ z[cold].T
    assert np.abs(offset - (h @ sol[1:])[:, None]).max() <= 1e-3 * max(1.0, float(np.abs(offset).max()))


def test_bpr_calibrated_is_the_bpr_map_on_the_warm_items_least_squares_line(trained_run, tmp_path):
    """kind="bpr-calibrated": the same BPR fit (seeded) as kind="bpr", then h_i = s * map(z_i) + c
    with s > 0 and c the least-squares line of the warm items' trained h_i on their mapped vectors,
    computed here independently; every user's order of the filled items is bpr's."""
    dataset, _, run_dir, _ = trained_run
    plain = load_artifact(export_checkpoint(run_dir / BEST, dataset, tmp_path / "bpr", content="bpr"))
    art = load_artifact(
        export_checkpoint(run_dir / BEST, dataset, tmp_path / "cal", content="bpr-calibrated")
    )
    assert art.manifest.content is not None and art.manifest.content["kind"] == "bpr-calibrated"
    assert CONTENT_MAPPER in json.loads((art.path / "manifest.json").read_text())["files"]
    cp_plain, cp = load_content_path(plain), load_content_path(art)
    assert cp_plain is not None and cp is not None
    popularity = dataset.train.item_counts(dataset.n_items)
    cold, warm = np.flatnonzero(popularity == 0), np.flatnonzero(popularity > 0)
    assert cold.size and np.array_equal(filled_items(art), cold)
    mapped = cp_plain.item_vectors(dataset.features).astype(np.float64)  # (n_items, d)
    target = art.arrays.item_embeddings[warm].astype(np.float64)  # the trained warm rows
    d = mapped.shape[1]
    design = np.zeros((warm.size * d, 1 + d))
    design[:, 0] = mapped[warm].ravel()
    design[:, 1:] = np.tile(np.eye(d), (warm.size, 1))
    sol = np.linalg.lstsq(design, target.ravel(), rcond=None)[0]
    calibration = art.manifest.content["fit"]["calibration"]
    assert sol[0] > 0 and calibration == {"scale": pytest.approx(sol[0], rel=1e-4), "rule": "least squares"}
    expected = sol[0] * mapped + sol[1:]
    got = cp.item_vectors(dataset.features)
    assert np.abs(got - expected).max() <= 1e-4 * max(1.0, float(np.abs(expected).max()))
    assert np.abs(art.arrays.item_embeddings[cold] - got[cold]).max() <= 1e-5
    # the trained rows are untouched; among the filled items each user's order is bpr's
    assert np.array_equal(art.arrays.item_embeddings[warm], plain.arrays.item_embeddings[warm])
    users = art.arrays.user_embeddings.astype(np.float64)
    s_cal = users @ got[cold].T.astype(np.float64)
    s_plain = users @ plain.arrays.item_embeddings[cold].T.astype(np.float64)
    assert np.allclose(s_cal, sol[0] * s_plain + (users @ sol[1:])[:, None], atol=1e-4)
