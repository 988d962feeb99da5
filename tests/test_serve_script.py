"""scripts/serve.py (make serve / make demo): a stop by SIGINT or SIGTERM after a graceful shutdown
exits 0, where the uvicorn CLI dies of the signal (make then prints 'Interrupt' / 'Error 143');
a server that cannot start still fails."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from benchmarks.serve.procs import free_port
from tests.service import svc_artifacts

ROOT = Path(__file__).resolve().parents[1]


def start(store: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "ARTIFACT_ROOT": str(store), "PYTHONPATH": str(ROOT)}
    env.pop("REDIS_URL", None)
    with log.open("wb") as fh:
        return subprocess.Popen(
            [sys.executable, "scripts/serve.py", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=fh,
            stderr=subprocess.STDOUT,
            preexec_fn=lambda: [signal.signal(s, signal.SIG_DFL) for s in (signal.SIGINT, signal.SIGTERM)],
        )


def wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, log.read_text()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.2)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_stop_is_graceful_and_exits_0(sig: signal.Signals, tmp_path: Path) -> None:
    store = tmp_path / "store"
    svc_artifacts.write(store)
    port = free_port()
    log = tmp_path / "serve.log"
    proc = start(store, port, log)
    try:
        wait_ready(proc, port, log)
        proc.send_signal(sig)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text()
    assert "Application shutdown complete." in text and "Traceback" not in text


def test_a_taken_port_is_a_failure(tmp_path: Path) -> None:
    store = tmp_path / "store"
    svc_artifacts.write(store)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        log = tmp_path / "serve.log"
        proc = start(store, taken.getsockname()[1], log)
        try:
            assert proc.wait(timeout=120) == 3, log.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert "address already in use" in log.read_text().lower()
