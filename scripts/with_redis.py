"""Run a command (``make test``'s pytest) with a Redis server for the tests that need one.

The Redis tests use ``TEST_REDIS_URL`` (default ``redis://127.0.0.1:6379/0``). If that server
answers, the command runs as it is. If not and ``redis-server`` is installed, a private one is
started on a free port for the command's lifetime (nothing on disk, stopped afterwards) and
``TEST_REDIS_URL`` points at it. Otherwise this prints one line saying how to get Redis and exits 2,
rather than letting those tests skip with a message nobody reads.

    python scripts/with_redis.py -- python -m pytest [args]
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

DEFAULT_URL = "redis://127.0.0.1:6379/0"
HOW_TO = (
    "install redis-server (apt-get install redis-server; make test then starts a private one), or start one: "
    'redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no'
)


def answers(host: str, port: int, timeout: float = 0.5) -> bool:
    """True if a Redis server answers PING at host:port (raw RESP: no client library needed)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as conn:
            conn.sendall(b"*1\r\n$4\r\nPING\r\n")
            reply = conn.recv(64)
    except OSError:
        return False
    # +PONG, or -NOAUTH from a server with a password: either way a Redis server is there
    return reply.startswith((b"+PONG", b"-NOAUTH"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_private(workdir: str, timeout: float = 10.0) -> tuple[subprocess.Popen[bytes], str]:
    port = free_port()
    argv = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", workdir]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while not answers("127.0.0.1", port):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"redis-server on port {port} did not start")
        time.sleep(0.05)
    return proc, f"redis://127.0.0.1:{port}/0"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print("usage: python scripts/with_redis.py -- COMMAND [ARGS]", file=sys.stderr)
        return 2
    url = os.environ.get("TEST_REDIS_URL", DEFAULT_URL)
    parts = urlsplit(url)
    if answers(parts.hostname or "127.0.0.1", parts.port or 6379):
        return subprocess.call(argv)
    if shutil.which("redis-server") is None:
        print(f"error: the tests need Redis at {url} and none answers: {HOW_TO}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="test-redis-") as workdir:
        proc, private_url = start_private(workdir)
        print(
            f"no Redis at {url}: started a private redis-server for the tests at {private_url}",
            file=sys.stderr,
        )
        try:
            return subprocess.call(argv, env={**os.environ, "TEST_REDIS_URL": private_url})
        finally:
            proc.terminate()
            proc.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
