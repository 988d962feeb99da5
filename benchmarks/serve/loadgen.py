"""A Python HTTP load generator for fault scenarios and the soak, run as its own process.

    python -m benchmarks.serve.loadgen --url URL --out RESULT.json [--duration S]
        [--concurrency N | --rate R] [--workload warm|fresh|unknown|recommend|mixed]

Closed loop (``--concurrency``: N clients back to back) or open loop (``--rate``: requests started at
a fixed rate whatever the latency, wrk2-style; latency is then measured from the scheduled start, so a
stall is not hidden by coordinated omission). It stops after ``--duration`` seconds, or at SIGINT /
SIGTERM, and writes every count to ``--out``: requests sent, responses by status, failures by class,
latency percentiles, and per second the number of successes, failures, cache hits and the model
versions seen (what the fault scenarios assert on).

Failure classes: ``refused`` (no TCP connection: the server was not accepting), ``closed_before_response``
(the connection was closed or reset with no response byte: the request was not processed), ``timeout``,
``http_5xx`` / ``http_4xx`` (a response, but an error), ``other``.

Workloads (same ids as wrk/recommend.lua): ``warm`` known users; ``fresh`` known users with 1-3 items
in the request; ``unknown`` never-seen users; ``recommend`` 80/10/10 of those three (POST /recommend
only); ``mixed`` 80/10/5 plus 5% POST /interactions.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

WORKLOADS = ("warm", "fresh", "unknown", "recommend", "mixed")


class Workload:
    def __init__(self, kind: str, n_users: int, n_items: int, k: int, seed: int) -> None:
        self.kind = kind
        self.n_users = n_users
        self.n_items = n_items
        self.k = k
        self.rng = random.Random(seed)

    def _items(self, n: int) -> list[str]:
        return [f"i{self.rng.randrange(self.n_items)}" for _ in range(n)]

    def next(self) -> tuple[str, dict[str, Any]]:
        kind = self.kind
        if kind in ("recommend", "mixed"):
            r = self.rng.random()
            if r < 0.80:
                kind = "warm"
            elif r < 0.90:
                kind = "fresh"
            elif r < 0.95 or self.kind == "recommend":
                kind = "unknown"
            else:
                kind = "interactions"
        user = f"u{self.rng.randrange(self.n_users)}"
        if kind == "warm":
            return "/recommend", {"user_id": user, "k": self.k}
        if kind == "fresh":
            return "/recommend", {
                "user_id": user,
                "k": self.k,
                "interactions": self._items(self.rng.randint(1, 3)),
            }
        if kind == "unknown":
            return "/recommend", {"user_id": f"new-{self.rng.randrange(1 << 30)}", "k": self.k}
        return "/interactions", {"user_id": user, "items": self._items(1)}


def classify(exc: BaseException) -> str:
    if isinstance(exc, httpx.ConnectError):
        return "refused"
    if isinstance(exc, httpx.TimeoutException):
        return "timeout"
    if isinstance(exc, httpx.RemoteProtocolError | httpx.ReadError | httpx.WriteError):
        return "closed_before_response"
    return "other"


class Recorder:
    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.sent = 0
        self.status: collections.Counter[str] = collections.Counter()
        self.failures: collections.Counter[str] = collections.Counter()
        self.failure_examples: list[str] = []
        self.latencies: list[float] = []
        self.seconds: dict[int, dict[str, Any]] = {}
        self.paths: collections.Counter[str] = collections.Counter()

    def _second(self, t: float) -> dict[str, Any]:
        s = int(t - self.t0)
        if s not in self.seconds:
            self.seconds[s] = {"ok": 0, "failed": 0, "cache_hits": 0, "versions": collections.Counter()}
        return self.seconds[s]

    def ok(self, started: float, latency: float, body: dict[str, Any]) -> None:
        sec = self._second(started)
        sec["ok"] += 1
        self.latencies.append(latency)
        version = body.get("model_version")
        if version:
            sec["versions"][version] += 1
        if "path" in body:
            self.paths[f"{body['path']}/{'hit' if body.get('cache_hit') else 'miss'}"] += 1
            if body.get("cache_hit"):
                sec["cache_hits"] += 1

    def failed(self, started: float, kind: str, detail: str) -> None:
        self._second(started)["failed"] += 1
        self.failures[kind] += 1
        if len(self.failure_examples) < 20:
            self.failure_examples.append(f"{time.monotonic() - self.t0:.3f}s {kind}: {detail[:200]}")

    def result(self) -> dict[str, Any]:
        lat = np.asarray(self.latencies) * 1e3
        pct = {}
        if lat.size:
            p50, p95, p99, p999 = np.percentile(lat, [50, 95, 99, 99.9])
            pct = {
                "p50": float(p50),
                "p95": float(p95),
                "p99": float(p99),
                "p999": float(p999),
                "max": float(lat.max()),
            }
        ok = sum(s["ok"] for s in self.seconds.values())
        return {
            "sent": self.sent,
            "ok": ok,
            "failed": sum(self.failures.values()),
            "status": dict(self.status),
            "failures": dict(self.failures),
            "failure_examples": self.failure_examples,
            "latency_ms": {k: round(v, 3) for k, v in pct.items()},
            "paths": dict(self.paths),
            "timeline": [
                {
                    "second": s,
                    **{k: (dict(v) if isinstance(v, collections.Counter) else v) for k, v in d.items()},
                }
                for s, d in sorted(self.seconds.items())
            ],
        }


async def one(
    client: httpx.AsyncClient, rec: Recorder, path: str, body: dict[str, Any], scheduled: float
) -> None:
    rec.sent += 1
    try:
        r = await client.post(path, content=orjson.dumps(body), headers={"content-type": "application/json"})
    except (httpx.HTTPError, OSError) as exc:
        rec.failed(scheduled, classify(exc), repr(exc))
        return
    latency = time.monotonic() - scheduled
    rec.status[str(r.status_code)] += 1
    if r.status_code >= 500:
        rec.failed(scheduled, "http_5xx", f"{r.status_code} {r.text}")
    elif r.status_code >= 400:
        rec.failed(scheduled, "http_4xx", f"{r.status_code} {r.text}")
    else:
        rec.ok(scheduled, latency, orjson.loads(r.content))


async def run(args: argparse.Namespace) -> dict[str, Any]:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    workload = Workload(args.workload, args.n_users, args.n_items, args.k, args.seed)
    t0 = time.monotonic()
    rec = Recorder(t0)
    deadline = t0 + args.duration
    n_conn = args.concurrency or args.max_in_flight
    limits = httpx.Limits(max_connections=n_conn, max_keepalive_connections=n_conn)
    timeout = httpx.Timeout(args.timeout)
    if args.ready_file:
        Path(args.ready_file).write_text(str(t0))
    async with httpx.AsyncClient(base_url=args.url, limits=limits, timeout=timeout) as client:
        if args.concurrency:

            async def closed_loop() -> None:
                while not stop.is_set() and time.monotonic() < deadline:
                    path, body = workload.next()
                    await one(client, rec, path, body, time.monotonic())

            await asyncio.gather(*(closed_loop() for _ in range(args.concurrency)))
        else:
            interval = 1.0 / args.rate
            tasks: set[asyncio.Task[None]] = set()
            i = 0
            skipped = 0
            while not stop.is_set():
                scheduled = t0 + i * interval
                if scheduled >= deadline:
                    break
                delay = scheduled - time.monotonic()
                if delay > 0:
                    try:
                        await asyncio.wait_for(stop.wait(), delay)
                        break
                    except TimeoutError:
                        pass
                i += 1
                if len(tasks) >= args.max_in_flight:  # the server is far behind: count, do not pile up
                    skipped += 1
                    rec.failed(scheduled, "client_overloaded", "max in-flight reached")
                    continue
                path, body = workload.next()
                task = asyncio.create_task(one(client, rec, path, body, scheduled))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=args.timeout + 1)
    out = rec.result()
    out["elapsed_s"] = round(time.monotonic() - t0, 3)
    out["achieved_rps"] = round(out["sent"] / max(out["elapsed_s"], 1e-9), 1)
    out["args"] = vars(args)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve.loadgen", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--url", required=True)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--duration", type=float, default=3600.0, help="seconds (or until SIGINT/SIGTERM)")
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--concurrency", type=int, help="closed loop: this many clients back to back")
    mode.add_argument("--rate", type=float, help="open loop: requests started per second")
    p.add_argument("--max-in-flight", type=int, default=256, help="open loop: connection pool size and cap")
    p.add_argument("--workload", choices=WORKLOADS, default="recommend")
    p.add_argument("--n-users", type=int, default=9308)
    p.add_argument("--n-items", type=int, default=6710)
    p.add_argument("--k", type=int, default=20)
    p.add_argument("--timeout", type=float, default=10.0, help="per-request timeout (s)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ready-file", type=Path, default=None, help="written once the load starts")
    args = p.parse_args(argv)
    result = asyncio.run(run(args))
    args.out.write_text(json.dumps(result, default=str))
    print(f"sent={result['sent']} ok={result['ok']} failed={result['failed']} {result['failures']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
