"""MMRec-format round trip of a dataset folder: export-format mmrec, import it back with the source
split, and check that the trainer's input is identical (ids, splits, features).

    python -m benchmarks.mmrec_roundtrip --data ../shared/data/tiktok
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import emit

ROOT = Path(__file__).resolve().parents[1]


def compare(a, b) -> dict[str, bool]:
    """Field by field equality of two loaded datasets' training input."""
    out = {
        "n_users": a.n_users == b.n_users,
        "n_items": a.n_items == b.n_items,
        "user_ids": a.user_ids == b.user_ids,
        "item_ids": a.item_ids == b.item_ids,
    }
    for split in ("train", "val", "test"):
        x, y = getattr(a, split), getattr(b, split)
        same = (x is None) == (y is None)
        if same and x is not None:
            same = np.array_equal(x.indptr, y.indptr) and np.array_equal(x.indices, y.indices)
        out[split] = bool(same)
    out["modalities"] = list(a.features) == list(b.features)
    for m in a.features:
        out[f"{m}_feat"] = m in b.features and np.array_equal(a.features[m], b.features[m])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/mmrec_roundtrip.json")
    args = p.parse_args(argv)
    from training.data import load_dataset

    with tempfile.TemporaryDirectory() as tmp:
        mm, back = Path(tmp) / "mmrec", Path(tmp) / "back"
        t0 = time.perf_counter()
        for cmd in (
            ["export-format", "mmrec", "--data", args.data, "--out", str(mm)],
            ["import", "--format", "mmrec", "--src", str(mm), "--out", str(back), "--split", "source"],
        ):
            subprocess.run(
                [sys.executable, "-m", "training", *cmd], cwd=ROOT, check=True, capture_output=True
            )
        seconds = time.perf_counter() - t0
        inter_rows = next(mm.glob("*.inter")).read_text().count("\n") - 1
        result = compare(load_dataset(args.data), load_dataset(back))
    identical = all(result.values())
    lines = [
        f"MMRec round trip of `{args.data}` ({inter_rows} .inter rows, {seconds:.1f} s for both commands): "
        f"{'IDENTICAL' if identical else 'DIFFERENT'}",
        "",
        "| field | identical |",
        "|---|---|",
        *[f"| {k} | {'yes' if v else 'NO'} |" for k, v in result.items()],
    ]
    emit("\n".join(lines) + "\n", {"data": args.data, "identical": identical, "fields": result}, args.out)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
