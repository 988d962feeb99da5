"""The in-memory interaction log every reader returns (numpy + standard library)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from training.data import DataError

# Characters no id may contain: the tab-separated formats (.inter) and line-based files cannot hold them.
FORBIDDEN_ID_CHARS = ("\t", "\n", "\r")


@dataclass(eq=False)
class InteractionLog:
    """One row per interaction, in source order; users and items are indices into the id lists.

    ``rows`` is the 1-based line (or record) number of each interaction in ``source``, for messages.
    ``features`` maps a modality to a (len(item_ids), d) matrix aligned with ``item_ids``.
    ``source_split`` is 0 train / 1 validation / 2 test where the source has its own split.
    """

    source: Path
    user_ids: list[str]
    item_ids: list[str]
    users: np.ndarray  # (n,) int64
    items: np.ndarray  # (n,) int64
    rows: np.ndarray  # (n,) int64
    timestamps: np.ndarray | None = None  # (n,) float64, seconds or any monotone scale
    ratings: np.ndarray | None = None  # (n,) float64
    source_split: np.ndarray | None = None  # (n,) int8 in {0, 1, 2}
    features: dict[str, np.ndarray] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.users.size)


def check_id(value: str, source: Path, row: int, what: str) -> None:
    """An external id must be non-empty and free of separators; raise a one-line DataError if not."""
    if not value.strip():
        raise DataError(f"{source}: row {row}: empty {what} id")
    for ch in FORBIDDEN_ID_CHARS:
        if ch in value:
            raise DataError(
                f"{source}: row {row}: {what} id {value!r} contains {ch!r}, a separator the "
                "tab-separated formats cannot hold"
            )


def factorize(
    values: Sequence[str], rows: np.ndarray, source: Path, what: str
) -> tuple[list[str], np.ndarray]:
    """External ids -> (ids in order of first appearance, (n,) int64 index of each value)."""
    index: dict[str, int] = {}
    codes = np.empty(len(values), dtype=np.int64)
    for k, value in enumerate(values):
        code = index.get(value)
        if code is None:
            check_id(value, source, int(rows[k]), what)
            code = index[value] = len(index)
        codes[k] = code
    return list(index), codes


def parse_floats(values: Sequence[str], rows: np.ndarray, source: Path, column: str) -> np.ndarray:
    """Strings -> float64, or a one-line DataError naming the first row that does not parse."""
    out = np.empty(len(values), dtype=np.float64)
    for k, value in enumerate(values):
        try:
            out[k] = float(value)
        except ValueError:
            raise DataError(
                f"{source}: row {int(rows[k])}: column {column!r}: {value[:40]!r} is not a number"
            ) from None
        if not np.isfinite(out[k]):
            raise DataError(f"{source}: row {int(rows[k])}: column {column!r}: {value[:40]!r} is not finite")
    return out


def optional_floats(
    rows: Sequence[Sequence[str]], col: int | None, lines: np.ndarray, source: Path, name: str
) -> np.ndarray | None:
    """Column ``col`` of ``rows`` as float64, or None when the column is absent."""
    return None if col is None else parse_floats([r[col] for r in rows], lines, source, name)
