"""The docker-compose topology without Docker, on loopback, and a scenario driven through it.

    .venv/bin/python scripts/topology.py [--keep DIR]

Starts what docker-compose.yml starts, as plain processes sharing one temporary directory:

* a private ``redis-server`` on a free port (never the shared one on 6379);
* the first model, made by ``docker/init-model.sh`` (the compose ``init`` service): synthetic data
  (``python -m training synth``) and ``python -m training train ... --export-to STORE --promote``
  with a tiny, fast config;
* two API replicas (``uvicorn service.app:app``) on free ports, sharing that Redis and the store;
* one retrain worker (``python -m service.worker``).

Then the scenario (:func:`run_scenario`): recommend on both replicas; interactions recorded on A used
by B; a retrain triggered on A, both replicas swapping to the new version while a client thread keeps
calling /recommend on both (no request may fail); a second retrain whose worker is SIGKILLed mid-job
(the worker and its work-horse, as when its container dies), both replicas still serving the old
version, and how the job is then reported. It prints the observations as JSON and exits 1 if one of
:func:`problems` is found. tests/deploy/test_topology.py runs the same scenario and asserts on it.
Every process is killed on exit, failure included.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: the repository's packages are not installed
    sys.path.insert(0, str(REPO))

from benchmarks.serve import procs  # noqa: E402
from benchmarks.serve.procs import descendants, free_port  # noqa: E402

ADMIN_TOKEN = "topology-admin-token"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# Tiny and fast: the first model and every retrain (a few seconds each on 2 cores).
TINY = {
    "embed_dim": 16,
    "n_heads": 2,
    "view_topk": 5,
    "disc_hidden": 32,
    "batch_size": 256,
    "adv_users": 64,
    "epochs": 3,
}
# The retrain that gets killed must still be training when the kill comes.
LONG_JOB = {"epochs": 500, "patience": 1000}
WORKER_HEARTBEAT_S = 1  # the worker's heartbeat settings in the topology (service/worker.py)
WORKER_HEARTBEAT_GRACE_S = 8


class TopologyError(RuntimeError):
    """A process of the topology did not start or a step timed out; the message has the log tail."""


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.2) -> Any:
    """``benchmarks.serve.procs.wait_for``, raising TopologyError after ``timeout_s``."""
    return procs.wait_for(what, check, timeout_s, every_s, error=TopologyError)


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def tail(self, n: int = 3000) -> str:
        try:
            return self.log.read_bytes()[-n:].decode(errors="replace")
        except OSError:
            return "(no log)"

    def kill_tree(self) -> list[int]:
        """SIGKILL the process and everything below it; returns the pids killed."""
        pids = [self.pid, *descendants(self.pid)] if self.alive() else []
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=10)
        return pids


def _settings_names() -> set[str]:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from service.settings import Settings

    return {name.upper() for name in Settings.model_fields}


class Topology:
    """Redis + first model + API replicas + worker, all under ``workdir``. A context manager that
    kills every process it started on exit."""

    def __init__(
        self,
        workdir: Path,
        replicas: int = 2,
        api_python: str | None = None,
        worker_python: str | None = None,
    ) -> None:
        """``api_python`` / ``worker_python``: interpreters of environments built like the images
        (docker/requirements/*.txt, the project installed as a wheel) to run the API replicas, and the
        worker and init, in; default: this interpreter, with the repository on PYTHONPATH."""
        self.workdir = workdir
        self.api_python = api_python
        self.worker_python = worker_python
        self.store = workdir / "artifacts"
        self.data = workdir / "data"
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.replicas = replicas
        self.redis_port = free_port()
        self.redis_url = f"redis://127.0.0.1:{self.redis_port}/0"
        self.prefix = "topology"
        self.queue = f"{self.prefix}-retrain"
        self.redis: Proc | None = None
        self.api: list[Proc] = []
        self.api_urls: list[str] = []
        self.worker: Proc | None = None
        self._procs: list[Proc] = []

    # ------------------------------------------------------------------ processes

    def env(self, python: str | None = None, **extra: str) -> dict[str, str]:
        """The parent's environment without any service setting (a CI variable must not leak in),
        plus the topology's settings, for processes run by ``python`` (None: this interpreter)."""
        names = _settings_names()
        env = {k: v for k, v in os.environ.items() if k.upper() not in names}
        if python is None:  # an image-like environment has the project installed: no PYTHONPATH
            env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
        # docker/init-model.sh calls `python`: the interpreter chosen.
        bindir = str(Path(python or sys.executable).parent)
        env["PATH"] = os.pathsep.join((bindir, env.get("PATH", "")))
        env.update(
            PYTHONUNBUFFERED="1",
            ARTIFACT_ROOT=str(self.store),
            REDIS_URL=self.redis_url,
            REDIS_PREFIX=self.prefix,
            RETRAIN_QUEUE=self.queue,
            ADMIN_TOKEN=ADMIN_TOKEN,
            RETRAIN_DATA_DIR=str(self.data),
            RETRAIN_CONFIG=str(REPO / "configs" / "demo.yaml"),
            RETRAIN_OVERRIDES=json.dumps(TINY),
            MODEL_POLL_INTERVAL_S="0.5",
            # A killed worker's job expires 1 + 8 s after its last heartbeat instead of RQ's 10 + 60:
            # long enough for the checks made while it still reads running (about 2 s after the kill).
            WORKER_HEARTBEAT_S=str(WORKER_HEARTBEAT_S),
            WORKER_HEARTBEAT_GRACE_S=str(WORKER_HEARTBEAT_GRACE_S),
            FAISS_USE_GPU="false",
            LOG_LEVEL="WARNING",
        )
        env.update(extra)
        return env

    def spawn(self, name: str, cmd: list[str], env: dict[str, str]) -> Proc:
        log = self.logs / f"{name}.log"
        with open(log, "wb") as fh:
            # cwd = workdir: Settings also reads ./.env, and a developer's .env must not leak in.
            popen = subprocess.Popen(
                cmd,
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, popen, log)
        self._procs.append(proc)
        return proc

    def start_redis(self) -> None:
        import redis

        self.redis = self.spawn(
            "redis",
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", ""]
            + ["--appendonly", "no", "--maxmemory", "256mb", "--maxmemory-policy", "volatile-ttl"],
            self.env(),
        )
        client = redis.Redis.from_url(self.redis_url, socket_timeout=1)

        def ping() -> bool:
            if self.redis is not None and not self.redis.alive():
                raise TopologyError(f"redis-server exited: {self.redis.tail()}")
            try:
                return bool(client.ping())
            except redis.RedisError:
                return False

        wait_for("redis-server", ping, 20, 0.05)
        client.close()

    def create_first_model(self) -> str:
        """docker/init-model.sh, as the compose ``init`` service runs it; returns the version."""
        env = self.env(
            self.worker_python,
            INIT_DATA_PATH=str(self.data),
            INIT_CONFIG=str(REPO / "configs" / "demo.yaml"),
            INIT_OVERRIDES=" ".join(f"{k}={v}" for k, v in TINY.items()),
            SYNTH_USERS="200",
            SYNTH_ITEMS="150",
            SYNTH_SEED="0",
        )
        log = self.logs / "init.log"
        with open(log, "wb") as fh:
            proc = subprocess.run(
                ["sh", str(REPO / "docker" / "init-model.sh")],
                cwd=self.workdir,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                timeout=300,
                check=False,
            )
        if proc.returncode != 0:
            raise TopologyError(f"init-model.sh exited {proc.returncode}: {log.read_text()[-3000:]}")
        return (self.store / "CURRENT").read_text().strip()

    def start_apis(self) -> None:
        for i in range(self.replicas):
            port = free_port()
            name = f"api-{'ABCDEFGH'[i]}"
            python = self.api_python or sys.executable
            cmd = [python, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1"]
            cmd += ["--port", str(port), "--log-level", "warning", "--no-access-log"]
            self.api.append(self.spawn(name, cmd, self.env(self.api_python)))
            self.api_urls.append(f"http://127.0.0.1:{port}")
        for proc, url in zip(self.api, self.api_urls, strict=True):

            def ready(proc: Proc = proc, url: str = url) -> bool:
                if not proc.alive():
                    raise TopologyError(f"{proc.name} exited: {proc.tail()}")
                try:
                    return httpx.get(f"{url}/readyz", timeout=2).status_code == 200
                except httpx.HTTPError:
                    return False

            wait_for(f"{proc.name} /readyz", ready, 60)

    def start_worker(self) -> None:
        python = self.worker_python or sys.executable
        self.worker = self.spawn("worker", [python, "-m", "service.worker"], self.env(self.worker_python))

    def start(self) -> str:
        self.start_redis()
        version = self.create_first_model()
        self.start_apis()
        self.start_worker()
        return version

    def close(self) -> None:
        for proc in reversed(self._procs):
            proc.kill_tree()

    def __enter__(self) -> Topology:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# ---------------------------------------------------------------------------------- client load


@dataclass
class Load:
    """A client thread calling POST /recommend on every replica in turn until stopped."""

    urls: list[str]
    users: list[str]
    pause_s: float = 0.02
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    versions: dict[str, set[str]] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="recommend-load", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        return {
            "sent": self.sent,
            "failed": self.failed,
            "errors": self.errors[:5],
            "versions": {u: sorted(v) for u, v in self.versions.items()},
        }

    def _run(self) -> None:
        with httpx.Client(timeout=10) as client:
            i = 0
            while not self._stop.is_set():
                url = self.urls[i % len(self.urls)]
                user = self.users[(i // len(self.urls)) % len(self.users)]
                i += 1
                self.sent += 1
                try:
                    r = client.post(f"{url}/recommend", json={"user_id": user, "k": 10})
                    body = r.json() if r.status_code == 200 else None
                    if body is None or len(body["items"]) != 10:
                        self.failed += 1
                        self.errors.append(f"{url} {user}: HTTP {r.status_code} {r.text[:200]}")
                    else:
                        self.versions.setdefault(url, set()).add(body["model_version"])
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    self.failed += 1
                    self.errors.append(f"{url} {user}: {type(exc).__name__}: {exc}")
                time.sleep(self.pause_s)


# ---------------------------------------------------------------------------------- scenario


def _model_versions(client: httpx.Client, urls: list[str]) -> dict[str, str]:
    return {url: client.get(f"{url}/model").json()["model_version"] for url in urls}


def _job(client: httpx.Client, url: str, job_id: str) -> dict[str, Any]:
    r = client.get(f"{url}/retrain/{job_id}", headers=AUTH)
    r.raise_for_status()
    return dict(r.json())


def _started_expiry(redis_url: str, queue: str, job_id: str) -> float | None:
    """When RQ will consider the job's execution abandoned: its StartedJobRegistry score, which
    every worker heartbeat pushes to now + heartbeat TTL."""
    import redis
    from rq.registry import StartedJobRegistry

    conn = redis.Redis.from_url(redis_url)
    try:
        key = StartedJobRegistry(queue, connection=conn).key
        scores = [s for m, s in conn.zrange(key, 0, -1, withscores=True) if m.decode().startswith(job_id)]
    finally:
        conn.close()
    return max(scores) if scores else None


def _rq_cleanup(redis_url: str, queue: str) -> None:
    """What a live RQ worker's maintenance does (at start, then every 10 minutes): move executions
    whose heartbeat expired from the StartedJobRegistry to failed (AbandonedJobError)."""
    import redis
    from rq.registry import StartedJobRegistry

    conn = redis.Redis.from_url(redis_url)
    try:
        StartedJobRegistry(queue, connection=conn).cleanup()
    finally:
        conn.close()


def run_scenario(topo: Topology, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Drive the scenario through the replicas; returns the observations (see :func:`problems`)."""
    t0 = time.monotonic()
    report: dict[str, Any] = {"replicas": list(topo.api_urls)}
    a, b = topo.api_urls[0], topo.api_urls[1]
    client = httpx.Client(timeout=10)
    try:
        first = topo.store.joinpath("CURRENT").read_text().strip()
        report["first_version"] = first
        users = json.loads((topo.store / first / "user_ids.json").read_text())
        known = users[:20]

        # 1. Both replicas serve the same model and the same list (exact flat index).
        r_a = client.post(f"{a}/recommend", json={"user_id": known[0], "k": 10}).json()
        r_b = client.post(f"{b}/recommend", json={"user_id": known[0], "k": 10}).json()
        report["recommend"] = {
            "versions": [r_a["model_version"], r_b["model_version"]],
            "paths": [r_a["path"], r_b["path"]],
            "same_items": [i["item_id"] for i in r_a["items"]] == [i["item_id"] for i in r_b["items"]],
        }
        log(f"recommend: both replicas on {first}, path {r_a['path']}")

        # 2. Interactions recorded on A are used by B: a known user (fresh path) and a new one.
        user = known[1]
        before = [i["item_id"] for i in client.post(f"{b}/recommend", json={"user_id": user}).json()["items"]]
        clicked = before[:3]
        rec = client.post(f"{a}/interactions", json={"user_id": user, "items": clicked})
        after = client.post(f"{b}/recommend", json={"user_id": user}).json()
        after_items = [i["item_id"] for i in after["items"]]
        new_user = "topology-new-user"
        new_items = before[3:6]
        client.post(f"{a}/interactions", json={"user_id": new_user, "items": new_items}).raise_for_status()
        folded = client.post(f"{b}/recommend", json={"user_id": new_user}).json()
        report["fresh"] = {
            "record_status": rec.status_code,
            "fresh_count": rec.json().get("fresh_count"),
            "path_on_b": after["path"],
            "clicked_excluded_on_b": not set(clicked) & set(after_items),
            "items_changed": after_items != before,
            "new_user_path_on_b": folded["path"],
            "new_user_items_excluded": not set(new_items) & {i["item_id"] for i in folded["items"]},
        }
        log(f"fresh: recorded on A, B answers path={after['path']} / new user path={folded['path']}")

        # 3. Retrain on A; both replicas swap while a client keeps calling both.
        n_users_before = client.get(f"{a}/model").json()["n_users"]
        load = Load(topo.api_urls, known + [user, new_user]).start()
        t_job = time.monotonic()
        accepted = client.post(f"{a}/retrain", json={"force": True}, headers=AUTH)
        job_id = accepted.json()["job_id"]
        status = wait_for(
            "the first retrain to finish",
            lambda: (s := _job(client, b, job_id))["state"] in ("finished", "failed") and s,
            240,
            0.5,
        )
        new_version = status.get("model_version")
        t_promoted = time.monotonic()
        swapped = wait_for(
            "both replicas to serve the new version",
            lambda: (
                (v := _model_versions(client, topo.api_urls))
                and all(x == new_version for x in v.values())
                and v
            ),
            30,
            0.1,
        )
        t_swapped = time.monotonic()
        time.sleep(1.0)  # keep the load on the new model a moment
        swap_load = load.stop()
        report["retrain"] = {
            "accepted_status": accepted.status_code,
            "accepted": accepted.json(),
            "state": status["state"],
            "promoted": status.get("promoted"),
            "model_version": new_version,
            "error": status.get("error"),
            "job_seconds": round(t_promoted - t_job, 1),
            "swap_seconds_after_finish": round(t_swapped - t_promoted, 2),
            "versions_after": swapped,
            "n_users_before": n_users_before,
            "n_users_after": client.get(f"{b}/model").json()["n_users"],
            "load": swap_load,
        }
        log(
            f"retrain: job {job_id} {status['state']} -> {new_version}; both replicas swapped "
            f"{t_swapped - t_promoted:.2f}s after; load sent={swap_load['sent']} failed={swap_load['failed']}"
        )

        # 4. Another retrain, its worker killed mid-job.
        load = Load(topo.api_urls, known).start()
        accepted = client.post(f"{b}/retrain", json={"force": True, "overrides": LONG_JOB}, headers=AUTH)
        job_id = accepted.json()["job_id"]
        running = wait_for(
            "the second retrain to be training",
            lambda: (
                (s := _job(client, a, job_id))["state"] == "running"
                and (s.get("progress") or {}).get("epoch", 0) >= 1
                and s
            ),
            120,
            0.2,
        )
        assert topo.worker is not None
        killed = topo.worker.kill_tree()
        t_kill = time.monotonic()
        log(f"kill: SIGKILL worker and work-horse {killed} at epoch {running['progress'].get('epoch')}")
        time.sleep(3 * 0.5 + 0.5)  # a few MODEL_POLL_INTERVAL_S: nothing may swap
        conflict = client.post(f"{a}/retrain", json={"force": True}, headers=AUTH)
        state_now = _job(client, a, job_id)
        expiry = _started_expiry(topo.redis_url, topo.queue, job_id)
        # Wait until RQ itself would call the execution abandoned, then see what the service says.
        wait_s = max(0.0, (expiry or time.time()) - time.time()) + 1.0
        log(f"kill: job reads {state_now['state']!r}; RQ heartbeat expires in {wait_s:.0f}s, waiting")
        time.sleep(wait_s)
        t_expired = time.monotonic()
        after_expiry = wait_for_state(client, a, job_id, "failed", 5)
        detected = after_expiry["state"] == "failed"
        after_cleanup = after_expiry
        if not detected:
            _rq_cleanup(topo.redis_url, topo.queue)
            after_cleanup = _job(client, a, job_id)
        retry = client.post(f"{b}/retrain", json={"force": True}, headers=AUTH)
        serving = _model_versions(client, topo.api_urls)
        kill_load = load.stop()
        report["killed_retrain"] = {
            "job_id": job_id,
            "progress_before_kill": running.get("progress"),
            "killed_pids": killed,
            "conflict_status_while_dead": conflict.status_code,
            "state_right_after_kill": state_now["state"],
            "seconds_kill_to_rq_expiry": round(t_expired - t_kill, 1),
            "state_after_heartbeat_expiry": after_expiry["state"],
            "detected_by_service": detected,
            "state_after_rq_cleanup": after_cleanup["state"],
            "error_after_rq_cleanup": after_cleanup.get("error"),
            "retrain_after_cleanup_status": retry.status_code,
            "serving_after_kill": serving,
            "current_after_kill": topo.store.joinpath("CURRENT").read_text().strip(),
            "expected_version": new_version,
            "load": kill_load,
        }
        log(
            f"kill: service detected the dead worker: {detected}; after RQ cleanup the job reads "
            f"{after_cleanup['state']!r}; replicas serve {sorted(set(serving.values()))}; load "
            f"sent={kill_load['sent']} failed={kill_load['failed']}"
        )
        report["requests"] = {
            "sent": swap_load["sent"] + kill_load["sent"],
            "failed": swap_load["failed"] + kill_load["failed"],
        }
        report["seconds"] = round(time.monotonic() - t0, 1)
        return report
    finally:
        client.close()


def wait_for_state(
    client: httpx.Client, url: str, job_id: str, state: str, timeout_s: float
) -> dict[str, Any]:
    """The job's status once it reads ``state``, or its last status after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        status = _job(client, url, job_id)
        if status["state"] == state or time.monotonic() > deadline:
            return status
        time.sleep(0.5)


def problems(report: dict[str, Any]) -> list[str]:
    """Expectations of the scenario that the observations break (empty = all held)."""
    out = []
    rec, fresh = report["recommend"], report["fresh"]
    retrain, killed = report["retrain"], report["killed_retrain"]
    first, second = report["first_version"], retrain["model_version"]
    if rec["versions"] != [first, first] or not rec["same_items"]:
        out.append(f"replicas disagree before any retrain: {rec}")
    if fresh["path_on_b"] != "fresh" or not fresh["clicked_excluded_on_b"] or not fresh["items_changed"]:
        out.append(f"interactions recorded on A not used by B: {fresh}")
    if fresh["new_user_path_on_b"] != "fold_in" or not fresh["new_user_items_excluded"]:
        out.append(f"a new user's interactions on A not folded in on B: {fresh}")
    if retrain["state"] != "finished" or not retrain["promoted"] or second == first:
        out.append(f"first retrain did not promote a new version: {retrain}")
    if set(retrain["versions_after"].values()) != {second}:
        out.append(f"replicas did not all swap to {second}: {retrain['versions_after']}")
    if retrain["load"]["failed"]:
        out.append(
            f"{retrain['load']['failed']} requests failed during the swap: {retrain['load']['errors']}"
        )
    if set(killed["serving_after_kill"].values()) != {second} or killed["current_after_kill"] != second:
        out.append(f"a killed retrain changed the serving model: {killed}")
    if killed["load"]["failed"]:
        out.append(f"{killed['load']['failed']} requests failed after the worker was killed")
    if killed["state_after_rq_cleanup"] != "failed":
        out.append(f"the killed job is not reported failed even after RQ's cleanup: {killed}")
    if not killed["detected_by_service"]:
        out.append(
            "the service does not detect a dead worker: GET /retrain/{id} still reads "
            f"{killed['state_after_heartbeat_expiry']!r} after RQ's heartbeat expired"
        )
    return out


@contextlib.contextmanager
def topology(
    workdir: Path | None = None,
    replicas: int = 2,
    api_python: str | None = None,
    worker_python: str | None = None,
) -> Iterator[Topology]:
    """A started topology in ``workdir`` (a temporary directory, removed after, by default)."""
    with contextlib.ExitStack() as stack:
        if workdir is None:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mmssl-topology-")))
        topo = stack.enter_context(Topology(workdir, replicas, api_python, worker_python))
        topo.start()
        yield topo


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", type=Path, help="work in this directory and keep it (logs, store)")
    parser.add_argument("--api-python", help="interpreter of an environment built like the API image")
    parser.add_argument("--worker-python", help="interpreter of an environment built like the worker image")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with topology(args.keep, api_python=args.api_python, worker_python=args.worker_python) as topo:
        report = run_scenario(topo, log)
    print(json.dumps(report, indent=1))
    found = problems(report)
    print(f"requests sent={report['requests']['sent']} failed={report['requests']['failed']}")
    for problem in found:
        print(f"PROBLEM: {problem}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
