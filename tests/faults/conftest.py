"""Fault and hostile-input tests: real uvicorn processes, private redis-servers, separate load processes.

They drive the scenario functions of ``benchmarks.serve.faults`` / ``benchmarks.serve.hostile`` with
short phases and assert on the counts they return (the full runs are ``make bench-serve``).
"""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(autouse=True)
def _needs_redis_server() -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")


@pytest.fixture
def make_app_client(tmp_path):  # type: ignore[no-untyped-def]
    """In-process app (TestClient, lifespan run) on a small synthetic artifact, embedded store."""
    import warnings

    from benchmarks.serve import synth
    from service.app import create_app
    from service.settings import Settings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from fastapi.testclient import TestClient

    root = tmp_path / "artifacts"
    synth.write_tiktok_sized(root, n_users=50, n_items=80, seed=0, lengths_from=None)
    clients = []

    def make(**overrides):  # type: ignore[no-untyped-def]
        values = {"artifact_root": root, "redis_url": None, "log_level": "WARNING", "faiss_use_gpu": False}
        client = TestClient(create_app(Settings(_env_file=None, **(values | overrides))))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for c in clients:
        c.__exit__(None, None, None)
