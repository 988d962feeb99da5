"""The docker-compose stack built and run for real, and a scenario driven through it.

    .venv/bin/python scripts/compose_test.py            # make compose-test
    .venv/bin/python scripts/compose_test.py --plant proxy-healthcheck   # must fail, naming proxy
    .venv/bin/python scripts/compose_test.py --plant worker-env          # must fail, naming worker

What it does (docs/DEPLOY.md, "The compose test"):

1. A Docker engine: the running one, or ``dockerd`` started here (log in .compose-test/) and stopped
   at the end. Compose v2: the ``docker compose`` plugin, or Debian trixie's ``docker-compose``
   package fetched with apt into a cache (bookworm's docker-compose is v1).
2. Base images: the pinned ones of the Dockerfiles and docker-compose.yml if present or pullable;
   otherwise stand-ins made from Debian packages by scripts/standin_images.sh (cached, rebuilt
   when its recipe changes). torch: the PyTorch CPU index if reachable, else the wheel pip finds on
   this host, put in docker/wheels/. The host's CA bundle goes to docker/certs/ when pip here is
   configured with one (HTTPS intercepted: pip in the build needs it too).
3. Builds the images and brings the stack up as its own project (``-p``, volumes and networks of
   its own, images tagged ``compose-test``) with a generated ADMIN_TOKEN, a free host port, and a
   small first model (INIT_OVERRIDES); waits for every service to be in its expected state, naming
   the service otherwise (exited, restarting, unhealthy, with its health log and log tail).
4. The scenario through nginx against the real containers (each step prints one line): /readyz on
   every replica; /recommend known / fresh / fold_in / popularity; /interactions on one replica seen
   on another; POST /retrain 401 without the token, promoted with it, every replica on the new
   version; PUT /items (new items on every replica within 2 s, similar and fold_in, one made
   unavailable everywhere); --scale api=3 (the new replica replays the items); a replica killed under
   load; the worker killed mid-retrain (job failed, old model serving); Redis restarted under load
   (the items survive it; a replica started after it replays them); ``docker compose down -v``
   leaves no container, volume or network of the project.

Exit status 0 when every step held, 1 with the failed step's message otherwise. Everything the
project started is removed on exit (unless --keep), failure included.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import random
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as a script: the repository's packages are not installed
    sys.path.insert(0, str(REPO))

from benchmarks.serve import procs  # noqa: E402

WORK = REPO / ".compose-test"
CACHE = Path(os.environ.get("COMPOSE_TEST_CACHE", Path.home() / ".cache" / "mmssl-compose-test"))
PROJECT = "mmssl-compose-test"
IMAGE_TAG = "compose-test"
# The pinned defaults (scripts/validate_docker.py checks that compose and Dockerfiles agree on them).
PINNED = {
    "PYTHON_IMAGE": "python:3.11.13-slim-bookworm",
    "REDIS_IMAGE": "redis:7.4.2-bookworm",
    "NGINX_IMAGE": "nginx:1.27.4-alpine",
}
TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_VERSION = "2.13.0"
TRIXIE_MIRROR = "http://deb.debian.org/debian"
# A small first model and small retrains: the test is about the stack, not the model.
TINY = {"embed_dim": 16, "n_heads": 2, "view_topk": 5, "disc_hidden": 32, "batch_size": 256, "adv_users": 64}
INIT_EPOCHS = 3
RETRAIN = {**TINY, "epochs": 2}
LONG_RETRAIN = {**TINY, "epochs": 500, "patience": 1000}
# Items added by PUT /items in the "items" step, and their availability once the step has ended.
ITEMS = ["ct-item-0", "ct-item-1", "ct-item-2"]
ITEMS_AFTER = {"ct-item-0": True, "ct-item-1": False, "ct-item-2": True}
# Expected state of each service once the stack is up: (container state, health) per container.
EXPECTED = {
    "redis": ("running", "healthy"),
    "init": ("exited", ""),
    "api": ("running", "healthy"),
    "proxy": ("running", "healthy"),
    "worker": ("running", ""),
}
# Faults planted by --plant (an extra compose file): each must make the test fail naming the service.
FAULTS = {
    "proxy-healthcheck": {
        "services": {
            "proxy": {
                "healthcheck": {
                    "test": ["CMD", "wget", "-q", "-O", "/dev/null", "http://127.0.0.1:8080/no-such-path"],
                    "interval": "3s",
                    "retries": 2,
                }
            }
        }
    },
    "worker-env": {"services": {"worker": {"environment": {"REDIS_URL": ""}}}},
}


class StepFailed(RuntimeError):
    """A step of the test did not hold; the message says which and why."""


class NoEngine(StepFailed):
    """No Docker engine runs and none can be started here."""


def say(message: str) -> None:
    print(message, flush=True)


def run(
    cmd: Sequence[str], *, check: bool = True, timeout: float = 600, **kw: Any
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(list(cmd), capture_output=True, text=True, timeout=timeout, check=False, **kw)
    if check and proc.returncode != 0:
        raise StepFailed(
            f"`{' '.join(cmd)}` exited {proc.returncode}: {(proc.stderr or proc.stdout)[-3000:]}"
        )
    return proc


def wait_for(what: str, check: Callable[[], Any], timeout_s: float, every_s: float = 0.5) -> Any:
    """``benchmarks.serve.procs.wait_for``, raising StepFailed after ``timeout_s``."""
    return procs.wait_for(what, check, timeout_s, every_s, error=StepFailed)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------------------------- engine


@dataclass
class Engine:
    """The Docker engine: the one running, or a dockerd started (and stopped) here."""

    docker: str
    started: subprocess.Popen[bytes] | None = None

    @classmethod
    def ensure(cls, log_dir: Path) -> Engine:
        docker = shutil.which("docker")
        if docker is None:
            raise NoEngine("no docker CLI (apt-get install docker.io)")
        engine = cls(docker)
        if engine.alive():
            return engine
        dockerd = shutil.which("dockerd") or (
            "/usr/sbin/dockerd" if Path("/usr/sbin/dockerd").exists() else None
        )
        if dockerd is None:
            raise NoEngine("no Docker engine running and no dockerd to start (apt-get install docker.io)")
        log_dir.mkdir(parents=True, exist_ok=True)
        with open(log_dir / "dockerd.log", "wb") as log:
            engine.started = subprocess.Popen(
                [dockerd],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            wait_for("dockerd to answer", engine.alive, 60, 0.5)
        except StepFailed:
            engine.stop()
            tail = (log_dir / "dockerd.log").read_text(errors="replace")[-2000:]
            raise NoEngine(f"dockerd did not start: {tail}") from None
        return engine

    def alive(self) -> bool:
        if self.started is not None and self.started.poll() is not None:
            raise StepFailed(f"dockerd exited with {self.started.returncode}")
        return (
            run([self.docker, "info", "--format", "{{.ServerVersion}}"], check=False, timeout=30).returncode
            == 0
        )

    def stop(self) -> None:
        """Stop the dockerd started here, and only that one."""
        if self.started is None or self.started.poll() is not None:
            return
        self.started.terminate()
        try:
            self.started.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.started.kill()
            self.started.wait(timeout=30)

    def image_present(self, image: str) -> bool:
        return run([self.docker, "image", "inspect", image], check=False, timeout=60).returncode == 0


def compose_binary(docker: str) -> list[str]:
    """The command that runs Compose v2: the docker plugin, or Debian trixie's package unpacked into
    the cache (bookworm ships v1, which rejects this compose file)."""
    proc = run([docker, "compose", "version", "--short"], check=False, timeout=30)
    if proc.returncode == 0 and proc.stdout.strip().lstrip("v").startswith("2"):
        return [docker, "compose"]
    binary = CACHE / "trixie" / "usr" / "libexec" / "docker" / "cli-plugins" / "docker-compose"
    if not binary.is_file():
        say("compose: no Compose v2 plugin; fetching Debian trixie's docker-compose package with apt")
        apt = CACHE / "trixie-apt"
        (apt / "lists" / "partial").mkdir(parents=True, exist_ok=True)
        (apt / "cache").mkdir(parents=True, exist_ok=True)
        sources = apt / "sources.list"
        sources.write_text(f"deb {TRIXIE_MIRROR} trixie main\n")
        options = [
            f"-oDir::Etc::sourcelist={sources}",
            "-oDir::Etc::sourceparts=-",
            f"-oDir::State::Lists={apt / 'lists'}",
            f"-oDir::Cache={apt / 'cache'}",
            "-oAPT::Get::List-Cleanup=0",
            "-oAPT::Sandbox::User=root",
        ]
        run(["apt-get", *options, "update", "-qq"], timeout=300)
        debs = apt / "debs"
        debs.mkdir(exist_ok=True)
        run(["apt-get", *options, "download", "docker-compose"], cwd=debs, timeout=300)
        for deb in debs.glob("docker-compose_*.deb"):
            run(["dpkg-deb", "-x", str(deb), str(CACHE / "trixie")])
    version = run([str(binary), "version", "--short"], timeout=30).stdout.strip()
    say(f"compose: Debian trixie's docker-compose {version} ({binary})")
    return [str(binary)]


# ---------------------------------------------------------------------------------- images


def reachable(url: str, timeout_s: float = 8) -> bool:
    try:
        urllib.request.urlopen(url, timeout=timeout_s).close()
    except OSError:
        return False
    return True


def base_images(engine: Engine) -> dict[str, str]:
    """PYTHON_IMAGE / REDIS_IMAGE / NGINX_IMAGE: the pinned images where present or pullable, else
    the Debian stand-ins of scripts/standin_images.sh."""
    chosen: dict[str, str] = {}
    missing = []
    for var, image in PINNED.items():
        if (
            engine.image_present(image)
            or run([engine.docker, "pull", "-q", image], check=False, timeout=300).returncode == 0
        ):
            chosen[var] = image
        else:
            missing.append(var)
    if missing:
        say(f"images: {', '.join(PINNED[v] for v in missing)} cannot be pulled; using Debian stand-ins")
        t0 = time.monotonic()
        out = run(
            ["bash", str(REPO / "scripts" / "standin_images.sh")],
            timeout=900,
            env={**os.environ, "DOCKER": engine.docker},
        ).stdout
        standins = dict(line.split("=", 1) for line in out.split() if "=" in line)
        for var in missing:
            chosen[var] = standins[var]
        say(
            f"images: stand-ins ready in {time.monotonic() - t0:.0f}s: "
            f"{', '.join(chosen[v] for v in missing)}"
        )
    return chosen


def torch_source() -> str:
    """TORCH_INDEX_URL for the worker build: the PyTorch CPU index, or docker/wheels with the wheel
    this host's pip resolves (its configured indexes and find-links)."""
    if reachable(f"{TORCH_INDEX}/torch/"):
        return TORCH_INDEX
    wheels = REPO / "docker" / "wheels"
    pattern = f"torch-{TORCH_VERSION}+cpu-cp311-*.whl"
    if not list(wheels.glob(pattern)):
        say(
            f"torch: {TORCH_INDEX} is unreachable; pip download torch=={TORCH_VERSION}+cpu into docker/wheels"
        )
        run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "-q",
                "--no-deps",
                "--python-version",
                "3.11",
                "--only-binary=:all:",
                "--dest",
                str(wheels),
                f"torch=={TORCH_VERSION}+cpu",
            ],
            timeout=900,
        )
    found = sorted(wheels.glob(pattern))
    if not found:
        raise StepFailed(f"torch: no {pattern} in docker/wheels after pip download")
    say(f"torch: from docker/wheels/{found[-1].name}")
    return "docker/wheels"


def ca_bundle() -> None:
    """Copy the CA bundle pip uses on this host into docker/certs/ when one is configured."""
    target = REPO / "docker" / "certs" / "host-ca.crt"
    proc = run([sys.executable, "-m", "pip", "config", "get", "global.cert"], check=False)
    candidates = [os.environ.get("PIP_CERT"), proc.stdout.strip() if proc.returncode == 0 else None]
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            shutil.copyfile(candidate, target)
            say(f"certs: pip here trusts {candidate}; copied to docker/certs/host-ca.crt for the builds")
            return
    target.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------- the stack


@dataclass
class Stack:
    compose: list[str]
    docker: str
    env: dict[str, str]
    files: list[Path]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def run(self, *args: str, check: bool = True, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        cmd = [*self.compose, "--ansi", "never", "-p", PROJECT, "--project-directory", str(REPO)]
        for f in self.files:
            cmd += ["-f", str(f)]
        return run([*cmd, *args], check=check, timeout=timeout, env=self.env, cwd=REPO)

    def containers(self) -> list[dict[str, Any]]:
        out = self.run("ps", "-a", "--format", "json").stdout.strip()
        if not out:
            return []
        if out.startswith("["):
            return list(json.loads(out))
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def ids(self, service: str) -> list[str]:
        return [line for line in self.run("ps", "-q", service).stdout.split() if line]

    def inspect(self, container: str) -> dict[str, Any]:
        return dict(json.loads(run([self.docker, "inspect", container]).stdout)[0])

    def replica_urls(self) -> dict[str, str]:
        """{container name: http://ip:8000} of every running api replica (reachable from the host
        on the project's bridge network)."""
        out = {}
        for cid in self.ids("api"):
            info = self.inspect(cid)
            if not info["State"]["Running"]:
                continue
            ips = [n["IPAddress"] for n in info["NetworkSettings"]["Networks"].values() if n.get("IPAddress")]
            out[info["Name"].lstrip("/")] = f"http://{ips[0]}:8000"
        return out

    def logs(self, service: str, tail: int = 25) -> str:
        return self.run("logs", "--no-color", "--tail", str(tail), service, check=False).stdout.strip()


def diagnose(
    containers: Sequence[Mapping[str, Any]], expected: Mapping[str, tuple[str, str]]
) -> tuple[list[str], list[str]]:
    """(broken, pending): one line per service that failed (exited non-zero, restarting, unhealthy,
    missing) and per service not there yet, each starting with the service's name."""
    broken, pending = [], []
    by_service: dict[str, list[Mapping[str, Any]]] = {}
    for c in containers:
        by_service.setdefault(str(c.get("Service")), []).append(c)
    for service, (state, health) in expected.items():
        rows = by_service.get(service, [])
        if not rows:
            pending.append(f"{service}: no container yet")
            continue
        for c in rows:
            name, got, got_health = c.get("Name"), str(c.get("State")), str(c.get("Health") or "")
            exit_code = int(c.get("ExitCode") or 0)
            if got == "exited" and (state != "exited" or exit_code != 0):
                broken.append(f"{service}: container {name} exited with code {exit_code} ({c.get('Status')})")
            elif got in ("restarting", "dead"):
                broken.append(
                    f"{service}: container {name} is {got} (exit code {exit_code}, {c.get('Status')})"
                )
            elif got_health == "unhealthy":
                broken.append(f"{service}: container {name} is unhealthy ({c.get('Status')})")
            elif got != state or (health and got_health != health):
                pending.append(
                    f"{service}: container {name} is {got}{' ' + got_health if got_health else ''}"
                )
    return broken, pending


def wait_until_up(
    stack: Stack, expected: Mapping[str, tuple[str, str]], timeout_s: float, replicas: int
) -> None:
    """Every service in its expected state; StepFailed naming the broken service (with its health
    log and log tail) as soon as one is, or the pending ones at the timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        containers = stack.containers()
        broken, pending = diagnose(containers, expected)
        n_api = sum(1 for c in containers if c.get("Service") == "api" and c.get("State") == "running")
        if not broken and not pending and n_api >= replicas:
            return
        if broken or time.monotonic() > deadline:
            lines = broken or [*pending, f"api: {n_api} of {replicas} replicas running"]
            details = []
            for service in sorted({line.split(":", 1)[0] for line in lines}):
                for c in containers:
                    if c.get("Service") != service:
                        continue
                    health = (stack.inspect(str(c["ID"]))["State"].get("Health") or {}).get("Log") or []
                    if health:
                        last = health[-1]
                        details.append(
                            f"--- {service}: last healthcheck exit {last.get('ExitCode')}: "
                            f"{str(last.get('Output')).strip()[:500]}"
                        )
                    break
                details.append(f"--- {service}: log tail\n{stack.logs(service)}")
            why = "broken" if broken else f"not up after {timeout_s:.0f}s"
            raise StepFailed(f"stack {why}: " + "; ".join(lines) + "\n" + "\n".join(details))
        time.sleep(2)


# ---------------------------------------------------------------------------------- load


@dataclass
class Load:
    """A client thread calling POST /recommend through the proxy until stopped."""

    url: str
    users: list[str]
    sent: int = 0
    failed: int = 0
    errors: list[str] = field(default_factory=list)
    versions: set[str] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> Load:
        self._thread = threading.Thread(target=self._run, name="load", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=60)

    def summary(self) -> str:
        return f"{self.sent} requests, {self.failed} failed" + (
            f" ({self.errors[:3]})" if self.errors else ""
        )

    def _run(self) -> None:
        import httpx

        with httpx.Client(timeout=15) as client:
            i = 0
            while not self._stop.is_set():
                user = self.users[i % len(self.users)]
                i += 1
                self.sent += 1
                try:
                    r = client.post(f"{self.url}/recommend", json={"user_id": user, "k": 10})
                    body = r.json() if r.status_code == 200 else None
                    if body is None or len(body["items"]) != 10:
                        self.failed += 1
                        self.errors.append(f"{user}: HTTP {r.status_code} {r.text[:200]}")
                    else:
                        self.versions.add(body["model_version"])
                except (httpx.HTTPError, ValueError, KeyError) as exc:
                    self.failed += 1
                    self.errors.append(f"{user}: {type(exc).__name__}: {exc}")
                time.sleep(0.02)


# ---------------------------------------------------------------------------------- scenario


class Scenario:
    def __init__(self, stack: Stack, token: str) -> None:
        import httpx

        self.stack = stack
        self.auth = {"Authorization": f"Bearer {token}"}
        self.http = httpx.Client(timeout=30)
        self.known = [str(u) for u in range(20)]
        self.t0 = time.monotonic()

    def step(self, name: str, result: str) -> None:
        say(f"[{time.monotonic() - self.t0:6.1f}s] {name}: {result}")

    def post(self, url: str, path: str, body: Any = None, headers: Mapping[str, str] | None = None) -> Any:
        return self.http.post(f"{url}{path}", json=body, headers=dict(headers or {}))

    def readyz_all(self, expect_version: str | None = None, replicas: int | None = None) -> dict[str, str]:
        versions = {}
        for name, url in self.stack.replica_urls().items():
            r = self.http.get(f"{url}/readyz")
            body = r.json()
            if r.status_code != 200 or body.get("status") != "ready" or body.get("store") != "redis":
                raise StepFailed(f"api: replica {name} /readyz answered {r.status_code} {body}")
            versions[name] = body["model_version"]
        if replicas is not None and len(versions) != replicas:
            raise StepFailed(f"api: {len(versions)} replicas ready, expected {replicas}: {versions}")
        if expect_version is not None and set(versions.values()) != {expect_version}:
            raise StepFailed(f"api: replicas serve {versions}, expected {expect_version} everywhere")
        return versions

    def job(self, job_id: str) -> dict[str, Any]:
        r = self.http.get(f"{self.stack.url}/retrain/{job_id}", headers=self.auth)
        if r.status_code != 200:
            raise StepFailed(f"api: GET /retrain/{job_id} answered {r.status_code} {r.text[:300]}")
        return dict(r.json())

    def all_on(self, version: str) -> dict[str, str] | None:
        try:
            v = self.readyz_all()
        except StepFailed:
            return None
        return v if v and set(v.values()) == {version} else None

    # ------------------------------------------------------------------ items (PUT /items, issue 11)

    def put_items(self, items: list[dict[str, Any]], retry_s: float = 0) -> dict[str, Any]:
        """PUT /items through nginx; a 503 (Redis not reachable yet) is retried for retry_s."""
        deadline = time.monotonic() + retry_s
        while True:
            r = self.http.put(f"{self.stack.url}/items", json={"items": items}, headers=self.auth)
            if r.status_code != 503 or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        if r.status_code != 200 or r.json().get("applied") != len(items):
            raise StepFailed(f"api: PUT /items answered {r.status_code} {r.text[:300]}")
        return dict(r.json())

    def items_on(self, url: str, want: Mapping[str, bool]) -> str | None:
        """None when the replica at url serves every item of want with that availability (GET
        /items/{id}) and no unavailable one in the similar items of an available one; else why not."""
        for item_id, available in want.items():
            r = self.http.get(f"{url}/items/{item_id}")
            if r.status_code != 200:
                return f"GET /items/{item_id} answered {r.status_code} {r.text[:200]}"
            body = r.json()
            if body.get("source") != "added" or body.get("available") is not available:
                return f"GET /items/{item_id} answered {body}, expected added, available={available}"
        anchor = next(i for i, a in want.items() if a)
        r = self.post(url, f"/items/{anchor}/similar", {"k": 100})
        if r.status_code != 200:
            return f"POST /items/{anchor}/similar answered {r.status_code} {r.text[:200]}"
        got = [i["item_id"] for i in r.json()["items"]]
        if anchor in got or len(got) != 100:
            return f"similar of {anchor}: {len(got)} items, itself {'in' if anchor in got else 'not in'} them"
        hidden = [i for i, a in want.items() if not a and i in got]
        if hidden:
            return f"similar of {anchor} returned unavailable items {hidden}"
        return None

    def items_everywhere(self, want: Mapping[str, bool], within_s: float) -> dict[str, float]:
        """Seconds until each replica (on its container address) serves want; StepFailed past within_s."""
        t, pending, seen = time.monotonic(), dict(self.stack.replica_urls()), {}
        why: dict[str, str | None] = {}
        while pending:
            for name, url in list(pending.items()):
                why[name] = self.items_on(url, want)
                if why[name] is None:
                    seen[name] = time.monotonic() - t
                    del pending[name]
            if pending and time.monotonic() - t > within_s:
                raise StepFailed(
                    f"api: not every replica served the PUT /items change within {within_s:.0f}s: "
                    + "; ".join(f"{n}: {why[n]}" for n in pending)
                )
            time.sleep(0.05)
        return seen

    def items_step(self) -> None:
        """PUT /items through nginx: a batch of new items, served by every replica within 2 s,
        scorable (similar, fold_in), then one made unavailable on every replica."""
        s, url = self.stack, self.stack.url
        model = self.http.get(f"{url}/model").json()
        dims = {m["name"]: int(m["raw_dim"]) for m in model["modalities"]}
        rng = random.Random(15)
        base = {m: [round(rng.gauss(0, 1.5), 4) for _ in range(d)] for m, d in dims.items()}
        other = {m: [round(rng.gauss(0, 1.5), 4) for _ in range(d)] for m, d in dims.items()}
        # ct-item-1 has ct-item-0's features (the same content vector): its nearest neighbour.
        batch = [
            {"item_id": ITEMS[0], "features": base},
            {"item_id": ITEMS[1], "features": base},
            {"item_id": ITEMS[2], "features": other},
        ]
        anon = self.http.put(f"{url}/items", json={"items": batch})
        if anon.status_code != 401:
            raise StepFailed(f"api: PUT /items without the token answered {anon.status_code}, expected 401")
        self.put_items(batch)
        served = self.items_everywhere(dict.fromkeys(ITEMS, True), 2)
        for name, rurl in s.replica_urls().items():
            sim = [
                i["item_id"]
                for i in self.post(rurl, f"/items/{ITEMS[0]}/similar", {"k": 100}).json()["items"]
            ]
            if ITEMS[1] not in sim:
                raise StepFailed(
                    f"api: {name}: {ITEMS[1]} (same features) not in the 100 similar of {ITEMS[0]}"
                )
        fold = self.post(
            url, "/recommend", {"user_id": "ct-items-user", "k": 100, "interactions": [ITEMS[0]]}
        )
        body = fold.json() if fold.status_code == 200 else {}
        got = [i["item_id"] for i in body.get("items", [])]
        if body.get("path") != "fold_in" or ITEMS[0] in got or len(got) != 100:
            raise StepFailed(
                f"api: /recommend folding in {ITEMS[0]} answered {fold.status_code} {fold.text[:300]}"
            )
        if ITEMS[1] not in got:  # its twin: the same content vector, so near the top
            raise StepFailed(f"api: /recommend folding in {ITEMS[0]} did not return {ITEMS[1]}: {got}")
        rank = got.index(ITEMS[1]) + 1
        self.put_items([{"item_id": ITEMS[1], "available": False}])
        hidden = self.items_everywhere(ITEMS_AFTER, 2)
        again = self.post(
            url, "/recommend", {"user_id": "ct-items-user", "k": 100, "interactions": [ITEMS[0]]}
        )
        if ITEMS[1] in {i["item_id"] for i in again.json()["items"]}:
            raise StepFailed(f"api: /recommend returned {ITEMS[1]} after it was made unavailable")
        widths = ", ".join(f"{m} {d}" for m, d in dims.items())
        self.step(
            "items",
            f"PUT /items 401 without the token; {len(batch)} new items ({widths})"
            f" served by {len(served)} replicas in {max(served.values()):.2f}s; similar excludes itself; "
            f"fold_in on {ITEMS[0]}: {ITEMS[1]} at rank {rank} of 100; {ITEMS[1]} unavailable on every "
            f"replica in {max(hidden.values()):.2f}s and gone from /recommend and similar",
        )

    def run(self) -> None:
        s, url = self.stack, self.stack.url
        versions = self.readyz_all(replicas=2)
        first = next(iter(versions.values()))
        if set(versions.values()) != {first}:
            raise StepFailed(f"api: replicas serve different models: {versions}")
        self.step("readyz", f"{len(versions)} replicas ready on {first}: {', '.join(versions)}")

        # /recommend, the four paths, through nginx.
        paths = {}
        known = self.post(url, "/recommend", {"user_id": "0", "k": 10}).json()
        paths["known"] = known
        seen = [i["item_id"] for i in known["items"]]
        paths["fresh"] = self.post(
            url, "/recommend", {"user_id": "1", "k": 10, "interactions": seen[:2]}
        ).json()
        paths["fold_in"] = self.post(
            url, "/recommend", {"user_id": "ct-new-user", "k": 10, "interactions": seen[:3]}
        ).json()
        paths["popularity"] = self.post(url, "/recommend", {"user_id": "ct-cold-user", "k": 10}).json()
        for want, body in paths.items():
            if (
                body.get("path") != want
                or len(body.get("items", [])) != 10
                or body.get("model_version") != first
            ):
                raise StepFailed(
                    f"proxy/api: /recommend expected path {want} with 10 items on {first}: {body}"
                )
        folded = {i["item_id"] for i in paths["fold_in"]["items"]}
        if folded & set(seen[:3]):
            raise StepFailed(f"api: fold_in returned an item the request interacted with: {paths['fold_in']}")
        self.step(
            "recommend",
            "paths known, fresh, fold_in, popularity: 10 items each, request interactions excluded",
        )

        # /interactions on one replica, seen on another.
        replicas = list(s.replica_urls().items())
        (name_a, a), (name_b, b) = replicas[0], replicas[1]
        before = [i["item_id"] for i in self.post(b, "/recommend", {"user_id": "2", "k": 10}).json()["items"]]
        rec = self.post(a, "/interactions", {"user_id": "2", "items": before[:3]})
        after = self.post(b, "/recommend", {"user_id": "2", "k": 10}).json()
        rec_new = self.post(a, "/interactions", {"user_id": "ct-fresh-user", "items": before[3:6]})
        new_on_b = self.post(b, "/recommend", {"user_id": "ct-fresh-user", "k": 10}).json()
        ok = (
            rec.status_code == 200
            and rec_new.status_code == 200
            and after["path"] == "fresh"
            and not set(before[:3]) & {i["item_id"] for i in after["items"]}
            and new_on_b["path"] == "fold_in"
            and not set(before[3:6]) & {i["item_id"] for i in new_on_b["items"]}
        )
        if not ok:
            raise StepFailed(
                f"api/redis: interactions recorded on {name_a} not used by {name_b}: "
                f"record {rec.status_code} "
                f"{rec.text[:200]}; {name_b} answered path {after['path']} / {new_on_b['path']}"
            )
        self.step(
            "interactions",
            f"recorded on {name_a}; {name_b} answers path fresh (known user) and fold_in (new user), "
            "clicked items excluded",
        )

        # POST /retrain: 401 without the token; promoted with it; every replica on the new version.
        anon = self.post(url, "/retrain", {"force": True})
        if anon.status_code != 401:
            raise StepFailed(
                f"api: POST /retrain without the token answered {anon.status_code}, expected 401"
            )
        t = time.monotonic()
        accepted = self.post(url, "/retrain", {"force": True, "overrides": RETRAIN}, self.auth)
        if accepted.status_code != 202:
            raise StepFailed(f"api: POST /retrain answered {accepted.status_code} {accepted.text[:300]}")
        job_id = accepted.json()["job_id"]
        status = wait_for(
            "the retrain job (worker) to end",
            lambda: (j := self.job(job_id))["state"] in ("finished", "failed") and j,
            420,
            1,
        )
        if status["state"] != "finished" or not status.get("promoted"):
            raise StepFailed(f"worker: retrain job {job_id} ended {status}\n{s.logs('worker')}")
        second = str(status["model_version"])
        swapped = wait_for(f"every replica on {second}", lambda: self.all_on(second), 60, 0.5)
        self.step(
            "retrain",
            f"401 without the token; job {job_id} promoted {second} in {time.monotonic() - t:.0f}s; "
            f"replicas on it: {', '.join(swapped)}",
        )

        self.items_step()

        # --scale api=3.
        s.run("up", "-d", "--no-recreate", "--no-build", "--scale", "api=3")
        wait_until_up(s, EXPECTED, 180, replicas=3)
        scaled = wait_for(
            "3 replicas ready on the promoted model",
            lambda: (v := self.all_on(second)) and len(v) == 3 and v,
            60,
        )
        replayed = self.items_everywhere(ITEMS_AFTER, 10)
        self.step(
            "scale",
            f"--scale api=3: {len(scaled)} replicas ready on {second}, each serving the added items "
            f"(the new one replayed them from the Redis stream) in {max(replayed.values()):.2f}s",
        )

        # A replica killed under load: nginx retries another one.
        with Load(url, self.known) as load:
            time.sleep(2)
            victim = s.ids("api")[0]
            run([s.docker, "kill", victim])
            time.sleep(10)  # past nginx's resolver cache (valid=5s)
        if load.failed or load.sent < 20:
            raise StepFailed(f"proxy: a replica killed under load: {load.summary()}")
        self.step("replica killed", f"SIGKILL {victim[:12]} under load through nginx: {load.summary()}")
        s.run("up", "-d", "--no-recreate", "--no-build", "--scale", "api=3")
        wait_until_up(s, EXPECTED, 180, replicas=3)
        wait_for("3 replicas ready again", lambda: (v := self.all_on(second)) and len(v) == 3 and v, 90)

        # The worker killed mid-retrain: the job reads failed, the old model keeps serving.
        accepted = self.post(url, "/retrain", {"force": True, "overrides": LONG_RETRAIN}, self.auth)
        if accepted.status_code != 202:
            raise StepFailed(f"api: POST /retrain answered {accepted.status_code} {accepted.text[:300]}")
        job_id = accepted.json()["job_id"]
        running = wait_for(
            "the long retrain to be training",
            lambda: (
                (j := self.job(job_id))["state"] == "running"
                and (j.get("progress") or {}).get("epoch", 0) >= 1
                and j
            ),
            240,
            0.5,
        )
        worker = s.ids("worker")[0]
        t_kill = time.monotonic()
        run([s.docker, "kill", worker])
        self.step(
            "worker killed",
            f"SIGKILL worker {worker[:12]} at epoch {running['progress'].get('epoch')}; "
            "waiting for the job to read failed",
        )

        # Redis restarted under load (while the killed job's heartbeat runs out).
        with Load(url, self.known) as load:
            time.sleep(2)
            s.run("restart", "redis", timeout=120)
            wait_until_up(s, {"redis": ("running", "healthy")}, 60, replicas=0)
            time.sleep(3)
        if load.failed or load.sent < 20:
            raise StepFailed(f"redis/api: Redis restarted under load: {load.summary()}")
        self.step("redis restarted", f"docker compose restart redis under load: {load.summary()}")
        kept = self.items_everywhere(ITEMS_AFTER, 10)
        self.put_items([{"item_id": ITEMS[2], "available": False}], retry_s=15)
        after_restart = {**ITEMS_AFTER, ITEMS[2]: False}
        changed = self.items_everywhere(after_restart, 2)
        s.run("up", "-d", "--no-recreate", "--no-build", "--scale", "api=4")
        wait_until_up(s, EXPECTED, 180, replicas=4)
        wait_for("4 replicas ready", lambda: (v := self.all_on(second)) and len(v) == 4 and v, 90)
        late = self.items_everywhere(after_restart, 10)
        self.step(
            "items after redis restart",
            f"{len(kept)} replicas still serve the added items; a PUT after the restart reached them in "
            f"{max(changed.values()):.2f}s; a replica started now (--scale api=4) replayed both batches "
            f"from the append-only Redis: {len(late)} replicas agree",
        )

        failed = wait_for(
            "the killed job to read failed (RQ heartbeat expiry, ~70 s)",
            lambda: (j := self.job(job_id))["state"] == "failed" and j,
            180,
            2,
        )
        with Load(url, self.known) as load:
            time.sleep(3)
        serving = self.readyz_all(expect_version=second)
        if load.failed or load.versions != {second}:
            raise StepFailed(f"api: after the worker was killed: {load.summary()}, versions {load.versions}")
        self.step(
            "worker killed (result)",
            f"job {job_id} failed after {time.monotonic() - t_kill:.0f}s ({str(failed.get('error'))[:60]}); "
            f"{len(serving)} replicas still on {second}; {load.summary()}",
        )

    def close(self) -> None:
        self.http.close()


# ---------------------------------------------------------------------------------- main


def leftovers(docker: str) -> list[str]:
    label = f"label=com.docker.compose.project={PROJECT}"
    out = []
    for kind, cmd in (
        ("container", ["ps", "-aq", "--filter", label]),
        ("volume", ["volume", "ls", "-q", "--filter", label]),
        ("network", ["network", "ls", "-q", "--filter", label]),
    ):
        out += [f"{kind} {x}" for x in run([docker, *cmd]).stdout.split()]
    return out


@contextlib.contextmanager
def timer(label: str) -> Iterator[None]:
    t = time.monotonic()
    yield
    say(f"{label} in {time.monotonic() - t:.0f}s")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--plant", choices=sorted(FAULTS), help="plant a fault; the test must then fail naming the service"
    )
    parser.add_argument(
        "--keep", action="store_true", help="leave the stack up (and dockerd running) at the end"
    )
    parser.add_argument(
        "--skip-without-engine",
        action="store_true",
        help="CI: when no Docker engine runs or can start, say so in one line and exit 0",
    )
    parser.add_argument("--up-timeout", type=float, default=420, help="seconds for the stack to come up")
    args = parser.parse_args(argv)
    t0 = time.monotonic()
    WORK.mkdir(exist_ok=True)
    # One run at a time on a machine: two would share the engine, the project name and the caches.
    CACHE.mkdir(parents=True, exist_ok=True)
    lock = open(CACHE / "lock", "w")  # noqa: SIM115 - held until the process exits
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say("another compose test runs on this machine: waiting for it to end")
        fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        engine = Engine.ensure(WORK)
    except NoEngine as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else "no engine"
        if args.skip_without_engine:
            say(f"compose test skipped: no Docker engine can start on this machine: {reason[:200]}")
            return 0
        say(f"FAILED: {exc}")
        return 1
    say(
        "engine: "
        + (
            "started dockerd (log .compose-test/dockerd.log)"
            if engine.started
            else "the running Docker engine"
        )
    )
    stack: Stack | None = None
    scenario: Scenario | None = None
    ok = False
    try:
        compose = compose_binary(engine.docker)
        images = base_images(engine)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("COMPOSE_", "DOCKER_HOST"))}
        token = secrets.token_hex(24)
        env.update(
            images,
            TORCH_INDEX_URL=torch_source(),
            ADMIN_TOKEN=token,
            API_PORT=str(free_port()),
            IMAGE_TAG=IMAGE_TAG,
            INIT_OVERRIDES=" ".join(f"{k}={v}" for k, v in {**TINY, "epochs": INIT_EPOCHS}.items()),
        )
        ca_bundle()
        files = [REPO / "docker-compose.yml"]
        if args.plant:
            planted = WORK / f"fault-{args.plant}.yml"
            planted.write_text(json.dumps(FAULTS[args.plant], indent=2))
            files.append(planted)
            say(f"fault planted: {args.plant} ({planted.relative_to(REPO)})")
        stack = Stack(compose, engine.docker, env, files, int(env["API_PORT"]))
        stack.run("down", "-v", "--remove-orphans", check=False)  # a previous run's leftovers
        with timer("build: images built (log .compose-test/build.log)"):
            # api and worker only: init runs the worker's image (built twice otherwise).
            build = stack.run("build", "api", "worker", check=False, timeout=1500)
            (WORK / "build.log").write_text(build.stdout + build.stderr)
            if build.returncode != 0:
                raise StepFailed(
                    f"build: docker compose build exited {build.returncode}: {build.stderr[-3000:]}"
                )
        with timer("up: stack up (init trained the first model)"):
            stack.run("up", "-d", "--no-build", timeout=300)
            wait_until_up(stack, EXPECTED, args.up_timeout, replicas=2)
        scenario = Scenario(stack, token)
        scenario.run()
        ok = True
    except StepFailed as exc:
        say(f"FAILED: {exc}")
    finally:
        if scenario is not None:
            scenario.close()
        if stack is not None and not args.keep:
            proc = stack.run("down", "-v", "--remove-orphans", "--timeout", "5", check=False, timeout=300)
            left = leftovers(engine.docker)
            if proc.returncode != 0 or left:
                say(
                    f"FAILED: docker compose down -v exited {proc.returncode} and left {left}: "
                    f"{proc.stderr[-500:]}"
                )
                ok = False
            else:
                say("down: docker compose down -v left no container, volume or network of the project")
        if not args.keep:
            engine.stop()
            if engine.started is not None:
                say("engine: stopped the dockerd started here")
    say(f"compose test {'passed' if ok else 'FAILED'} in {time.monotonic() - t0:.0f}s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
