"""Random but self-consistent artifacts written with the real contract (numpy only, no torch).

h_u is computed here with plain numpy as e_hat_u + omega * sum_m normalize(f_u^m) (Eq. 2, Eq. 12), so
the identities the service relies on hold exactly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from artifact import contract
from artifact.contract import ArtifactArrays, Manifest

MODALITIES = ("image", "audio")


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


def build(
    n_users: int = 40,
    n_items: int = 120,
    dim: int = 16,
    n_layers: int = 2,
    omega: float = 0.5,
    seed: int = 0,
    recall: float | None = 0.10,
    version: str | None = None,
    item_ids: list[str] | None = None,
    user_ids: list[str] | None = None,
) -> tuple[Manifest, ArtifactArrays]:
    rng = np.random.default_rng(seed)
    user_ids = user_ids or [f"u{i}" for i in range(n_users)]
    item_ids = item_ids or [f"i{i}" for i in range(n_items)]
    n_users, n_items = len(user_ids), len(item_ids)
    # user 0 has no training interaction (like the 10 such users of the real data)
    lengths = rng.integers(3, 12, size=n_users)
    lengths[0] = 0
    rows = [np.sort(rng.choice(n_items, size=int(n), replace=False)) for n in lengths]
    indptr = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    indices = np.concatenate(rows).astype(np.int32)
    modality = {m: rng.normal(size=(n_items, dim)).astype(np.float32) for m in MODALITIES}
    user_id_side = rng.normal(size=(n_users, dim)).astype(np.float32)
    user_emb = np.empty((n_users, dim), dtype=np.float32)
    for u, items in enumerate(rows):
        side = np.zeros(dim)
        if items.size:
            for feats in modality.values():
                side += _normalize(feats[items].astype(np.float64).sum(0) / np.sqrt(items.size))
        user_emb[u] = user_id_side[u] + omega * side
    arrays = ArtifactArrays(
        user_ids=user_ids,
        item_ids=item_ids,
        user_embeddings=user_emb,
        item_embeddings=rng.normal(size=(n_items, dim)).astype(np.float32),
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
        dataset_fingerprint=f"synthetic-{seed}",
        n_users=n_users,
        n_items=n_items,
        dim=dim,
        n_layers=n_layers,
        omega=omega,
        graph_norm="paper",
        modalities=[{"name": m, "raw_dim": dim, "dim": dim} for m in MODALITIES],
        model_config={"embed_dim": dim},
        train_config={},
        metrics={"val": {"recall@20": recall}} if recall is not None else {},
    )
    return manifest, arrays


def write(root: Path, set_current: bool = True, **kwargs: object) -> Path:
    manifest, arrays = build(**kwargs)  # type: ignore[arg-type]
    path = contract.write_artifact(root, manifest, arrays)
    if set_current:
        contract.set_current(root, manifest.model_version)
    return path


def tamper(path: Path, name: str = contract.ITEM_EMB) -> Path:
    """Flip one byte near the end of an artifact file (files are written read-only)."""
    target = path / name
    target.chmod(0o644)
    data = bytearray(target.read_bytes())
    data[-3] ^= 0xFF
    target.write_bytes(bytes(data))
    return target


def point_current(root: Path, version: str) -> None:
    """Write CURRENT without contract.set_current's verification (to simulate a bad promotion)."""
    (root / contract.CURRENT).write_text(version + "\n")


# ---------------------------------------------------------------------------------- content path

RAW_DIMS = {"image": 10, "audio": 7}  # raw feature widths: different from d on purpose


def project(raw: np.ndarray, stats: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """fbar = ((x - mean) / scale) W + b, in plain numpy (the reference for the service)."""
    return (((raw - stats[0]) / stats[1]) @ weight[:-1] + weight[-1]).astype(np.float32)


def map_content(raw: dict[str, np.ndarray], planted: dict[str, np.ndarray]) -> np.ndarray:
    """h = concat_m ((x^m - mu^m) / sigma^m) A + c, in plain numpy."""
    z = np.concatenate(
        [(raw[m] - planted[f"mapper_input_{m}"][0]) / planted[f"mapper_input_{m}"][1] for m in RAW_DIMS],
        axis=-1,
    )
    mapper = planted["mapper"]
    return (z @ mapper[:-1] + mapper[-1]).astype(np.float32)


def write_with_content(
    root: Path, set_current: bool = True, seed: int = 0, **kwargs: object
) -> tuple[Path, dict[str, np.ndarray]]:
    """An artifact with a content path (artifact.content's files), its modality_<m>.npy rows the
    projection of planted raw features. Returns (path, planted arrays: ``raw_<m>`` (n_items, D_m)
    and every content array by role)."""
    from artifact import content

    manifest, arrays = build(seed=seed, **kwargs)  # type: ignore[arg-type]
    rng = np.random.default_rng(1000 + seed)
    d, n = manifest.dim, manifest.n_items
    planted: dict[str, np.ndarray] = {}
    extra: dict[str, np.ndarray] = {}
    for m, size in RAW_DIMS.items():
        raw = rng.normal(size=(n, size)).astype(np.float32)
        stats = np.stack([rng.normal(size=size), rng.uniform(0.5, 2.0, size=size)]).astype(np.float32)
        weight = (rng.normal(size=(size + 1, d)) / np.sqrt(size)).astype(np.float32)
        mapper_stats = np.stack([rng.normal(size=size), rng.uniform(0.5, 2.0, size=size)]).astype(np.float32)
        arrays.modality_features[m] = project(raw, stats, weight)
        planted[f"raw_{m}"], planted[f"input_{m}"], planted[f"projection_{m}"] = raw, stats, weight
        planted[f"mapper_input_{m}"] = mapper_stats
        extra[content.content_input_file(m)] = stats
        extra[content.content_projection_file(m)] = weight
        extra[content.content_mapper_input_file(m)] = mapper_stats
    total = sum(RAW_DIMS.values())
    planted["mapper"] = (rng.normal(size=(total + 1, d)) / np.sqrt(total)).astype(np.float32)
    extra[content.CONTENT_MAPPER] = planted["mapper"]
    extra[content.CONTENT_FILLED] = np.zeros(0, dtype=np.int64)
    arrays.extra = extra
    # h_u of the builder used the random modality features: recompute Eq. 12 with the projected ones
    for u in range(manifest.n_users):
        items = arrays.train_indices[arrays.train_indptr[u] : arrays.train_indptr[u + 1]]
        side = np.zeros(d)
        if items.size:
            for feats in arrays.modality_features.values():
                side += _normalize(feats[items].astype(np.float64).sum(0) / np.sqrt(items.size))
        arrays.user_embeddings[u] = arrays.user_id_side[u] + manifest.omega * side
    manifest.modalities = [{"name": m, "raw_dim": RAW_DIMS[m], "dim": d} for m in RAW_DIMS]
    manifest.content = content.content_manifest_entry(RAW_DIMS, list(RAW_DIMS), 0, {"synthetic": True})
    path = contract.write_artifact(root, manifest, arrays)
    if set_current:
        contract.set_current(root, manifest.model_version)
    return path, planted


class CountingSearch:
    """Wraps an index and counts its ``search`` calls (to show which requests searched it)."""

    def __init__(self, index: Any) -> None:
        self.index, self.calls = index, 0

    def search(self, *args: Any) -> Any:
        self.calls += 1
        return self.index.search(*args)
