"""MMRec's format, both directions: ``<name>.inter`` (tab-separated ``userID itemID rating timestamp
x_label``, x_label 0 train / 1 valid / 2 test, ids already re-indexed from 0) beside
``<modality>_feat.npy`` in item-index order, and optional ``u_id_mapping.csv`` / ``i_id_mapping.csv``
(tab-separated: the external id and ``userID`` / ``itemID``) that keep the original ids.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from training.data import FEATURE_SUFFIX, DataError, Dataset
from training.importers.build import publish, staging_dir
from training.importers.log import FORBIDDEN_ID_CHARS, InteractionLog, check_id, optional_floats
from training.importers.recbole import column, find_inter, read_atomic

INTER_HEADER = ("userID", "itemID", "rating", "timestamp", "x_label")
USER_MAP, ITEM_MAP = "u_id_mapping.csv", "i_id_mapping.csv"


def _int_column(values: list[str], lines: np.ndarray, path: Path, name: str) -> np.ndarray:
    out = np.empty(len(values), dtype=np.int64)
    for k, value in enumerate(values):
        if not value.isdigit():
            raise DataError(
                f"{path}: row {int(lines[k])}: {name} {value[:40]!r} is not a non-negative integer"
            )
        out[k] = int(value)
    return out


def _read_mapping(path: Path, index_col: str, n: int) -> list[str]:
    header, rows, lines = read_atomic(path)
    col = column(header, path, index_col)
    assert col is not None
    if len(header) != 2:
        raise DataError(f"{path}: expected two columns (the external id and {index_col}), got {len(header)}")
    ext_col = 1 - col
    ids: list[str | None] = [None] * max(n, len(rows))
    for row, line in zip(rows, lines.tolist(), strict=True):
        value = row[col]
        if not value.isdigit() or int(value) >= len(ids):
            raise DataError(f"{path}: row {line}: {index_col} {value!r} is not an index below {len(ids)}")
        check_id(row[ext_col], path, line, "external")
        ids[int(value)] = row[ext_col]
    missing = [k for k, v in enumerate(ids) if v is None]
    if missing:
        raise DataError(f"{path}: no external id for {index_col} {missing[0]} ({len(missing)} missing)")
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: external ids are not unique")
    return [str(v) for v in ids]


def read_mmrec(src: str | Path) -> InteractionLog:
    """Read an MMRec dataset folder (``<name>.inter`` + ``*_feat.npy``)."""
    path = find_inter(Path(src))
    folder = path.parent
    header, rows, lines = read_atomic(path)
    cols = {name: column(header, path, name) for name in ("userID", "itemID", "x_label")}
    users = _int_column([r[cols["userID"] or 0] for r in rows], lines, path, "userID")
    items = _int_column([r[cols["itemID"] or 0] for r in rows], lines, path, "itemID")
    labels = _int_column([r[cols["x_label"] or 0] for r in rows], lines, path, "x_label")
    bad = np.flatnonzero(labels > 2)
    if bad.size:
        raise DataError(f"{path}: row {int(lines[bad[0]])}: x_label {int(labels[bad[0]])} is not 0, 1 or 2")
    features: dict[str, np.ndarray] = {}
    for feat_path in sorted(folder.glob(f"*{FEATURE_SUFFIX}")):
        try:
            arr = np.load(feat_path, allow_pickle=False)
        except Exception as exc:
            raise DataError(f"{feat_path}: unreadable .npy file ({exc})") from exc
        if arr.ndim != 2:
            raise DataError(f"{feat_path}: expected a 2-D array (n_items, dim), got shape {arr.shape}")
        features[feat_path.name[: -len(FEATURE_SUFFIX)]] = arr
    n_items = int(items.max()) + 1 if items.size else 0
    if features:
        rows_of = {name: int(a.shape[0]) for name, a in features.items()}
        first_name = next(iter(rows_of))
        for name, n in rows_of.items():
            if n != rows_of[first_name]:
                raise DataError(
                    f"{folder / (name + FEATURE_SUFFIX)}: {n} rows but {first_name}{FEATURE_SUFFIX} has "
                    f"{rows_of[first_name]}; every feature file needs one row per item"
                )
            if n < n_items:
                raise DataError(
                    f"{folder / (name + FEATURE_SUFFIX)}: {n} rows, but {path.name} uses itemID "
                    f"{n_items - 1}; "
                    "MMRec feature files need one row per item index"
                )
        n_items = rows_of[first_name]
    n_users = int(users.max()) + 1 if users.size else 0
    item_ids = (
        _read_mapping(folder / ITEM_MAP, "itemID", n_items)
        if (folder / ITEM_MAP).is_file()
        else [str(i) for i in range(n_items)]
    )
    user_ids = (
        _read_mapping(folder / USER_MAP, "userID", n_users)
        if (folder / USER_MAP).is_file()
        else [str(u) for u in range(n_users)]
    )
    if features and len(item_ids) != n_items:
        raise DataError(f"{folder / ITEM_MAP}: {len(item_ids)} items, the feature files have {n_items} rows")
    t_col = header.index("timestamp") if "timestamp" in header else None
    r_col = header.index("rating") if "rating" in header else None
    return InteractionLog(
        source=path,
        user_ids=user_ids,
        item_ids=item_ids,
        users=users,
        items=items,
        rows=lines,
        timestamps=optional_floats(rows, t_col, lines, path, "timestamp"),
        ratings=optional_floats(rows, r_col, lines, path, "rating"),
        source_split=labels.astype(np.int8),
        features=features,
    )


def _check_exportable(ids: list[str], what: str) -> None:
    for k, value in enumerate(ids):
        for ch in FORBIDDEN_ID_CHARS:
            if ch in value:
                raise DataError(
                    f"{what} id {value!r} (index {k}) contains {ch!r}, which MMRec's .inter cannot hold"
                )


def export_mmrec(dataset: Dataset, out: str | Path, name: str | None = None) -> Path:
    """Write ``dataset`` as an MMRec folder ``out`` (``<name>.inter``, features, id mappings).

    Our folders carry no ratings or timestamps: every row gets rating 1 and timestamp 0. Written to a
    temporary sibling folder and renamed at the end; a non-empty ``out`` is refused.
    """
    out = Path(out)
    name = name or out.name
    _check_exportable(dataset.user_ids, "user")
    _check_exportable(dataset.item_ids, "item")
    tmp = staging_dir(out)
    try:
        with open(tmp / f"{name}.inter", "w", encoding="utf-8", newline="\n") as f:
            f.write("\t".join(INTER_HEADER) + "\n")
            splits = [dataset.train, dataset.val] + ([dataset.test] if dataset.test is not None else [])
            for label, split in enumerate(splits):
                users, items = split.to_pairs()
                f.writelines(
                    f"{u}\t{i}\t1\t0\t{label}\n" for u, i in zip(users.tolist(), items.tolist(), strict=True)
                )
        for fname, ids, col in (
            (USER_MAP, dataset.user_ids, "userID"),
            (ITEM_MAP, dataset.item_ids, "itemID"),
        ):
            with open(tmp / fname, "w", encoding="utf-8", newline="\n") as f:
                f.write(f"{'user_id' if col == 'userID' else 'item_id'}\t{col}\n")
                f.writelines(f"{ext}\t{k}\n" for k, ext in enumerate(ids))
        for modality, feats in dataset.features.items():
            np.save(tmp / f"{modality}{FEATURE_SUFFIX}", feats, allow_pickle=False)
        publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out
