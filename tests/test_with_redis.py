"""scripts/with_redis.py (``make test``): uses the Redis that answers, else starts a private one, else
fails with one line saying how to get one."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.serve.procs import RedisServer, free_port

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "with_redis.py"
sys.path.insert(0, str(SCRIPT.parent))
import with_redis  # noqa: E402

# The child reports the URL it was given and whether a Redis server answers PING there.
PROBE = (
    "import os, sys; from urllib.parse import urlsplit; sys.path.insert(0, sys.argv[1]); import with_redis; "
    "u = os.environ.get('TEST_REDIS_URL', with_redis.DEFAULT_URL); p = urlsplit(u); "
    "print(u, with_redis.answers(p.hostname, p.port))"
)


def run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(SCRIPT), "--", sys.executable, "-c", PROBE, str(SCRIPT.parent)]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60)


def test_answers_tells_a_redis_server_from_a_closed_port_and_from_another_service(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    try:
        assert with_redis.answers("127.0.0.1", server.port)
    finally:
        server.stop()
    assert not with_redis.answers("127.0.0.1", server.port)
    # an HTTP-ish listener that accepts but does not speak RESP is not a Redis server
    import socket

    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert not with_redis.answers("127.0.0.1", listener.getsockname()[1], timeout=0.2)


def test_a_live_server_is_used_as_it_is(tmp_path: Path) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    try:
        result = run({**os.environ, "TEST_REDIS_URL": server.url})
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [server.url, "True"]
    assert "started a private" not in result.stderr


def test_no_server_answering_starts_a_private_one_and_stops_it_afterwards() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    dead = f"redis://127.0.0.1:{free_port()}/0"
    result = run({**os.environ, "TEST_REDIS_URL": dead})
    assert result.returncode == 0, result.stderr
    url, alive = result.stdout.split()
    assert url != dead and alive == "True"
    assert f"no Redis at {dead}: started a private redis-server for the tests at {url}" in result.stderr
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    assert not with_redis.answers("127.0.0.1", port)  # stopped with the command


def test_no_server_and_no_redis_server_binary_fails_with_one_line(tmp_path: Path) -> None:
    dead = f"redis://127.0.0.1:{free_port()}/0"
    bin_dir = tmp_path / "bin"  # a PATH holding python only: no redis-server on it
    bin_dir.mkdir()
    (bin_dir / "python").symlink_to(sys.executable)
    result = run({**os.environ, "TEST_REDIS_URL": dead, "PATH": str(bin_dir)})
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"error: the tests need Redis at {dead} and none answers")
    assert "apt-get install redis-server" in lines[0] and "redis-server --daemonize yes" in lines[0]


def test_the_exit_status_of_the_command_is_passed_on() -> None:
    if not with_redis.answers("127.0.0.1", 6379) and shutil.which("redis-server") is None:
        pytest.skip("no Redis and no redis-server")
    argv = [sys.executable, str(SCRIPT), "--", sys.executable, "-c", "raise SystemExit(7)"]
    assert subprocess.run(argv, capture_output=True, timeout=60).returncode == 7
