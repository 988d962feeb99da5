"""Catalogue scale: a synthetic catalogue of 1,000,000 items (d = 64), exact flat search against the
IVF and HNSW settings, all built with ``service.index.build_index`` and queried through
``ItemIndex.search`` (one query at a time, as the service does).

    python -m benchmarks.serve.scale [--n 1000000] [--queries 1000] [--build-threads 1]

For each setting: recall@20 against exact search, per-query latency p50/p99 (FAISS threads as the
service sets them: FAISS_THREADS=1), build time and memory (resident-memory growth during the build,
and the serialised index size). The catalogue is clustered (see ``synth.clustered_catalogue``); the
queries are user-like (a short history's mean plus noise). No GPU here: GPU rows are not measured.
Prints a table and writes benchmarks/results/serve_scale.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from benchmarks.serve import synth
from benchmarks.serve.common import idle_warning, machine, percentiles_ms, table, write_result
from benchmarks.serve.procs import rss_bytes
from service.index import IndexConfig, ItemIndex, build_index, gpu_available

TARGET = {"recall@20": 0.95, "p99_ms": 20.0}


def _rss() -> int:
    import os

    return rss_bytes([os.getpid()])


def exact_topk(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """(n_queries, k) exact inner-product neighbours (batched brute force, all threads)."""
    index = faiss.IndexFlatIP(items.shape[1])
    index.add(items)
    _, labels = index.search(queries, k)
    return labels


def measure(index: ItemIndex, queries: np.ndarray, truth: np.ndarray, k: int) -> dict[str, Any]:
    times = []
    hits = 0
    for q, t in zip(queries, truth, strict=True):
        start = time.perf_counter()
        _, labels = index.search(q, k)
        times.append(time.perf_counter() - start)
        hits += len(np.intersect1d(labels, t))
    return {"recall@20": round(hits / truth.size, 4), "latency_ms": percentiles_ms(times)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve.scale", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--n", type=int, default=1_000_000)
    p.add_argument("--dim", type=int, default=64)
    p.add_argument("--queries", type=int, default=1000)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--build-threads", type=int, default=1,
                   help="FAISS threads while building (the service builds with FAISS_THREADS, default 1)")  # fmt: skip
    p.add_argument("--nprobe", type=int, nargs="+", default=[8, 16, 32, 64, 128])
    p.add_argument("--ef-search", type=int, nargs="+", default=[32, 64, 128, 256])
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--skip", nargs="*", default=[], choices=["flat", "ivf", "hnsw"])
    p.add_argument("--index-cache", type=Path, default=None, help="keep built indexes here and reuse them")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    warning = idle_warning()
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    result: dict[str, Any] = {"machine_at_start": machine(), "args": vars(args) | {"out": str(args.out)},
                              "gpu": "not measured: no GPU on this machine" if not gpu_available() else "available"}  # fmt: skip
    t = time.perf_counter()
    items = synth.clustered_catalogue(args.n, args.dim, seed=0)
    queries = synth.queries_like(items, args.queries, seed=1)
    truth = exact_topk(items, queries, args.k)
    result["data"] = {"n_items": args.n, "dim": args.dim, "queries": args.queries, "k": args.k,
                      "raw_vectors_mb": round(items.nbytes / 2**20, 1), "make_s": round(time.perf_counter() - t, 1)}  # fmt: skip
    print(f"catalogue {args.n} x {args.dim} and exact truth in {result['data']['make_s']}s", flush=True)

    rows: list[dict[str, Any]] = []

    def build(config: IndexConfig) -> tuple[ItemIndex, dict[str, Any]]:
        cache = None
        if args.index_cache is not None:  # re-measure queries without rebuilding (build info kept)
            args.index_cache.mkdir(parents=True, exist_ok=True)
            key = f"{config.kind}-n{args.n}-d{args.dim}-m{config.hnsw_m}-efc{config.hnsw_ef_construction}"
            cache = args.index_cache / key
            if cache.with_suffix(".json").exists():
                info = json.loads(cache.with_suffix(".json").read_text()) | {"from_cache": True}
                faiss.omp_set_num_threads(1)
                index = ItemIndex(
                    faiss.read_index(str(cache.with_suffix(".faiss"))),
                    config.kind,
                    config.kind == "flat",
                    config,
                )
                print(f"  loaded {config.kind} from {cache}: {info}", flush=True)
                return index, info
        gc.collect()
        faiss.omp_set_num_threads(args.build_threads)
        rss0 = _rss()
        start = time.perf_counter()
        index = build_index(items, config)
        seconds = time.perf_counter() - start
        rss1 = _rss()
        faiss.omp_set_num_threads(1)  # queries as the service runs them (FAISS_THREADS=1)
        size = faiss.serialize_index(index.index).nbytes
        info = {"build_s": round(seconds, 1), "build_threads": args.build_threads,
                "rss_growth_mb": round((rss1 - rss0) / 2**20, 1), "index_bytes_mb": round(size / 2**20, 1)}  # fmt: skip
        print(f"  built {config.kind}: {info}", flush=True)
        if cache is not None:
            faiss.write_index(index.index, str(cache.with_suffix(".faiss")))
            cache.with_suffix(".json").write_text(json.dumps(info))
        return index, info

    def record(name: str, index: ItemIndex, info: dict[str, Any], **setting: Any) -> None:
        m = measure(index, queries, truth, args.k)
        row = {"index": name, **setting, **m, **info}
        ok = m["recall@20"] >= TARGET["recall@20"] and m["latency_ms"]["p99"] <= TARGET["p99_ms"]
        row["meets_target"] = ok
        rows.append(row)
        print(f"    {name} {setting}: recall@20 {m['recall@20']:.4f} p50 {m['latency_ms']['p50']:.3f} "
              f"p99 {m['latency_ms']['p99']:.3f} ms", flush=True)  # fmt: skip

    base = IndexConfig(use_gpu=False)
    if "flat" not in args.skip:
        index, info = build(dataclasses.replace(base, kind="flat"))
        record("flat (exact)", index, info)
        del index
    if "ivf" not in args.skip:
        index, info = build(dataclasses.replace(base, kind="ivf"))
        nlist = int(index.index.nlist)
        for nprobe in args.nprobe:
            index.index.nprobe = nprobe  # what IVF_NPROBE sets at build time
            record("ivf", index, info, nlist=nlist, nprobe=nprobe)
        del index
    if "hnsw" not in args.skip:
        config = dataclasses.replace(
            base, kind="hnsw", hnsw_m=args.hnsw_m, hnsw_ef_construction=args.ef_construction
        )
        index, info = build(config)
        for ef in args.ef_search:
            # the same graph queried with another HNSW_EF_SEARCH, through ItemIndex.search
            view = ItemIndex(
                index.index, "hnsw", exact=False, config=dataclasses.replace(config, hnsw_ef_search=ef)
            )
            record("hnsw", view, info, M=args.hnsw_m, ef_construction=args.ef_construction, ef_search=ef)
        del index
    result["rows"] = rows
    result["machine_at_end"] = machine()
    best = [r for r in rows if r["meets_target"] and r["index"] != "flat (exact)"]
    result["best_meeting_target"] = min(best, key=lambda r: r["latency_ms"]["p99"]) if best else None

    def setting(r: dict[str, Any]) -> str:
        keys = ("nlist", "nprobe", "M", "ef_construction", "ef_search")
        return ", ".join(f"{k}={r[k]}" for k in keys if k in r) or "-"

    print(table(
        ["index", "setting", "recall@20", "p50 ms", "p99 ms", "build s", "RSS growth MB", "index MB", "target"],
        [[r["index"], setting(r), r["recall@20"], r["latency_ms"]["p50"], r["latency_ms"]["p99"], r["build_s"],
          r["rss_growth_mb"], r["index_bytes_mb"], "met" if r["meets_target"] else "-"] for r in rows],
    ))  # fmt: skip
    out = write_result("serve_scale", result, args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
