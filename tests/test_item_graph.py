"""The frozen item kNN graph (issue 11 (b)) and its content path kind ``knn``: numpy == PyTorch."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from artifact.content import (
    CONTENT_KNN_VECTORS,
    KNN_KINDS,
    content_files,
    content_knn_features_file,
    filled_items,
    load_content_path,
)
from artifact.contract import ArtifactError, load_artifact
from model import MMSSL, MMSSLConfig, build_item_graph
from tests.conftest import FAST_OVERRIDES
from training.config import ConfigError, load_config
from training.data import Dataset, load_dataset
from training.export import ExportError, export_checkpoint
from training.trainer import BEST, TrainingState, load_checkpoint, model_from_checkpoint, train


def _reference_graph(
    raw: list[np.ndarray], sources: np.ndarray, k: int, standardize: bool, norm: str
) -> tuple[np.ndarray, list[dict[str, np.ndarray]]]:
    """Dense S by loops over items (float64), and per modality what a new row needs: the
    centring statistics, the unit features and each item's in-degree."""
    n, m_count = raw[0].shape[0], len(raw)
    s = np.zeros((n, n))
    parts = []
    for x in raw:
        x = x.astype(np.float64)
        mean = x.mean(axis=0)
        scale = x.std(axis=0) if standardize else np.ones(x.shape[1])
        z = (x - mean) / scale
        unit = z / np.linalg.norm(z, axis=1, keepdims=True)
        rows = []
        for i in range(n):
            candidates = [int(j) for j in sources if j != i]
            sims = [float(unit[i] @ unit[j]) for j in candidates]
            best = sorted(range(len(candidates)), key=lambda t: -sims[t])[:k]
            rows.append([candidates[t] for t in best])
        in_degree = np.zeros(n)
        for row in rows:
            for j in row:
                in_degree[j] += 1
        for i, row in enumerate(rows):
            for j in row:
                value = 1 / np.sqrt(k * max(in_degree[j], 1.0)) if norm == "symmetric" else 1 / k
                s[i, j] += value / m_count
        parts.append({"mean": mean, "scale": scale, "unit": unit, "in_degree": in_degree})
    return s, parts


def _reference_new_rows(
    parts: list[dict[str, np.ndarray]], new_raw: list[np.ndarray], sources: np.ndarray, k: int, norm: str
) -> np.ndarray:
    """(n_new, n_items) rows of S for items that are not in the graph, by loops."""
    n_items = parts[0]["unit"].shape[0]
    rows = np.zeros((new_raw[0].shape[0], n_items))
    for part, x in zip(parts, new_raw, strict=True):
        z = (x.astype(np.float64) - part["mean"]) / part["scale"]
        unit = z / np.linalg.norm(z, axis=1, keepdims=True)
        for r in range(x.shape[0]):
            sims = {int(j): float(unit[r] @ part["unit"][j]) for j in sources}
            for j in sorted(sims, key=lambda j: -sims[j])[:k]:
                deg = max(part["in_degree"][j], 1.0)
                rows[r, j] += (1 / np.sqrt(k * deg) if norm == "symmetric" else 1 / k) / len(parts)
    return rows


def _correlated_features(seed: int, n: int) -> list[np.ndarray]:
    """Two modalities from one latent factor, so that many kNN edges are shared (summed in S)."""
    rng = np.random.default_rng(seed)
    latent = rng.standard_normal((n, 4))
    return [
        (latent @ rng.standard_normal((4, 6)) + 0.05 * rng.standard_normal((n, 6)) + 3.0).astype(np.float32),
        (latent @ rng.standard_normal((4, 5)) * 10 + 0.5 * rng.standard_normal((n, 5))).astype(np.float32),
    ]


@pytest.mark.parametrize("norm", ["symmetric", "mean"])
@pytest.mark.parametrize("standardize", [False, True])
def test_item_graph_equals_a_dense_loop_reference(norm, standardize):
    raw = _correlated_features(0, 40)
    sources = np.array(sorted(set(range(40)) - {3, 7, 11, 30}))  # 4 items without interactions
    k = 4
    graph = build_item_graph(
        [torch.as_tensor(x) for x in raw], torch.as_tensor(sources), k, standardize=standardize, norm=norm
    )
    expected, _ = _reference_graph(raw, sources, k, standardize, norm)
    dense = graph.matrix.to_dense().numpy()
    assert np.abs(dense - expected).max() < 1e-6
    assert np.abs(graph.matrix_t.to_dense().numpy() - expected.T).max() < 1e-6
    # never a self edge, never an edge into an item without interactions, k per row and modality
    assert np.all(np.diag(dense) == 0) and np.all(dense[:, [3, 7, 11, 30]] == 0)
    assert graph.neighbours.shape == (2, 40, k)
    # the modalities share edges here: S holds sums, not only single-modality values
    single = graph.column_weights.max().item()
    assert dense.max() > single * 1.5


def test_item_graph_rejects_k_beyond_its_sources():
    raw = [torch.randn(10, 3)]
    with pytest.raises(ValueError, match="item graph k"):
        build_item_graph(raw, torch.arange(5), 5)
    with pytest.raises(ValueError, match="norm"):
        build_item_graph(raw, torch.arange(10), 2, norm="row")


def _dataset_model(tiny_data: Path, overrides: list[str]) -> tuple[Dataset, MMSSL, TrainingState]:
    dataset = load_dataset(tiny_data)
    cfg = load_config(None, [*FAST_OVERRIDES, *overrides])
    from training.trainer import model_config_for

    config = model_config_for(dataset, cfg.model)
    torch.manual_seed(0)
    model = MMSSL(config).eval()
    return dataset, model, TrainingState(dataset, config, torch.device("cpu"))


@pytest.mark.parametrize("layers", [1, 2])
def test_forward_adds_s_to_the_power_l_of_the_id_embeddings(tiny_data, layers):
    """h_i with the graph = h_i of the same weights without it + S^L E (dense numpy)."""
    overrides = ["item_graph_k=4", f"item_graph_layers={layers}"]
    dataset, model, state = _dataset_model(tiny_data, overrides)
    plain_config = MMSSLConfig.from_dict({**model.config.to_dict(), "item_graph_k": 0})
    plain = MMSSL(plain_config).eval()
    plain.load_state_dict(model.state_dict())
    views = None
    from training.trainer import refresh_views

    views = refresh_views(model, state)
    with torch.no_grad():
        out = model(state.graph, state.item_raw, views, state.item_graph)
        base = plain(state.graph, state.item_raw, views)
    assert state.item_graph is not None
    s = state.item_graph.matrix.to_dense().numpy().astype(np.float64)
    e = model.item_embedding.weight.detach().numpy().astype(np.float64)
    propagated = np.linalg.matrix_power(s, layers) @ e
    assert out.item_graph_side is not None
    assert np.abs(out.item_graph_side.numpy() - propagated).max() < 1e-5
    assert np.abs(out.item.numpy() - base.item.numpy() - propagated).max() < 1e-5
    assert np.array_equal(out.user.numpy(), base.user.numpy())  # the user side is unchanged
    with pytest.raises(ValueError, match="item graph"):
        model(state.graph, state.item_raw, views)
    with pytest.raises(ValueError, match="item graph"):
        plain(state.graph, state.item_raw, views, state.item_graph)


def test_config_refuses_impossible_item_graph_settings(tiny_data):
    dataset = load_dataset(tiny_data)
    from training.trainer import model_config_for

    for overrides, message in (
        (["item_graph_k=-1"], "item_graph_k must be >= 0"),
        (["item_graph_k=90"], "item_graph_k \\(90\\) must be below n_items"),
        (["item_graph_k=3", "item_graph_layers=0"], "item_graph_layers must be >= 1"),
        (["item_graph_features=raw"], "item_graph_features must be one of"),
        (["item_graph_norm=row"], "item_graph_norm must be one of"),
    ):
        cfg = load_config(None, overrides)
        with pytest.raises(ConfigError, match=message):
            model_config_for(dataset, cfg.model)


KNN_RUNS = {
    "id_only-L1-symmetric-center": ["id_only=true", "item_graph_k=5"],
    "full-L2-mean-standardize": [
        "item_graph_k=4",
        "item_graph_layers=2",
        "item_graph_norm=mean",
        "item_graph_features=standardize",
    ],
}


@pytest.fixture(scope="module", params=list(KNN_RUNS))
def knn_run(request, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """(dataset, run_dir, {kind: artifact path}, overrides) of a tiny model trained with the graph."""
    overrides = KNN_RUNS[request.param]
    dataset = load_dataset(tiny_data)
    cfg = load_config(None, [*FAST_OVERRIDES, "epochs=2", *overrides])
    tmp = tmp_path_factory.mktemp("knn")
    train(dataset, cfg, tmp / "run", progress_bar=False)
    paths = {
        kind: export_checkpoint(tmp / "run" / BEST, dataset, tmp / kind, content=kind) for kind in KNN_KINDS
    }
    return dataset, tmp / "run", paths, overrides


def _reference_line(graph_side: np.ndarray, trained: np.ndarray) -> tuple[float, np.ndarray]:
    """(s, c) minimising ||trained - (s graph_side + c)||^2 over all entries: one least-squares
    problem in 1 + d unknowns (independent of training.content._fit_line)."""
    n, d = graph_side.shape
    design = np.hstack([graph_side.reshape(-1, 1), np.tile(np.eye(d), (n, 1))])
    sol = np.linalg.lstsq(design, trained.reshape(-1), rcond=None)[0]
    return float(sol[0]), sol[1:]


@pytest.mark.parametrize("kind", KNN_KINDS)
def test_knn_content_path_numpy_equals_pytorch_and_a_loop_reference(knn_run, kind):
    dataset, run_dir, paths, _ = knn_run
    path = paths[kind]
    art = load_artifact(path)
    entry = art.manifest.content
    assert entry is not None and entry["kind"] == kind
    assert sorted(entry) == sorted(["kind", "modalities", "projected", "n_filled", "fit", "knn"])
    cp = load_content_path(art)
    assert cp is not None and cp.knn is not None and cp.mapper_weight is None
    manifest = json.loads((path / "manifest.json").read_text())
    for name in content_files(cp.modalities, entry["projected"], kind=kind):
        assert name in manifest["files"], name  # listed and checksummed like every other file
    model, views = model_from_checkpoint(load_checkpoint(run_dir / BEST), torch.device("cpu"))
    cfg = model.config
    state = TrainingState(dataset, cfg, torch.device("cpu"))
    with torch.no_grad():
        out = model(state.graph, state.item_raw, views, state.item_graph)
    popularity = dataset.train.item_counts(dataset.n_items)
    cold, warm = np.flatnonzero(popularity == 0), np.flatnonzero(popularity > 0)
    assert cold.size >= 2 and np.array_equal(filled_items(art), cold)
    # Items without training interactions: exported row == numpy path == PyTorch's S^L E row
    # (on the warm items' least-squares line for knn-calibrated).
    assert out.item_graph_side is not None
    side = out.item_graph_side.numpy().astype(np.float64)
    scale, bias = 1.0, np.zeros(cp.dim)
    if kind == "knn-calibrated":
        scale, bias = _reference_line(side[warm], out.item.numpy().astype(np.float64)[warm])
        assert scale > 0 and abs(entry["fit"]["calibration"]["scale"] - scale) < 1e-4 * scale
    torch_cold = scale * side[cold] + bias
    numpy_cold = cp.item_vectors({m: f[cold] for m, f in dataset.features.items()})
    assert np.abs(numpy_cold - torch_cold).max() < 1e-5
    assert np.abs(art.arrays.item_embeddings[cold] - torch_cold).max() < 1e-5
    assert np.abs(art.arrays.item_embeddings[warm] - out.item.numpy()[warm]).max() < 1e-6
    # New items (features never seen): the numpy path == rows built by loops from the training
    # features and the checkpoint's E.
    raw = [dataset.features[m] for m in cfg.modality_dims]
    k, layers = cfg.item_graph_k, cfg.item_graph_layers
    s, parts = _reference_graph(raw, warm, k, cfg.item_graph_features == "standardize", cfg.item_graph_norm)
    rng = np.random.default_rng(11)
    fresh = [rng.standard_normal((6, f.shape[1])).astype(np.float32) * f.std() + f.mean() for f in raw]
    rows = _reference_new_rows(parts, fresh, warm, k, cfg.item_graph_norm)
    e = model.item_embedding.weight.detach().numpy().astype(np.float64)
    expected = scale * (rows @ np.linalg.matrix_power(s, layers - 1) @ e) + bias
    got = cp.item_vectors(dict(zip(cfg.modality_dims, fresh, strict=True)))
    assert got.shape == (6, cp.dim) and got.dtype == np.float32
    assert np.abs(got - expected).max() < 1e-5 * max(1.0, float(np.abs(expected).max()))
    assert np.abs(expected).max() > 1e-3
    # The full model keeps the projections for Eq. 2 (fold-in of users who touch new items).
    assert list(cp.projections) == list(cfg.modalities)


def test_knn_needs_a_model_trained_with_the_graph(trained_run, tmp_path):
    dataset, _, run_dir, _ = trained_run
    with pytest.raises(ExportError, match="item_graph_k > 0"):
        export_checkpoint(run_dir / BEST, dataset, tmp_path, content="knn")


def test_tampered_or_missing_knn_file_is_refused(knn_run, tmp_path):
    path = knn_run[2]["knn"]
    name = content_knn_features_file("image")
    copy = tmp_path / "tampered"
    shutil.copytree(path, copy)
    os.chmod(copy / name, 0o644)
    data = bytearray((copy / name).read_bytes())
    data[-1] ^= 0xFF
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=f"{name}: sha256 mismatch"):
        load_artifact(copy)
    copy = tmp_path / "missing"
    shutil.copytree(path, copy)
    os.chmod(copy / "manifest.json", 0o644)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"][CONTENT_KNN_VECTORS]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=f"{CONTENT_KNN_VECTORS}: content path file missing"):
        load_content_path(load_artifact(copy))


def test_new_item_matching_a_users_taste_enters_their_top_k_and_a_mismatched_one_does_not(tmp_path):
    """Planted data (training.synthetic): a brand-new item whose latent factor points along user
    u's taste gets its h_i from its features alone through the kNN graph (ContentPath.item_vectors,
    knn-calibrated) and ranks in u's top 40 of the 200 items for most users; the same item with the
    opposite taste does not (for at most 10%). (A mix of 10 neighbours regresses towards the mean item: top 20, where
    the linear mapper's test looks, holds for a third of the users only.)"""
    from tests.test_content import _planted_factors
    from training.synthetic import write_synthetic

    n_users, n_items, k, modalities = 300, 200, 8, {"image": 32, "audio": 16}
    data = write_synthetic(tmp_path / "data", n_users=n_users, n_items=n_items, modalities=modalities, seed=5)
    z, theta, projections = _planted_factors(5, n_users, n_items, k, modalities)
    dataset = load_dataset(data)
    cfg = load_config(None, [*FAST_OVERRIDES, "id_only=true", "item_graph_k=10", "epochs=15", "patience=100"])
    train(dataset, cfg, tmp_path / "run", progress_bar=False)
    path = export_checkpoint(tmp_path / "run" / BEST, dataset, tmp_path / "a", content="knn-calibrated")
    art = load_artifact(path)
    cp = load_content_path(art)
    assert cp is not None and cp.knn is not None
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
    print({label: float((r < 40).mean()) for label, r in ranks.items()})
    assert (ranks["match"] < 40).mean() >= 0.5
    assert (ranks["mismatch"] < 40).mean() <= 0.1
    assert np.median(ranks["mismatch"]) > 100 > 40 > np.median(ranks["match"])
