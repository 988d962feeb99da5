"""The dataset layer of the trainer: read, validate and index an MMSSL dataset folder.

numpy + standard library only.

Format (the MMSSL authors' layout):

* ``train.json``, ``val.json`` and optional ``test.json``: ``{"<user id>": [item id, ...]}`` with
  0-based integer ids; user ids are JSON object keys written in canonical decimal ("17", not "017").
* ``<modality>_feat.npy``: one float matrix per modality (float16, float32 or float64; cast to
  float32), one row per item id. No modality file at all is legal (an ID-only dataset).
* optional ``user_ids.json`` / ``item_ids.json`` (written by ``python -m training import``): a JSON
  array of unique non-empty strings, the external id of each internal index, so imported users and
  items keep their own ids all the way to the API. Without them the ids are "0".."n-1". With
  ``user_ids.json``, n_users is its length (every split's user ids must be below it); with
  ``item_ids.json``, n_items is its length (it must equal the feature rows, if any).

Id spaces:

* ``n_users`` = max user id over all splits + 1. Users in range but absent from a split have an
  empty row there; users with no training interaction are legal.
* ``n_items`` = the number of feature rows when modality files exist (all must agree; the rows of
  every ``*_feat.npy`` in the folder count, also those left out by ``modalities``, so the item id
  space never depends on that selection), else max item id + 1. Items never in training are legal.

Everything is validated once, here; a problem raises :class:`DataError` with a one-line message
naming the file and what is wrong. Duplicated items within one user's list are an error (the real
TikTok split has none). The splits must be disjoint.

``extra_train`` folds interactions recorded by the online service into a retrain, and
``extra_items`` the items it added or re-featured (new item rows with their features); see
:func:`load_dataset`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import json
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

TRAIN_FILE = "train.json"
VAL_FILE = "val.json"
TEST_FILE = "test.json"
USER_IDS_FILE = "user_ids.json"
ITEM_IDS_FILE = "item_ids.json"
FEATURE_SUFFIX = "_feat.npy"

# Canonical non-negative decimal: "0", "17"; not "017", "-1", "1.0", " 1".
_ID_RE = re.compile(r"0|[1-9][0-9]*")
_MAX_ID = 2**62  # ids at or above this cannot be indexed (and are certainly out of range)


class DataError(ValueError):
    """A dataset file is missing or malformed; the message names the file and the problem."""


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


@dataclass(eq=False)
class Interactions:
    """A user x item 0/1 matrix in CSR form; items are sorted and unique within each row."""

    indptr: np.ndarray  # (n_users + 1,) int64
    indices: np.ndarray  # (nnz,) int64 item ids

    def __post_init__(self) -> None:
        self.indptr = np.ascontiguousarray(self.indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(self.indices, dtype=np.int64)
        if self.indptr.ndim != 1 or self.indptr.size < 1 or self.indices.ndim != 1:
            raise ValueError("Interactions: indptr must be 1-D with n_users + 1 entries, indices 1-D")
        if self.indptr[0] != 0 or self.indptr[-1] != self.indices.size:
            raise ValueError(
                f"Interactions: indptr must run from 0 to nnz={self.indices.size}, "
                f"got {self.indptr[0]}..{self.indptr[-1]}"
            )
        if np.any(np.diff(self.indptr) < 0):
            raise ValueError("Interactions: indptr must be non-decreasing")
        if self.indices.size:
            if self.indices.min() < 0:
                raise ValueError("Interactions: negative item id")
            # Within a row consecutive items must strictly increase; row starts are exempt.
            step_ok = np.diff(self.indices) > 0
            row_start = np.zeros(self.indices.size, dtype=bool)
            row_start[self.indptr[:-1][self.indptr[:-1] < self.indices.size]] = True
            if not np.all(step_ok | row_start[1:]):
                raise ValueError("Interactions: items must be sorted and unique within each row")

    @property
    def n_users(self) -> int:
        return int(self.indptr.size - 1)

    @property
    def nnz(self) -> int:
        return int(self.indices.size)

    def items_of(self, u: int) -> np.ndarray:
        """Sorted item ids of user ``u`` (a read-only view)."""
        if not 0 <= u < self.n_users:
            raise IndexError(f"user index {u} out of range for n_users={self.n_users}")
        view = self.indices[self.indptr[u] : self.indptr[u + 1]]
        view.flags.writeable = False
        return view

    def degrees(self) -> np.ndarray:
        """Number of items per user, (n_users,) int64."""
        return np.diff(self.indptr)

    def users_with_items(self) -> np.ndarray:
        """Indices of the users with at least one item, ascending."""
        return np.flatnonzero(self.degrees() > 0).astype(np.int64)

    def to_pairs(self) -> tuple[np.ndarray, np.ndarray]:
        """(users, items), both (nnz,) int64, in row-major order."""
        users = np.repeat(np.arange(self.n_users, dtype=np.int64), self.degrees())
        return users, self.indices.copy()

    def item_counts(self, n_items: int) -> np.ndarray:
        """Interactions per item, (n_items,) int64."""
        if self.nnz and int(self.indices.max()) >= n_items:
            raise ValueError(f"item id {int(self.indices.max())} out of range for n_items={n_items}")
        return np.bincount(self.indices, minlength=n_items).astype(np.int64)

    @classmethod
    def from_lists(cls, rows: Sequence[Sequence[int]]) -> Interactions:
        """One row per user; each row is sorted and de-duplicated."""
        lengths = np.array([len(r) for r in rows], dtype=np.int64)
        users = np.repeat(np.arange(len(rows), dtype=np.int64), lengths)
        items = np.fromiter(chain.from_iterable(rows), dtype=np.int64, count=int(lengths.sum()))
        return cls.from_pairs(users, items, n_users=len(rows))

    @classmethod
    def from_pairs(cls, users: np.ndarray, items: np.ndarray, n_users: int) -> Interactions:
        """Build from (user, item) pairs in any order; duplicate pairs collapse to one."""
        users = np.asarray(users, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        if users.shape != items.shape or users.ndim != 1:
            raise ValueError("from_pairs: users and items must be 1-D arrays of the same length")
        if users.size and (users.min() < 0 or users.max() >= n_users):
            raise ValueError(f"from_pairs: user index out of range for n_users={n_users}")
        order = np.lexsort((items, users))
        users, items = users[order], items[order]
        if users.size:
            keep = np.ones(users.size, dtype=bool)
            keep[1:] = (users[1:] != users[:-1]) | (items[1:] != items[:-1])
            users, items = users[keep], items[keep]
        indptr = np.zeros(n_users + 1, dtype=np.int64)
        np.cumsum(np.bincount(users, minlength=n_users), out=indptr[1:])
        return cls(indptr, items)

    def _row_mask(self, users: Iterable[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(users if isinstance(users, np.ndarray) else list(users))
        if idx.dtype.kind not in "iu" and idx.size:
            raise TypeError(f"expected user indices (integers), got dtype {idx.dtype}")
        idx = idx.astype(np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_users):
            raise IndexError(f"user index out of range for n_users={self.n_users}")
        mask = np.zeros(self.n_users, dtype=bool)
        mask[idx] = True
        return mask

    def _keep_rows(self, keep: np.ndarray) -> Interactions:
        degrees = self.degrees() * keep
        indptr = np.zeros(self.n_users + 1, dtype=np.int64)
        np.cumsum(degrees, out=indptr[1:])
        return Interactions(indptr, self.indices[np.repeat(keep, self.degrees())])

    def without_users(self, users: Iterable[int] | np.ndarray) -> Interactions:
        """Same n_users, with the rows of ``users`` emptied."""
        return self._keep_rows(~self._row_mask(users))

    def restrict_to_users(self, users: Iterable[int] | np.ndarray) -> Interactions:
        """Same n_users, with only the rows of ``users`` kept."""
        return self._keep_rows(self._row_mask(users))

    def padded(self, n_users: int) -> Interactions:
        """The same rows followed by empty rows up to ``n_users``."""
        if n_users < self.n_users:
            raise ValueError(f"cannot pad {self.n_users} users down to {n_users}")
        tail = np.full(n_users - self.n_users, self.indptr[-1], dtype=np.int64)
        return Interactions(np.concatenate([self.indptr, tail]), self.indices)

    def pair_keys(self, n_items: int) -> np.ndarray:
        """One sorted int64 key ``user * n_items + item`` per interaction, for set operations."""
        users, items = self.to_pairs()
        return users * n_items + items


@dataclass(eq=False)
class Dataset:
    """A validated dataset in internal index space (user u is ``user_ids[u]`` outside).

    ``fingerprint`` is a sha256 over the name and bytes of every file read (splits and all
    ``*_feat.npy``), the selected modalities, and the canonical form of ``extra_items`` and
    ``extra_train`` if any.
    """

    root: Path
    n_users: int
    n_items: int
    user_ids: list[str]  # external id of each internal user index
    item_ids: list[str]  # "0".."n_items-1", or the external ids of item_ids.json
    train: Interactions
    val: Interactions
    test: Interactions | None
    features: dict[str, np.ndarray]  # modality -> (n_items, d_m) float32, keys sorted
    fingerprint: str
    extra_train_stats: dict[str, int] = field(default_factory=dict)  # empty without extra_train
    extra_items_stats: dict[str, int] = field(default_factory=dict)  # empty without extra_items
    # True when user_ids.json gave the users external ids: split files are then keyed by internal index
    user_ids_from_file: bool = False

    @property
    def modalities(self) -> list[str]:
        return list(self.features)

    def summary(self) -> dict[str, Any]:
        """Counts for logs and manifests (JSON-serialisable)."""
        train_degrees = self.train.degrees()
        out: dict[str, Any] = {
            "root": str(self.root),
            "n_users": self.n_users,
            "n_items": self.n_items,
            "n_train": self.train.nnz,
            "n_val": self.val.nnz,
            "n_test": None if self.test is None else self.test.nnz,
            "modalities": {name: int(f.shape[1]) for name, f in self.features.items()},
            "users_without_train": int(np.count_nonzero(train_degrees == 0)),
            "val_users": int(self.val.users_with_items().size),
            "cold_items": int(np.count_nonzero(self.train.item_counts(self.n_items) == 0)),
            "train_density": self.train.nnz / max(1, self.n_users * self.n_items),
            "fingerprint": self.fingerprint,
        }
        if self.extra_train_stats:
            out["extra_train"] = dict(self.extra_train_stats)
        if self.extra_items_stats:
            out["extra_items"] = dict(self.extra_items_stats)
        return out


class _JsonObject(list):  # type: ignore[type-arg]
    """The (key, value) pairs of a JSON object, in file order (keeps duplicate keys visible)."""


def _json_type(value: object) -> str:
    if isinstance(value, _JsonObject):
        return "object"
    return {list: "array", str: "string", bool: "boolean", int: "integer", float: "number"}.get(
        type(value), "null" if value is None else type(value).__name__
    )


@dataclass
class _RawSplit:
    """A parsed and type-checked split file, before the id-space checks."""

    path: Path
    user_keys: list[str]  # external user ids in file order (every key, also those with [])
    lengths: np.ndarray  # (len(user_keys),) int64 list length of each key
    users: np.ndarray  # (nnz,) int64 user id of each listed item, file order
    items: np.ndarray  # (nnz,) int64

    @property
    def max_user(self) -> int:
        return max((int(k) for k in self.user_keys), default=-1)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({_one_line(exc.strerror or exc)})") from exc


def _parse_split(path: Path, data: bytes) -> _RawSplit:
    if not data.strip():
        raise DataError(f"{path}: file is empty (expected a JSON object of user id -> item ids)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    try:
        obj = json.loads(text, object_pairs_hook=_JsonObject)
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{path}: malformed JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}"
        ) from exc
    except RecursionError as exc:
        raise DataError(f"{path}: malformed JSON (nested too deeply)") from exc
    if not isinstance(obj, _JsonObject):
        raise DataError(
            f"{path}: top level must be a JSON object mapping user id to a list of item ids, "
            f"got a JSON {_json_type(obj)}"
        )

    keys: list[str] = []
    values: list[list[Any]] = []
    seen: set[str] = set()
    for key, value in obj:
        if not _ID_RE.fullmatch(key):
            raise DataError(
                f"{path}: key {key!r} is not a non-negative integer user id "
                "(expected canonical digits, e.g. '17')"
            )
        if key in seen:
            raise DataError(f"{path}: user {key} appears twice as a key")
        seen.add(key)
        if type(value) is not list:
            raise DataError(
                f"{path}: user {key}: expected a list of non-negative integer item ids, "
                f"got a JSON {_json_type(value)}"
            )
        keys.append(key)
        values.append(value)

    flat = list(chain.from_iterable(values))
    # bool is a subclass of int and 1.0 == 1: demand exact ints.
    bad_type = set(map(type, flat)) - {int}
    too_small = bool(flat) and not bad_type and min(flat) < 0
    too_large = bool(flat) and not bad_type and max(flat) >= _MAX_ID
    if bad_type or too_small or too_large:
        for key, value in zip(keys, values, strict=True):
            for pos, item in enumerate(value):
                if type(item) is not int or item < 0:
                    raise DataError(
                        f"{path}: user {key}: item {json.dumps(item)[:40]} at position {pos} "
                        "is not a non-negative integer item id"
                    )
                if item >= _MAX_ID:
                    raise DataError(f"{path}: item id {item} for user {key} is out of range (too large)")
    lengths = np.fromiter((len(v) for v in values), dtype=np.int64, count=len(values))
    user_arr = np.fromiter((int(k) for k in keys), dtype=np.int64, count=len(keys))
    if user_arr.size and user_arr.max() >= _MAX_ID:
        raise DataError(f"{path}: user id {int(user_arr.max())} is too large")
    return _RawSplit(
        path=path,
        user_keys=keys,
        lengths=lengths,
        users=np.repeat(user_arr, lengths),
        items=np.array(flat, dtype=np.int64),
    )


def _check_items_in_range(raw: _RawSplit, n_items: int, where_n_items: str) -> None:
    bad = np.flatnonzero(raw.items >= n_items)
    if bad.size:
        k = int(bad[0])
        raise DataError(
            f"{raw.path}: item id {int(raw.items[k])} for user {int(raw.users[k])} is out of range: "
            f"n_items={n_items} ({where_n_items}); {bad.size} such entr{'y' if bad.size == 1 else 'ies'}"
        )


def _check_no_duplicates(raw: _RawSplit) -> None:
    order = np.lexsort((raw.items, raw.users))
    users, items = raw.users[order], raw.items[order]
    dup = (users[1:] == users[:-1]) & (items[1:] == items[:-1])
    if dup.any():
        k = int(np.flatnonzero(dup)[0])
        raise DataError(
            f"{raw.path}: {int(dup.sum())} duplicate item id(s) within a user's list, "
            f"e.g. user {int(users[k])} lists item {int(items[k])} more than once"
        )


def _overlap(a_keys: np.ndarray, b_keys: np.ndarray) -> np.ndarray:
    return np.intersect1d(a_keys, b_keys, assume_unique=True)


def _check_disjoint(name_a: str, a: Interactions, name_b: str, b: Interactions, n_items: int) -> None:
    common = _overlap(a.pair_keys(n_items), b.pair_keys(n_items))
    if common.size:
        user, item = divmod(int(common[0]), n_items)
        raise DataError(
            f"{name_b}: overlaps {name_a} in {common.size} (user, item) pair(s), "
            f"e.g. user {user} item {item}; the splits must be disjoint"
        )


def _modality_files(root: Path) -> dict[str, Path]:
    files = {}
    for path in sorted(root.glob(f"*{FEATURE_SUFFIX}")):
        name = path.name[: -len(FEATURE_SUFFIX)]
        if name and path.is_file():
            files[name] = path
    return files


def _load_npy(path: Path, data: bytes) -> np.ndarray:
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # numpy raises ValueError, OSError, EOFError... for bad files
        raise DataError(f"{path}: unreadable .npy file ({_one_line(exc)})") from exc
    if not isinstance(arr, np.ndarray):
        raise DataError(f"{path}: unreadable .npy file (it is an .npz archive, expected one array)")
    return arr


def _check_feature_shape(path: Path, arr: np.ndarray) -> None:
    if arr.ndim != 2:
        raise DataError(f"{path}: expected a 2-D array (n_items, dim), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DataError(f"{path}: empty feature matrix of shape {arr.shape} (needs >= 1 row and >= 1 column)")


def _validated_features(path: Path, arr: np.ndarray) -> np.ndarray:
    if arr.dtype.kind != "f":
        raise DataError(
            f"{path}: dtype {arr.dtype} is not a float type (expected float16, float32 or float64)"
        )
    with np.errstate(over="ignore"):  # float64 beyond the float32 range -> inf, reported below
        out = np.ascontiguousarray(arr, dtype=np.float32)
    bad_rows = np.flatnonzero(~np.isfinite(out).all(axis=1))
    if bad_rows.size:
        raise DataError(
            f"{path}: {bad_rows.size} of {out.shape[0]} rows contain NaN or inf (as float32), "
            f"e.g. row {int(bad_rows[0])}"
        )
    return out


def _resolve_extra_item(item: object, user: str, n_items: int, item_index: Mapping[str, int] | None) -> int:
    """An external item id (or, for an int, the internal index) -> internal index."""
    if item_index is None and isinstance(item, str) and _ID_RE.fullmatch(item) and int(item) < n_items:
        return int(item)
    if item_index is not None and isinstance(item, str) and item in item_index:
        return item_index[item]
    if type(item) is int and 0 <= item < n_items:
        return item
    known = "the ids of item_ids.json" if item_index is not None else f"'0'..'{n_items - 1}'"
    raise DataError(f"extra_train: unknown item id {item!r} for user {user!r} (item ids are {known})")


def _read_id_list(path: Path, data: bytes) -> list[str]:
    """A user_ids.json / item_ids.json: a JSON array of unique non-empty strings."""
    try:
        ids = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"{path}: not a JSON array of id strings ({_one_line(exc)})") from exc
    if not isinstance(ids, list):
        raise DataError(f"{path}: top level must be a JSON array of id strings, got a JSON {_json_type(ids)}")
    for pos, value in enumerate(ids):
        if not isinstance(value, str) or not value:
            raise DataError(f"{path}: entry {pos} is {json.dumps(value)[:40]}, expected a non-empty string")
    if len(set(ids)) != len(ids):
        seen: set[str] = set()
        dup = ""
        for value in ids:
            if value in seen:
                dup = value
                break
            seen.add(value)
        raise DataError(f"{path}: id {dup!r} appears more than once (ids must be unique)")
    return ids


def _apply_extra_train(
    extra: Mapping[str, Sequence[str]],
    user_ids: list[str],
    n_items: int,
    train: Interactions,
    val: Interactions,
    test: Interactions | None,
    item_index: Mapping[str, int] | None = None,
) -> tuple[list[str], Interactions, Interactions, Interactions | None, dict[str, int], bytes]:
    index = {ext: u for u, ext in enumerate(user_ids)}
    resolved: dict[str, list[int]] = {}
    for user, items in extra.items():
        if not isinstance(user, str) or not user:
            raise DataError(f"extra_train: user id must be a non-empty string, got {user!r}")
        if isinstance(items, str | bytes) or not isinstance(items, Sequence | np.ndarray):
            raise DataError(
                f"extra_train: user {user!r}: expected a list of item ids, got {type(items).__name__}"
            )
        resolved[user] = sorted({_resolve_extra_item(i, user, n_items, item_index) for i in items})

    new_users = sorted(u for u in resolved if u not in index)  # appended in sorted order
    for offset, user in enumerate(new_users):
        index[user] = len(user_ids) + offset
    n_users = len(user_ids) + len(new_users)

    ext_users = np.array([index[u] for u, its in resolved.items() for _ in its], dtype=np.int64)
    ext_items = np.array([i for its in resolved.values() for i in its], dtype=np.int64)
    extra_inter = Interactions.from_pairs(ext_users, ext_items, n_users)
    extra_keys = extra_inter.pair_keys(n_items)

    old_train = train.padded(n_users)
    new_train = Interactions.from_pairs(
        np.concatenate([old_train.to_pairs()[0], ext_users]),
        np.concatenate([old_train.indices, ext_items]),
        n_users,
    )

    def drop_extra(split: Interactions) -> tuple[Interactions, int]:
        split = split.padded(n_users)
        users, items = split.to_pairs()
        hit = np.isin(users * n_items + items, extra_keys)
        return Interactions.from_pairs(users[~hit], items[~hit], n_users), int(hit.sum())

    new_val, removed_val = drop_extra(val)
    new_test, removed_test = (None, 0) if test is None else drop_extra(test)
    stats = {
        "pairs": extra_inter.nnz,
        "added_to_train": new_train.nnz - train.nnz,
        "already_in_train": extra_inter.nnz - (new_train.nnz - train.nnz),
        "new_users": len(new_users),
        "removed_from_val": removed_val,
        "removed_from_test": removed_test,
    }
    canonical = json.dumps(resolved, sort_keys=True, separators=(",", ":")).encode()
    return user_ids + new_users, new_train, new_val, new_test, stats, canonical


def _decode_feature_block(name: str, block: object, n_rows: int, dim: int) -> np.ndarray:
    """One ``extra_items.features[m]`` entry -> (n_rows, dim) float32, checked."""
    where = f"extra_items.features[{name!r}]"
    if not isinstance(block, Mapping):
        raise DataError(
            f"{where}: expected an object with dtype, shape and base64, got {type(block).__name__}"
        )
    if block.get("dtype") != "float32":
        raise DataError(f"{where}: dtype {block.get('dtype')!r}, expected 'float32'")
    shape = block.get("shape")
    if shape != [n_rows, dim]:
        raise DataError(
            f"{where}: shape {shape!r}, expected [{n_rows}, {dim}] "
            f"({n_rows} items with has_features true, {dim} = the dataset's {name} dimension)"
        )
    text = block.get("base64")
    if not isinstance(text, str):
        raise DataError(f"{where}: base64 must be a string, got {type(text).__name__}")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DataError(f"{where}: invalid base64 ({_one_line(exc)})") from exc
    if len(data) != n_rows * dim * 4:
        raise DataError(f"{where}: {len(data)} bytes, expected {n_rows * dim * 4} for shape {shape}")
    arr = np.frombuffer(data, dtype="<f4").reshape(n_rows, dim).astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=1))
    if bad.size:
        raise DataError(f"{where}: row {int(bad[0])} holds NaN or inf")
    return arr


def _apply_extra_items(
    extra: Mapping[str, Any],
    item_ids: list[str],
    features: dict[str, np.ndarray],
    all_modalities: Sequence[str],
) -> tuple[list[str], dict[str, np.ndarray], dict[str, int], bytes]:
    """Items added or re-featured through the service's ``PUT /items`` -> (item ids, features, stats,
    canonical bytes for the fingerprint). See :func:`load_dataset` for the rules."""
    if not isinstance(extra, Mapping):
        raise DataError(f"extra_items: expected an object, got {type(extra).__name__}")
    ids, available, has = extra.get("item_ids"), extra.get("available"), extra.get("has_features")
    if not isinstance(ids, list) or not all(isinstance(i, str) and i for i in ids):
        raise DataError("extra_items.item_ids: expected a list of non-empty strings")
    if len(set(ids)) != len(ids):
        dup = next(i for n, i in enumerate(ids) if i in ids[:n])
        raise DataError(f"extra_items.item_ids: item {dup!r} appears more than once")
    for key, flags in (("available", available), ("has_features", has)):
        if not isinstance(flags, list) or len(flags) != len(ids) or not all(type(f) is bool for f in flags):
            raise DataError(f"extra_items.{key}: expected a list of {len(ids)} booleans (one per item id)")
    assert isinstance(has, list) and isinstance(available, list)
    blocks = extra.get("features") or {}
    if not isinstance(blocks, Mapping):
        raise DataError(f"extra_items.features: expected an object, got {type(blocks).__name__}")
    unknown = [m for m in blocks if m not in all_modalities]
    if unknown:
        raise DataError(
            f"extra_items.features: unknown modality {unknown[0]!r}; the dataset's modalities: "
            f"{', '.join(all_modalities) or 'none'}"
        )
    with_features = [i for i, h in zip(ids, has, strict=True) if h]
    index = {ext: i for i, ext in enumerate(item_ids)}
    new_ids = [i for i in ids if i not in index]
    # A new item needs a row in every loaded modality: refuse (naming it) rather than train a zero
    # row, which the unnormalised projections would turn into a degenerate item.
    for m in features:
        if new_ids and m not in blocks:
            raise DataError(
                f"extra_items: new item {new_ids[0]!r} has no {m!r} features "
                f"(every new item needs a row for each of {list(features)})"
            )
    without = [i for i, h in zip(ids, has, strict=True) if not h and i not in index]
    if without and features:
        raise DataError(
            f"extra_items: new item {without[0]!r} has no features (has_features false); the dataset "
            f"has modalities {list(features)}, so a new item needs a row for each"
        )
    decoded = {
        m: _decode_feature_block(m, block, len(with_features), int(features[m].shape[1]))
        for m, block in blocks.items()
        if m in features  # a modality of the folder that this load leaves out is not needed
    }
    row_of = {ext: r for r, ext in enumerate(with_features)}
    updated = [i for i in with_features if i in index]
    out: dict[str, np.ndarray] = {}
    for m, f in features.items():
        if m not in decoded:
            out[m] = f
            continue
        rows = decoded[m]
        f = f.copy()
        if updated:
            f[[index[i] for i in updated]] = rows[[row_of[i] for i in updated]]
        out[m] = np.concatenate([f, rows[[row_of[i] for i in new_ids]]]) if new_ids else f
    stats = {
        "items": len(ids),
        "added": len(new_ids),
        "updated": len(updated) if decoded else 0,
        "unavailable": int(sum(1 for a in available if not a)),
    }
    digest = hashlib.sha256()
    for m in sorted(decoded):
        digest.update(f"{m}\0".encode() + decoded[m].tobytes())
    canonical = json.dumps(
        {"item_ids": ids, "has_features": has, "features": digest.hexdigest()}, separators=(",", ":")
    ).encode()
    return item_ids + new_ids, out, stats, canonical


def load_dataset(
    root: str | Path,
    *,
    extra_train: Mapping[str, Sequence[str]] | None = None,
    extra_items: Mapping[str, Any] | None = None,
    modalities: Sequence[str] | None = None,
) -> Dataset:
    """Read and validate the dataset folder ``root``.

    ``modalities`` restricts which ``<name>_feat.npy`` files are loaded (None: all of them).

    ``extra_train`` maps an EXTERNAL user id to external item ids: fresh interactions recorded by
    the online service, folded into a retrain. Unknown item ids are a DataError. Unknown user ids
    become new users appended after the existing ones, in sorted order of their external id, which
    is kept verbatim in ``user_ids`` (so "9400" or "alice" may sit at any internal index). Pairs
    already in train are ignored. A pair that is in val/test for that user is REMOVED from val/test:
    the user has now interacted with the item, so it is no longer a held-out interaction, and
    keeping it would make train and the evaluation splits overlap.

    ``extra_items`` is the service's ``Catalogue.retrain_items()``: items added or re-featured
    through ``PUT /items`` (``item_ids``, ``available``, ``has_features`` per item; ``features[m]``
    a base64 little-endian float32 matrix of the rows of the items with ``has_features``). It is
    applied before ``extra_train``, so fresh interactions may name the new items. An id not in the
    dataset becomes a NEW item appended after the existing ones (in the spec's order) with its rows
    from the spec; a new item must carry a row for every loaded modality (else a DataError naming
    it: no zero rows). An existing item with features gets its rows replaced. Availability does not
    matter here (an unavailable item's interactions are real; the service keeps hiding it). Wrong
    dtype, shape or dimension, bad base64, NaN/inf and unknown modalities are one DataError naming
    ``extra_items`` and the field. The fingerprint covers the ids and the decoded rows.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")

    hasher = hashlib.sha256()

    def read(path: Path) -> bytes:
        data = _read_bytes(path)
        hasher.update(f"{path.name}\0{len(data)}\0".encode())
        hasher.update(data)
        return data

    split_paths = {"train": root / TRAIN_FILE, "val": root / VAL_FILE}
    for path in split_paths.values():
        if not path.is_file():
            raise DataError(f"{path}: file not found (a dataset folder needs {TRAIN_FILE} and {VAL_FILE})")
    if (root / TEST_FILE).is_file():
        split_paths["test"] = root / TEST_FILE
    raw = {name: _parse_split(path, read(path)) for name, path in split_paths.items()}
    if raw["train"].items.size == 0:
        raise DataError(f"{split_paths['train']}: no interactions (training needs at least one)")
    if raw["val"].items.size == 0:
        raise DataError(f"{split_paths['val']}: no interactions (validation needs at least one)")

    available = _modality_files(root)
    if modalities is None:
        selected = list(available)
    else:
        selected = sorted(set(modalities))
        unknown = [m for m in selected if m not in available]
        if unknown:
            raise DataError(
                f"{root}: unknown modality {unknown[0]!r}; available: {', '.join(available) or 'none'} "
                f"(files named <modality>{FEATURE_SUFFIX})"
            )
    hasher.update(f"modalities\0{','.join(selected)}\0".encode())

    features: dict[str, np.ndarray] = {}
    n_items = -1
    rows_from: Path | None = None
    for name, path in available.items():
        arr = _load_npy(path, read(path))
        _check_feature_shape(path, arr)
        if rows_from is not None and arr.shape[0] != n_items:
            raise DataError(
                f"{path}: {arr.shape[0]} rows but {rows_from.name} has {n_items}; "
                "every modality file needs one row per item"
            )
        n_items, rows_from = int(arr.shape[0]), path
        if name in selected:
            features[name] = _validated_features(path, arr)
    file_item_ids = file_user_ids = None
    if (root / ITEM_IDS_FILE).is_file():
        file_item_ids = _read_id_list(root / ITEM_IDS_FILE, read(root / ITEM_IDS_FILE))
    if (root / USER_IDS_FILE).is_file():
        file_user_ids = _read_id_list(root / USER_IDS_FILE, read(root / USER_IDS_FILE))
    if rows_from is not None:
        where_n_items = f"the number of rows of {rows_from.name}"
        if file_item_ids is not None and len(file_item_ids) != n_items:
            raise DataError(
                f"{root / ITEM_IDS_FILE}: {len(file_item_ids)} ids but {rows_from.name} has {n_items} rows; "
                "every item needs one id and one feature row"
            )
    elif file_item_ids is not None:
        n_items, where_n_items = len(file_item_ids), f"the length of {ITEM_IDS_FILE}"
    else:
        n_items = int(max(int(r.items.max()) for r in raw.values() if r.items.size)) + 1
        where_n_items = "max item id + 1, no feature files"

    for split in raw.values():
        _check_items_in_range(split, n_items, where_n_items)
        _check_no_duplicates(split)
    n_users = max(split.max_user for split in raw.values()) + 1
    if file_user_ids is not None:
        if len(file_user_ids) < n_users:
            raise DataError(
                f"{root / USER_IDS_FILE}: {len(file_user_ids)} ids, but the splits use user index "
                f"{n_users - 1}; every user index needs an id"
            )
        n_users = len(file_user_ids)
    inter = {name: Interactions.from_pairs(r.users, r.items, n_users) for name, r in raw.items()}
    names = list(inter)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            _check_disjoint(str(split_paths[a]), inter[a], str(split_paths[b]), inter[b], n_items)

    user_ids = file_user_ids if file_user_ids is not None else [str(u) for u in range(n_users)]
    item_ids = file_item_ids if file_item_ids is not None else [str(i) for i in range(n_items)]
    item_index = None if file_item_ids is None else {ext: i for i, ext in enumerate(file_item_ids)}
    train, val, test = inter["train"], inter["val"], inter.get("test")
    item_stats: dict[str, int] = {}
    if extra_items is not None:
        item_ids, features, item_stats, canonical_items = _apply_extra_items(
            extra_items, item_ids, features, list(available)
        )
        n_items = len(item_ids)
        item_index = {ext: i for i, ext in enumerate(item_ids)}
        hasher.update(b"extra_items\0" + canonical_items)
        logger.info("extra_items folded in: %s", item_stats)
    stats: dict[str, int] = {}
    if extra_train is not None:
        user_ids, train, val, test, stats, canonical = _apply_extra_train(
            extra_train, user_ids, n_items, train, val, test, item_index
        )
        n_users = len(user_ids)
        hasher.update(b"extra_train\0" + canonical)
        logger.info("extra_train folded in: %s", stats)

    dataset = Dataset(
        root=root,
        n_users=n_users,
        n_items=n_items,
        user_ids=user_ids,
        item_ids=item_ids,
        train=train,
        val=val,
        test=test,
        features=features,
        fingerprint=hasher.hexdigest(),
        extra_train_stats=stats,
        extra_items_stats=item_stats,
        user_ids_from_file=file_user_ids is not None,
    )
    logger.info("loaded dataset %s", dataset.summary())
    return dataset


def load_split(path: str | Path, dataset: Dataset) -> Interactions:
    """Read any split file (e.g. a held-out ``test.json``) into ``dataset``'s id space.

    Validated like the dataset's own splits: user keys must be users of ``dataset`` (looked up by
    external id; by internal index when the folder has ``user_ids.json``), items must be
    < ``dataset.n_items``, no duplicates within a user, and no
    (user, item) pair may also be in ``dataset.train``.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    raw = _parse_split(path, _read_bytes(path))
    if dataset.user_ids_from_file:  # split files of an imported folder are keyed by internal index
        index = {str(u): u for u in range(dataset.n_users)}
    else:
        index = {ext: u for u, ext in enumerate(dataset.user_ids)}
    unknown = [k for k in raw.user_keys if k not in index]
    if unknown:
        raise DataError(
            f"{path}: user {unknown[0]} is not a user of the dataset at {dataset.root} "
            f"(n_users={dataset.n_users}); {len(unknown)} unknown user(s)"
        )
    _check_items_in_range(raw, dataset.n_items, f"of the dataset at {dataset.root}")
    _check_no_duplicates(raw)
    # External ids -> internal indices (the identity for the users of an MMSSL folder).
    lookup = np.array([index[k] for k in raw.user_keys], dtype=np.int64)
    split = Interactions.from_pairs(np.repeat(lookup, raw.lengths), raw.items, dataset.n_users)
    common = _overlap(dataset.train.pair_keys(dataset.n_items), split.pair_keys(dataset.n_items))
    if common.size:
        user, item = divmod(int(common[0]), dataset.n_items)
        raise DataError(
            f"{path}: overlaps the training split in {common.size} (user, item) pair(s), "
            f"e.g. user {dataset.user_ids[user]} item {item}; the splits must be disjoint"
        )
    return split
