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

Kind ``knn`` (issue 11 (b)) has no mapper: the model was trained with the frozen item kNN graph S
(``model.graph.build_item_graph``, h_i += S^L e_i) and a new item's vector is its row of S^L E,
from its k most similar source items (those with training interactions) per modality:

    u^m = unit((x^m - mean^m) / scale^m)                  (unit: divided by its L2 norm)
    h   = sum_m sum_{j in top-k_j (u^m . U^m_j)} w^m_j V_j

with U^m the sources' unit features, w^m_j the value S gives an edge into source j in modality m
(1/(M sqrt(k indeg^m_j)) or 1/(M k)) and V = (S^{L-1} E)[sources]. Kind ``knn-calibrated`` maps
that row onto the line s h + c (s > 0, c (d,)) that the warm items' trained h_i have on their own
rows of S^L E (least squares): a new item has no ID side, the line stands in for it; a positive
s and a shared c keep every user's order of new items (``knn``: s = 1, c = 0).
Files (float32 unless said):

* ``content_knn_input_<m>.npy``    (2, D_m): mean^m, scale^m
* ``content_knn_features_<m>.npy`` (n_src, D_m): U^m
* ``content_knn_sources.npy``      (n_src,) int64: the source items' indices
* ``content_knn_weights.npy``      (M, n_src): w^m_j, modalities in ``modalities`` order
* ``content_knn_vectors.npy``      (n_src, d): V
* ``content_knn_line.npy``         (d + 1,): s, then c
and the entry's ``"knn": {"k", "layers", "features", "norm"}``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from artifact.contract import Artifact, ArtifactError

# How the linear mapper was fitted (the maths is the same); the export's --content-path choices are
# these and "none" (bpr first: the default).
CONTENT_KINDS = ("bpr", "bpr-calibrated", "profile", "ridge", "knn", "knn-calibrated")
CONTENT_MAPPER = "content_mapper.npy"
CONTENT_FILLED = "content_filled_items.npy"
KNN_KINDS = ("knn", "knn-calibrated")
CONTENT_KNN_SOURCES = "content_knn_sources.npy"
CONTENT_KNN_WEIGHTS = "content_knn_weights.npy"
CONTENT_KNN_VECTORS = "content_knn_vectors.npy"
CONTENT_KNN_LINE = "content_knn_line.npy"


def content_input_file(name: str) -> str:
    return f"content_input_{name}.npy"


def content_projection_file(name: str) -> str:
    return f"content_projection_{name}.npy"


def content_mapper_input_file(name: str) -> str:
    return f"content_mapper_input_{name}.npy"


def content_knn_input_file(name: str) -> str:
    return f"content_knn_input_{name}.npy"


def content_knn_features_file(name: str) -> str:
    return f"content_knn_features_{name}.npy"


def content_files(modalities: Mapping[str, int], projected: list[str], kind: str = "ridge") -> list[str]:
    """Every file name a content path of ``kind`` with these input modalities and projections writes."""
    if kind in KNN_KINDS:
        names = [CONTENT_FILLED, CONTENT_KNN_SOURCES, CONTENT_KNN_WEIGHTS, CONTENT_KNN_VECTORS]
        names.append(CONTENT_KNN_LINE)
        names += [content_knn_input_file(m) for m in modalities]
        names += [content_knn_features_file(m) for m in modalities]
    else:
        names = [CONTENT_MAPPER, CONTENT_FILLED]
        names += [content_mapper_input_file(m) for m in modalities]
    names += [content_input_file(m) for m in projected] + [content_projection_file(m) for m in projected]
    return names


@dataclass(frozen=True)
class KnnContent:
    """The serving part of the frozen item kNN graph (kind ``knn``): see the module docstring."""

    k: int
    inputs: dict[str, tuple[np.ndarray, np.ndarray]] = field(repr=False)  # name -> (mean, scale)
    source_features: dict[str, np.ndarray] = field(repr=False)  # name -> U^m (n_src, D_m)
    sources: np.ndarray = field(repr=False)  # (n_src,) int64
    weights: np.ndarray = field(repr=False)  # (M, n_src)
    vectors: np.ndarray = field(repr=False)  # (n_src, d)
    scale: float = 1.0  # s of the calibration line (kind knn-calibrated)
    bias: np.ndarray | None = field(default=None, repr=False)  # c (d,); None = 0

    def neighbours(self, raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """name -> (n, k) positions (into ``sources``) of each item's k most similar sources."""
        out = {}
        for name, (mean, scale) in self.inputs.items():
            x = (np.asarray(raw[name], dtype=np.float32) - mean) / scale
            unit = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
            sims = unit @ self.source_features[name].T  # (n, n_src)
            out[name] = np.argpartition(-sims, self.k - 1, axis=1)[:, : self.k]
        return out

    def item_vectors(self, raw: Mapping[str, np.ndarray]) -> np.ndarray:
        """(n, d) float32: each item's row of S^L E from its features alone."""
        n = next(iter(raw.values())).shape[0] if raw else 0
        out = np.zeros((n, self.vectors.shape[1]), dtype=np.float64)
        for m, positions in enumerate(self.neighbours(raw).values()):
            w = self.weights[m][positions]  # (n, k)
            out += np.einsum("nk,nkd->nd", w, self.vectors[positions])
        out *= self.scale
        if self.bias is not None:
            out += self.bias
        return out.astype(np.float32)


@dataclass(frozen=True)
class ContentPath:
    modalities: dict[str, int]  # modality name -> raw feature dimension, in artifact order
    dim: int  # d, the embedding size of h_i
    # The model's projections: name -> (s_mean (D_m,), s_scale (D_m,), W (D_m, d), b (d,)).
    projections: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = field(repr=False)
    # The mapper: name -> (mu (D_m,), sigma (D_m,)), and A (sum D_m, d), c (d,); None for kind knn.
    mapper_input: dict[str, tuple[np.ndarray, np.ndarray]] | None = field(repr=False)
    mapper_weight: np.ndarray | None = field(repr=False)
    mapper_bias: np.ndarray | None = field(repr=False)
    knn: KnnContent | None = field(default=None, repr=False)  # kind knn only

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
        if self.knn is not None:
            return self.knn.item_vectors({m: raw[m] for m in self.modalities})
        assert self.mapper_input is not None and self.mapper_weight is not None
        assert self.mapper_bias is not None
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
    knn: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    if kind not in CONTENT_KINDS:
        raise ValueError(f"content kind must be one of {CONTENT_KINDS} (got {kind!r})")
    if (kind in KNN_KINDS) != (knn is not None):
        raise ValueError(f"content kind {kind!r}: the knn settings go with kinds {KNN_KINDS} only")
    entry = {
        "kind": kind,
        "modalities": {str(k): int(v) for k, v in modalities.items()},
        "projected": list(projected),
        "n_filled": int(n_filled),
        "fit": dict(fit),
    }
    if knn is not None:
        entry["knn"] = dict(knn)
    return entry


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
    filled = extra.get(CONTENT_FILLED)
    n_items = artifact.manifest.n_items
    if filled is None or filled.ndim != 1 or (filled.size and (filled.min() < 0 or filled.max() >= n_items)):
        raise ArtifactError(f"{artifact.path / CONTENT_FILLED}: missing or item index out of range")
    if kind in KNN_KINDS:
        knn = _load_knn(artifact, entry, modalities, array, where)
        return ContentPath(modalities, d, projections, None, None, None, knn=knn)
    mapper_input = {}
    for m, size in modalities.items():
        stats = array(content_mapper_input_file(m), (2, size)).astype(np.float32)
        mapper_input[m] = (stats[0], stats[1])
    mapper = array(CONTENT_MAPPER, (sum(modalities.values()) + 1, d)).astype(np.float32)
    return ContentPath(
        modalities=modalities,
        dim=d,
        projections=projections,
        mapper_input=mapper_input,
        mapper_weight=mapper[:-1],
        mapper_bias=mapper[-1],
    )


def _load_knn(
    artifact: Artifact,
    entry: Mapping[str, Any],
    modalities: dict[str, int],
    array: Callable[[str, tuple[int, ...]], np.ndarray],
    where: str,
) -> KnnContent:
    try:
        k = int(entry["knn"]["k"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(f"{where}: kind knn without a valid knn.k ({exc})") from exc
    sources_arr = artifact.arrays.extra.get(CONTENT_KNN_SOURCES)
    if sources_arr is None or sources_arr.ndim != 1:
        raise ArtifactError(f"{artifact.path / CONTENT_KNN_SOURCES}: missing or not one-dimensional")
    sources = sources_arr.astype(np.int64)
    n_src = sources.size
    if not 0 < k <= n_src:
        raise ArtifactError(f"{where}: knn.k {k} not in [1, {n_src}] (source items)")
    if sources.min() < 0 or sources.max() >= artifact.manifest.n_items:
        raise ArtifactError(f"{artifact.path / CONTENT_KNN_SOURCES}: item index out of range")
    line = array(CONTENT_KNN_LINE, (artifact.manifest.dim + 1,)).astype(np.float32)
    if not line[0] > 0:
        raise ArtifactError(f"{artifact.path / CONTENT_KNN_LINE}: scale {line[0]} is not positive")
    inputs, features = {}, {}
    for m, size in modalities.items():
        stats = array(content_knn_input_file(m), (2, size)).astype(np.float32)
        inputs[m] = (stats[0], stats[1])
        features[m] = array(content_knn_features_file(m), (n_src, size)).astype(np.float32)
    return KnnContent(
        k=k,
        inputs=inputs,
        source_features=features,
        sources=sources,
        weights=array(CONTENT_KNN_WEIGHTS, (len(modalities), n_src)).astype(np.float32),
        vectors=array(CONTENT_KNN_VECTORS, (n_src, artifact.manifest.dim)).astype(np.float32),
        scale=float(line[0]),
        bias=line[1:],
    )


def filled_items(artifact: Artifact) -> np.ndarray:
    """Item indices whose exported h_i came from the content path (empty without one)."""
    arr = artifact.arrays.extra.get(CONTENT_FILLED)
    return np.zeros(0, dtype=np.int64) if arr is None else arr.astype(np.int64)
