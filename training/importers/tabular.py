"""A plain CSV or Parquet interaction log with named columns (pandas; pyarrow for Parquet).

Ids are read as strings, verbatim. Timestamps are numbers (any monotone scale, e.g. Unix seconds)
or ISO-8601 date-times (converted to Unix seconds, UTC when no offset is given). An optional item
table (CSV or Parquet with an item id column) adds its items to the id space: catalogue items
nobody has interacted with become cold items that ``encode`` can still give features.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from training.data import DataError
from training.importers.log import InteractionLog, check_id, factorize


def read_table(path: Path, columns: list[str] | None = None) -> Any:
    """A CSV (any suffix but .parquet) or Parquet file as a pandas DataFrame of strings."""
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            frame = pd.read_parquet(path)
            frame = frame.astype(object).where(frame.notna(), "").astype(str)
        else:
            sep = "\t" if path.suffix.lower() in (".tsv", ".tab") else ","
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, sep=sep, encoding="utf-8-sig")
    except Exception as exc:  # pandas/pyarrow raise many types for malformed files
        raise DataError(
            f"{path}: cannot read as {'Parquet' if path.suffix == '.parquet' else 'CSV'} "
            f"({' '.join(str(exc).split())[:200]})"
        ) from exc
    for name in columns or []:
        if name not in frame.columns:
            raise DataError(
                f"{path}: missing column {name!r} (columns: {', '.join(map(str, frame.columns))})"
            )
    return frame


def parse_timestamps(values: list[str], rows: np.ndarray, path: Path, col: str) -> np.ndarray:
    """Numbers as they are, else ISO-8601 date-times as Unix seconds; a bad row is a DataError."""
    import pandas as pd

    numeric = pd.to_numeric(pd.Series(values), errors="coerce")
    if not numeric.isna().any():
        return numeric.to_numpy(dtype=np.float64)
    parsed = pd.to_datetime(pd.Series(values), errors="coerce", utc=True, format="ISO8601")
    # The first row decides the kind of column (a number parses as both only when it is a year).
    as_numbers = bool(values) and not bool(numeric.isna().iloc[0])
    bad = np.flatnonzero((numeric if as_numbers else parsed).isna().to_numpy())
    if bad.size:
        k = int(bad[0])
        raise DataError(
            f"{path}: row {int(rows[k])}: column {col!r}: cannot parse timestamp {values[k][:40]!r} "
            "(expected a number or an ISO-8601 date-time)"
        )
    return (parsed - pd.Timestamp(0, tz="UTC")).dt.total_seconds().to_numpy(dtype=np.float64)


def read_tabular(
    src: str | Path,
    *,
    user_col: str = "user",
    item_col: str = "item",
    time_col: str | None = None,
    rating_col: str | None = None,
    items_table: str | Path | None = None,
    item_id_col: str | None = None,
) -> InteractionLog:
    path = Path(src)
    wanted = [c for c in (user_col, item_col, time_col, rating_col) if c]
    frame = read_table(path, wanted)
    rows = np.arange(2, len(frame) + 2, dtype=np.int64)  # line 1 is the header
    if path.suffix.lower() in (".parquet", ".pq"):
        rows = rows - 1  # Parquet: record number, 1-based
    user_ids, users = factorize(frame[user_col].tolist(), rows, path, "user")
    item_ids, items = factorize(frame[item_col].tolist(), rows, path, "item")
    timestamps = ratings = None
    if time_col:
        timestamps = parse_timestamps(frame[time_col].tolist(), rows, path, time_col)
    if rating_col:
        import pandas as pd

        values = frame[rating_col].tolist()
        ratings_s = pd.to_numeric(pd.Series(values), errors="coerce")
        bad = np.flatnonzero(ratings_s.isna().to_numpy())
        if bad.size:
            k = int(bad[0])
            raise DataError(
                f"{path}: row {int(rows[k])}: column {rating_col!r}: {values[k][:40]!r} is not a number"
            )
        ratings = ratings_s.to_numpy(dtype=np.float64)
    if items_table is not None:
        table_path = Path(items_table)
        id_col = item_id_col or item_col
        table = read_table(table_path, [id_col])
        known = set(item_ids)
        for line, value in enumerate(table[id_col].tolist(), start=2):
            if value not in known:
                check_id(value, table_path, line, "item")
                known.add(value)
                item_ids.append(value)
    return InteractionLog(
        source=path,
        user_ids=user_ids,
        item_ids=item_ids,
        users=users,
        items=items,
        rows=rows,
        timestamps=timestamps,
        ratings=ratings,
    )
