"""HTTP load benchmark of the service as deployed: ``uvicorn service.app:app`` in its own process,
a private redis-server, and ``wrk`` (a separate process) with a Lua script that gives every request
its own user id.

    python -m benchmarks.serve.load [--workers 1] [--connections 16] [--duration 20] [--profile]

Scenarios (wrk/recommend.lua): warm users served from the Redis cache, users with fresh interactions
(recompute path), unknown users (popularity) and a mixed workload. Before the HTTP runs it measures
the same work in-process, layer by layer (index search alone, Recommender.top_k, the whole
Serving.recommend with Redis), so that the HTTP and framework overhead is visible. ``--profile``
samples the serving process with py-spy during a warm run and summarises where the time goes.
Prints a table and writes benchmarks/results/serve_load.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from benchmarks.serve import synth
from benchmarks.serve.common import RESULTS, idle_warning, machine, percentiles_ms, table, write_result
from benchmarks.serve.procs import ApiServer, RedisServer, api_env, cpu_seconds, metric, scrape

HERE = Path(__file__).resolve().parent
LUA = HERE / "wrk" / "recommend.lua"
MODES = ("warm", "fresh", "unknown", "mixed")
TARGETS = {"warm": {"rps": 1000.0, "p99_ms": 20.0}, "fresh": {"p99_ms": 30.0}}


# ------------------------------------------------------------------------------ in-process layers


def _time_calls(fn: Any, args: list[Any], repeat: int = 1) -> list[float]:
    out = []
    for a in args:
        t = time.perf_counter()
        for _ in range(repeat):
            fn(*a)
        out.append((time.perf_counter() - t) / repeat)
    return out


def in_process_layers(artifact_root: Path, redis_url: str, n: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per-query cost of each layer below HTTP, on the serving configuration (flat index, 1 thread)."""
    from service.catalogue import Catalogue
    from service.itemlog import EmbeddedItemLog
    from service.metrics import Metrics
    from service.model_manager import ModelManager
    from service.schemas import RecommendRequest
    from service.serving import Serving
    from service.settings import Settings
    from service.store import FailOpenStore, RedisStore

    settings = Settings(_env_file=None, artifact_root=artifact_root, redis_url=redis_url,  # type: ignore[call-arg]
                        redis_prefix=f"bench-layers-{os.getpid()}", faiss_use_gpu=False, log_level="WARNING")  # fmt: skip
    rng = np.random.default_rng(seed)

    async def run() -> dict[str, Any]:
        metrics = Metrics()
        manager = ModelManager(settings, metrics)
        await manager.start()
        rec = manager.require()
        users = rng.integers(0, rec.artifact.manifest.n_users, size=n)
        vectors = rec._user_embeddings[users]
        out: dict[str, Any] = {"n_queries": n, "index": rec.index.describe()}
        out["index_search_k20_ms"] = percentiles_ms(_time_calls(rec.index.search, [(v, 20) for v in vectors]))
        # what top_k really fetches: k + the user's training items (exclude_seen)
        fetch = [20 + rec.artifact.user_items(int(u)).size for u in users]
        out["index_search_k20_plus_seen_ms"] = percentiles_ms(
            _time_calls(rec.index.search, [(v, f) for v, f in zip(vectors, fetch, strict=True)])
        )
        out["top_k_exclude_seen_ms"] = percentiles_ms(
            _time_calls(
                rec.top_k,
                [(v, 20, rec.artifact.user_items(int(u))) for v, u in zip(vectors, users, strict=True)],
            )
        )
        plans = [rec.plan(f"u{u}", rng.integers(0, rec.n_items, size=2)) for u in users]
        out["fresh_user_vector_ms"] = percentiles_ms(_time_calls(rec.user_vector, [(p,) for p in plans]))

        store = FailOpenStore(
            RedisStore.from_url(
                redis_url,
                prefix=settings.redis_prefix,
                timeout_s=1.0,
                cache_ttl_s=600,
                fresh_max=500,
                fresh_ttl_s=600,
            ),  # fmt: skip
            metrics,
            retry_s=1.0,
        )
        catalogue = Catalogue(settings, manager, metrics, EmbeddedItemLog())  # no items added here
        serving = Serving(settings, catalogue, store, metrics)

        async def timed(reqs: list[RecommendRequest]) -> list[float]:
            out_t = []
            for r in reqs:
                t = time.perf_counter()
                await serving.recommend(r)
                out_t.append(time.perf_counter() - t)
            return out_t

        warm = [RecommendRequest(user_id=f"u{u}", k=20) for u in users]
        await timed(warm)  # fill the cache
        out["serving_warm_redis_ms"] = percentiles_ms(await timed(warm))
        fresh = [RecommendRequest(user_id=f"u{u}", k=20, interactions=[f"i{i}" for i in rng.integers(0, rec.n_items, 2)])
                 for u in users]  # fmt: skip
        out["serving_fresh_redis_ms"] = percentiles_ms(await timed(fresh))
        unknown = [RecommendRequest(user_id=f"new-{i}", k=20) for i in range(n)]
        out["serving_unknown_redis_ms"] = percentiles_ms(await timed(unknown))
        for key in [k async for k in store.inner.client.scan_iter(match=f"{settings.redis_prefix}*")]:
            await store.inner.client.delete(key)
        await store.close()
        await manager.stop()
        return out

    return asyncio.run(run())


# ------------------------------------------------------------------------------ HTTP


async def _prime(url: str, n_users: int, concurrency: int = 16) -> dict[str, int]:
    """One /recommend per known user, so that every warm request is a cache hit."""
    counts: collections.Counter[str] = collections.Counter()
    queue: asyncio.Queue[int] = asyncio.Queue()
    for u in range(n_users):
        queue.put_nowait(u)
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:

        async def worker() -> None:
            while not queue.empty():
                u = queue.get_nowait()
                r = await client.post("/recommend", json={"user_id": f"u{u}", "k": 20})
                counts[str(r.status_code)] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return dict(counts)


def sample_paths(
    url: str, mode: str, n_users: int, n_items: int, n: int = 200, seed: int = 0
) -> dict[str, int]:
    """What the service says it did for requests like the wrk ones: {"path/cache_hit": count}."""
    rng = np.random.default_rng(seed)
    counts: collections.Counter[str] = collections.Counter()
    with httpx.Client(base_url=url, timeout=10) as client:
        for _ in range(n):
            body: dict[str, Any] = {"user_id": f"u{rng.integers(n_users)}", "k": 20}
            if mode == "fresh":
                body["interactions"] = [f"i{i}" for i in rng.integers(0, n_items, rng.integers(1, 4))]
            elif mode == "unknown":
                body["user_id"] = f"new-{rng.integers(1 << 30)}"
            r = client.post("/recommend", json=body).json()
            counts[f"{r['path']}/{'hit' if r['cache_hit'] else 'miss'}"] += 1
    return dict(counts)


def run_wrk(
    url: str, mode: str, connections: int, threads: int, duration: int, n_users: int, n_items: int
) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed: apt-get install -y wrk")
    env = dict(os.environ, WRK_MODE=mode, N_USERS=str(n_users), N_ITEMS=str(n_items), K="20")
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--timeout", "5s",
           "-s", str(LUA), url]  # fmt: skip
    children0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=duration + 60)
    children1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    wrk_cpu = (children1.ru_utime - children0.ru_utime) + (children1.ru_stime - children0.ru_stime)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stdout}\n{proc.stderr}")
    raw = json.loads(line.removeprefix("WRK_JSON "))
    seconds = raw["duration_us"] / 1e6
    lat = raw["latency_us"]
    errors = sum(raw["errors"].values())
    return {
        "mode": mode,
        "connections": connections,
        "threads": threads,
        "duration_s": round(seconds, 2),
        "requests": raw["requests"],
        "errors": raw["errors"],
        "error_total": errors,
        "rps": round(raw["requests"] / seconds, 1),
        "latency_ms": {k: round(v / 1e3, 3) for k, v in lat.items()},
        "wrk_cpu_s": round(wrk_cpu, 2),
        "command": " ".join(f"{k}={env[k]}" for k in ("WRK_MODE", "N_USERS", "N_ITEMS", "K"))
        + " "
        + " ".join(cmd),
    }


# ------------------------------------------------------------------------------ profile


CATEGORIES = [  # "where the time goes": the first category found from the leaf up
    ("faiss index search", ("faiss/",)),
    ("user vector maths + top-k (numpy)", ("artifact/contract.py", "service/recommender.py")),
    ("redis client (incl. its socket writes)", ("redis/",)),
    ("threadpool hand-off (anyio, threading)", ("anyio/", "threading.py", "concurrent/futures")),
    ("pydantic validation", ("pydantic",)),
    ("json encoding", ("orjson", "json/")),
    ("prometheus metrics", ("prometheus_client",)),
    ("service code", ("service/",)),
    ("fastapi/starlette routing + middleware", ("fastapi/", "starlette/", "contextlib.py")),
    ("uvicorn http protocol", ("uvicorn/protocols", "uvicorn/middleware")),
]
# Only when no frame of the stack is in a category above: asyncio's stream and loop code is called
# from the Redis client and uvicorn as well, and belongs to them there.
FALLBACK = ("event loop (uvloop: epoll, callbacks, transports)", ("asyncio/", "uvloop"))


def _category(frames: list[str]) -> str:
    for frame in reversed(frames):
        for name, keys in CATEGORIES:
            if any(k in frame for k in keys):
                return name
    if any(k in f for f in frames for k in FALLBACK[1]):
        return FALLBACK[0]
    return "other"


def summarise_profile(raw_path: Path, top: int = 15) -> dict[str, Any]:
    """py-spy ``--format raw --threads`` (collapsed stacks "thread;f1;...;leaf count") -> the share of
    samples by category and function, for the event-loop thread and for the other threads."""
    total = 0
    threads: collections.Counter[str] = collections.Counter()
    by_cat: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    leaf: collections.Counter[str] = collections.Counter()
    for line in raw_path.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        thread, *frames = stack.split(";")
        if not frames:
            continue
        total += count
        main = "MainThread" in thread or "uvicorn" in ";".join(frames[:3])
        threads["event-loop thread" if main else "other threads"] += count
        if not main:
            by_cat["other threads: " + _category(frames)] += count
            continue
        leaf[frames[-1]] += count
        for f in set(frames):
            inclusive[f] += count
        by_cat[_category(frames)] += count

    def pct(c: collections.Counter[str]) -> list[tuple[str, float]]:
        return [(k, round(100 * v / max(total, 1), 1)) for k, v in c.most_common(top)]

    return {
        "samples": total,
        "threads_pct": pct(threads),
        "by_category_pct": pct(by_cat),
        "inclusive_pct": pct(inclusive),
        "self_pct": pct(leaf),
    }


def profile_warm(
    server: ApiServer, out_dir: Path, seconds: int, connections: int, n_users: int, n_items: int
) -> dict[str, Any]:
    if shutil.which("py-spy") is None and not (Path(sys.executable).parent / "py-spy").exists():
        return {"skipped": "py-spy is not installed (pip install py-spy)"}
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    pid = server.worker_pids()[0]
    out_dir.mkdir(parents=True, exist_ok=True)
    raw = out_dir / "profile_warm.txt"
    svg = out_dir / "profile_warm.svg"
    common = [
        pyspy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        "250",
        "--nonblocking",
        "--threads",
    ]
    spy = subprocess.Popen([*common, "--format", "raw", "--output", str(raw)], stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)  # fmt: skip
    time.sleep(1.0)
    wrk = run_wrk(server.url, "warm", connections, 1, seconds, n_users, n_items)
    _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0 or not raw.exists():
        return {"skipped": f"py-spy failed: {err.decode(errors='replace')[-500:]}"}
    summary = summarise_profile(raw)
    # the flame graph, from the same kind of run (a second, shorter sampling)
    flame = subprocess.Popen([*common[:4], "--duration", "5", "--rate", "250", "--nonblocking", "--format",
                              "flamegraph", "--output", str(svg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    run_wrk(server.url, "warm", connections, 1, 6, n_users, n_items)
    flame.wait(timeout=120)
    return {"pid": pid, "raw": str(raw), "flamegraph": str(svg), "wrk_during_profile": wrk, **summary}


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve.load", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--workers", type=int, default=2, help="uvicorn --workers of the measured server (deployed: 2)"
    )
    p.add_argument("--compare-workers", type=int, nargs="*", default=[1],
                   help="also run the warm scenario with these worker counts (deployment choice)")  # fmt: skip
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--threads", type=int, default=1, help="wrk threads")
    p.add_argument("--duration", type=int, default=20, help="seconds per scenario")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    p.add_argument(
        "--layers", type=int, default=2000, help="queries of the in-process layer timings (0 = skip)"
    )
    p.add_argument(
        "--profile", type=int, default=15, help="seconds of py-spy sampling on a warm run (0 = skip)"
    )
    p.add_argument(
        "--out", type=Path, default=None, help="result JSON (default benchmarks/results/serve_load.json)"
    )
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    started_machine = machine()
    warning = idle_warning()
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    result: dict[str, Any] = {
        "machine_at_start": started_machine,
        "args": vars(args) | {"out": str(args.out)},
    }
    redis = RedisServer(work)
    redis.start()
    try:
        root = work / "artifacts"
        path = synth.write_tiktok_sized(root)
        m = json.loads((path / "manifest.json").read_text())
        n_users, n_items = m["n_users"], m["n_items"]
        result["artifact"] = {"n_users": n_users, "n_items": n_items, "dim": m["dim"], "index": "flat",
                              "synthetic": True}  # fmt: skip
        if args.layers:
            result["in_process"] = in_process_layers(root, redis.url, n=args.layers)

        runs: list[dict[str, Any]] = []
        for workers in [args.workers, *[w for w in args.compare_workers if w != args.workers]]:
            server = ApiServer(api_env(root, redis.url), work / f"api-{workers}.log", workers=workers)
            try:
                server.wait_ready()
                primed = asyncio.run(_prime(server.url, n_users))
                modes = args.modes if workers == args.workers else ["warm"]
                for mode in modes:
                    paths = sample_paths(server.url, mode, n_users, n_items) if mode != "mixed" else None
                    before = scrape(server.url) if workers == 1 else None
                    pids = server.worker_pids()
                    cpu0 = [cpu_seconds(pid) for pid in pids]
                    redis0 = cpu_seconds(redis.proc.pid) if redis.proc else 0.0
                    run = run_wrk(
                        server.url, mode, args.connections, args.threads, args.duration, n_users, n_items
                    )
                    run |= {"workers": workers, "sampled_paths": paths, "primed": primed}
                    # how the load spread over the workers: CPU seconds each used during the run
                    run["worker_cpu_s"] = [
                        round(cpu_seconds(pid) - c, 2) for pid, c in zip(pids, cpu0, strict=True)
                    ]
                    run["redis_cpu_s"] = round(
                        (cpu_seconds(redis.proc.pid) if redis.proc else 0.0) - redis0, 2
                    )
                    # CPU per request whatever else the machine was doing (API, wrk, Redis), and the
                    # throughput two otherwise idle cores would allow at that cost
                    n = max(run["requests"], 1)
                    api_ms = 1e3 * sum(run["worker_cpu_s"]) / n
                    total_ms = api_ms + 1e3 * (run["wrk_cpu_s"] + run["redis_cpu_s"]) / n
                    run["cpu_ms_per_request"] = {"api": round(api_ms, 3), "wrk": round(1e3 * run["wrk_cpu_s"] / n, 3),
                                                 "redis": round(1e3 * run["redis_cpu_s"] / n, 3), "total": round(total_ms, 3)}  # fmt: skip
                    run["rps_bound_2_idle_cores"] = round(2e3 / total_ms)
                    if before is not None:
                        after = scrape(server.url)
                        run["server_paths"] = {
                            path_: int(metric(after, "mmssl_recommend_seconds_count", path=path_)
                                       - metric(before, "mmssl_recommend_seconds_count", path=path_))
                            for path_ in ("known", "fresh", "fold_in", "popularity")
                        }  # fmt: skip
                        run["server_cache_hits"] = int(
                            metric(after, "mmssl_cache_hits_total") - metric(before, "mmssl_cache_hits_total")
                        )
                    run["rss_mb"] = round(server.rss() / 2**20, 1)
                    runs.append(run)
                    print(f"  {mode:8s} workers={workers}: {run['rps']:8.1f} req/s  p50 {run['latency_ms']['p50']:.2f} "
                          f"p99 {run['latency_ms']['p99']:.2f} ms  errors {run['error_total']}  "
                          f"worker CPU s {run['worker_cpu_s']}  CPU ms/req {run['cpu_ms_per_request']}", flush=True)  # fmt: skip
                if workers == args.workers and args.profile:
                    result["profile"] = profile_warm(
                        server, RESULTS, args.profile, args.connections, n_users, n_items
                    )
            finally:
                server.stop()
        result["runs"] = runs
    finally:
        redis.stop()
        shutil.rmtree(work, ignore_errors=True)
    result["machine_at_end"] = machine()

    rows = []
    for r in runs:
        t = TARGETS.get(r["mode"], {})
        ok = []
        if "rps" in t:
            ok.append(r["rps"] >= t["rps"])
        if "p99_ms" in t:
            ok.append(r["latency_ms"]["p99"] <= t["p99_ms"])
        verdict = "-" if not ok or r["connections"] != 16 else ("met" if all(ok) else "MISSED")
        rows.append([r["mode"], r["workers"], r["connections"], r["requests"], r["error_total"], r["rps"],
                     r["latency_ms"]["p50"], r["latency_ms"]["p95"], r["latency_ms"]["p99"],
                     r["cpu_ms_per_request"]["api"], r["cpu_ms_per_request"]["total"], verdict])  # fmt: skip
    print(
        table(
            [
                "scenario",
                "workers",
                "conns",
                "requests",
                "errors",
                "req/s",
                "p50 ms",
                "p95 ms",
                "p99 ms",
                "API CPU ms/req",
                "all CPU ms/req",
                "target",
            ],
            rows,
        )
    )
    if "in_process" in result:
        ip = result["in_process"]
        layer_rows = [[k.removesuffix("_ms"), v["p50"], v["p99"]] for k, v in ip.items() if k.endswith("_ms")]
        print(table(["in-process layer (per query)", "p50 ms", "p99 ms"], layer_rows))
    if "profile" in result and "by_category_pct" in result["profile"]:
        print(
            table(
                ["where the time goes (warm, py-spy)", "% of samples"], result["profile"]["by_category_pct"]
            )
        )
    out = write_result("serve_load", result, args.out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
