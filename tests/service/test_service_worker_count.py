"""WEB_CONCURRENCY counts only for the server's own workers (review fix): a multiprocessing child
that is not a uvicorn worker must not read it as "the server runs N workers"."""

from __future__ import annotations

import multiprocessing
import sys
import time
from pathlib import Path

import pytest
import svc_artifacts

from benchmarks.serve.procs import Managed, api_env, free_port
from service.app import _server_worker_count


def test_web_concurrency_is_ignored_in_a_plain_multiprocessing_child(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WEB_CONCURRENCY", "4")
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.apply(_server_worker_count) == 1  # parent: pytest, not uvicorn
    assert _server_worker_count() == 1  # no parent process of multiprocessing at all


def _exit_log(argv: list[str], env: dict[str, str], log: Path, timeout: float = 60) -> str:
    server = Managed(argv, env, log)
    try:
        deadline = time.monotonic() + timeout
        while server.alive() and "EmbeddedStoreMultiWorkerError" not in log.read_text(errors="replace"):
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-2000:]
            time.sleep(0.2)
        return log.read_text(errors="replace")
    finally:
        server.stop()


def test_uvicorn_workers_from_web_concurrency_still_refuse_the_embedded_store(
    tmp_path: Path, store_root: Path
) -> None:
    svc_artifacts.write(store_root, seed=0)
    env = api_env(store_root, None, WEB_CONCURRENCY="2")  # no REDIS_URL: embedded store
    argv = [
        sys.executable,
        "-m",
        "uvicorn",
        "service.app:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
    ]
    text = _exit_log(argv, env, tmp_path / "api.log")
    assert "the server runs 2 worker processes" in text
