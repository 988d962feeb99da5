"""Random but self-consistent artifacts written with the real contract (numpy only, no torch).

h_u is computed here with plain numpy as e_hat_u + omega * sum_m normalize(f_u^m) (Eq. 2, Eq. 12), so
the identities the service relies on hold exactly.
"""

from __future__ import annotations

from pathlib import Path

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
