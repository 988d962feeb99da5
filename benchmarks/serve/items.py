"""Items added through the API, as deployed: propagation of PUT /items between replicas, and what
10,000 added items cost warm ``/recommend``.

    python -m benchmarks.serve.items [--added 10000] [--batch 1000] [--duration 15] [--rounds 2] [--profile 10]

A private redis-server; a TikTok-sized synthetic artifact (``synth.build_tiktok_sized``) with a
content path of TikTok's raw widths (image 128, audio 128; random weights scaled so that added
items' h_i have the trained items' norm, so they compete in the rankings rather than all win).

1. Propagation: two single-process replicas R1, R2 on one Redis prefix. ``--added / --batch``
   batches of ``--batch`` items are PUT to R1, one after another; for each: the PUT's latency
   (validate, append to the Redis stream, apply on R1) and the time from sending it until R2 serves
   its last item (``GET /items/{id}`` answers 200; R2 polls every ITEMS_POLL_INTERVAL_S).
2. Warm throughput: server A (no added items) and server B (the same prefix as R1/R2: it replays
   the ``--added`` items at start-up) run as deployed (``--workers`` uvicorn workers each), both
   primed with one request per user; then wrk's warm scenario (``benchmarks/serve/wrk``) alternates
   A, B, A, B, ... (``--rounds`` each), one server loaded at a time; for each run also the workers'
   CPU seconds per request. ``--profile N``: py-spy samples one worker of A and one of B for N
   seconds of a further warm run each (wall-clock samples: on a busy machine a worker waiting for a
   core counts as busy; ``benchmarks.serve.items_cpu`` profiles CPU time instead).

Prints tables and writes benchmarks/results/serve_items.json.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from artifact import content, contract
from benchmarks.serve import synth
from benchmarks.serve.common import RESULTS, idle_warning, machine, table, write_result
from benchmarks.serve.load import _prime, profile_warm, run_wrk
from benchmarks.serve.procs import ApiServer, RedisServer, api_env, cpu_seconds

RAW_DIMS = {"image": 128, "audio": 128}  # TikTok's raw feature widths
TOKEN = "bench-items-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def write_artifact_with_content(root: Path, seed: int = 0, added_scale: float = 1.0) -> Path:
    """The benchmark's artifact. ``added_scale`` multiplies the added items' h_i: 1 gives them the
    trained items' norm (they often win a place by score); below 1 they rarely do, as with a
    calibrated content path, so reserved slots (``NEW_ITEMS_SLOTS``) decide where they show."""
    manifest, arrays = synth.build_tiktok_sized(seed=seed)
    rng = np.random.default_rng(100 + seed)
    d = manifest.dim
    extra: dict[str, np.ndarray] = {}
    for m, size in RAW_DIMS.items():
        extra[content.content_input_file(m)] = np.stack([np.zeros(size), np.ones(size)]).astype(np.float32)
        extra[content.content_projection_file(m)] = (rng.normal(size=(size + 1, d)) / np.sqrt(size)).astype(
            np.float32
        )
        extra[content.content_mapper_input_file(m)] = np.stack([np.zeros(size), np.ones(size)]).astype(
            np.float32
        )
    total = sum(RAW_DIMS.values())
    # z ~ N(0, 1) of width `total`: h_j has variance total * s^2 = 1 / d, the trained h_i's (synth)
    mapper = added_scale * rng.normal(size=(total + 1, d)) / np.sqrt(total * d)
    extra[content.CONTENT_MAPPER] = mapper.astype(np.float32)
    extra[content.CONTENT_FILLED] = np.zeros(0, dtype=np.int64)
    arrays.extra = extra
    manifest.modalities = [{"name": m, "raw_dim": RAW_DIMS[m], "dim": d} for m in RAW_DIMS]
    manifest.content = content.content_manifest_entry(RAW_DIMS, list(RAW_DIMS), 0, {"synthetic": True})
    path = contract.write_artifact(root, manifest, arrays)
    contract.set_current(root, manifest.model_version)
    return path


ADDED_SCALE_HELP = (
    "scale of the added items' h_i (default 1: the trained items' norm); e.g. 0.3 for a calibrated "
    "content path, whose added items take the reserved slots rather than win places by score"
)


def batch_body(rng: np.random.Generator, start: int, n: int) -> dict[str, Any]:
    items = []
    for j in range(start, start + n):
        feats = {m: np.round(rng.normal(size=size), 5).tolist() for m, size in RAW_DIMS.items()}
        items.append({"item_id": f"new-{j}", "features": feats, "available": True})
    return {"items": items}


def propagation(r1: ApiServer, r2: ApiServer, added: int, batch: int, seed: int = 0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    rows = []
    with httpx.Client(timeout=60) as client:
        for start in range(0, added, batch):
            n = min(batch, added - start)
            body = batch_body(rng, start, n)
            last = f"new-{start + n - 1}"
            sent = time.perf_counter()
            r = client.put(r1.url + "/items", json=body, headers=AUTH)
            put_s = time.perf_counter() - sent
            if r.status_code != 200:
                raise RuntimeError(f"PUT /items answered {r.status_code}: {r.text[:500]}")
            while client.get(f"{r2.url}/items/{last}").status_code != 200:
                if time.perf_counter() - sent > 30:
                    raise RuntimeError(f"{last} not served by the second replica after 30 s")
                time.sleep(0.005)
            both_s = time.perf_counter() - sent
            rows.append({"items": n, "put_s": round(put_s, 3), "served_by_both_s": round(both_s, 3)})
    both = [r["served_by_both_s"] for r in rows]
    return {
        "batches": rows,
        "served_by_both_s": {"median": round(statistics.median(both), 3), "max": round(max(both), 3)},
        "put_s": {"median": round(statistics.median(r["put_s"] for r in rows), 3)},
    }


def share_of_added(url: str, n_users: int, n: int = 300, seed: int = 1) -> float:
    rng = np.random.default_rng(seed)
    hits = total = 0
    with httpx.Client(base_url=url, timeout=10) as client:
        for u in rng.integers(0, n_users, size=n):
            got = client.post("/recommend", json={"user_id": f"u{u}", "k": 20}).json()["items"]
            hits += sum(it["item_id"].startswith("new-") for it in got)
            total += len(got)
    return round(hits / max(total, 1), 4)


def in_process(root: Path, added: int, n: int = 2000, rounds: int = 3, seed: int = 0) -> dict[str, Any]:
    """Per-query cost of top-K without and with ``added`` items (one FAISS thread, as served),
    interleaved ``rounds`` times: the model's index alone, the side index alone, the whole merge.
    With the service's default settings (beyond ADDED_ITEMS_EXACT_MAX the index is the pq
    shortlist), also the same top-K over an exact index and the served lists' recall@20 of it."""
    import faiss

    from artifact.content import load_content_path
    from service.catalogue import CatalogueView, ItemRecord
    from service.model_manager import load_recommender
    from service.settings import Settings

    faiss.omp_set_num_threads(1)
    settings = Settings(_env_file=None, artifact_root=root, faiss_use_gpu=False)  # type: ignore[call-arg]
    rec = load_recommender(root / str(contract.read_current(root)), settings)
    rng = np.random.default_rng(seed)
    records = {
        f"new-{j}": ItemRecord(
            True, {m: rng.normal(size=d).astype(np.float32) for m, d in RAW_DIMS.items()}, "1-0"
        )
        for j in range(added)
    }
    cp = load_content_path(rec.artifact)
    plain = CatalogueView.build(rec, cp, {}, None, None, min_slots=settings.new_items_slots)
    bound = {"exact_max": settings.added_items_exact_max, "refine": settings.added_items_refine}
    slots = {"min_slots": settings.new_items_slots}  # as the service builds its views
    started = time.perf_counter()
    with_added = CatalogueView.build(rec, cp, records, "1-0", None, **bound, **slots)
    build_s = time.perf_counter() - started
    exact = CatalogueView.build(rec, cp, records, "1-0", None, **slots)  # no bound: one flat index
    users = rng.integers(0, rec.artifact.manifest.n_users, size=n)
    # known users, as in the warm HTTP scenario: the vector is the exported h_u, user = its index
    queries = [(np.ascontiguousarray(rec.artifact.arrays.user_embeddings[u]), rec.artifact.user_items(int(u)),
                int(u)) for u in users]  # fmt: skip

    def per_query_ms(fn: Any) -> float:
        t = time.perf_counter()
        for q, seen, u in queries:
            fn(q, seen, u)
        return 1e3 * (time.perf_counter() - t) / n

    out: dict[str, list[float]] = {
        "top_k_without": [],
        "top_k_with": [],
        "model_index_search": [],
        "side_index_search": [],
        "top_k_with_exact_index": [],
        "top_k_with_no_user_table": [],
    }
    for _ in range(rounds):
        out["top_k_without"].append(per_query_ms(lambda q, seen, u: plain.top_k(q, 20, seen, user=u)))
        out["top_k_with"].append(per_query_ms(lambda q, seen, u: with_added.top_k(q, 20, seen, user=u)))
        out["model_index_search"].append(per_query_ms(lambda q, seen, u: rec.index.search(q, 20 + seen.size)))
        out["side_index_search"].append(
            per_query_ms(lambda q, seen, u: with_added._side_index.search(q.reshape(1, -1), 20))
        )
        out["top_k_with_exact_index"].append(per_query_ms(lambda q, seen, u: exact.top_k(q, 20, seen)))
        # a user whose vector is not the exported h_u (fresh interactions, fold-in): no table row
        out["top_k_with_no_user_table"].append(per_query_ms(lambda q, seen, u: with_added.top_k(q, 20, seen)))
    misses = with_added.table_misses  # counted over the recall pass below: one list per query
    hits = sum(
        len(
            set(with_added.top_k(q, 20, seen, user=u)[0].tolist()) & set(exact.top_k(q, 20, seen)[0].tolist())
        )
        for q, seen, u in queries
    )
    # how many known users' lists of 20 their table row decided (the rest: the combined search)
    table_share = 1.0 - (with_added.table_misses - misses) / n
    assert with_added.space is not None and exact.space is not None
    return {"queries": n, "rounds": rounds, "build_view_s": round(build_s, 3),
            "index_with_added": with_added.space.index.kind, "settings": bound,
            "recall_at_20_vs_exact_index": round(hits / (20 * n), 5),
            "known_lists_decided_by_the_table_row": round(table_share, 4),
            "ms_per_query": {k: [round(v, 4) for v in vals] for k, vals in out.items()}}  # fmt: skip


def ratio_interval(
    a: list[float], b: list[float], resamples: int = 2000, seed: int = 0
) -> list[float] | None:
    """95% percentile-bootstrap interval of mean(b) / mean(a) over paired rounds: round i of A and
    of B resampled together (the machine's drift between rounds is what varies). None for fewer
    than 3 rounds."""
    va, vb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if va.size != vb.size:
        raise ValueError(f"{va.size} rounds of A, {vb.size} of B")
    if va.size < 3:
        return None
    pick = np.random.default_rng(seed).integers(0, va.size, size=(resamples, va.size))
    ratios = vb[pick].mean(axis=1) / va[pick].mean(axis=1)
    return [round(float(x), 3) for x in np.percentile(ratios, [2.5, 97.5])]


# what the summary compares: its key prefix and how to read it from one wrk run
_MEASURES = {
    "rps": ("rps", lambda r: r["rps"]),
    "p99": ("p99_ms", lambda r: r["latency_ms"]["p99"]),
    "api_cpu": ("api_cpu_ms", lambda r: r["api_cpu_ms_per_request"]),
}


def summarise(runs: list[dict[str, Any]], generations: int) -> dict[str, Any]:
    """Means of A's and B's runs, B / A, and its 95 % interval (``ratio_interval``) resampling
    generations (pairs of server processes) when there are 3 or more, else rounds: the unit whose
    variation the ratio is exposed to."""
    unit = "generation" if generations >= 3 else "round"

    def unit_of(r: dict[str, Any]) -> Any:
        return r["generation"] if unit == "generation" else (r["generation"], r["round"])

    units = sorted({unit_of(r) for r in runs})
    out: dict[str, Any] = {}
    ratios: dict[str, Any] = {"interval_unit": unit}
    for key, (prefix, pick) in _MEASURES.items():
        side = {s: [r for r in runs if r["server"].startswith(s)] for s in "AB"}
        for s in "AB":
            out[f"{prefix}_{s.lower()}"] = round(float(np.mean([pick(r) for r in side[s]])), 3)
        ratios[f"{key}_b_over_a"] = round(out[f"{prefix}_b"] / out[f"{prefix}_a"], 3)
        per_unit = [
            [float(np.mean([pick(r) for r in side[s] if unit_of(r) == u])) for u in units] for s in "AB"
        ]
        ratios[f"{key}_b_over_a_ci95"] = ratio_interval(per_unit[0], per_unit[1])
    return out | ratios


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve.items", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--added", type=int, default=10_000, help="items added through PUT /items")
    p.add_argument("--batch", type=int, default=1_000, help="items per PUT")
    p.add_argument("--workers", type=int, default=2, help="uvicorn workers of the throughput servers")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--duration", type=int, default=15, help="seconds per wrk run")
    p.add_argument("--rounds", type=int, default=2, help="wrk runs per server, alternated A/B")
    p.add_argument(
        "--generations", type=int, default=1, help="pairs of fresh A and B servers, one after the other"
    )
    p.add_argument(
        "--profile",
        type=int,
        default=0,
        help="seconds of py-spy sampling of one worker of A and of B after the rounds (0 = skip)",
    )
    p.add_argument("--added-scale", type=float, default=1.0, help=ADDED_SCALE_HELP)
    p.add_argument(
        "--hide-added",
        action="store_true",
        help="diagnosis: then make every added item unavailable, so that B's lists are A's",
    )
    p.add_argument("--out", type=Path, default=None, help="default benchmarks/results/serve_items.json")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    warning = idle_warning()
    if warning:
        print(f"WARNING: {warning}", file=sys.stderr)
    result: dict[str, Any] = {"machine_at_start": machine(), "args": vars(args) | {"out": str(args.out)}}
    work = Path(tempfile.mkdtemp(prefix="bench-items-"))
    redis = RedisServer(work)
    redis.start()
    servers: list[ApiServer] = []
    try:
        root = work / "artifacts"
        write_artifact_with_content(root, added_scale=args.added_scale)
        m = contract.read_manifest(root / str(contract.read_current(root)))
        n_users, n_items = m.n_users, m.n_items
        result["artifact"] = {"n_users": n_users, "n_items": n_items, "dim": m.dim, "raw_dims": RAW_DIMS}
        extra = {"ADMIN_TOKEN": TOKEN, "MAX_BODY_BYTES": str(64 << 20), "ITEMS_MAX_BATCH": str(args.batch)}

        def server(prefix: str, workers: int, name: str) -> ApiServer:
            s = ApiServer(api_env(root, redis.url, REDIS_PREFIX=prefix, **extra), work / f"{name}.log",
                          workers=workers)  # fmt: skip
            servers.append(s)
            s.wait_ready(timeout=120)
            return s

        result["in_process"] = in_process(root, args.added)
        print(table(["in-process ms/query (rounds)", "values"],
                    [[k, v] for k, v in result["in_process"]["ms_per_query"].items()]))  # fmt: skip

        # 1. propagation between two replicas
        r1, r2 = server("items", 1, "r1"), server("items", 1, "r2")
        result["propagation"] = propagation(r1, r2, args.added, args.batch)
        if args.hide_added:
            # diagnosis: B holds (and replays) every added item but may show none of them, so its
            # requests take A's code path; what B still costs more is the process, not the search
            with httpx.Client(timeout=60) as client:
                for start in range(0, args.added, args.batch):
                    ids = range(start, min(start + args.batch, args.added))
                    body = {"items": [{"item_id": f"new-{j}", "available": False} for j in ids]}
                    r = client.put(r1.url + "/items", json=body, headers=AUTH)
                    if r.status_code != 200:
                        raise RuntimeError(f"PUT /items answered {r.status_code}: {r.text[:500]}")
        for s in (r1, r2):
            s.stop()
        print(table(["batch", "items", "PUT s", "served by both replicas s"],
                    [[i, b["items"], b["put_s"], b["served_by_both_s"]]
                     for i, b in enumerate(result["propagation"]["batches"])]))  # fmt: skip

        # 2. warm throughput, without (A) and with (B) the added items, alternated; with
        # --generations N, N pairs of fresh server processes one after the other (a process's own
        # speed varies by several % from one start to the next, the same for all its rounds)
        runs: list[dict[str, Any]] = []
        result["replay_start_s_by_generation"] = []
        for gen in range(args.generations):
            started = time.perf_counter()
            b = server("items", args.workers, f"b{gen}")  # replays every added item before it is ready
            result["replay_start_s_by_generation"].append(round(time.perf_counter() - started, 2))
            a = server("plain", args.workers, f"a{gen}")
            assert httpx.get(f"{b.url}/items/new-{args.added - 1}").status_code == 200
            assert httpx.get(f"{a.url}/items/new-0").status_code == 404
            for s in (a, b):
                asyncio.run(_prime(s.url, n_users))
            if not gen:
                result["added_share_of_warm_top20"] = {
                    "a": share_of_added(a.url, n_users),
                    "b": share_of_added(b.url, n_users),
                }
            for rnd in range(args.rounds):
                # A then B, then B then A: a drift of the machine over a pair of rounds favours neither
                pair = (("A: no added items", a), (f"B: {args.added} added", b))
                for label, s in pair if rnd % 2 == 0 else pair[::-1]:
                    # CPU seconds the workers used per request: less at the mercy of other processes
                    # than req/s on a shared machine (a CPU-starved worker waits, it does not spend)
                    pids = s.worker_pids()
                    cpu0 = [cpu_seconds(pid) for pid in pids]
                    run = run_wrk(s.url, "warm", args.connections, 1, args.duration, n_users, n_items)
                    per_worker = [cpu_seconds(pid) - c for pid, c in zip(pids, cpu0, strict=True)]
                    cpu = sum(per_worker)
                    run["api_cpu_ms_per_request"] = round(1e3 * cpu / max(run["requests"], 1), 3)
                    # how the connections spread: 1/workers when even, 1.0 when one worker served all
                    run["busiest_worker_cpu_share"] = round(max(per_worker) / cpu, 3) if cpu > 0 else None
                    runs.append(run | {"server": label, "round": rnd, "generation": gen})
            if gen < args.generations - 1:  # the last pair stays up for --profile
                for done in (a, b):
                    done.stop()
                    servers.remove(done)
        result["replay_start_s"] = result["replay_start_s_by_generation"][0]
        result["warm"] = runs
        rows = [[r["server"], r["generation"], r["round"], r["rps"], r["latency_ms"].get("p50"),
                 r["latency_ms"].get("p99"), r["api_cpu_ms_per_request"], r["busiest_worker_cpu_share"],
                 r["error_total"]] for r in runs]  # fmt: skip
        print(table(["server", "generation", "round", "req/s", "p50 ms", "p99 ms", "API CPU ms/req",
                     "busiest worker CPU share", "errors"], rows))  # fmt: skip
        if args.profile:
            # py-spy on one worker of each during a warm run of its own (after the measured rounds)
            result["profile"] = {
                name: profile_warm(s, RESULTS / f"serve_items_profile_{name}", args.profile, args.connections, n_users,
                                   n_items)
                for name, s in (("a", a), ("b", b))
            }  # fmt: skip
            for name, prof in result["profile"].items():
                if "by_category_pct" in prof:
                    print(
                        table(
                            [f"{name}: where the time goes (py-spy)", "% of samples"], prof["by_category_pct"]
                        )
                    )
                    print(table([f"{name}: inclusive", "% of samples"], prof["inclusive_pct"]))

        result["summary"] = summarise(runs, args.generations)
        print(result["summary"], "replay at start:", result["replay_start_s"], "s")
    finally:
        for s in servers:
            s.stop()
        redis.stop()
    result["machine_at_end"] = machine()
    path = write_result("serve_items", result, args.out)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
