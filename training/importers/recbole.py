"""RecBole atomic files: ``<name>.inter`` (and ``<name>.item``), tab-separated with typed headers.

Header fields are ``name:type`` (``user_id:token item_id:token rating:float timestamp:float``);
the type is dropped from the column name. ``.item`` tables are read by ``encode`` (see
:func:`read_atomic`), not needed to import.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.data import DataError
from training.importers.log import InteractionLog, factorize, optional_floats


def read_atomic(path: Path) -> tuple[list[str], list[list[str]], np.ndarray]:
    """(column names without their ``:type``, rows, 1-based line numbers) of a tab-separated file.

    A row with a different number of fields than the header is a DataError naming the line.
    """
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from exc
    except UnicodeDecodeError as exc:
        raise DataError(f"{path}: not UTF-8 text (byte {exc.start})") from exc
    lines = text.split("\n")
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: empty file (expected a header line)")
    header = [field.split(":", 1)[0].strip() for field in lines[0].rstrip("\r").split("\t")]
    rows: list[list[str]] = []
    numbers: list[int] = []
    for n, line in enumerate(lines[1:], start=2):
        line = line.rstrip("\r")
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataError(
                f"{path}: row {n}: {len(fields)} tab-separated fields, the header has {len(header)}"
            )
        rows.append(fields)
        numbers.append(n)
    return header, rows, np.array(numbers, dtype=np.int64)


def column(header: list[str], path: Path, name: str | None) -> int | None:
    if name is None:
        return None
    if name not in header:
        raise DataError(f"{path}: missing column {name!r} (columns: {', '.join(header)})")
    return header.index(name)


def find_inter(src: Path, suffix: str = ".inter") -> Path:
    """``src`` itself if it is a file, else the one ``<folder name>.inter`` (or only ``*.inter``) in it."""
    if src.is_file():
        return src
    if not src.is_dir():
        raise DataError(f"{src}: no such file or folder")
    named = src / f"{src.name}{suffix}"
    if named.is_file():
        return named
    found = sorted(p for p in src.glob(f"*{suffix}") if p.is_file())
    if len(found) != 1:
        raise DataError(f"{src}: expected one {src.name}{suffix} (found {len(found)} *{suffix} files)")
    return found[0]


def read_recbole(
    src: str | Path,
    *,
    user_col: str = "user_id",
    item_col: str = "item_id",
    time_col: str | None = "timestamp",
    rating_col: str | None = "rating",
) -> InteractionLog:
    """Read a RecBole ``.inter`` file (or the folder holding ``<name>.inter``).

    ``time_col`` / ``rating_col`` are used when the file has them (None: never).
    """
    path = find_inter(Path(src))
    header, rows, lines = read_atomic(path)
    u_col, i_col = column(header, path, user_col), column(header, path, item_col)
    assert u_col is not None and i_col is not None
    t_col = header.index(time_col) if time_col in header else None
    r_col = header.index(rating_col) if rating_col in header else None
    user_ids, users = factorize([r[u_col] for r in rows], lines, path, "user")
    item_ids, items = factorize([r[i_col] for r in rows], lines, path, "item")
    return InteractionLog(
        source=path,
        user_ids=user_ids,
        item_ids=item_ids,
        users=users,
        items=items,
        rows=lines,
        timestamps=optional_floats(rows, t_col, lines, path, time_col or ""),
        ratings=optional_floats(rows, r_col, lines, path, rating_col or ""),
    )
