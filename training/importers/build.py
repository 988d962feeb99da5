"""What every import does after reading: rating threshold, duplicates, k-core, split, summary, write.

Splits (``split=``), all seeded and deterministic:

* ``source``: the source's own split (MMRec's ``x_label``); an error where the source has none.
* ``random``: per user, a seeded shuffle, then 8:1:1 (MMRec's split): ``floor(n / 10)`` interactions,
  at least one, to validation and as many to test for users with >= 3 interactions; the rest train.
* ``loo``: leave-last-out: per user with >= 3 interactions, the last by time (file order breaks ties,
  and stands in for time when the source has none) to test, the one before to validation.
* ``time``: a global time cut: all interactions ordered by (timestamp, row); the first 80% train,
  the next 10% validation, the last 10% test. Users and items first seen after the cut are legal
  (cold items, users without training interactions).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from training.data import (
    FEATURE_SUFFIX,
    ITEM_IDS_FILE,
    TEST_FILE,
    TRAIN_FILE,
    USER_IDS_FILE,
    VAL_FILE,
    DataError,
    load_dataset,
)
from training.importers.log import InteractionLog

log = logging.getLogger(__name__)

SPLITS = ("source", "random", "loo", "time")
SUMMARY_FILE = "import_summary.json"
SPLIT_NAMES = ("train", "val", "test")


@dataclass(eq=False)
class Prepared:
    """A filtered and split log, ready to write: ``split`` is 0/1/2 per interaction."""

    user_ids: list[str]
    item_ids: list[str]
    users: np.ndarray
    items: np.ndarray
    split: np.ndarray  # (n,) int8
    features: dict[str, np.ndarray]
    summary: dict[str, Any] = field(default_factory=dict)


def _order(log_: InteractionLog, idx: np.ndarray) -> np.ndarray:
    """``idx`` sorted by (timestamp, row), or by row without timestamps."""
    rows = log_.rows[idx]
    if log_.timestamps is None:
        return idx[np.argsort(rows, kind="stable")]
    return idx[np.lexsort((rows, log_.timestamps[idx]))]


def _kcore(users: np.ndarray, items: np.ndarray, n_users: int, n_items: int, k: int) -> np.ndarray:
    """Mask of the interactions kept by iterative k-core filtering (users and items with >= k)."""
    keep = np.ones(users.size, dtype=bool)
    while True:
        u_deg = np.bincount(users[keep], minlength=n_users)
        i_deg = np.bincount(items[keep], minlength=n_items)
        new_keep = keep & (u_deg[users] >= k) & (i_deg[items] >= k)
        if new_keep.sum() == keep.sum():
            return new_keep
        keep = new_keep


def _assign_split(log_: InteractionLog, how: str, seed: int) -> np.ndarray:
    """0/1/2 for each interaction of ``log_``."""
    n = len(log_)
    out = np.zeros(n, dtype=np.int8)
    if how == "source":
        if log_.source_split is None:
            raise DataError(
                f"{log_.source}: this source has no split of its own; choose --split random|loo|time"
            )
        return log_.source_split.astype(np.int8)
    if how == "time":
        if log_.timestamps is None:
            raise DataError(f"{log_.source}: --split time needs a timestamp column")
        ranks = np.empty(n, dtype=np.int64)
        ranks[_order(log_, np.arange(n))] = np.arange(n)
        out[ranks >= int(0.8 * n)] = 1
        out[ranks >= int(0.9 * n)] = 2
        return out
    rng = np.random.default_rng(seed)
    by_user = np.argsort(log_.users, kind="stable")
    bounds = np.flatnonzero(np.diff(log_.users[by_user])) + 1
    for group in np.split(by_user, bounds):
        if group.size < 3:
            continue
        if how == "random":
            shuffled = group[rng.permutation(group.size)]
            n_hold = max(1, group.size // 10)
            out[shuffled[:n_hold]] = 1
            out[shuffled[n_hold : 2 * n_hold]] = 2
        else:  # loo
            ordered = _order(log_, group)
            out[ordered[-1]] = 2
            out[ordered[-2]] = 1
    return out


def prepare(
    log_: InteractionLog,
    *,
    split: str,
    seed: int = 0,
    kcore: int = 0,
    rating_threshold: float | None = None,
    dedupe: bool = False,
) -> Prepared:
    """Filter and split ``log_``; raise DataError for what is wrong, count what is dropped on purpose."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if len(log_) == 0:
        raise DataError(f"{log_.source}: no interactions")
    dropped: dict[str, int] = {}
    idx = np.arange(len(log_))
    if rating_threshold is not None:
        if log_.ratings is None:
            raise DataError(f"{log_.source}: --rating-threshold needs a rating column")
        below = log_.ratings < rating_threshold
        dropped["below_rating_threshold"] = int(below.sum())
        idx = idx[~below]

    n_items = len(log_.item_ids)
    ordered = _order(log_, idx)
    okeys = log_.users[ordered] * n_items + log_.items[ordered]
    _, first = np.unique(okeys, return_index=True)
    if first.size != idx.size:
        if not dedupe:
            seen: dict[int, int] = {}
            for k in idx[np.argsort(log_.rows[idx], kind="stable")].tolist():
                key = int(log_.users[k]) * n_items + int(log_.items[k])
                if key in seen:
                    u, i = log_.user_ids[log_.users[k]], log_.item_ids[log_.items[k]]
                    raise DataError(
                        f"{log_.source}: row {int(log_.rows[k])}: duplicate (user {u!r}, item {i!r}), "
                        f"first at row {seen[key]}; {idx.size - first.size} duplicate row(s); "
                        "pass --dedupe to keep the earliest of each"
                    )
                seen[key] = int(log_.rows[k])
        dropped["duplicates"] = int(idx.size - first.size)
        idx = np.sort(ordered[first])

    user_ids, item_ids, features = log_.user_ids, log_.item_ids, log_.features
    users, items = log_.users[idx], log_.items[idx]
    if kcore > 1:
        keep = _kcore(users, items, len(user_ids), n_items, kcore)
        dropped["kcore_interactions"] = int((~keep).sum())
        idx, users, items = idx[keep], users[keep], items[keep]
        kept_u, users = np.unique(users, return_inverse=True)
        kept_i, items = np.unique(items, return_inverse=True)
        dropped["kcore_users"] = len(user_ids) - kept_u.size
        dropped["kcore_items"] = n_items - kept_i.size
        user_ids = [user_ids[u] for u in kept_u]
        item_ids = [item_ids[i] for i in kept_i]
        features = {m: f[kept_i] for m, f in features.items()}
        if idx.size == 0:
            raise DataError(f"{log_.source}: no interaction survives the {kcore}-core filter")
    sub = InteractionLog(
        source=log_.source,
        user_ids=user_ids,
        item_ids=item_ids,
        users=users.astype(np.int64),
        items=items.astype(np.int64),
        rows=log_.rows[idx],
        timestamps=None if log_.timestamps is None else log_.timestamps[idx],
        source_split=None if log_.source_split is None else log_.source_split[idx],
    )
    assigned = _assign_split(sub, split, seed)
    prepared = Prepared(user_ids, item_ids, sub.users, sub.items, assigned, dict(features))
    prepared.summary = _summary(prepared, split=split, seed=seed, kcore=kcore, dropped=dropped)
    return prepared


def _summary(p: Prepared, **extra: Any) -> dict[str, Any]:
    n_users, n_items = len(p.user_ids), len(p.item_ids)
    train = p.split == 0
    trained = np.zeros(n_items, dtype=bool)
    trained[p.items[train]] = True
    return {
        "users": n_users,
        "items": n_items,
        "interactions": {name: int((p.split == k).sum()) for k, name in enumerate(SPLIT_NAMES)},
        "cold_items": int(n_items - trained.sum()),
        "users_without_train": int(n_users - np.unique(p.users[train]).size),
        "density": float(p.users.size / max(1, n_users * n_items)),
        "modalities": {m: int(f.shape[1]) for m, f in p.features.items()},
        **extra,
    }


def _split_json(p: Prepared, k: int) -> dict[str, list[int]]:
    mask = p.split == k
    users, items = p.users[mask], p.items[mask]
    order = np.lexsort((items, users))
    out: dict[str, list[int]] = {}
    for u, i in zip(users[order].tolist(), items[order].tolist(), strict=True):
        out.setdefault(str(u), []).append(i)
    return out


def staging_dir(out: Path) -> Path:
    """A fresh sibling folder of ``out`` to write into before the final rename."""
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists and is not empty; choose a new output folder")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def publish(tmp: Path, out: Path) -> None:
    if out.is_dir():
        out.rmdir()  # empty, checked by staging_dir
    tmp.rename(out)


def write_dataset(p: Prepared, out: str | Path) -> Path:
    """Write the dataset folder ``out`` (refusing a non-empty one), validated by the trainer's loader
    before it appears: on any error nothing is left at ``out``."""
    out = Path(out)
    tmp = staging_dir(out)
    try:
        for k, name in enumerate((TRAIN_FILE, VAL_FILE, TEST_FILE)):
            split = _split_json(p, k)
            if k == 2 and not split:
                continue
            (tmp / name).write_text(json.dumps(split))
        (tmp / USER_IDS_FILE).write_text(json.dumps(p.user_ids))
        (tmp / ITEM_IDS_FILE).write_text(json.dumps(p.item_ids))
        for name, feats in p.features.items():
            np.save(tmp / f"{name}{FEATURE_SUFFIX}", np.ascontiguousarray(feats), allow_pickle=False)
        dataset = load_dataset(tmp)  # the trainer's own validator
        (tmp / SUMMARY_FILE).write_text(json.dumps(p.summary, indent=1) + "\n")
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote %s: %s", out, dataset.summary())
    return out
