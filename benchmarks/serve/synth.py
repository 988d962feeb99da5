"""Synthetic artifacts and catalogues for the serving benchmarks (numpy + the artifact contract only).

``write_tiktok_sized`` writes a serving artifact with the shape of the TikTok data set (9,308 users x
6,710 items, d = 64, two modalities, two GNN layers) through ``artifact.contract.write_artifact``, so
the service loads it exactly as a trained one. The embeddings are random; what matters for serving
cost is the shape, the per-user history lengths (drawn from the real ``train.json`` when it is
there: a heavy tail up to ~600 items changes the over-fetch and exclusion work) and the popularity.

``clustered_catalogue`` makes the 1,000,000-item catalogue of the scale benchmark: item vectors drawn
around cluster centres (learned embeddings are clustered; i.i.d. Gaussian vectors are the worst case
for every approximate index, and unlike any trained model), plus query vectors drawn the same way.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from artifact import contract
from artifact.contract import ArtifactArrays, Manifest

TIKTOK_USERS = 9_308
TIKTOK_ITEMS = 6_710
TIKTOK_TRAIN = Path(__file__).resolve().parents[3] / "shared" / "data" / "tiktok" / "train.json"
MODALITIES = ("image", "audio")


def _history_lengths(rng: np.random.Generator, n_users: int, n_items: int, source: Path | None) -> np.ndarray:
    """Training interactions per user: resampled from a real train.json, else a heavy-tailed draw."""
    if source is not None and source.is_file():
        real = np.array([len(v) for v in json.loads(source.read_text()).values()], dtype=np.int64)
        lengths = rng.choice(real, size=n_users, replace=True)
    else:  # lognormal with TikTok's mean (~6.4) and a tail into the hundreds
        lengths = np.maximum(1, rng.lognormal(mean=1.3, sigma=0.9, size=n_users)).astype(np.int64)
    return np.minimum(lengths, n_items // 2)


def build_tiktok_sized(
    n_users: int = TIKTOK_USERS,
    n_items: int = TIKTOK_ITEMS,
    dim: int = 64,
    n_layers: int = 2,
    seed: int = 0,
    lengths_from: Path | None = TIKTOK_TRAIN,
    version: str | None = None,
) -> tuple[Manifest, ArtifactArrays]:
    rng = np.random.default_rng(seed)
    lengths = _history_lengths(rng, n_users, n_items, lengths_from)
    # Zipf-like item popularity, so that histories (and the popularity path) are skewed like real ones.
    weights = 1.0 / np.arange(1, n_items + 1) ** 0.8
    weights = weights[rng.permutation(n_items)]
    weights /= weights.sum()
    rows = [np.sort(rng.choice(n_items, size=int(n), replace=False, p=weights)) for n in lengths]
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = np.concatenate(rows).astype(np.int32)
    modality = {m: rng.normal(size=(n_items, dim)).astype(np.float32) for m in MODALITIES}
    user_id_side = rng.normal(size=(n_users, dim)).astype(np.float32)
    omega = 0.5
    # h_u = e_hat_u + omega * sum_m normalize(f_u^m) (Eq. 2, Eq. 12), vectorised per modality.
    side = np.zeros((n_users, dim), dtype=np.float64)
    user_of = np.repeat(np.arange(n_users), lengths)
    for feats in modality.values():
        f_u = np.zeros((n_users, dim), dtype=np.float64)
        np.add.at(f_u, user_of, feats[indices].astype(np.float64))
        f_u /= np.sqrt(np.maximum(lengths, 1))[:, None]
        side += contract.l2_normalize(f_u)
    user_emb = (user_id_side + omega * side).astype(np.float32)
    arrays = ArtifactArrays(
        user_ids=[f"u{i}" for i in range(n_users)],
        item_ids=[f"i{i}" for i in range(n_items)],
        user_embeddings=user_emb,
        item_embeddings=(rng.normal(size=(n_items, dim)) / np.sqrt(dim)).astype(np.float32),
        user_id_side=user_id_side,
        item_layer_embeddings=rng.normal(size=(n_layers, n_items, dim)).astype(np.float32),
        modality_features=modality,
        train_indptr=indptr,
        train_indices=indices,
        item_popularity=np.bincount(indices, minlength=n_items).astype(np.int64),
    )
    manifest = Manifest(
        model_version=version or contract.new_model_version(),
        created_at=contract.utc_now(),
        dataset_fingerprint=f"synthetic-tiktok-sized-{seed}",
        n_users=n_users,
        n_items=n_items,
        dim=dim,
        n_layers=n_layers,
        omega=omega,
        graph_norm="paper",
        modalities=[{"name": m, "raw_dim": dim, "dim": dim} for m in MODALITIES],
        model_config={"embed_dim": dim},
        train_config={},
        metrics={"val": {"recall@20": 0.05}},
    )
    return manifest, arrays


def write_tiktok_sized(root: Path, promote: bool = True, **kwargs: object) -> Path:
    """Write one artifact under ``root`` (and point CURRENT at it); returns its directory."""
    manifest, arrays = build_tiktok_sized(**kwargs)  # type: ignore[arg-type]
    path = contract.write_artifact(root, manifest, arrays)
    if promote:
        contract.set_current(root, manifest.model_version)
    return path


def clustered_catalogue(
    n: int, dim: int = 64, n_clusters: int = 2_000, spread: float = 0.5, seed: int = 0
) -> np.ndarray:
    """(n, dim) float32 item vectors around ``n_clusters`` Gaussian centres (spread = noise / centre)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_clusters, dim)).astype(np.float32)
    out = np.empty((n, dim), dtype=np.float32)
    step = 200_000
    for start in range(0, n, step):
        m = min(step, n - start)
        which = rng.integers(0, n_clusters, size=m)
        out[start : start + m] = centres[which] + spread * rng.standard_normal((m, dim), dtype=np.float32)
    out /= np.sqrt(dim)
    return out


def queries_like(items: np.ndarray, n: int, seed: int = 1) -> np.ndarray:
    """(n, dim) user-like queries: the mean of a few random items (a short history) plus noise."""
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, items.shape[0], size=(n, 5))
    q = items[picks].mean(axis=1)
    q += rng.standard_normal(q.shape, dtype=np.float32) * float(q.std()) * 0.5
    return np.ascontiguousarray(q, dtype=np.float32)
