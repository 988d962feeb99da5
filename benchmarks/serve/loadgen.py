"""A Python HTTP load generator for fault scenarios and the soak, run as its own process.

    python -m benchmarks.serve.loadgen --url URL --out RESULT.json [--duration S]
        [--concurrency N | --rate R] [--workload warm|fresh|unknown|recommend|mixed]

Closed loop (``--concurrency``: N clients back to back) or open loop (``--rate``: requests started at
a fixed rate whatever the latency, wrk2-style; latency is then measured from the scheduled start, so a
stall is not hidden by coordinated omission). It stops after ``--duration`` seconds, or at SIGINT /
SIGTERM, and writes every count to ``--out``: requests sent, responses by status, failures by class,
latency percentiles, and per second the number of successes, failures, cache hits and the model
versions seen (what the fault scenarios assert on).

The client is a small asyncio HTTP/1.1 client over a keep-alive connection pool (2.5x the requests of
an httpx client for the same CPU here, so that on a 2-core machine the load generator takes less from
the server it measures).
A request on a reused connection that the server had closed as idle (no response byte) is sent again
once on a new connection, as HTTP clients do; those are counted in ``stale_keepalive_retries``.

Failure classes: ``refused`` (no TCP connection: the server was not accepting), ``closed_before_response``
(the connection was closed or reset before any response byte: the request was not processed),
``closed_mid_response`` (the response was cut off: an accepted request failed), ``timeout``,
``http_5xx`` / ``http_4xx`` (a response, but an error), ``client_overloaded`` (open loop: the request was
not sent because ``--max-in-flight`` requests were outstanding), ``other``.

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


class ResponseCut(Exception):
    """The connection ended after some, not all, of the response."""


class HttpPool:
    """Keep-alive HTTP/1.1 connections to one host; responses must carry Content-Length (uvicorn's do)."""

    def __init__(self, url: str, size: int, timeout: float) -> None:
        host_port = url.removeprefix("http://").rstrip("/")
        self.host, _, port = host_port.partition(":")
        self.port = int(port or 80)
        self.size = size
        self.timeout = timeout
        self.idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        self.open = 0
        self.freed = asyncio.Condition()
        self.stale_retries = 0

    async def _acquire(self) -> tuple[tuple[asyncio.StreamReader, asyncio.StreamWriter] | None, bool]:
        async with self.freed:
            while not self.idle and self.open >= self.size:
                await self.freed.wait()
            if self.idle:
                return self.idle.pop(), True
            self.open += 1
        return None, False

    async def _release(self, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
        async with self.freed:
            if conn is None:
                self.open -= 1
            else:
                self.idle.append(conn)
            self.freed.notify()

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        head = (f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n\r\n").encode()  # fmt: skip
        conn, reused = await self._acquire()
        try:
            if conn is None:
                conn = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
            try:
                status, data, keep = await asyncio.wait_for(self._exchange(conn, head + body), self.timeout)
            except (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError) as exc:
                if not reused or (isinstance(exc, asyncio.IncompleteReadError) and exc.partial):
                    raise
                # the server closed this idle keep-alive connection: once more on a new one
                conn[1].close()
                self.stale_retries += 1
                conn = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
                status, data, keep = await asyncio.wait_for(self._exchange(conn, head + body), self.timeout)
        except BaseException:
            if conn is not None:
                conn[1].close()
            await self._release(None)
            raise
        if keep:
            await self._release(conn)
        else:
            conn[1].close()
            await self._release(None)
        return status, data

    @staticmethod
    async def _exchange(
        conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], request: bytes
    ) -> tuple[int, bytes, bool]:
        reader, writer = conn
        writer.write(request)
        await writer.drain()
        header = await reader.readuntil(b"\r\n\r\n")
        lines = header.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length = 0
        keep = True
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value)
            elif name == b"connection" and value.strip().lower() == b"close":
                keep = False
        try:
            data = await reader.readexactly(length)
        except asyncio.IncompleteReadError as exc:
            raise ResponseCut(f"{len(exc.partial)} of {length} body bytes") from exc
        return status, data, keep

    async def close(self) -> None:
        for _, writer in self.idle:
            writer.close()


def classify(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refused"
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, ResponseCut | asyncio.LimitOverrunError) or (
        isinstance(exc, asyncio.IncompleteReadError) and exc.partial
    ):
        return "closed_mid_response"
    if isinstance(exc, asyncio.IncompleteReadError | ConnectionResetError | BrokenPipeError):
        return "closed_before_response"
    if isinstance(exc, OSError):  # e.g. ECONNRESET during connect, EADDRNOTAVAIL
        return "refused" if exc.errno in (111, 104) else "other"
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


async def one(pool: HttpPool, rec: Recorder, path: str, body: dict[str, Any], scheduled: float) -> None:
    rec.sent += 1
    try:
        status, data = await pool.post(path, orjson.dumps(body))
    except Exception as exc:
        rec.failed(scheduled, classify(exc), repr(exc))
        return
    latency = time.monotonic() - scheduled
    rec.status[str(status)] += 1
    if status >= 500:
        rec.failed(scheduled, "http_5xx", f"{status} {data[:300]!r}")
    elif status >= 400:
        rec.failed(scheduled, "http_4xx", f"{status} {data[:300]!r}")
    else:
        rec.ok(scheduled, latency, orjson.loads(data))


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
    client = HttpPool(args.url, n_conn, args.timeout)
    if args.ready_file:
        Path(args.ready_file).write_text(str(t0))
    try:
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
                if len(tasks) >= args.max_in_flight:  # far behind: count it, do not pile up
                    skipped += 1
                    rec.failed(scheduled, "client_overloaded", "max in-flight reached")
                    continue
                path, body = workload.next()
                task = asyncio.create_task(one(client, rec, path, body, scheduled))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.wait(tasks, timeout=args.timeout + 1)
    finally:
        await client.close()
    out = rec.result()
    out["stale_keepalive_retries"] = client.stale_retries
    out["scheduled"] = out["sent"] + out["failures"].get("client_overloaded", 0)
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
