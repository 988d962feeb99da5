"""CPU time per warm ``/recommend``, without (A) and with (B) items added through the API, and where
it goes, function by function: a CPU-time profile that a busy machine cannot distort the way it
distorts wall-clock throughput and sampling profilers (a worker waiting for a core is charged for
the wait by both, by neither here).

    python -m benchmarks.serve.items_cpu [--added 10000] [--rounds 4] [--duration 10] [--profile]

A private redis-server, the artifact of ``benchmarks.serve.items``; one-process servers
(``benchmarks.serve.cpuprof:app``, which is ``service.app:app`` plus a signal-switched cProfile):
B replays ``--added`` items from the log at start (PUT through a first server on the same prefix),
A has none. Both primed with one request per user, then wrk's warm scenario alternates A, B, A, B
(``--rounds`` each); for each run the server's CPU seconds / requests. ``--profile``: each run is
also profiled (``cProfile.Profile(time.process_time)``; it slows requests several times, so the
ms/request of a profiled run are not those of an unprofiled one) and the functions whose own CPU
time per request differs most between B and A are printed.

Prints tables and writes benchmarks/results/serve_items_cpu.json.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import logging
import pstats
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from artifact import contract
from benchmarks.serve.common import RESULTS, idle_warning, machine, table, write_result
from benchmarks.serve.items import AUTH, TOKEN, batch_body, write_artifact_with_content
from benchmarks.serve.load import _prime, run_wrk
from benchmarks.serve.procs import ApiServer, RedisServer, api_env, cpu_seconds


def _own_ms_per_request(paths: list[Path], requests: int) -> dict[str, float]:
    """cProfile dumps -> own (tottime) CPU ms per request by function, summed over the dumps."""
    total: collections.Counter[str] = collections.Counter()
    for path in paths:
        for (file, line, name), (_, _, tottime, _, _) in pstats.Stats(str(path)).stats.items():  # type: ignore[attr-defined]
            short = file.split("site-packages/")[-1].split(str(Path(__file__).resolve().parents[2]) + "/")[-1]
            total[f"{short}:{line}({name})"] += tottime
    return {k: 1e3 * v / max(requests, 1) for k, v in total.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve.items_cpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--added", type=int, default=10_000, help="items added through PUT /items (B)")
    p.add_argument("--batch", type=int, default=1_000, help="items per PUT")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=4, help="wrk runs per server, alternated A/B")
    p.add_argument("--profile", action="store_true", help="CPU-time cProfile of every run")
    p.add_argument("--top", type=int, default=15, help="functions listed by B-A difference")
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results/serve_items_cpu.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warning = idle_warning()
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    result: dict[str, Any] = {"machine_at_start": machine(), "args": vars(args) | {"out": str(args.out)}}
    work = Path(tempfile.mkdtemp(prefix="bench-items-cpu-"))
    prof_dir = RESULTS / "serve_items_cpu_profiles"
    prof_dir.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(work)
    redis.start()
    servers: list[ApiServer] = []
    try:
        root = work / "artifacts"
        write_artifact_with_content(root)
        m = contract.read_manifest(root / str(contract.read_current(root)))
        extra = {"ADMIN_TOKEN": TOKEN, "MAX_BODY_BYTES": str(64 << 20), "ITEMS_MAX_BATCH": str(args.batch)}

        def server(prefix: str, name: str) -> ApiServer:
            env = api_env(root, redis.url, REDIS_PREFIX=prefix, CPUPROF_OUT=str(prof_dir / name), **extra)
            s = ApiServer(env, work / f"{name}.log", workers=1, app="benchmarks.serve.cpuprof:app")
            servers.append(s)
            s.wait_ready(timeout=180)
            return s

        first = server("items", "put")
        rng = np.random.default_rng(0)
        with httpx.Client(timeout=120) as client:
            for start in range(0, args.added, args.batch):
                body = batch_body(rng, start, min(args.batch, args.added - start))
                client.put(first.url + "/items", json=body, headers=AUTH).raise_for_status()
        first.stop()
        servers.remove(first)
        b = server("items", "b")  # replays the log at start, as every replica does
        a = server("plain", "a")
        assert httpx.get(f"{b.url}/items/new-{args.added - 1}").status_code == 200
        for s in (a, b):
            asyncio.run(_prime(s.url, m.n_users))
        runs: list[dict[str, Any]] = []
        dumps: dict[str, list[Path]] = {"a": [], "b": []}
        for rnd in range(args.rounds):
            for name, s in (("a", a), ("b", b)):
                if args.profile:
                    s.signal(signal.SIGUSR1)
                cpu0 = cpu_seconds(s.pid)
                run = run_wrk(s.url, "warm", args.connections, 1, args.duration, m.n_users, m.n_items)
                cpu = cpu_seconds(s.pid) - cpu0
                if args.profile:
                    s.signal(signal.SIGUSR2)
                    dumps[name].append(prof_dir / f"{name}-{rnd}.prof")
                run |= {"server": name, "round": rnd, "cpu_s": round(cpu, 2),
                        "cpu_ms_per_request": round(1e3 * cpu / max(run["requests"], 1), 4)}  # fmt: skip
                runs.append(run)
                print(
                    f"  {name} round {rnd}: {run['rps']} req/s, {run['cpu_ms_per_request']} CPU ms/req",
                    flush=True,
                )
        result["runs"] = runs
        rows = [[r["server"], r["round"], r["requests"], r["rps"], r["latency_ms"]["p99"], r["cpu_ms_per_request"]]
                for r in runs]  # fmt: skip
        print(table(["server", "round", "requests", "req/s", "p99 ms", "CPU ms/req"], rows))
        ratios = [round(rb["cpu_ms_per_request"] / ra["cpu_ms_per_request"], 3)
                  for ra, rb in zip(runs[0::2], runs[1::2], strict=True)]  # fmt: skip
        result["cpu_b_over_a_by_round"] = ratios
        result["cpu_b_over_a_median"] = float(np.median(ratios))
        print("CPU per request B/A by round:", ratios, "median", result["cpu_b_over_a_median"])
        if args.profile:
            deadline = time.monotonic() + 30
            while not all(p.exists() for ps in dumps.values() for p in ps) and time.monotonic() < deadline:
                time.sleep(0.2)
            own = {n: _own_ms_per_request(ps, sum(r["requests"] for r in runs if r["server"] == n))
                   for n, ps in dumps.items()}  # fmt: skip
            keys = sorted(set(own["a"]) | set(own["b"]),
                          key=lambda k: -abs(own["b"].get(k, 0.0) - own["a"].get(k, 0.0)))[: args.top]  # fmt: skip
            diff = [[k[:100], round(own["a"].get(k, 0.0), 4), round(own["b"].get(k, 0.0), 4),
                     round(own["b"].get(k, 0.0) - own["a"].get(k, 0.0), 4)] for k in keys]  # fmt: skip
            result["profile"] = {
                "own_cpu_ms_per_request_total": {n: round(sum(v.values()), 4) for n, v in own.items()},
                "largest_differences": diff,
            }
            print(table(["function (own CPU, profiled)", "A ms/req", "B ms/req", "B-A"], diff))
            print("total own CPU ms/req (profiled):", result["profile"]["own_cpu_ms_per_request_total"])
    finally:
        for s in servers:
            s.stop()
        redis.stop()
    result["machine_at_end"] = machine()
    path = write_result("serve_items_cpu", result, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
