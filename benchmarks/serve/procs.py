"""The processes of a serving benchmark or fault scenario: a private redis-server, the API under
uvicorn (as deployed), the RQ worker; plus /metrics scraping and resident-memory sampling.

Every process is started in its own session so that it (and its children: uvicorn workers, RQ
work-horses) can be stopped by process group, never by name.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

REPO = Path(__file__).resolve().parents[2]


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout_s: float,
    every_s: float = 0.2,
    error: Callable[[str], Exception] = TimeoutError,
) -> Any:
    """Call ``check`` every ``every_s`` until it returns something truthy, and return that;
    ``error("timed out after ...s waiting for WHAT")`` raised after ``timeout_s``. The one poll loop
    of scripts/topology.py and scripts/compose_test.py (each passes its own error type)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise error(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(every_s)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc), children before grandchildren."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # "pid (comm) state ppid ..."
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    frontier = [pid]
    while frontier:
        nxt = [c for p in frontier for c in children.get(p, [])]
        out += nxt
        frontier = nxt
    return out


def rss_bytes(pids: list[int]) -> int:
    """Sum of VmRSS of the given processes (those that exited count 0)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of one process so far (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


class Managed:
    """A child process with its own session and a log file."""

    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self._log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv, env=env, cwd=REPO, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)

    def kill_tree(self) -> list[int]:
        """SIGKILL the process and every descendant (RQ's work-horse leaves the process group)."""
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        return pids

    def stop(self, timeout: float = 15) -> int | None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # a process group can outlive its leader (uvicorn workers, a work-horse): end what is left
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self._log.close()
        return self.proc.returncode

    def log_text(self) -> str:
        if not self._log.closed:  # readable after stop() too
            self._log.flush()
        return self.log_path.read_text(errors="replace")


class RedisServer:
    """A private ``redis-server`` on a free port (never the shared one); can be killed and restarted
    on the same port."""

    def __init__(
        self, workdir: Path, password: str | None = None, port: int | None = None, persistent: bool = False
    ) -> None:
        """``persistent``: an append-only file fsynced on every write, so that a write Redis
        acknowledged survives a SIGKILL and restart (the default keeps nothing, like a cache)."""
        if shutil.which("redis-server") is None:
            raise RuntimeError("redis-server is not installed (apt-get install redis-server)")
        self.port = port or free_port()
        self.password = password
        self.persistent = persistent
        self.workdir = workdir
        auth = f":{password}@" if password else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.proc: Managed | None = None

    def start(self, timeout: float = 10) -> None:
        argv = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "yes" if self.persistent else "no", "--appendfsync", "always",
                "--dir", str(self.workdir)]  # fmt: skip
        if self.password:
            argv += ["--requirepass", self.password]
        self.proc = Managed(argv, dict(os.environ), self.workdir / f"redis-{self.port}.log")
        import redis

        conn = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout
        while True:
            try:
                conn.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)
        conn.close()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.signal(signal.SIGKILL)
            self.proc.proc.wait()
            self.proc.stop()
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()
            self.proc = None


def api_env(artifact_root: Path, redis_url: str | None, **extra: str) -> dict[str, str]:
    base = {
        "ARTIFACT_ROOT": str(artifact_root),
        "REDIS_URL": redis_url or "",
        "REDIS_PREFIX": f"bench-{os.getpid()}-{int(time.time())}",
        "LOG_LEVEL": "WARNING",
        "MODEL_POLL_INTERVAL_S": "0.5",
        "FAISS_USE_GPU": "false",
    }
    base.update(extra)
    return child_env(**base)


class ApiServer(Managed):
    """``uvicorn APP --workers N`` (``service.app:app`` as deployed; ``benchmarks.serve.probe:app``
    wraps it with request counters for the SIGTERM scenario)."""

    def __init__(
        self,
        env: dict[str, str],
        log_path: Path,
        workers: int = 1,
        app: str = "service.app:app",
        access_log: bool = False,
        port: int | None = None,
    ) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workers = workers
        # uvicorn's info lines (worker started / died / shutting down) are what explains a failed
        # fault scenario; the graceful-shutdown bound is the deployed one (docker/api.Dockerfile)
        argv = [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(self.port),
                "--workers", str(workers), "--log-level", "info", "--timeout-graceful-shutdown", "20"]  # fmt: skip
        if not access_log:
            argv.append("--no-access-log")
        super().__init__(argv, env, log_path)

    def wait_ready(self, timeout: float = 60) -> None:
        import httpx  # here, not at the top: scripts/compose_test.py imports this module stdlib-only

        deadline = time.monotonic() + timeout
        while True:
            if not self.alive():
                raise RuntimeError(f"API exited early:\n{self.log_text()[-4000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200 and self._all_workers_up():
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"API not ready after {timeout}s:\n{self.log_text()[-4000:]}")
            time.sleep(0.1)

    def _all_workers_up(self, tries: int = 40) -> bool:
        """With several workers, /readyz answers as soon as ONE has started, and keep-alive connections
        made then all stay on it. Each worker loads its own model: distinct ``loaded_at`` values in
        /model answers (one new connection each) show how many are accepting."""
        import httpx

        if self.workers == 1:
            return True
        seen = set()
        for _ in range(tries):
            with contextlib.suppress(httpx.HTTPError, KeyError, ValueError):
                seen.add(httpx.get(self.url + "/model", timeout=1).json()["loaded_at"])
            if len(seen) >= self.workers:
                return True
        return False

    def worker_pids(self) -> list[int]:
        """The processes serving requests: uvicorn's workers (spawned by multiprocessing, beside its
        resource tracker), or the one process with --workers 1."""
        if self.workers == 1:
            return [self.pid]
        out = []
        for pid in descendants(self.pid):
            with contextlib.suppress(OSError):
                if b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes():
                    out.append(pid)
        return out

    def rss(self) -> int:
        return rss_bytes([self.pid, *descendants(self.pid)])


def start_worker(env: dict[str, str], log_path: Path) -> Managed:
    return Managed([sys.executable, "-m", "service.worker"], env, log_path)


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$")


def scrape(url: str) -> dict[str, float]:
    """/metrics as {"name{labels}": value}. With several uvicorn workers this is ONE worker's view."""
    import httpx

    out: dict[str, float] = {}
    for line in httpx.get(url + "/metrics", timeout=5).text.splitlines():
        m = _SAMPLE.match(line)
        if m:
            out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


@contextlib.contextmanager
def running(*procs: Managed | RedisServer) -> Iterator[None]:
    try:
        yield
    finally:
        for p in reversed(procs):
            p.stop()


def metric(sample: dict[str, float], name: str, **labels: Any) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, value in sample.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total
