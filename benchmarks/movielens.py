"""MovieLens-100K end to end: import (RecBole atomic files, global time split), encode titles and
genres as a text modality, train full MMSSL vs ID-only over seeds, score the test split, paired
bootstrap 95% intervals over users; and the encoders' throughput.

    python -m benchmarks.movielens --seeds 1 2 -- num_threads=1 train.epochs=40 train.patience=5 \
        train.batch_size=4096

The data is read at run time from the ``recbole`` wheel (``pip download recbole==1.2.1 --no-deps``;
or pass ``--wheel``) into a temporary folder: its licence forbids redistribution, so nothing of it
is committed. The imported folder, runs and artifacts go under ``--out`` (git-ignored). Finished
runs (with eval.json) are reused, so an interrupted benchmark resumes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from benchmarks.common import emit, paired_difference

ROOT = Path(__file__).resolve().parents[1]
ML = "recbole/dataset_example/ml-100k/"
TEMPLATE = "{movie_title} ({release_year}). Genres: {class}"
K = 20


def _training(*args: str) -> None:
    cmd = [sys.executable, "-m", "training", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stderr[-2000:]}")


def fetch_wheel(dest: Path) -> Path:
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "recbole==1.2.1", "--no-deps", "-d", str(dest)],
        check=True,
    )
    return next(dest.glob("recbole-*.whl"))


@contextmanager
def ml100k_files(wheel: Path | None) -> Iterator[Path]:
    """A temporary folder with ml-100k.inter and ml-100k.item read from the recbole wheel."""
    with tempfile.TemporaryDirectory() as tmp:
        wheel = wheel or fetch_wheel(Path(tmp))
        raw = Path(tmp) / "ml-100k"
        raw.mkdir()
        with zipfile.ZipFile(wheel) as z:
            for name in ("ml-100k.inter", "ml-100k.item"):
                (raw / name).write_bytes(z.read(ML + name))
        yield raw


def prepare_data(raw: Path, data: Path, encoder: str) -> dict[str, Any]:
    """Import + encode into ``data``, with the two commands the README shows (skipped when done)."""
    if not ((data / "train.json").is_file() and (data / "text_feat.npy").is_file()):
        _training("import", "--format", "recbole", "--src", str(raw), "--out", str(data), "--split", "time")
        _training(
            "encode",
            "--data",
            str(data),
            "--kind",
            "text",
            "--encoder",
            encoder,
            "--items",
            str(raw / "ml-100k.item"),
            "--template",
            TEMPLATE,
            "--no-progress",
        )
    return json.loads((data / "import_summary.json").read_text())


def score_run(run_dir: Path, data: Path, artifacts: Path) -> dict[str, np.ndarray]:
    """Per-user test metrics from the run's exported artifact (numpy), checked against evaluate's mean."""
    import torch

    from artifact.contract import load_artifact
    from training.data import load_dataset, load_split
    from training.evaluate import rank_metrics_per_user
    from training.export import export_checkpoint

    dataset = load_dataset(data)
    out = artifacts / run_dir.name
    versions = sorted(p for p in out.glob("*") if (p / "manifest.json").is_file()) if out.is_dir() else []
    path = versions[-1] if versions else export_checkpoint(run_dir / "best.pt", dataset, out)
    a = load_artifact(path).arrays
    test = load_split(data / "test.json", dataset)
    _, metrics = rank_metrics_per_user(
        torch.as_tensor(a.user_embeddings),
        torch.as_tensor(a.item_embeddings),
        a.train_indptr,
        a.train_indices,
        test.indptr,
        test.indices,
        ks=(K,),
    )
    expected = json.loads((run_dir / "eval.json").read_text())[f"recall@{K}"]
    if abs(float(metrics[f"recall@{K}"].mean()) - expected) > 1e-4:
        raise SystemExit(
            f"{run_dir}: artifact Recall@{K} {metrics[f'recall@{K}'].mean():.6f} != evaluate {expected:.6f}"
        )
    return metrics


def throughput(raw: Path, data: Path, repeat: int = 10, n_images: int = 300) -> list[dict[str, Any]]:
    """Items per second of each encoder on this machine (fit timed apart): the 1,682 real
    title+genre texts repeated ``repeat`` times, and seeded random 256x256 JPEGs for images (the
    dataset has no images)."""
    from PIL import Image

    from training.data import load_dataset
    from training.encode import make_encoder, text_contents
    from training.encode.encoders import HistogramImageEncoder

    texts, _ = text_contents(load_dataset(data).item_ids, raw / "ml-100k.item", "item_id", [], TEMPLATE)
    corpus = [t for t in texts if t is not None] * repeat
    rows = []

    def timed(kind: str, spec: str, enc: Any, items: list[Any]) -> None:
        t0 = time.perf_counter()
        enc.fit(items)
        fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        for b in range(0, len(items), 256):
            enc.encode(items[b : b + 256])
        sec = time.perf_counter() - t0
        rows.append(
            {
                "kind": kind,
                "encoder": spec,
                "items": len(items),
                "fit_s": round(fit, 2),
                "encode_s": round(sec, 2),
                "items_per_s": round(len(items) / sec, 1),
            }
        )

    for spec in ("packaged", "tfidf"):
        timed("text", spec, make_encoder("text", spec, dim=64), corpus)
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        paths = []
        for k in range(n_images):
            path = Path(tmp) / f"{k}.jpg"
            Image.fromarray(rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)).save(path, quality=90)
            paths.append(path)
        timed("image", "histogram (256x256 JPEG)", HistogramImageEncoder(), paths)
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--wheel", type=Path, help="a downloaded recbole wheel (default: pip download it)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/movielens")
    p.add_argument("--config", default="configs/tiktok.yaml")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--encoder", default="packaged", help="text encoder spec for the titles and genres")
    p.add_argument("--no-throughput", action="store_true")
    p.add_argument("overrides", nargs="*", help="trainer overrides for every run")
    args = p.parse_args(argv)
    from benchmarks.quality import collect, run_one

    data = args.out / "data"
    with ml100k_files(args.wheel) as raw:
        summary = prepare_data(raw, data, args.encoder)
        speed = None if args.no_throughput else throughput(raw, data)
    run_args = SimpleNamespace(
        data=str(data), eval_split=str(data / "test.json"), config=args.config, overrides=args.overrides
    )
    per_user: dict[str, list[np.ndarray]] = {"full": [], "id_only": []}
    runs = []
    for variant in per_user:
        for seed in args.seeds:
            run_dir = args.out / "runs" / f"{variant}-seed{seed}"
            if (run_dir / "eval.json").is_file():
                runs.append(collect(run_dir, variant, seed))
            else:
                runs.append(run_one(run_args, variant, seed, args.out))
            m = score_run(run_dir, data, args.out / "artifacts")
            per_user[variant].append(np.stack([m[f"recall@{K}"], m[f"ndcg@{K}"]]))
    table = {}
    for j, metric in enumerate((f"recall@{K}", f"ndcg@{K}")):
        full = np.mean([x[j] for x in per_user["full"]], axis=0)  # per user, averaged over seeds
        ids = np.mean([x[j] for x in per_user["id_only"]], axis=0)
        table[metric] = paired_difference(full, ids, n_boot=2000, seed=0)
    lines = [
        f"MovieLens-100K, global time split 80/10/10, test split, {table[f'recall@{K}']['n_users']} test users, "
        f"seeds {','.join(map(str, args.seeds))} (per-user metrics averaged over seeds; paired bootstrap 95% "
        "intervals over users, 2000 resamples).",
        "",
        "| metric | full (text) | ID-only | full - ID-only |",
        "|---|---|---|---|",
    ]
    for metric, r in table.items():
        cells = [f"{r[n]:.4f} [{r[n + '_ci'][0]:.4f}, {r[n + '_ci'][1]:.4f}]" for n in ("a", "b", "diff")]
        lines.append(f"| {metric} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "| variant | seed | best epoch | epochs | s/epoch | test R@20 | test N@20 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        lines.append(
            f"| {r['variant']} | {r['seed']} | {r['best_epoch']} | {r['epochs_run']} | "
            f"{r['seconds_per_epoch']:.2f} | {r['eval']['recall@20']:.4f} | {r['eval']['ndcg@20']:.4f} |"
        )
    result: dict[str, Any] = {
        "import_summary": summary,
        "table": table,
        "runs": runs,
        "command": " ".join([sys.executable, "-m", "benchmarks.movielens", *(argv or sys.argv[1:])]),
        "machine": {"cpus": os.cpu_count()},
    }
    if speed is not None:
        result["throughput"] = speed
        lines += ["", "| kind | encoder | items | fit s | encode s | items/s |", "|---|---|---|---|---|---|"]
        for r in result["throughput"]:
            lines.append(
                f"| {r['kind']} | {r['encoder']} | {r['items']} | {r['fit_s']} | {r['encode_s']} | {r['items_per_s']} |"
            )
    emit("\n".join(lines) + "\n", result, args.out / "results.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
