"""The artifact contract between training and serving.

numpy + standard library only: the service imports this module and never torch.

An artifact is an immutable directory ``<root>/<model_version>/`` holding numpy arrays and JSON
files plus a ``manifest.json`` that records the sha256, shape and dtype of every file. The store
root holds a ``CURRENT`` file naming the version that serves; promotion and rollback rewrite it
atomically.

The user-vector maths the service needs (Eq. 2 and Eq. 12 of the MMSSL paper, and the fold-in of a
user unknown at training time) lives here too, so that the trainer's tests and the service run the
very same code path.

Vector recipe (d = embedding size, M = modalities, L = GNN layers):

* modality side (Eq. 2):   f_u^m = sum_{i in N_u} fbar_i^m / sqrt(|N_u|)
* final user vector (Eq. 12): h_u = e_hat_u + omega * sum_m f_u^m / ||f_u^m||
* ID side ``e_hat_u``: the trained value for users known at training time. For a user unknown at
  training time it is folded in by running the trained GNN's user update on the exported item
  layer embeddings (Eq. 10 with the user's own zero-order embedding unknown, hence zero):
      e_hat_u = (1 / (L + 1)) * sum_{l=1..L} sum_{i in N_u} w(u, i) * E_i^{(l-1)}
  with w(u, i) = 1/sqrt(|N_u|) (graph_norm "paper", as Eq. 10) or 1/sqrt(|N_u| * |N_i|)
  (graph_norm "symmetric", LightGCN), |N_i| being the item's training degree (at least 1).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CURRENT = "CURRENT"

# File names of the contract.
USER_IDS = "user_ids.json"
ITEM_IDS = "item_ids.json"
USER_EMB = "user_embeddings.npy"  # h_u, (n_users, d) float32
ITEM_EMB = "item_embeddings.npy"  # h_i, (n_items, d) float32
USER_ID_EMB = "user_id_side.npy"  # e_hat_u, (n_users, d) float32
ITEM_LAYER_EMB = "item_layer_embeddings.npy"  # E_i^(l), l = 0..L-1, (L, n_items, d) float32
TRAIN_INDPTR = "train_indptr.npy"  # CSR of training interactions, (n_users + 1,) int64
TRAIN_INDICES = "train_indices.npy"  # (nnz,) int32 item indices, sorted within each user
ITEM_POPULARITY = "item_popularity.npy"  # (n_items,) int64 training interaction counts

GRAPH_NORMS = ("paper", "symmetric")
_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_EXTRA_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,120}\.npy$")


def modality_file(name: str) -> str:
    """Projected item features fbar_i^m of one modality, (n_items, d) float32."""
    return f"modality_{name}.npy"


class ArtifactError(Exception):
    """An artifact is missing, malformed, or does not match its manifest."""


@dataclass(frozen=True)
class FileEntry:
    sha256: str
    shape: tuple[int, ...]
    dtype: str

    def to_json(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "shape": list(self.shape), "dtype": self.dtype}


@dataclass
class Manifest:
    model_version: str
    created_at: str
    dataset_fingerprint: str
    n_users: int
    n_items: int
    dim: int
    n_layers: int
    omega: float
    graph_norm: str
    modalities: list[dict[str, Any]]  # [{"name", "raw_dim", "dim"}]
    model_config: dict[str, Any]
    train_config: dict[str, Any]
    metrics: dict[str, Any]
    files: dict[str, FileEntry] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    parent_version: str | None = None
    notes: dict[str, Any] = field(default_factory=dict)
    # The content path (artifact/content.py) when exported with one: its kind, input modalities and
    # fit report. Absent from manifest.json (None) for artifacts without one, which keep loading.
    content: dict[str, Any] | None = None

    @property
    def modality_names(self) -> list[str]:
        return [m["name"] for m in self.modalities]

    def val_recall20(self) -> float | None:
        value = self.metrics.get("val", {}).get("recall@20")
        return None if value is None else float(value)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format_version": self.format_version,
            "model_version": self.model_version,
            "parent_version": self.parent_version,
            "created_at": self.created_at,
            "dataset_fingerprint": self.dataset_fingerprint,
            "n_users": self.n_users,
            "n_items": self.n_items,
            "dim": self.dim,
            "n_layers": self.n_layers,
            "omega": self.omega,
            "graph_norm": self.graph_norm,
            "modalities": self.modalities,
            "model_config": self.model_config,
            "train_config": self.train_config,
            "metrics": self.metrics,
            "notes": self.notes,
            "files": {k: v.to_json() for k, v in sorted(self.files.items())},
        }
        if self.content is not None:
            out["content"] = self.content
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any], where: str = MANIFEST) -> Manifest:
        required = [
            "format_version",
            "model_version",
            "created_at",
            "dataset_fingerprint",
            "n_users",
            "n_items",
            "dim",
            "n_layers",
            "omega",
            "graph_norm",
            "modalities",
            "model_config",
            "train_config",
            "metrics",
            "files",
        ]
        missing = [k for k in required if k not in data]
        if missing:
            raise ArtifactError(f"{where}: missing keys {missing}")
        if data["format_version"] != FORMAT_VERSION:
            raise ArtifactError(
                f"{where}: format_version {data['format_version']!r} is not supported "
                f"(this build reads {FORMAT_VERSION})"
            )
        if data["graph_norm"] not in GRAPH_NORMS:
            raise ArtifactError(f"{where}: graph_norm {data['graph_norm']!r} not in {GRAPH_NORMS}")
        try:
            files = {
                name: FileEntry(str(e["sha256"]), tuple(int(s) for s in e["shape"]), str(e["dtype"]))
                for name, e in data["files"].items()
            }
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{where}: malformed 'files' entry ({exc})") from exc
        return cls(
            model_version=str(data["model_version"]),
            parent_version=data.get("parent_version"),
            created_at=str(data["created_at"]),
            dataset_fingerprint=str(data["dataset_fingerprint"]),
            n_users=int(data["n_users"]),
            n_items=int(data["n_items"]),
            dim=int(data["dim"]),
            n_layers=int(data["n_layers"]),
            omega=float(data["omega"]),
            graph_norm=str(data["graph_norm"]),
            modalities=list(data["modalities"]),
            model_config=dict(data["model_config"]),
            train_config=dict(data["train_config"]),
            metrics=dict(data["metrics"]),
            notes=dict(data.get("notes", {})),
            content=None if data.get("content") is None else dict(data["content"]),
            files=files,
            format_version=int(data["format_version"]),
        )


@dataclass
class ArtifactArrays:
    """Everything an artifact holds besides its manifest, as in-memory arrays."""

    user_ids: list[str]
    item_ids: list[str]
    user_embeddings: np.ndarray  # h_u (n_users, d)
    item_embeddings: np.ndarray  # h_i (n_items, d)
    user_id_side: np.ndarray  # e_hat_u (n_users, d)
    item_layer_embeddings: np.ndarray  # (L, n_items, d)
    modality_features: dict[str, np.ndarray]  # name -> fbar^m (n_items, d)
    train_indptr: np.ndarray  # (n_users + 1,)
    train_indices: np.ndarray  # (nnz,)
    item_popularity: np.ndarray  # (n_items,)
    # Further arrays listed in the manifest beyond the ones above (file name -> array), e.g. the
    # content path's (artifact/content.py). Written and verified like every other file.
    extra: dict[str, np.ndarray] = field(default_factory=dict)


@dataclass
class Artifact:
    path: Path
    manifest: Manifest
    arrays: ArtifactArrays

    @property
    def version(self) -> str:
        return self.manifest.model_version

    def user_items(self, user_index: int) -> np.ndarray:
        a = self.arrays
        return a.train_indices[a.train_indptr[user_index] : a.train_indptr[user_index + 1]]


# ----------------------------------------------------------------------------- hashing, ids


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def new_model_version(now: datetime | None = None) -> str:
    """Sortable, unique: UTC timestamp plus 8 random hex digits."""
    now = now or datetime.now(UTC)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:8]


def check_version_name(version: str) -> str:
    if not _VERSION_RE.fullmatch(version):  # not match: "$" also matches before a final newline
        raise ArtifactError(f"invalid model version name {version!r}")
    return version


# ----------------------------------------------------------------------------- write


def _validate_arrays(m: Manifest, a: ArtifactArrays) -> None:
    n_u, n_i, d, L = m.n_users, m.n_items, m.dim, m.n_layers
    checks = [
        (len(a.user_ids) == n_u, f"user_ids has {len(a.user_ids)} entries, expected {n_u}"),
        (len(a.item_ids) == n_i, f"item_ids has {len(a.item_ids)} entries, expected {n_i}"),
        (len(set(a.user_ids)) == n_u, "user_ids are not unique"),
        (len(set(a.item_ids)) == n_i, "item_ids are not unique"),
        (a.user_embeddings.shape == (n_u, d), f"user_embeddings shape {a.user_embeddings.shape}"),
        (a.item_embeddings.shape == (n_i, d), f"item_embeddings shape {a.item_embeddings.shape}"),
        (a.user_id_side.shape == (n_u, d), f"user_id_side shape {a.user_id_side.shape}"),
        (
            a.item_layer_embeddings.shape == (L, n_i, d),
            f"item_layer_embeddings shape {a.item_layer_embeddings.shape}, expected {(L, n_i, d)}",
        ),
        (a.train_indptr.shape == (n_u + 1,), f"train_indptr shape {a.train_indptr.shape}"),
        (a.item_popularity.shape == (n_i,), f"item_popularity shape {a.item_popularity.shape}"),
        (sorted(a.modality_features) == sorted(m.modality_names), "modality names differ"),
        (m.graph_norm in GRAPH_NORMS, f"graph_norm {m.graph_norm!r}"),
    ]
    for ok, msg in checks:
        if not ok:
            raise ArtifactError(f"cannot write artifact: {msg}")
    reserved = _expected_files(m)
    for name in a.extra:
        if name in reserved or name == MANIFEST or not _EXTRA_RE.match(name):
            raise ArtifactError(f"cannot write artifact: extra array name {name!r} is reserved or not *.npy")
    for name, feats in a.modality_features.items():
        if feats.shape != (n_i, d):
            raise ArtifactError(f"cannot write artifact: modality {name!r} shape {feats.shape}")
    for name, arr in (
        ("user_embeddings", a.user_embeddings),
        ("item_embeddings", a.item_embeddings),
        ("user_id_side", a.user_id_side),
    ):
        if not np.isfinite(arr).all():
            raise ArtifactError(f"cannot write artifact: {name} holds NaN or inf")


def _save_npy(directory: Path, name: str, arr: np.ndarray, files: dict[str, FileEntry]) -> None:
    path = directory / name
    np.save(path, np.ascontiguousarray(arr), allow_pickle=False)
    files[name] = FileEntry(sha256_file(path), tuple(arr.shape), str(arr.dtype))


def _save_json(directory: Path, name: str, obj: Any, files: dict[str, FileEntry]) -> None:
    path = directory / name
    path.write_text(json.dumps(obj, ensure_ascii=False))
    n = len(obj) if isinstance(obj, list) else 0
    files[name] = FileEntry(sha256_file(path), (n,), "json")


def write_artifact(root: Path | str, manifest: Manifest, arrays: ArtifactArrays) -> Path:
    """Write ``root/<manifest.model_version>`` atomically and return its path.

    Files are written into a temporary directory under ``root`` which is renamed into place only
    when complete, so readers never see a partial artifact and a crash leaves no version behind.
    """
    root = Path(root)
    check_version_name(manifest.model_version)
    _validate_arrays(manifest, arrays)
    root.mkdir(parents=True, exist_ok=True)
    final = root / manifest.model_version
    if final.exists():
        raise ArtifactError(f"{final} already exists: artifacts are immutable")
    tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=root))
    try:
        files: dict[str, FileEntry] = {}
        _save_json(tmp, USER_IDS, [str(x) for x in arrays.user_ids], files)
        _save_json(tmp, ITEM_IDS, [str(x) for x in arrays.item_ids], files)
        f32 = np.float32
        _save_npy(tmp, USER_EMB, arrays.user_embeddings.astype(f32), files)
        _save_npy(tmp, ITEM_EMB, arrays.item_embeddings.astype(f32), files)
        _save_npy(tmp, USER_ID_EMB, arrays.user_id_side.astype(f32), files)
        _save_npy(tmp, ITEM_LAYER_EMB, arrays.item_layer_embeddings.astype(f32), files)
        for name, feats in sorted(arrays.modality_features.items()):
            _save_npy(tmp, modality_file(name), feats.astype(f32), files)
        _save_npy(tmp, TRAIN_INDPTR, arrays.train_indptr.astype(np.int64), files)
        _save_npy(tmp, TRAIN_INDICES, arrays.train_indices.astype(np.int32), files)
        _save_npy(tmp, ITEM_POPULARITY, arrays.item_popularity.astype(np.int64), files)
        for name, arr in sorted(arrays.extra.items()):
            _save_npy(tmp, name, arr, files)
        manifest.files = files
        (tmp / MANIFEST).write_text(json.dumps(manifest.to_json(), indent=2, sort_keys=False))
        for p in tmp.iterdir():
            os.chmod(p, 0o444)
        os.chmod(tmp, 0o755)  # mkdtemp makes it 0700: other users (API replicas) could not read it
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


# ----------------------------------------------------------------------------- read + verify


def read_manifest(path: Path | str) -> Manifest:
    path = Path(path)
    mpath = path / MANIFEST
    if not mpath.is_file():
        raise ArtifactError(f"{mpath}: manifest not found")
    try:
        data = json.loads(mpath.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{mpath}: unreadable manifest ({exc})") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{mpath}: manifest is not a JSON object")
    return Manifest.from_json(data, where=str(mpath))


def _expected_files(m: Manifest) -> set[str]:
    names = {USER_IDS, ITEM_IDS, USER_EMB, ITEM_EMB, USER_ID_EMB, ITEM_LAYER_EMB}
    names |= {TRAIN_INDPTR, TRAIN_INDICES, ITEM_POPULARITY}
    names |= {modality_file(n) for n in m.modality_names}
    return names


def _load_verified(path: Path, name: str, entry: FileEntry) -> Any:
    fpath = path / name
    if not fpath.is_file():
        raise ArtifactError(f"{fpath}: listed in the manifest but missing")
    digest = sha256_file(fpath)
    if digest != entry.sha256:
        raise ArtifactError(
            f"{fpath}: sha256 mismatch (manifest {entry.sha256[:12]}..., file {digest[:12]}...)"
        )
    if entry.dtype == "json":
        try:
            obj = json.loads(fpath.read_text())
        except json.JSONDecodeError as exc:
            raise ArtifactError(f"{fpath}: malformed JSON ({exc})") from exc
        if not isinstance(obj, list) or len(obj) != entry.shape[0]:
            raise ArtifactError(f"{fpath}: expected a list of {entry.shape[0]} ids")
        return obj
    try:
        arr = np.load(fpath, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise ArtifactError(f"{fpath}: unreadable array ({exc})") from exc
    if tuple(arr.shape) != entry.shape:
        raise ArtifactError(f"{fpath}: shape {tuple(arr.shape)} != manifest {entry.shape}")
    if str(arr.dtype) != entry.dtype:
        raise ArtifactError(f"{fpath}: dtype {arr.dtype} != manifest {entry.dtype}")
    return arr


def load_artifact(path: Path | str) -> Artifact:
    """Load an artifact directory, verifying every file against the manifest."""
    path = Path(path)
    m = read_manifest(path)
    missing = _expected_files(m) - set(m.files)
    if missing:
        raise ArtifactError(f"{path / MANIFEST}: files missing from manifest: {sorted(missing)}")
    loaded = {name: _load_verified(path, name, entry) for name, entry in m.files.items()}
    arrays = ArtifactArrays(
        user_ids=[str(x) for x in loaded[USER_IDS]],
        item_ids=[str(x) for x in loaded[ITEM_IDS]],
        user_embeddings=loaded[USER_EMB],
        item_embeddings=loaded[ITEM_EMB],
        user_id_side=loaded[USER_ID_EMB],
        item_layer_embeddings=loaded[ITEM_LAYER_EMB],
        modality_features={n: loaded[modality_file(n)] for n in m.modality_names},
        train_indptr=loaded[TRAIN_INDPTR],
        train_indices=loaded[TRAIN_INDICES],
        item_popularity=loaded[ITEM_POPULARITY],
        extra={
            name: arr
            for name, arr in loaded.items()
            if name not in _expected_files(m) and isinstance(arr, np.ndarray)
        },
    )
    try:
        _validate_arrays(m, arrays)
    except ArtifactError as exc:
        raise ArtifactError(f"{path}: inconsistent artifact: {exc}") from exc
    indptr, indices = arrays.train_indptr, arrays.train_indices
    if indptr[0] != 0 or indptr[-1] != len(indices) or np.any(np.diff(indptr) < 0):
        raise ArtifactError(f"{path / TRAIN_INDPTR}: not a valid CSR row pointer")
    if len(indices) and (indices.min() < 0 or indices.max() >= m.n_items):
        raise ArtifactError(f"{path / TRAIN_INDICES}: item index out of range")
    return Artifact(path=path, manifest=m, arrays=arrays)


# ----------------------------------------------------------------------------- store: CURRENT


def list_versions(root: Path | str) -> list[str]:
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / MANIFEST).is_file())


def read_current(root: Path | str) -> str | None:
    p = Path(root) / CURRENT
    try:
        version = p.read_text().strip()
    except FileNotFoundError:
        return None
    return version or None


def set_current(root: Path | str, version: str) -> None:
    """Point the store at ``version`` (atomic rename). The version must exist and verify."""
    root = Path(root)
    check_version_name(version)
    artifact = load_artifact(root / version)  # refuse to point at a broken artifact
    if artifact.manifest.model_version != version:  # replicas would reload it on every poll
        raise ArtifactError(
            f"{root / version}: folder name {version!r} and the manifest's model_version "
            f"{artifact.manifest.model_version!r} disagree"
        )
    fd, tmp = tempfile.mkstemp(prefix=".current-", dir=root)
    os.fchmod(fd, 0o644)  # mkstemp makes it 0600: replicas running as another user must read it
    with os.fdopen(fd, "w") as fh:
        fh.write(version + "\n")
    os.replace(tmp, root / CURRENT)


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


# ----------------------------------------------------------------------------- user vectors


def l2_normalize(x: np.ndarray, axis: int = -1, eps: float = 1e-12) -> np.ndarray:
    """Same as torch.nn.functional.normalize: x / max(||x||, eps)."""
    norm = np.linalg.norm(x, axis=axis, keepdims=True)
    return x / np.maximum(norm, eps)


def modality_user_features(item_features: np.ndarray, items: Sequence[int] | np.ndarray) -> np.ndarray:
    """Eq. 2, user side: f_u^m = sum_{i in N_u} fbar_i^m / sqrt(|N_u|).  -> (d,)"""
    items = np.asarray(items, dtype=np.int64)
    if items.size == 0:
        return np.zeros(item_features.shape[1], dtype=np.float32)
    summed = item_features[items].sum(axis=0, dtype=np.float64)
    return (summed / np.sqrt(items.size)).astype(np.float32)


def modality_side(artifact: Artifact, items: Sequence[int] | np.ndarray) -> np.ndarray:
    """omega * sum_m f_u^m / ||f_u^m||  (the modality half of Eq. 12).  -> (d,)"""
    out = np.zeros(artifact.manifest.dim, dtype=np.float64)
    for feats in artifact.arrays.modality_features.values():
        out += l2_normalize(modality_user_features(feats, items).astype(np.float64))
    return (artifact.manifest.omega * out).astype(np.float32)


def fold_in_id_side(artifact: Artifact, items: Sequence[int] | np.ndarray) -> np.ndarray:
    """ID side for a user unknown at training time (see the module docstring).  -> (d,)"""
    m = artifact.manifest
    items = np.asarray(items, dtype=np.int64)
    if items.size == 0:
        return np.zeros(m.dim, dtype=np.float32)
    if m.graph_norm == "symmetric":
        deg = np.maximum(artifact.arrays.item_popularity[items], 1).astype(np.float64)
        weights = 1.0 / np.sqrt(items.size * deg)
    else:
        weights = np.full(items.size, 1.0 / np.sqrt(items.size))
    layers = artifact.arrays.item_layer_embeddings[:, items, :].astype(np.float64)  # (L, n, d)
    total = np.einsum("n,lnd->d", weights, layers)
    return (total / (m.n_layers + 1)).astype(np.float32)


def user_vector(
    artifact: Artifact, items: Sequence[int] | np.ndarray, user_index: int | None = None
) -> np.ndarray:
    """Eq. 12 for one user from a list of item indices.

    ``user_index`` given: the trained ID side e_hat_u is kept and only f_u^m is recomputed;
    otherwise the ID side is folded in from the items. -> (d,) float32
    """
    if user_index is not None:
        id_side = artifact.arrays.user_id_side[user_index].astype(np.float32)
    else:
        id_side = fold_in_id_side(artifact, items)
    return (id_side + modality_side(artifact, items)).astype(np.float32)


# ----------------------------------------------------------------------------- promotion


def served_recall(
    artifact: Artifact,
    train: Mapping[str, Sequence[str]],
    target: Mapping[str, Sequence[str]],
    k: int = 20,
) -> tuple[float, int]:
    """Recall@k of ``artifact`` as the service would rank (Eq. 12 vectors, FAISS-exact inner product,
    training items excluded), on data given by external ids: ``train`` user -> item ids they have,
    ``target`` user -> held-out item ids. Returns (mean recall over users with targets, n users).

    Two artifacts scored with this on the same ``train`` / ``target`` are compared on the same data,
    whatever data each was trained on: a user the artifact knows with the same training items uses
    its exported vector, one with other items keeps the trained ID side and recomputes the modality
    side (the service's fresh path), an unknown user is folded in. Items the artifact does not know
    cannot be recommended: as targets they count as misses, in a history they are skipped.
    """
    a = artifact.arrays
    item_index = {item: i for i, item in enumerate(a.item_ids)}
    user_index = {user: u for u, user in enumerate(a.user_ids)}
    users = [u for u, items in target.items() if len(items)]
    if not users:
        return 0.0, 0
    n_items = len(a.item_ids)
    kk = min(k, n_items)
    total = 0.0
    for start in range(0, len(users), 1024):
        block = users[start : start + 1024]
        vectors = np.empty((len(block), artifact.manifest.dim), dtype=np.float32)
        histories: list[np.ndarray] = []
        for row, user in enumerate(block):
            history = np.array(
                sorted({item_index[i] for i in train.get(user, ()) if i in item_index}), dtype=np.int64
            )
            histories.append(history)
            u = user_index.get(user)
            if u is not None and np.array_equal(np.sort(artifact.user_items(u)), history):
                vectors[row] = a.user_embeddings[u]
            elif u is not None:
                vectors[row] = user_vector(artifact, history, u)
            else:
                vectors[row] = user_vector(artifact, history)
        scores = vectors @ a.item_embeddings.T  # (B, n_items)
        for row, history in enumerate(histories):
            scores[row, history] = -np.inf
        top = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]  # (B, kk) the top kk, any order
        for row, user in enumerate(block):
            wanted = {item_index.get(i, -1) for i in target[user]}
            # k at least the items left after the history: the top kk then holds excluded items too
            shown = {int(i) for i in top[row] if scores[row, i] > -np.inf}
            total += len(wanted & shown) / len(target[user])
    return total / len(users), len(users)


def promotion_decision(
    candidate: float | None,
    champion: float | None,
    tolerance: float,
    force: bool = False,
    reference: float | None = None,
) -> tuple[bool, str]:
    """Whether a candidate replaces the serving model (the champion), from scores measured on the
    same validation data in the same job (``served_recall``).

    Promoted when nothing is serving (``champion`` None), when ``force`` is set, or when the
    candidate is at least ``bar - tolerance``, where the bar is the best of the champion and the
    ``reference``: the last model promoted without the tolerance's help, scored on the same data.
    A model promoted within the tolerance keeps its predecessor's reference, so a chain of
    slightly worse models cannot walk the bar down by one tolerance per promotion.
    """
    if force:
        return True, "forced"
    if champion is None:
        return True, "no model was serving"
    if candidate is None or not np.isfinite(candidate) or not np.isfinite(champion):
        return False, f"cannot compare: val recall@20 missing (serving {champion}, candidate {candidate})"
    bar, against = champion, "serving"
    if reference is not None and np.isfinite(reference) and reference > champion:
        bar, against = reference, "reference"
    if candidate >= bar - tolerance:
        return True, f"val recall@20 {candidate:.4f} vs {against} {bar:.4f} (tolerance {tolerance})"
    return False, f"val recall@20 {candidate:.4f} is worse than {against} {bar:.4f} by more than {tolerance}"
