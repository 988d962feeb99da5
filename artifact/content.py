"""The content path of an artifact: vectors for items from their raw features alone (issue 11).

numpy + standard library only: the service imports this module and never torch. The PyTorch side
is ``model.content.ContentMapper`` and ``model.mmssl.MMSSL.project``; ``training.content`` fits the
mapper after training and ``training.export`` writes the arrays below, listed and checksummed in
manifest.json like every other file.

Two maps, both from the raw features x^m (n, D_m) of every modality in ``ContentPath.modalities``:

* the model's own modality projection, for Eq. 2 (one per modality the model was trained with;
  none for an ID-only model):
      fbar^m = ((x^m - s_mean^m) / s_scale^m) W^m + b^m        (s_* = 0 / 1 without feature_norm)
  exactly the rows the artifact stores in ``modality_<name>.npy``;
* the content mapper, an item vector for an item without training interactions:
      h = concat_m ((x^m - mu^m) / sigma^m) A + c

Files (all float32):

* ``content_input_<m>.npy``      (2, D_m): s_mean^m, s_scale^m of the projection input
* ``content_projection_<m>.npy`` (D_m + 1, d): W^m stacked on b^m
* ``content_mapper_input_<m>.npy`` (2, D_m): mu^m, sigma^m of the mapper input
* ``content_mapper.npy``         (sum_m D_m + 1, d): A stacked on c
* ``content_filled_items.npy``   (n_filled,) int64: the item rows whose h_i (``item_embeddings.npy``)
  came from the mapper at export because they had no training interaction

The manifest's ``content`` entry holds ``{"kind": "ridge" | "bpr" | "bpr-calibrated" | "profile",
"modalities": {name: D_m}, "projected": [names], "n_filled": int, "fit": {...}}``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from artifact.contract import Artifact, ArtifactError

# How the linear mapper was fitted (the maths is the same); the export's --content-path choices are
# these and "none" (bpr first: the default).
CONTENT_KINDS = ("bpr", "bpr-calibrated", "profile", "ridge")
CONTENT_MAPPER = "content_mapper.npy"
CONTENT_FILLED = "content_filled_items.npy"


def content_input_file(name: str) -> str:
    return f"content_input_{name}.npy"


def content_projection_file(name: str) -> str:
    return f"content_projection_{name}.npy"


def content_mapper_input_file(name: str) -> str:
    return f"content_mapper_input_{name}.npy"


def content_files(modalities: Mapping[str, int], projected: list[str]) -> list[str]:
    """Every file name a content path with these input modalities and projections writes."""
    names = [CONTENT_MAPPER, CONTENT_FILLED]
    names += [content_mapper_input_file(m) for m in modalities]
    names += [content_input_file(m) for m in projected] + [content_projection_file(m) for m in projected]
    return names


@dataclass(frozen=True)
class ContentPath:
    modalities: dict[str, int]  # modality name -> raw feature dimension, in artifact order
    dim: int  # d, the embedding size of h_i
    # The model's projections: name -> (s_mean (D_m,), s_scale (D_m,), W (D_m, d), b (d,)).
    projections: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(repr=False)
    # The mapper: name -> (mu (D_m,), sigma (D_m,)), and A (sum D_m, d), c (d,).
    mapper_input: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)
    mapper_weight: np.ndarray = field(repr=False)
    mapper_bias: np.ndarray = field(repr=False)

    def check_raw(self, raw: Mapping[str, np.ndarray]) -> int:
        """Validate ``raw`` (all modalities, right widths, same row count, finite); return n.

        Raises ValueError naming the modality and what was expected.
        """
        missing = [m for m in self.modalities if m not in raw]
        unknown = [m for m in raw if m not in self.modalities]
        if missing or unknown:
            raise ValueError(
                f"modalities must be exactly {list(self.modalities)}"
                + (f"; missing {missing}" if missing else "")
                + (f"; unknown {unknown}" if unknown else "")
            )
        n: int | None = None
        for name, size in self.modalities.items():
            x = np.asarray(raw[name])
            if x.ndim != 2 or x.shape[1] != size:
                raise ValueError(f"modality {name!r}: expected shape (n, {size}), got {x.shape}")
            if n is not None and x.shape[0] != n:
                raise ValueError(f"modality {name!r}: {x.shape[0]} rows, other modalities have {n}")
            n = x.shape[0]
            if not np.isfinite(x).all():
                raise ValueError(f"modality {name!r}: features hold NaN or inf")
        return int(n or 0)

    def modality_features(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """raw: name -> (n, D_m) float32 finite raw features of n items (all modalities present).

        Returns name -> (n, d) float32: the projected item features fbar_i^m exactly as stored in
        the artifact's modality_<name>.npy rows, so Eq. 2 (artifact.contract.modality_side /
        user_vector) can use a new item like a trained one. Empty for an ID-only model.
        """
        self.check_raw(raw)
        out: dict[str, np.ndarray] = {}
        for name, (s_mean, s_scale, weight, bias) in self.projections.items():
            x = np.asarray(raw[name], dtype=np.float32)
            out[name] = (((x - s_mean) / s_scale) @ weight + bias).astype(np.float32)
        return out

    def item_vectors(self, raw: Mapping[str, np.ndarray]) -> np.ndarray:
        """(n, d) float32 h_i for items with no training interaction, from their content alone."""
        n = self.check_raw(raw)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        parts = []
        for name in self.modalities:
            mean, scale = self.mapper_input[name]
            parts.append((np.asarray(raw[name], dtype=np.float32) - mean) / scale)
        z = np.concatenate(parts, axis=1)  # (n, sum D_m)
        return (z @ self.mapper_weight + self.mapper_bias).astype(np.float32)


def content_manifest_entry(
    modalities: Mapping[str, int],
    projected: list[str],
    n_filled: int,
    fit: Mapping[str, Any],
    kind: str = "ridge",
) -> dict[str, Any]:
    if kind not in CONTENT_KINDS:
        raise ValueError(f"content kind must be one of {CONTENT_KINDS} (got {kind!r})")
    return {
        "kind": kind,
        "modalities": {str(k): int(v) for k, v in modalities.items()},
        "projected": list(projected),
        "n_filled": int(n_filled),
        "fit": dict(fit),
    }


def load_content_path(artifact: Artifact) -> ContentPath | None:
    """The artifact's content path (arrays verified through the manifest like every other file),
    or None for an artifact exported without one (older artifacts keep loading)."""
    entry = artifact.manifest.content
    if entry is None:
        return None
    where = f"{artifact.path}/manifest.json content"
    try:
        kind = entry["kind"]
        modalities = {str(k): int(v) for k, v in dict(entry["modalities"]).items()}
        projected = [str(m) for m in entry["projected"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{where}: malformed ({exc})") from exc
    if kind not in CONTENT_KINDS:
        raise ArtifactError(f"{where}: kind {kind!r} not in {CONTENT_KINDS}")
    if not modalities:
        raise ArtifactError(f"{where}: no input modalities")
    if sorted(projected) != sorted(artifact.manifest.modality_names):
        raise ArtifactError(
            f"{where}: projected {projected} differ from the artifact's modalities "
            f"{artifact.manifest.modality_names}"
        )
    if any(m not in modalities for m in projected):
        raise ArtifactError(f"{where}: projected modalities {projected} are not all inputs")
    extra = artifact.arrays.extra
    d = artifact.manifest.dim

    def array(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in extra:
            raise ArtifactError(f"{artifact.path / name}: content path file missing from the manifest")
        arr = extra[name]
        if arr.shape != shape:
            raise ArtifactError(f"{artifact.path / name}: shape {arr.shape}, expected {shape}")
        if arr.dtype.kind == "f" and not np.isfinite(arr).all():
            raise ArtifactError(f"{artifact.path / name}: holds NaN or inf")
        return arr

    projections = {}
    for m in projected:
        stats = array(content_input_file(m), (2, modalities[m])).astype(np.float32)
        proj = array(content_projection_file(m), (modalities[m] + 1, d)).astype(np.float32)
        projections[m] = (stats[0], stats[1], proj[:-1], proj[-1])
    mapper_input = {}
    for m, size in modalities.items():
        stats = array(content_mapper_input_file(m), (2, size)).astype(np.float32)
        mapper_input[m] = (stats[0], stats[1])
    mapper = array(CONTENT_MAPPER, (sum(modalities.values()) + 1, d)).astype(np.float32)
    filled = extra.get(CONTENT_FILLED)
    n_items = artifact.manifest.n_items
    if filled is None or filled.ndim != 1 or (filled.size and (filled.min() < 0 or filled.max() >= n_items)):
        raise ArtifactError(f"{artifact.path / CONTENT_FILLED}: missing or item index out of range")
    return ContentPath(
        modalities=modalities,
        dim=d,
        projections=projections,
        mapper_input=mapper_input,
        mapper_weight=mapper[:-1],
        mapper_bias=mapper[-1],
    )


def filled_items(artifact: Artifact) -> np.ndarray:
    """Item indices whose exported h_i came from the content path (empty without one)."""
    arr = artifact.arrays.extra.get(CONTENT_FILLED)
    return np.zeros(0, dtype=np.int64) if arr is None else arr.astype(np.int64)
