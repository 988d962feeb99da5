"""Fixtures of the service tests: artifact stores, apps, the shared Redis and throwaway ones.

The private redis-server comes from benchmarks.serve.procs, so the tests and the serving benchmarks
start processes the same way.
"""

from __future__ import annotations

import os
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

import warnings  # noqa: E402

import redis  # noqa: E402

with warnings.catch_warnings():  # "use httpx2" notice of recent Starlette; httpx is what we have
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient  # noqa: E402

import svc_artifacts  # noqa: E402

from benchmarks.serve.procs import RedisServer  # noqa: E402
from service.app import create_app  # noqa: E402
from service.settings import Settings  # noqa: E402

SHARED_REDIS = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
STANDIN_JOB = "svc_standin_job.retrain_job"


def subprocess_env(**extra: str) -> dict[str, str]:
    """Environment for child processes (worker, job runner, uvicorn) that can import the stand-in."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(HERE), env.get("PYTHONPATH", "")]).rstrip(
        os.pathsep
    )
    env.update(extra)
    return env


@pytest.fixture
def store_root(tmp_path: Path) -> Path:
    root = tmp_path / "artifacts"
    root.mkdir()
    return root


@pytest.fixture
def artifact_path(store_root: Path) -> Path:
    """One serving artifact (CURRENT points at it)."""
    return svc_artifacts.write(store_root, seed=0)


@pytest.fixture
def make_settings(store_root: Path) -> Callable[..., Settings]:
    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "artifact_root": store_root,
            "model_poll_interval_s": 0.1,
            "redis_url": None,
            "retrain_job_func": STANDIN_JOB,
            "admin_token": None,
            "retrain_data_dir": None,
            "log_level": "WARNING",
        }
        values.update(overrides)
        return Settings(_env_file=None, **values)  # type: ignore[call-arg]

    return make


@pytest.fixture
def make_client(make_settings: Callable[..., Settings]) -> Iterator[Callable[..., TestClient]]:
    """Started TestClients (lifespan run); closed at the end of the test."""
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


@pytest.fixture
def client(artifact_path: Path, make_client: Callable[..., TestClient]) -> TestClient:
    """Embedded mode (no Redis)."""
    return make_client()


# ---------------------------------------------------------------------------------------------- Redis


@pytest.fixture(scope="session")
def shared_redis() -> Iterator[dict[str, Any]]:
    """The shared Redis on 6379, with a key prefix unique to this session; its keys (and those of the
    RQ jobs listed in ``job_ids``) are deleted after."""
    conn = redis.Redis.from_url(SHARED_REDIS)
    try:
        conn.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis answers at {SHARED_REDIS}")
    prefix = f"mmssl-test-{uuid.uuid4().hex[:10]}"
    info: dict[str, Any] = {"url": SHARED_REDIS, "prefix": prefix, "conn": conn, "job_ids": []}
    yield info
    patterns = [f"{prefix}*", f"rq:*{prefix}*"] + [f"rq:*{job_id}*" for job_id in info["job_ids"]]
    for pattern in patterns:
        for key in conn.scan_iter(match=pattern, count=1000):
            conn.delete(key)
    for queue_key in conn.smembers("rq:queues"):  # RQ's registry of queue names
        if prefix.encode() in queue_key:
            conn.srem("rq:queues", queue_key)
    conn.close()


@pytest.fixture
def redis_settings(shared_redis: dict[str, Any]) -> dict[str, Any]:
    """Settings overrides for one test: its own key prefix and queue under the session prefix."""
    prefix = f"{shared_redis['prefix']}-{uuid.uuid4().hex[:6]}"
    return {"redis_url": shared_redis["url"], "redis_prefix": prefix, "retrain_queue": f"{prefix}-retrain"}


@pytest.fixture
def throwaway_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A private redis-server (never the shared one) that a test may stop and start again."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()
