"""Fault scenarios against the service as deployed, each under load from a separate process
(``benchmarks.serve.loadgen``), each returning the counts of requests sent / failed and a list of
``problems`` (empty when the service behaved):

* ``redis_restart``   Redis SIGKILLed under load, restarted on the same port: no request fails (the
                      store fails open to the artifact), and the cache is used again after the restart
                      (cache hits in responses and in /metrics).
* ``retrain_swap``    POST /retrain under load, RQ worker runs a stand-in job that promotes a new
                      artifact: no request fails, the served version changes once, old -> new.
* ``corrupt_artifact`` a corrupted artifact (one flipped byte; then one with a file missing) is pointed
                      at by CURRENT: refused, counted, the old model keeps serving; a good one then swaps in.
* ``worker_killed``   the RQ worker (and its work-horse) SIGKILLed mid-job: no request fails, the
                      serving model and CURRENT are untouched; the service reports the job failed
                      once the worker's heartbeat for it has lapsed (~70 s: waited for by the script,
                      fast-forwarded in the test); the next retrain is accepted and runs on a new worker.
* ``redis_killed_during_retrain`` Redis SIGKILLed while the RQ worker runs a retrain, restarted empty:
                      the job outlives it and promotes, the worker survives, the next retrain runs.
* ``redis_restart_writes`` POST /interactions from writer threads while Redis (append-only, fsync
                      always) is SIGKILLed and restarted: every write answered 200 is in Redis after,
                      503s are re-sent with their request_id, none is applied twice.
* ``sigterm``         SIGTERM to uvicorn under load (closed loop, 16 connections): the server drains;
                      every request the application started was completed and answered 200 (server-side
                      counters of ``benchmarks.serve.probe`` against the client's counts); the only
                      client failures are connections refused or closed before any response.

    python -m benchmarks.serve.faults [--scenarios ...] [--workers 2] [--load-seconds 10]

prints a table and writes benchmarks/results/serve_faults.json. tests/faults/ runs short versions.
A multi-replica topology (2 APIs + worker + Redis) is scripts/topology.py's, not repeated here.
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from benchmarks.serve import synth
from benchmarks.serve.common import machine, table, write_result
from benchmarks.serve.procs import (
    ApiServer,
    Managed,
    RedisServer,
    api_env,
    child_env,
    metric,
    scrape,
    start_worker,
    wait_for,
)

ADMIN_TOKEN = "fault-scenario-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
STANDIN_JOB = "benchmarks.serve.standin.retrain_job"
SCENARIOS = ("redis_restart", "retrain_swap", "corrupt_artifact", "worker_killed", "redis_killed_during_retrain",
             "redis_restart_writes", "sigterm")  # fmt: skip


# ------------------------------------------------------------------------------ deployment


@dataclass
class Deployment:
    work: Path
    root: Path
    redis: RedisServer
    api: ApiServer
    env: dict[str, str]
    n_users: int
    n_items: int
    worker: Managed | None = None
    extra: list[Managed] = field(default_factory=list)

    @property
    def queue(self) -> str:
        return self.env["RETRAIN_QUEUE"]

    def version(self) -> str:
        return str(httpx.get(self.api.url + "/model", timeout=5).json()["model_version"])


@contextlib.contextmanager
def deploy(
    work: Path,
    workers: int = 1,
    with_worker: bool = False,
    app: str = "service.app:app",
    n_users: int = 2_000,
    n_items: int = 1_500,
    redis_password: str | None = None,
    access_log: bool = False,
    redis_persistent: bool = False,
    **extra_env: str,
) -> Iterator[Deployment]:
    """A private redis-server, an artifact store with one synthetic model, the API (and the worker)."""
    work.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(work, password=redis_password, persistent=redis_persistent)
    redis.start()
    procs: list[Managed] = []
    try:
        root = work / "artifacts"
        synth.write_tiktok_sized(root, n_users=n_users, n_items=n_items, seed=0)
        (work / "data").mkdir(exist_ok=True)
        prefix = f"faults-{os.getpid()}-{int(time.time() * 1000)}"
        env = api_env(
            root,
            redis.url,
            REDIS_PREFIX=prefix,
            RETRAIN_QUEUE=f"{prefix}-retrain",
            ADMIN_TOKEN=ADMIN_TOKEN,
            RETRAIN_DATA_DIR=str(work / "data"),
            RETRAIN_JOB_FUNC=STANDIN_JOB,
            MODEL_POLL_INTERVAL_S="0.5",
            REDIS_RETRY_S="0.5",
            **extra_env,
        )
        api = ApiServer(env, work / "api.log", workers=workers, app=app, access_log=access_log)
        procs.append(api)
        worker = None
        if with_worker:
            worker = start_worker(env, work / "worker.log")
            procs.append(worker)
        api.wait_ready()
        dep = Deployment(work, root, redis, api, env, n_users, n_items, worker)
        yield dep
        procs.extend(dep.extra)
        if dep.worker is not None and dep.worker not in procs:
            procs.append(dep.worker)
    finally:
        for p in reversed(procs):
            p.stop()
        redis.stop()


def _log_tails(dep: Deployment, load: Load) -> dict[str, str]:
    """The ends of the API's, the worker's and the load's logs, for a scenario that found a problem:
    its work directory goes with the test's tmp_path, so the result keeps what explains it."""
    logs = {"api": dep.api.log_text()[-6000:], "load": load.proc.log_text()[-2000:]}
    if dep.worker is not None:
        logs["worker"] = dep.worker.log_text()[-4000:]
    return logs


class Load:
    """``benchmarks.serve.loadgen`` as a separate process; ``stop()`` returns its counts."""

    def __init__(
        self,
        dep: Deployment,
        name: str,
        concurrency: int | None = 8,
        rate: float | None = None,
        workload: str = "recommend",
        n_users: int | None = None,
        duration: float = 600,
    ) -> None:
        self.out = dep.work / f"load-{name}.json"
        self.ready = dep.work / f"load-{name}.ready"
        argv = [sys.executable, "-m", "benchmarks.serve.loadgen", "--url", dep.api.url, "--out", str(self.out),
                "--duration", str(duration), "--workload", workload, "--n-users", str(n_users or dep.n_users),
                "--n-items", str(dep.n_items), "--ready-file", str(self.ready), "--timeout", "10"]  # fmt: skip
        argv += ["--concurrency", str(concurrency)] if concurrency else ["--rate", str(rate)]
        self.proc = Managed(argv, child_env(), dep.work / f"load-{name}.log")
        deadline = time.monotonic() + 30
        while not self.ready.exists():
            if not self.proc.alive() or time.monotonic() > deadline:
                raise RuntimeError(f"load generator did not start:\n{self.proc.log_text()}")
            time.sleep(0.05)
        self.t0 = float(self.ready.read_text())  # the load's monotonic clock origin (same clock here)

    def at(self) -> float:
        """Now, in seconds of the load's timeline."""
        return time.monotonic() - self.t0

    def stop(self) -> dict[str, Any]:
        self.proc.signal(signal.SIGINT)
        try:
            self.proc.proc.wait(30)
        finally:
            self.proc.stop()
        if not self.out.exists():
            raise RuntimeError(f"load generator wrote no result:\n{self.proc.log_text()}")
        result: dict[str, Any] = json.loads(self.out.read_text())
        return result


def _counts(load: dict[str, Any]) -> dict[str, Any]:
    return {"sent": load["sent"], "ok": load["ok"], "failed": load["failed"], "failures": load["failures"],
            "latency_ms": load["latency_ms"], "failure_examples": load["failure_examples"][:5]}  # fmt: skip


def _wait(cond: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    """``procs.wait_for`` in this module's argument order."""
    return wait_for(what, cond, timeout, every_s=interval)


def _versions_in_order(timeline: list[dict[str, Any]]) -> list[str]:
    """The model versions the responses carried, in the order first seen."""
    seen: list[str] = []
    for sec in timeline:
        for v in sec["versions"]:
            if v not in seen:
                seen.append(v)
    return seen


# ------------------------------------------------------------------------------ scenarios


def redis_restart(work: Path, workers: int = 1, before_s: float = 3, down_s: float = 3, after_s: float = 4,
                  concurrency: int = 8) -> dict[str, Any]:  # fmt: skip
    problems: list[str] = []
    with deploy(work, workers=workers) as dep:
        # a few hundred users, so that the cache is hit soon after it is emptied
        load = Load(dep, "redis", concurrency=concurrency, workload="recommend", n_users=300)
        time.sleep(before_s)
        m0 = scrape(dep.api.url)
        t_kill = load.at()
        dep.redis.kill()
        time.sleep(down_s)
        m1 = scrape(dep.api.url)
        dep.redis.start()
        t_restart = load.at()

        def cache_used_again() -> bool:
            # an event, not a fixed delay: the store retries Redis REDIS_RETRY_S after its last error,
            # and the first cached vector must be written before one is read back
            with httpx.Client(base_url=dep.api.url, timeout=5) as c:
                return any(c.post("/recommend", json={"user_id": "u1"}).json()["cache_hit"] for _ in range(3))

        _wait(cache_used_again, 30, "the cache to be used again after the restart", interval=0.2)
        time.sleep(after_s)
        m2 = scrape(dep.api.url)
        result = load.stop()
    tl = result["timeline"]
    down = [s for s in tl if t_kill + 1 <= s["second"] and s["second"] + 1 <= t_restart]  # whole seconds
    after = [s for s in tl if s["second"] >= t_restart]  # seconds that began once Redis was back
    out = {
        **_counts(result),
        "workers": workers,
        "killed_at_s": round(t_kill, 2),
        "restarted_at_s": round(t_restart, 2),
        "ok_while_down": sum(s["ok"] for s in down),
        "cache_hits_while_down": sum(s["cache_hits"] for s in down),
        "cache_hits_after_restart": sum(s["cache_hits"] for s in after),
        "ok_after_restart": sum(s["ok"] for s in after),
        "metrics_redis_errors_while_down": metric(m1, "mmssl_redis_errors_total") - metric(m0, "mmssl_redis_errors_total"),
        "metrics_cache_hits_after_restart": metric(m2, "mmssl_cache_hits_total") - metric(m1, "mmssl_cache_hits_total"),
    }  # fmt: skip
    if result["failed"]:
        problems.append(f"{result['failed']} requests failed: {result['failures']}")
    if out["ok_while_down"] == 0:
        problems.append("no request was served while Redis was down")
    if out["cache_hits_while_down"]:
        problems.append("cache hits reported while Redis was down")
    if out["cache_hits_after_restart"] == 0:
        problems.append("no cache hit in responses after Redis came back")
    if workers == 1:  # /metrics is one worker's view: exact only with one
        if out["metrics_redis_errors_while_down"] <= 0:
            problems.append("/metrics counted no Redis error while it was down")
        if out["metrics_cache_hits_after_restart"] <= 0:
            problems.append("/metrics counted no cache hit after the restart")
    return {**out, "problems": problems}


def retrain_swap(work: Path, workers: int = 1, settle_s: float = 2, concurrency: int = 8) -> dict[str, Any]:
    problems: list[str] = []
    with deploy(work, workers=workers, with_worker=True) as dep:
        old = dep.version()
        load = Load(dep, "swap", concurrency=concurrency, workload="recommend")
        time.sleep(settle_s)
        r = httpx.post(dep.api.url + "/retrain", json={"overrides": {"sleep": 1}}, headers=AUTH, timeout=10)
        r.raise_for_status()
        job_id = r.json()["job_id"]

        def finished() -> dict[str, Any] | None:
            s = httpx.get(f"{dep.api.url}/retrain/{job_id}", headers=AUTH, timeout=5).json()
            return s if s["state"] in ("finished", "failed") else None

        status = _wait(finished, 60, "the retrain job")
        new = status.get("model_version")
        t_promoted = load.at()
        # every worker: ten /model answers in a row (connections land on any worker) name the new one
        _wait(lambda: all(dep.version() == new for _ in range(10)), 20, "the swap")
        t_swapped = load.at()
        time.sleep(settle_s)
        result = load.stop()
    versions = _versions_in_order(result["timeline"])
    # requests started after the replica reported the new version (whole seconds of the load)
    after = [s for s in result["timeline"] if s["second"] >= t_swapped]
    out = {**_counts(result), "workers": workers, "job_state": status["state"], "promoted": status.get("promoted"),
           "old_version": old, "new_version": new, "versions_seen_in_order": versions,
           "swap_seen_s_after_promotion": round(t_swapped - t_promoted, 2),
           "versions_per_second": [(s["second"], s["versions"]) for s in result["timeline"]]}  # fmt: skip
    if result["failed"]:
        problems.append(f"{result['failed']} requests failed: {result['failures']}")
    if status["state"] != "finished" or not status.get("promoted"):
        problems.append(f"the retrain did not finish with a promotion: {status}")
    if versions != [old, new]:
        problems.append(f"versions seen {versions}, expected [{old}, {new}]")
    if not after or any(set(s["versions"]) != {new} for s in after):
        problems.append(f"another version than {new} was served after the swap: {after}")
    return {**out, "problems": problems}


def _publish_broken(root: Path, how: str, seed: int, n_users: int, n_items: int) -> str:
    from artifact import contract

    path = synth.write_tiktok_sized(root, promote=False, n_users=n_users, n_items=n_items, seed=seed)
    if how == "flipped_byte":
        target = path / contract.ITEM_EMB
        target.chmod(0o644)
        data = bytearray(target.read_bytes())
        data[-3] ^= 0xFF
        target.write_bytes(bytes(data))
    elif how == "missing_file":
        (path / contract.modality_file("audio")).unlink()
    else:
        raise ValueError(how)
    # CURRENT written by hand: contract.set_current would have refused it (it verifies first)
    (root / contract.CURRENT).write_text(path.name + "\n")
    return path.name


def corrupt_artifact(
    work: Path, workers: int = 1, wait_s: float = 2.5, concurrency: int = 8
) -> dict[str, Any]:
    from artifact import contract

    problems: list[str] = []
    checks: dict[str, Any] = {}
    with deploy(work, workers=workers) as dep:
        old = dep.version()
        load = Load(dep, "corrupt", concurrency=concurrency, workload="recommend")
        time.sleep(1)
        for i, how in enumerate(("flipped_byte", "missing_file")):
            before = scrape(dep.api.url)
            bad = _publish_broken(dep.root, how, seed=10 + i, n_users=dep.n_users, n_items=dep.n_items)
            # wait for the refusal itself (not a fixed delay), then a few more polls of CURRENT
            _wait(lambda b=bad: b in (httpx.get(dep.api.url + "/model", timeout=5).json()["last_load_error"] or ""),
                  30, f"the refusal of {how}")  # fmt: skip
            time.sleep(wait_s)
            model = httpx.get(dep.api.url + "/model", timeout=5).json()
            ready = httpx.get(dep.api.url + "/readyz", timeout=5)
            after = scrape(dep.api.url)
            failures = metric(after, "mmssl_model_load_failures_total") - metric(
                before, "mmssl_model_load_failures_total"
            )
            checks[how] = {"bad_version": bad, "serving": model["model_version"], "last_load_error": model["last_load_error"],
                           "readyz": ready.status_code, "metrics_load_failures": failures}  # fmt: skip
            if model["model_version"] != old or ready.status_code != 200:
                problems.append(
                    f"{how}: serving {model['model_version']} (ready {ready.status_code}), expected {old}"
                )
            if not model["last_load_error"] or bad not in model["last_load_error"]:
                problems.append(f"{how}: /model does not report the refusal: {model['last_load_error']!r}")
            if workers == 1 and failures < 1:
                problems.append(f"{how}: /metrics counted no refused load")
        good = synth.write_tiktok_sized(
            dep.root, promote=False, n_users=dep.n_users, n_items=dep.n_items, seed=20
        )
        contract.set_current(dep.root, good.name)
        _wait(lambda: dep.version() == good.name, 20, "the good version")
        time.sleep(0.5)
        result = load.stop()
    versions = _versions_in_order(result["timeline"])
    out = {**_counts(result), "workers": workers, "old_version": old, "refusals": checks,
           "recovered_version": good.name, "versions_seen_in_order": versions}  # fmt: skip
    if result["failed"]:
        problems.append(f"{result['failed']} requests failed: {result['failures']}")
    if versions != [old, good.name]:
        problems.append(f"versions seen {versions}, expected [{old}, {good.name}]")
    return {**out, "problems": problems}


def _expire_heartbeat(redis_url: str, queue: str, job_id: str) -> int:
    """Fast-forward RQ's clock for one job: its StartedJobRegistry entries (``job_id:execution``)
    get a score in the past, as if the worker's heartbeat had lapsed (90 s by default)."""
    import redis
    from rq.registry import StartedJobRegistry

    conn = redis.Redis.from_url(redis_url)
    try:
        key = StartedJobRegistry(queue, connection=conn).key
        members = [m for m in conn.zrange(key, 0, -1) if m.decode().startswith(job_id)]
        for m in members:
            conn.zadd(key, {m: time.time() - 1})
        return len(members)
    finally:
        conn.close()


def worker_killed(
    work: Path, workers: int = 1, concurrency: int = 8, real_expiry: bool = False
) -> dict[str, Any]:
    problems: list[str] = []
    with deploy(work, workers=workers, with_worker=True) as dep:
        assert dep.worker is not None
        old = dep.version()
        current_before = (dep.root / "CURRENT").read_text().strip()
        load = Load(dep, "worker", concurrency=concurrency, workload="mixed")
        r = httpx.post(dep.api.url + "/retrain", json={"overrides": {"sleep": 120}}, headers=AUTH, timeout=10)
        r.raise_for_status()
        job_id = r.json()["job_id"]

        def job() -> dict[str, Any]:
            return dict(httpx.get(f"{dep.api.url}/retrain/{job_id}", headers=AUTH, timeout=5).json())

        running = _wait(lambda: (s := job())["state"] == "running" and (s.get("progress") or {}).get("epoch") and s,
                        60, "the job to run")  # fmt: skip
        killed = dep.worker.kill_tree()
        time.sleep(2)
        right_after = job()
        serving_after_kill = dep.version()
        current_after_kill = (dep.root / "CURRENT").read_text().strip()  # re-read: the kill must not move it
        busy = httpx.post(dep.api.url + "/retrain", headers=AUTH, timeout=10)
        t_kill = time.monotonic()
        if real_expiry:  # wait for the worker's heartbeat to lapse (10 s interval + RQ's 60 s grace)
            expired = 0
            after_cleanup = _wait(
                lambda: (s := job())["state"] == "failed" and s, 180, "the job to read failed", 2
            )
        else:  # fast-forward RQ's clock: the service's next read reaps the dead execution itself
            expired = _expire_heartbeat(dep.redis.url, dep.queue, job_id)
            after_cleanup = job()
        seconds_to_failed = time.monotonic() - t_kill
        # recovery: the next retrain is accepted and a new worker runs it
        r2 = httpx.post(dep.api.url + "/retrain", json={"overrides": {"sleep": 0}}, headers=AUTH, timeout=10)
        dep.worker = start_worker(dep.env, dep.work / "worker2.log")
        job2 = r2.json().get("job_id") if r2.status_code == 202 else None
        status2: dict[str, Any] = {}
        if job2:
            status2 = _wait(lambda: (s := httpx.get(f"{dep.api.url}/retrain/{job2}", headers=AUTH, timeout=5).json())["state"]
                            in ("finished", "failed") and s, 60, "the recovery retrain")  # fmt: skip
            if status2.get("promoted"):
                _wait(lambda: dep.version() == status2["model_version"], 20, "the swap after recovery")
        time.sleep(0.5)
        result = load.stop()
    out = {**_counts(result), "workers": workers, "job_id": job_id, "progress_at_kill": running.get("progress"),
           "killed_pids": killed, "state_right_after_kill": right_after["state"],
           "retrain_while_dead_job_holds_lock": busy.status_code, "expired_executions": expired,
           "heartbeat_expiry": "waited for" if real_expiry else "fast-forwarded",
           "seconds_from_kill_to_failed": round(seconds_to_failed, 1),
           "state_after_heartbeat_expiry": after_cleanup["state"], "error_after_heartbeat_expiry": after_cleanup.get("error"),
           "serving_after_kill": serving_after_kill, "old_version": old, "current_after_kill": current_after_kill,
           "next_retrain_status": r2.status_code, "next_retrain_state": status2.get("state"),
           "versions_seen_in_order": _versions_in_order(result["timeline"])}  # fmt: skip
    if result["failed"]:
        problems.append(f"{result['failed']} requests failed: {result['failures']}")
    if serving_after_kill != old:
        problems.append(f"the killed job changed the serving model: {serving_after_kill} != {old}")
    if current_after_kill != current_before:
        problems.append(f"the killed job moved CURRENT: {current_before} -> {current_after_kill}")
    if after_cleanup["state"] != "failed":
        problems.append(
            f"the killed job reads {after_cleanup['state']!r} after RQ's clean-up, expected 'failed'"
        )
    if r2.status_code != 202 or status2.get("state") != "finished":
        problems.append(f"the next retrain after the kill did not run: {r2.status_code} {status2}")
    return {**out, "problems": problems}


def redis_killed_during_retrain(
    work: Path, workers: int = 1, down_s: float = 2.0, job_s: float = 6.0, concurrency: int = 4
) -> dict[str, Any]:
    """Redis SIGKILLed while the worker runs a retrain (progress is written to Redis every second),
    restarted empty after ``down_s``: the job outlives the outage and promotes its model, the worker
    process survives, and the next retrain is accepted and runs. (The job's RQ record goes with
    Redis's data: its status may then read unknown; the promotion is in the artifact store.)"""
    problems: list[str] = []
    with deploy(work, workers=workers, with_worker=True) as dep:
        assert dep.worker is not None
        load = Load(dep, "retrain-redis", concurrency=concurrency, workload="recommend")
        r = httpx.post(
            dep.api.url + "/retrain", json={"overrides": {"sleep": job_s}}, headers=AUTH, timeout=10
        )
        r.raise_for_status()
        job_id = r.json()["job_id"]

        def status(jid: str) -> tuple[int, dict[str, Any]]:
            resp = httpx.get(f"{dep.api.url}/retrain/{jid}", headers=AUTH, timeout=5)
            return resp.status_code, resp.json()

        _wait(lambda: (s := status(job_id)[1]).get("state") == "running" and (s.get("progress") or {}).get("epoch"),
              60, "the job to run")  # fmt: skip
        dep.redis.kill()
        time.sleep(down_s)
        dep.redis.start()
        # the job outlives the outage (its progress writes fail and are retried) and promotes its
        # model; an event with a deadline, not a fixed sleep
        current_before = (dep.root / "CURRENT").read_text().strip()
        try:
            _wait(
                lambda: (dep.root / "CURRENT").read_text().strip() != current_before,
                job_s + 60,
                "the promotion",
            )
            first_promoted = True
        except TimeoutError:
            first_promoted = False
        code, body = status(job_id)
        first_end = "forgotten (Redis restarted empty)" if code == 404 else body.get("state")
        worker_alive = dep.worker.alive()

        def submit() -> httpx.Response | None:
            resp = httpx.post(
                dep.api.url + "/retrain", json={"overrides": {"sleep": 0}}, headers=AUTH, timeout=10
            )
            return resp if resp.status_code == 202 else None

        r2 = _wait(submit, 30, "the next retrain to be accepted", interval=0.5)
        job2 = r2.json()["job_id"]
        second = _wait(
            lambda: (st := status(job2)[1]).get("state") in ("finished", "failed") and st, 60, "the next job"
        )
        worker_alive = worker_alive and dep.worker.alive()
        time.sleep(0.5)
        result = load.stop()
    out = {**_counts(result), "workers": workers, "first_job_end": first_end, "first_job_promoted": first_promoted,
           "worker_alive_after": worker_alive,
           "next_retrain_state": second.get("state"), "next_retrain_promoted": second.get("promoted")}  # fmt: skip
    if result["failed"]:
        problems.append(f"{result['failed']} requests failed: {result['failures']}")
    if not worker_alive:
        problems.append("the RQ worker process exited when Redis went away")
    if not first_promoted:
        problems.append(
            f"the job running during the outage did not complete its promotion (it ended {first_end!r})"
        )
    if second.get("state") != "finished":
        problems.append(f"the next retrain did not finish: {second}")
    if problems:
        out["logs"] = _log_tails(dep, load)
    return {**out, "problems": problems}


def redis_restart_writes(
    work: Path, workers: int = 1, before_s: float = 2.0, down_s: float = 2.0, after_s: float = 2.0,
    writers: int = 4, concurrency: int = 4,
) -> dict[str, Any]:  # fmt: skip
    """POST /interactions from ``writers`` threads (and /recommend load) while Redis (append-only,
    fsync always) is SIGKILLed and restarted: every write answered 200 is in Redis afterwards, and a
    write answered 503 is re-sent with its request_id until acknowledged, so none is applied twice."""
    import threading

    import redis as redis_client

    problems: list[str] = []
    counts = {"sent": 0, "ok": 0, "answered_503": 0, "other_failures": 0, "gave_up": 0}
    acked: list[tuple[str, str]] = []
    lock = threading.Lock()
    stop = threading.Event()
    with deploy(work, workers=workers, redis_persistent=True) as dep:
        load = Load(dep, "writes", concurrency=concurrency, workload="recommend")

        def writer(t: int) -> None:
            with httpx.Client(base_url=dep.api.url, timeout=10) as client:
                n = 0
                while not stop.is_set():
                    user, item = f"w{t}-{n // 50}", f"i{n % 50}"
                    body = {"user_id": user, "items": [item], "request_id": f"w{t}-{n}"}
                    deadline = time.monotonic() + 30
                    while True:  # a 503 is re-sent with the same request id
                        with lock:
                            counts["sent"] += 1
                        try:
                            code = client.post("/interactions", json=body).status_code
                        except httpx.HTTPError:
                            code = -1
                        if code == 200:
                            with lock:
                                counts["ok"] += 1
                                acked.append((user, item))
                            break
                        with lock:
                            counts["answered_503" if code == 503 else "other_failures"] += 1
                        if time.monotonic() > deadline:
                            with lock:
                                counts["gave_up"] += 1
                            break
                        time.sleep(0.1)
                    n += 1

        threads = [threading.Thread(target=writer, args=(t,), daemon=True) for t in range(writers)]
        for th in threads:
            th.start()
        time.sleep(before_s)
        dep.redis.kill()
        time.sleep(down_s)
        dep.redis.start()
        time.sleep(after_s)
        stop.set()
        for th in threads:
            th.join(60)
        result = load.stop()
        conn = redis_client.Redis.from_url(dep.redis.url)
        try:
            prefix = dep.env["REDIS_PREFIX"]
            stored: dict[tuple[str, str], int] = {}
            for user in {u for u, _ in acked}:
                for raw in conn.lrange(f"{prefix}:fresh:{user}", 0, -1):
                    key = (user, json.loads(raw)[0])
                    stored[key] = stored.get(key, 0) + 1
        finally:
            conn.close()
    lost = [k for k in acked if k not in stored]
    applied_twice = [k for k, c in stored.items() if c > 1]
    out = {**_counts(result), "workers": workers, "writes": counts, "writes_acknowledged": len(acked),
           "acknowledged_but_lost": len(lost), "applied_twice": len(applied_twice),
           "lost_examples": lost[:5]}  # fmt: skip
    if result["failed"]:
        problems.append(f"{result['failed']} recommend requests failed: {result['failures']}")
    if lost:
        problems.append(f"{len(lost)} acknowledged writes are not in Redis: {lost[:5]}")
    if applied_twice:
        problems.append(f"{len(applied_twice)} writes were applied twice: {applied_twice[:5]}")
    if counts["gave_up"] or counts["other_failures"]:
        problems.append(f"writes not acknowledged within 30 s of re-sending, or not 200/503: {counts}")
    if counts["answered_503"] == 0:
        problems.append("no write was refused while Redis was down: the fault was not exercised")
    return {**out, "problems": problems}


def sigterm(
    work: Path, workers: int = 2, before_s: float = 3, concurrency: int = 16, delay_s: float = 0.05
) -> dict[str, Any]:
    """``delay_s``: each request is held that long in the probe, so that all ``concurrency``
    connections have a request in flight at SIGTERM."""
    problems: list[str] = []
    probe = work / "probe"
    probe_env = {"PROBE_FILE": str(probe), "PROBE_DELAY_S": str(delay_s)}
    with deploy(work, workers=workers, app="benchmarks.serve.probe:app", **probe_env) as dep:
        load = Load(dep, "sigterm", concurrency=concurrency, workload="recommend")
        time.sleep(before_s)
        workers_pids = dep.api.worker_pids()
        t_term = load.at()
        started = time.monotonic()
        dep.api.signal(signal.SIGTERM)  # the uvicorn process (the supervisor with --workers N)
        stacks: dict[str, str] = {}
        try:
            # uvicorn's graceful shutdown is bounded at 20 s (--timeout-graceful-shutdown)
            rc = dep.api.proc.wait(40)
        except subprocess.TimeoutExpired:
            rc = None
            stacks = _py_spy_dumps(workers_pids)  # where a worker that does not stop is stuck
        shutdown_s = time.monotonic() - started
        time.sleep(1)  # the load keeps trying: refused from now on
        result = load.stop()
    server: dict[str, Any] = {"started": 0, "completed": 0, "unfinished": 0, "processes": 0,
                              "in_flight_at_sigterm": 0, "max_in_flight": []}  # fmt: skip
    for path in glob.glob(f"{probe}.*.json"):
        c = json.loads(Path(path).read_text())
        server["processes"] += 1
        for k in ("started", "completed", "unfinished"):
            server[k] += c[k]
        server["max_in_flight"].append(c["max_in_flight"])
        server["in_flight_at_sigterm"] += c.get("in_flight_at_sigterm", 0)
    failures = result["failures"]
    out = {**_counts(result), "workers": workers, "sigterm_at_s": round(t_term, 2), "exit_code": rc,
           "shutdown_s": round(shutdown_s, 2), "server": server,
           "ok_after_sigterm": sum(s["ok"] for s in result["timeline"] if s["second"] >= t_term)}  # fmt: skip
    # uvicorn re-raises the signal it caught once it has shut down gracefully: -15 is a clean exit
    if rc not in (0, -signal.SIGTERM):
        problems.append(f"uvicorn exit code {rc}")
    if server["processes"] < workers:
        problems.append(f"probe counters from {server['processes']} processes, expected {workers}")
    if server["unfinished"] or server["started"] != server["completed"]:
        problems.append(f"requests the server accepted did not complete: {server}")
    if server["in_flight_at_sigterm"] == 0:
        problems.append("no request was in flight at SIGTERM: the drain was not exercised")
    if result["ok"] != server["completed"]:
        problems.append(
            f"the client got {result['ok']} answers but the server completed {server['completed']}"
        )
    bad = {k: v for k, v in failures.items() if k not in ("refused", "closed_before_response")}
    if bad:
        problems.append(f"failures other than refused / closed-before-response: {bad}")
    if problems:
        out["logs"] = _log_tails(dep, load) | stacks
    return {**out, "problems": problems}


def _py_spy_dumps(pids: list[int]) -> dict[str, str]:
    """``py-spy dump`` of each live process (Python stacks of every thread), "stack <pid>" -> text;
    empty where py-spy is not installed."""
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        return {}
    out = {}
    for pid in pids:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            r = subprocess.run([exe, "dump", "--pid", str(pid)], capture_output=True, text=True, timeout=20)
            out[f"stack {pid}"] = (r.stdout + r.stderr)[-6000:]
    return out


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "redis_restart": redis_restart,
    "retrain_swap": retrain_swap,
    "corrupt_artifact": corrupt_artifact,
    "worker_killed": worker_killed,
    "redis_killed_during_retrain": redis_killed_during_retrain,
    "redis_restart_writes": redis_restart_writes,
    "sigterm": sigterm,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve.faults", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--scenarios", nargs="+", default=list(SCENARIOS), choices=SCENARIOS)
    p.add_argument("--workers", type=int, default=2, help="uvicorn workers (the deployed count)")
    p.add_argument("--phase", type=float, default=8.0, help="seconds of load before / during / after a fault")
    p.add_argument(
        "--fast-forward", action="store_true", help="worker_killed: fast-forward the heartbeat expiry"
    )
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    result: dict[str, Any] = {
        "machine": machine(),
        "args": vars(args) | {"out": str(args.out)},
        "scenarios": {},
    }
    rows = []
    for name in args.scenarios:
        work = Path(tempfile.mkdtemp(prefix=f"fault-{name}-"))
        kwargs: dict[str, Any] = {"workers": args.workers}
        if name == "redis_restart":
            kwargs |= {"before_s": args.phase, "down_s": args.phase, "after_s": args.phase}
        elif name == "sigterm":
            kwargs |= {"before_s": args.phase}
        elif name == "redis_restart_writes":
            kwargs |= {"before_s": args.phase, "down_s": args.phase, "after_s": args.phase}
        elif name == "retrain_swap":
            kwargs |= {"settle_s": args.phase / 2}
        elif name == "worker_killed":
            kwargs |= {"real_expiry": not args.fast_forward}
        t = time.monotonic()
        try:
            r = RUNNERS[name](work, **kwargs)
        except Exception as exc:  # a scenario that could not run is a finding too
            r = {"sent": 0, "ok": 0, "failed": 0, "problems": [f"scenario error: {exc!r}"]}
        r["seconds"] = round(time.monotonic() - t, 1)
        result["scenarios"][name] = r
        rows.append(
            [name, r["sent"], r["ok"], r["failed"], "ok" if not r["problems"] else "; ".join(r["problems"])]
        )
        print(f"  {name}: sent={r['sent']} failed={r['failed']} problems={r['problems']}", flush=True)
        shutil.rmtree(work, ignore_errors=True)
    print(table(["scenario", "requests sent", "ok", "failed", "checks"], rows))
    out = write_result("serve_faults", result, args.out)
    print(f"wrote {out}")
    return 1 if any(r["problems"] for r in result["scenarios"].values()) else 0


if __name__ == "__main__":
    sys.exit(main())
