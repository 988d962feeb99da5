"""Soak: the API as deployed (uvicorn --workers 2, private Redis, TikTok-sized artifact) under a fixed
request rate for a long time, from a separate open-loop load process (benchmarks.serve.loadgen --rate:
wrk2-style, latency from the scheduled send time).

    python -m benchmarks.serve.soak [--duration 600] [--rate 250] [--warmup 60]

Pass: zero failed requests, and the API's resident memory (uvicorn supervisor + workers) grows by less
than 10% between the end of the warm-up and the end of the run. Prints a table and writes
benchmarks/results/serve_soak.json (with the memory samples).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serve.common import idle_warning, machine, table, write_result
from benchmarks.serve.faults import Load, deploy
from benchmarks.serve.procs import metric, scrape

MAX_GROWTH = 0.10


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve.soak", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--duration", type=float, default=600.0, help="seconds of load")
    p.add_argument("--rate", type=float, default=250.0, help="requests per second (open loop)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before the memory baseline")
    p.add_argument("--window", type=float, default=30.0, help="seconds averaged for baseline and end")
    p.add_argument("--sample-every", type=float, default=5.0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--workload", default="mixed")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    warning = idle_warning()
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    result: dict[str, Any] = {"machine_at_start": machine(), "args": vars(args) | {"out": str(args.out)}}
    samples: list[tuple[float, int, int]] = []  # (second of the run, API RSS bytes, Redis used_memory)
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    with deploy(work, workers=args.workers, n_users=9_308, n_items=6_710) as dep:
        import redis

        rconn = redis.Redis.from_url(dep.redis.url)
        load = Load(dep, "soak", concurrency=None, rate=args.rate, workload=args.workload,
                    duration=args.duration)  # fmt: skip
        next_sample = 0.0
        while load.proc.alive():
            now = load.at()
            if now >= next_sample:
                samples.append((round(now, 1), dep.api.rss(), int(rconn.info("memory")["used_memory"])))
                if len(samples) % 12 == 1:
                    print(f"  t={now:6.0f}s API RSS {samples[-1][1] / 2**20:7.1f} MB", flush=True)
                next_sample += args.sample_every
            time.sleep(0.2)
        load_result = load.stop()
        final_metrics = scrape(dep.api.url)
        rconn.close()
    shutil.rmtree(work, ignore_errors=True)
    t = np.array([s[0] for s in samples])
    rss = np.array([s[1] for s in samples], dtype=np.float64)
    base_mask = (t >= args.warmup) & (t < args.warmup + args.window)
    end_mask = t >= t.max() - args.window
    baseline = float(rss[base_mask].mean()) if base_mask.any() else float(rss[0])
    end = float(rss[end_mask].mean())
    growth = (end - baseline) / baseline
    result |= {
        "load": {k: v for k, v in load_result.items() if k != "timeline"},
        "per_second_min_max_ok": [
            min(s["ok"] for s in load_result["timeline"][1:-1]),
            max(s["ok"] for s in load_result["timeline"][1:-1]),
        ],
        "rss_mb": {
            "start": round(rss[0] / 2**20, 1),
            "after_warmup": round(baseline / 2**20, 1),
            "end": round(end / 2**20, 1),
            "max": round(rss.max() / 2**20, 1),
        },  # fmt: skip
        "rss_growth_after_warmup": round(growth, 4),
        "redis_used_memory_mb": {
            "start": round(samples[0][2] / 2**20, 1),
            "end": round(samples[-1][2] / 2**20, 1),
        },
        "one_worker_metrics": {
            "cache_hits": metric(final_metrics, "mmssl_cache_hits_total"),
            "cache_misses": metric(final_metrics, "mmssl_cache_misses_total"),
            "redis_errors": metric(final_metrics, "mmssl_redis_errors_total"),
        },  # fmt: skip
        "samples": samples,
        "machine_at_end": machine(),
    }
    lr = load_result
    passed = lr["failed"] == 0 and growth < MAX_GROWTH
    result["passed"] = passed
    print(table(
        ["requests sent", "failed", "achieved req/s", "p50 ms", "p99 ms", "RSS after warm-up MB", "RSS end MB", "growth", "pass"],
        [[lr["sent"], lr["failed"], lr["achieved_rps"], lr["latency_ms"].get("p50"), lr["latency_ms"].get("p99"),
          result["rss_mb"]["after_warmup"], result["rss_mb"]["end"], f"{growth:+.1%}", "yes" if passed else "NO"]],
    ))  # fmt: skip
    out = write_result("serve_soak", result, args.out)
    print(f"wrote {out}")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
