"""CPU time per warm ``/recommend``, without (A) and with (B) items added through the API, and where
it goes, function by function: a CPU-time profile that a busy machine cannot distort the way it
distorts wall-clock throughput and sampling profilers (a worker waiting for a core is charged for
the wait by both, by neither here).

    python -m benchmarks.serve.items_cpu [--added 10000] [--rounds 4] [--duration 10] [--profile 2]

First, in process (``after_search``): the CPU time of the warm top-K search and of the request work
that follows it (body validation, result ids, JSON), without and with the added items, interleaved.

A private redis-server, the artifact of ``benchmarks.serve.items``; one-process servers
(``benchmarks.serve.cpuprof:app``, which is ``service.app:app`` plus a signal-switched cProfile):
B replays ``--added`` items from the log at start (PUT through a first server on the same prefix),
A has none. Both primed with one request per user, then wrk's warm scenario alternates A, B, A, B
(``--rounds`` each); for each run the server's CPU seconds / requests. ``--profile N``: N more
rounds, profiled (``cProfile.Profile(time.process_time)``; it slows requests several times, so the
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
from benchmarks.serve.items import ADDED_SCALE_HELP, AUTH, TOKEN, batch_body, write_artifact_with_content
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


def after_search(root: Path, added: int, n: int = 3000, rounds: int = 3, seed: int = 0) -> dict[str, Any]:
    """In process, CPU ms of (1) the exact top-K search of a warm request and (2) the work that
    follows it (validating a request body, the ids of the result, the JSON answer), without and with
    ``added`` items, interleaved: whether the larger scan makes the rest of a request dearer (it
    evicts the interpreter's working set from the core's caches)."""
    import uuid

    import faiss
    import orjson

    from artifact.content import load_content_path
    from benchmarks.serve.items import RAW_DIMS
    from service.catalogue import CatalogueView, ItemRecord
    from service.model_manager import load_recommender
    from service.schemas import RecommendRequest
    from service.settings import Settings

    faiss.omp_set_num_threads(1)
    settings = Settings(_env_file=None, artifact_root=root, faiss_use_gpu=False)  # type: ignore[call-arg]
    rec = load_recommender(root / str(contract.read_current(root)), settings)
    rng = np.random.default_rng(seed)
    records = {
        f"new-{j}": ItemRecord(True, {m: rng.normal(size=d).astype(np.float32) for m, d in RAW_DIMS.items()}, "1-0")
        for j in range(added)
    }  # fmt: skip
    cp = load_content_path(rec.artifact)
    slots = {  # as the service builds its views
        "min_slots": settings.new_items_slots,
        "exact_max": settings.added_items_exact_max,
        "refine": settings.added_items_refine,
    }
    views = {
        "a": CatalogueView.build(rec, cp, {}, None, settings.new_items_max_slots, **slots),
        "b": CatalogueView.build(rec, cp, records, "1-0", settings.new_items_max_slots, **slots),
    }
    users = rng.integers(0, rec.artifact.manifest.n_users, size=n)
    queries = [(np.ascontiguousarray(rec.artifact.arrays.user_embeddings[u]), rec.artifact.user_items(int(u)), int(u))
               for u in users]  # fmt: skip

    b_lists = [views["b"].top_k(q, 20, seen, user=u)[0] for q, seen, u in queries[:500]]
    share = float(np.mean([int((labels >= views["b"].n_base).sum()) for labels in b_lists]))

    def one_round(view: CatalogueView, search: bool) -> tuple[float, float]:
        t_search = t_rest = 0.0
        fixed = np.arange(20)
        for q, seen, user in queries:
            t0 = time.process_time()  # known users, as served: their reserved slots from the table
            labels, scores = view.top_k(q, 20, seen, user=user) if search else (fixed, q[:20])
            t1 = time.process_time()
            req = RecommendRequest.model_validate_json(orjson.dumps({"user_id": f"u{user}", "k": 20}))
            items = [
                {"item_id": i, "score": sc}
                for i, sc in zip(view.item_ids(labels), scores.tolist(), strict=True)
            ]
            orjson.dumps({"recommendation_id": uuid.uuid4().hex, "user_id": req.user_id, "items": items})
            t_rest += time.process_time() - t1
            t_search += t1 - t0
        return round(1e3 * t_search / n, 4), round(1e3 * t_rest / n, 4)

    out: dict[str, list[float]] = {
        k: [] for k in ("search_a", "rest_a", "search_b", "rest_b", "rest_no_search")
    }
    for _ in range(rounds):
        for name in ("a", "b"):
            t_search, t_rest = one_round(views[name], True)
            out[f"search_{name}"].append(t_search)
            out[f"rest_{name}"].append(t_rest)
        out["rest_no_search"].append(one_round(views["a"], False)[1])
    return {"queries": n, "rounds": rounds, "added_per_list_b": share, "cpu_ms_per_request": out}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve.items_cpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--added", type=int, default=10_000, help="items added through PUT /items (B)")
    p.add_argument("--batch", type=int, default=1_000, help="items per PUT")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=4, help="wrk runs per server, alternated A/B")
    p.add_argument(
        "--profile", type=int, default=0, help="profiled rounds after the measured ones (0 = none)"
    )
    p.add_argument("--top", type=int, default=15, help="functions listed by B-A difference")
    p.add_argument("--added-scale", type=float, default=1.0, help=ADDED_SCALE_HELP)
    p.add_argument(
        "--in-process-only", action="store_true", help="only the in-process search A/B (no servers, no wrk)"
    )
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
    for old in prof_dir.glob("*.prof"):  # the dumps are waited for by name below
        old.unlink()
    redis = RedisServer(work)
    redis.start()
    servers: list[ApiServer] = []
    try:
        root = work / "artifacts"
        write_artifact_with_content(root, added_scale=args.added_scale)
        result["after_search"] = after_search(root, args.added)
        print(f"added items per B list of 20 (500 queries): {result['after_search']['added_per_list_b']:.2f}")
        print(table(["in process, CPU ms/request (rounds)", "values"],
                    [[k, v] for k, v in result["after_search"]["cpu_ms_per_request"].items()]))  # fmt: skip
        if not args.in_process_only:
            _served(args, root, work, redis, servers, prof_dir, result)
    finally:
        for s in servers:
            s.stop()
        redis.stop()
    result["machine_at_end"] = machine()
    path = write_result("serve_items_cpu", result, args.out)
    print(f"wrote {path}")
    return 0


def _served(
    args: argparse.Namespace,
    root: Path,
    work: Path,
    redis: RedisServer,
    servers: list[ApiServer],
    prof_dir: Path,
    result: dict[str, Any],
) -> None:
    """The servers' part: B replays the added items, wrk alternates A and B (CPU s / requests)."""
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
    for rnd in range(args.rounds + args.profile):
        profiled = rnd >= args.rounds
        for name, s in (("a", a), ("b", b)):
            if profiled:
                s.signal(signal.SIGUSR1)
            cpu0 = cpu_seconds(s.pid)
            run = run_wrk(s.url, "warm", args.connections, 1, args.duration, m.n_users, m.n_items)
            cpu = cpu_seconds(s.pid) - cpu0
            if profiled:
                s.signal(signal.SIGUSR2)
                dumps[name].append(prof_dir / f"{name}-{len(dumps[name])}.prof")
            run |= {"server": name, "round": rnd, "profiled": profiled, "cpu_s": round(cpu, 2),
                    "cpu_ms_per_request": round(1e3 * cpu / max(run["requests"], 1), 4)}  # fmt: skip
            runs.append(run)
            print(
                f"  {name} round {rnd}: {run['rps']} req/s, {run['cpu_ms_per_request']} CPU ms/req",
                flush=True,
            )
    result["runs"] = runs
    rows = [[r["server"], r["round"], r["profiled"], r["requests"], r["rps"], r["latency_ms"]["p99"],
             r["cpu_ms_per_request"]] for r in runs]  # fmt: skip
    print(table(["server", "round", "profiled", "requests", "req/s", "p99 ms", "CPU ms/req"], rows))
    measured = [r for r in runs if not r["profiled"]]
    ratios = [round(rb["cpu_ms_per_request"] / ra["cpu_ms_per_request"], 3)
              for ra, rb in zip(measured[0::2], measured[1::2], strict=True)]  # fmt: skip
    result["cpu_b_over_a_by_round"] = ratios
    result["cpu_b_over_a_median"] = float(np.median(ratios))
    print("CPU per request B/A by round:", ratios, "median", result["cpu_b_over_a_median"])
    if args.profile:
        deadline = time.monotonic() + 30
        while not all(p.exists() for ps in dumps.values() for p in ps) and time.monotonic() < deadline:
            time.sleep(0.2)
        own = {n: _own_ms_per_request(ps, sum(r["requests"] for r in runs if r["server"] == n and r["profiled"]))
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


if __name__ == "__main__":
    raise SystemExit(main())
