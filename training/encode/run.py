"""Gather each item's content, encode it in chunks, write ``<modality>_feat.npy`` atomically.

* Items of the dataset without content (no row in the item table, no image file, an empty cell)
  get a zero row and are listed in ``<modality>_encode_report.json``. A row whose text columns
  are all empty, or an image file that cannot be decoded, is an error naming the file and row.
* Resumable: chunks of ``chunk`` items go to ``.<modality>_feat.parts/`` as they finish; a rerun
  with the same encoder and the same content skips the chunks already written. The final file
  appears by rename only when every chunk is there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import string
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from training.data import FEATURE_SUFFIX, DataError
from training.encode.encoders import EncodeError, Encoder

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif")


def read_item_table(path: Path, id_col: str) -> tuple[list[str], dict[str, list[str]], np.ndarray]:
    """(item ids, columns, line numbers) of a CSV/TSV/Parquet table or a RecBole ``.item`` file."""
    if path.suffix == ".item":
        from training.importers.recbole import read_atomic

        header, rows, lines = read_atomic(path)
        if id_col not in header:
            raise DataError(f"{path}: missing column {id_col!r} (columns: {', '.join(header)})")
        columns = {name: [r[k] for r in rows] for k, name in enumerate(header)}
    else:
        from training.importers.tabular import read_table

        frame = read_table(path, [id_col])
        columns = {str(c): frame[c].tolist() for c in frame.columns}
        lines = np.arange(2, len(frame) + 2, dtype=np.int64)
    ids = columns[id_col]
    seen: dict[str, int] = {}
    for value, line in zip(ids, lines.tolist(), strict=True):
        if value in seen:
            raise DataError(f"{path}: row {line}: item {value!r} appears again (first at row {seen[value]})")
        seen[value] = line
    return ids, columns, lines


def text_contents(
    item_ids: Sequence[str],
    table: Path,
    id_col: str,
    text_cols: Sequence[str],
    template: str | None = None,
) -> tuple[list[str | None], dict[str, int]]:
    """One text per dataset item (None: no row in the table), and counts for the report.

    ``template`` uses ``{column}`` fields (default: the columns joined by ". "). A row of the table
    whose text is empty after formatting is an error naming the file and row.
    """
    ids, columns, lines = read_item_table(table, id_col)
    fields = list(text_cols)
    if template is not None:
        fields = [f for _, f, _, _ in string.Formatter().parse(template) if f]
    for name in fields:
        if name not in columns:
            raise DataError(f"{table}: missing column {name!r} (columns: {', '.join(columns)})")
    if not fields:
        raise DataError(
            "encode: name the text column(s) with --text-cols or a --template with {column} fields"
        )
    row_of = {value: k for k, value in enumerate(ids)}
    texts: list[str | None] = []
    for item in item_ids:
        k = row_of.get(item)
        if k is None:
            texts.append(None)
            continue
        values = {name: columns[name][k].strip() for name in fields}
        text = (
            template.format(**values) if template is not None else ". ".join(v for v in values.values() if v)
        )
        if not text.strip(" .,;:-\t"):
            raise EncodeError(
                f"{table}: row {int(lines[k])}: empty text for item {item!r} (columns {', '.join(fields)})"
            )
        texts.append(text)
    unused = len(set(ids) - set(item_ids))
    return texts, {"table_rows": len(ids), "table_rows_not_in_dataset": unused}


def image_contents(
    item_ids: Sequence[str],
    *,
    folder: Path | None = None,
    table: Path | None = None,
    id_col: str = "item_id",
    path_col: str | None = None,
) -> tuple[list[Path | None], dict[str, int]]:
    """One image path per dataset item (None: no image): files ``<item id>.<ext>`` in ``folder``, or
    the ``path_col`` of ``table`` (paths relative to the table's folder)."""
    paths: list[Path | None] = []
    if folder is not None:
        if not folder.is_dir():
            raise DataError(f"{folder}: image folder not found")
        by_stem: dict[str, Path] = {}
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                by_stem.setdefault(p.stem, p)
        paths = [by_stem.get(item) for item in item_ids]
        return paths, {"image_files": len(by_stem)}
    if table is None or path_col is None:
        raise DataError("encode: images need --images FOLDER, or --items TABLE with --image-col")
    ids, columns, _ = read_item_table(table, id_col)
    if path_col not in columns:
        raise DataError(f"{table}: missing column {path_col!r} (columns: {', '.join(columns)})")
    row_of = {value: k for k, value in enumerate(ids)}
    for item in item_ids:
        k = row_of.get(item)
        value = columns[path_col][k].strip() if k is not None else ""
        path = (table.parent / value) if value else None
        paths.append(path if path is not None and path.is_file() else None)
    return paths, {"table_rows": len(ids)}


def _content_key(encoder: Encoder, contents: Sequence[Any], chunk: int) -> str:
    h = hashlib.sha256(f"{encoder.spec}\0{chunk}\0".encode())
    for c in contents:
        h.update(b"\0" if c is None else str(c).encode() + b"\1")
    return h.hexdigest()


def encode_items(
    data_dir: str | Path,
    modality: str,
    item_ids: Sequence[str],
    contents: Sequence[Any],
    encoder: Encoder,
    *,
    chunk: int = 1024,
    batch: int = 256,
    progress: bool = True,
    force: bool = False,
    extra_report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``data_dir/<modality>_feat.npy`` (one float32 row per item) and its report; return the report."""
    data_dir = Path(data_dir)
    out = data_dir / f"{modality}{FEATURE_SUFFIX}"
    if not modality or not all(c.isalnum() or c == "-" for c in modality):
        raise DataError(f"modality name {modality!r}: use letters, digits and '-' only")
    if out.exists() and not force:
        raise DataError(f"{out}: already exists; pass --force to replace it")
    if len(contents) != len(item_ids):
        raise ValueError("contents must have one entry per item")
    present = [k for k, c in enumerate(contents) if c is not None]
    missing = [item_ids[k] for k, c in enumerate(contents) if c is None]
    if not present:
        raise EncodeError(f"encode {modality}: no item of {data_dir} has content (check the ids and columns)")
    t0 = time.perf_counter()
    encoder.fit([contents[k] for k in present])
    fit_seconds = time.perf_counter() - t0

    parts = data_dir / f".{modality}{FEATURE_SUFFIX[:-4]}.parts"
    key = _content_key(encoder, contents, chunk)
    meta_path = parts / "meta.json"
    if parts.is_dir() and (not meta_path.is_file() or json.loads(meta_path.read_text()).get("key") != key):
        shutil.rmtree(parts)  # an interrupted run with another encoder or other content: start again
    parts.mkdir(exist_ok=True)
    meta_path.write_text(json.dumps({"key": key, "spec": encoder.spec, "n_items": len(item_ids)}))

    n_chunks = (len(item_ids) + chunk - 1) // chunk
    from tqdm import tqdm

    resumed = 0
    encoded_seconds = 0.0
    dim: int | None = None
    bar = tqdm(total=len(item_ids), disable=not progress, desc=f"encode {modality}", unit="item")
    for c in range(n_chunks):
        lo, hi = c * chunk, min((c + 1) * chunk, len(item_ids))
        part = parts / f"chunk_{c:06d}.npy"
        if part.is_file():
            resumed += 1
            dim = dim or int(np.load(part, mmap_mode="r").shape[1])
            bar.update(hi - lo)
            continue
        idx = [k for k in range(lo, hi) if contents[k] is not None]
        t1 = time.perf_counter()
        blocks = [
            encoder.encode([contents[k] for k in idx[b : b + batch]]) for b in range(0, len(idx), batch)
        ]
        encoded_seconds += time.perf_counter() - t1
        if blocks:
            dim = int(blocks[0].shape[1])
        if dim is None:  # a chunk with no content before any dim is known: encode one item to learn it
            dim = int(encoder.encode([contents[present[0]]]).shape[1])
        rows = np.zeros((hi - lo, dim), dtype=np.float32)
        if blocks:
            rows[np.asarray(idx) - lo] = np.concatenate(blocks).astype(np.float32)
        tmp = part.with_suffix(".tmp.npy")
        np.save(tmp, rows, allow_pickle=False)
        os.replace(tmp, part)
        bar.update(hi - lo)
    bar.close()
    matrix = np.concatenate([np.load(parts / f"chunk_{c:06d}.npy") for c in range(n_chunks)])
    if not np.isfinite(matrix).all():
        raise EncodeError(f"encode {modality}: the encoder produced NaN or inf")
    tmp_out = data_dir / f".{modality}{FEATURE_SUFFIX}.tmp.npy"
    np.save(tmp_out, matrix, allow_pickle=False)
    os.replace(tmp_out, out)
    shutil.rmtree(parts)
    encoded = len(present)
    report: dict[str, Any] = {
        "file": str(out),
        "encoder": encoder.spec,
        "items": len(item_ids),
        "dim": int(matrix.shape[1]),
        "encoded": encoded,
        "zero_rows": len(missing),
        "missing_items": missing,
        "chunks": n_chunks,
        "chunks_resumed": resumed,
        "fit_seconds": round(fit_seconds, 3),
        "encode_seconds": round(encoded_seconds, 3),
        "items_per_second": round(encoded / encoded_seconds, 1)
        if encoded_seconds > 0 and not resumed
        else None,
        **(extra_report or {}),
    }
    (data_dir / f"{modality}_encode_report.json").write_text(json.dumps(report, indent=1) + "\n")
    log.info("wrote %s: %d items, %d encoded, %d zero rows", out, len(item_ids), encoded, len(missing))
    return report
