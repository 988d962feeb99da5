"""Items shared through a real Redis: replicas, replay at start, Redis down during PUT, real HTTP."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import svc_artifacts
from fastapi.testclient import TestClient

from artifact import contract
from benchmarks.serve.procs import ApiServer, RedisServer, api_env

TOKEN = "items-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DIMS = svc_artifacts.RAW_DIMS


def _ids(response: dict[str, Any]) -> list[str]:
    return [it["item_id"] for it in response["items"]]


def _item(item_id: str, rng: np.random.Generator, available: bool = True) -> dict[str, Any]:
    features = {m: rng.normal(size=size).astype(np.float32).tolist() for m, size in DIMS.items()}
    return {"item_id": item_id, "features": features, "available": available}


def _wait_until(predicate: Callable[[], bool], timeout: float) -> float:
    """Seconds until ``predicate`` held; AssertionError after ``timeout``."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, f"not within {timeout}s"
        time.sleep(0.02)
    return time.monotonic() - started


@pytest.fixture
def content_path(store_root: Path) -> Path:
    return svc_artifacts.write_with_content(store_root, seed=0)[0]


def test_second_replica_serves_a_new_item_within_2s_and_a_late_one_replays(
    make_client: Callable[..., TestClient],
    content_path: Path,
    redis_settings: dict[str, Any],
    shared_redis: dict[str, Any],
) -> None:
    a = make_client(**redis_settings, admin_token=TOKEN)
    b = make_client(**redis_settings, admin_token=TOKEN)
    rng = np.random.default_rng(0)
    r = a.put("/items", json={"items": [_item("shared-1", rng), _item("shared-2", rng)]}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert a.get("/items/shared-1").json()["source"] == "added"  # the writer serves it at once
    elapsed = _wait_until(lambda: b.get("/items/shared-2").status_code == 200, timeout=2.0)
    assert elapsed < 2.0
    # the same answers from both replicas: similar items and a recommendation that holds them
    sim_a = a.post("/items/shared-1/similar", json={"k": 10}).json()
    sim_b = b.post("/items/shared-1/similar", json={"k": 10}).json()
    assert _ids(sim_a) == _ids(sim_b) and len(_ids(sim_a)) == 10 and "shared-1" not in _ids(sim_a)
    rec_a = a.post("/recommend", json={"user_id": "u3", "interactions": ["shared-1"], "k": 20}).json()
    rec_b = b.post("/recommend", json={"user_id": "u3", "interactions": ["shared-1"], "k": 20}).json()
    assert _ids(rec_a) == _ids(rec_b)

    # unavailable on one replica -> on the other within 2 s
    r = b.put("/items", json={"items": [{"item_id": "shared-2", "available": False}]}, headers=AUTH)
    assert r.status_code == 200
    _wait_until(lambda: a.get("/items/shared-2").json()["available"] is False, timeout=2.0)
    assert "shared-2" not in _ids(a.post("/items/shared-1/similar", json={"k": 100}).json())

    # the log is one stream entry per batch under the test's prefix
    key = f"{redis_settings['redis_prefix']}:items:log"
    assert shared_redis["conn"].xlen(key) == 2

    # a replica started after all this serves it at once (replayed at start-up, before ready)
    late = make_client(**redis_settings)
    assert late.get("/items/shared-1").json()["source"] == "added"
    assert late.get("/items/shared-2").json()["available"] is False
    assert _ids(late.post("/items/shared-1/similar", json={"k": 10}).json()) == _ids(
        a.post("/items/shared-1/similar", json={"k": 10}).json()
    )


def test_redis_down_during_put_is_503_and_applies_nothing(
    make_client: Callable[..., TestClient], content_path: Path, throwaway_redis: RedisServer
) -> None:
    settings = {
        "redis_url": throwaway_redis.url,
        "redis_retry_s": 0.2,
        "redis_timeout_s": 0.2,
        "items_redis_timeout_s": 0.5,
        "admin_token": TOKEN,
    }
    client = make_client(**settings)
    rng = np.random.default_rng(1)
    assert client.put("/items", json={"items": [_item("before", rng)]}, headers=AUTH).status_code == 200
    throwaway_redis.stop()
    r = client.put("/items", json={"items": [_item("during-1", rng), _item("during-2", rng)]}, headers=AUTH)
    assert r.status_code == 503 and "Redis is unavailable" in r.json()["detail"], r.text
    for item_id in ("during-1", "during-2"):
        assert client.get(f"/items/{item_id}").status_code == 404
    # /recommend keeps answering, with what was added before
    for body in ({"user_id": "u1"}, {"user_id": "x"}, {"user_id": "x", "interactions": ["before"]}):
        got = client.post("/recommend", json=body)
        assert got.status_code == 200 and got.json()["items"], got.text
    assert client.get("/items/before").json()["source"] == "added"

    throwaway_redis.start()  # empty again (no persistence): the failed batch is nowhere
    _wait_until(
        lambda: client.put("/items", json={"items": [_item("after", rng)]}, headers=AUTH).status_code == 200,
        10,
    )
    assert client.get("/items/during-1").status_code == 404
    assert client.get("/items/after").status_code == 200


def test_two_server_processes_share_items_over_http(
    tmp_path: Path, store_root: Path, content_path: Path, redis_settings: dict[str, Any]
) -> None:
    """Two uvicorn processes as deployed: PUT on one, the other serves the item within 2 s; a
    third started afterwards serves it too."""
    env = api_env(
        store_root,
        redis_settings["redis_url"],
        REDIS_PREFIX=redis_settings["redis_prefix"],
        ADMIN_TOKEN=TOKEN,
    )
    servers = [ApiServer(env, tmp_path / f"api-{n}.log") for n in range(2)]
    try:
        for s in servers:
            s.wait_ready()
        rng = np.random.default_rng(4)
        batch = [_item(f"http-{j}", rng) for j in range(20)]
        r = httpx.put(servers[0].url + "/items", json={"items": batch}, headers=AUTH, timeout=10)
        assert r.status_code == 200, r.text
        elapsed = _wait_until(
            lambda: httpx.get(servers[1].url + "/items/http-19", timeout=2).status_code == 200, timeout=2.0
        )
        assert elapsed < 2.0
        got = httpx.post(servers[1].url + "/items/http-0/similar", json={"k": 5}, timeout=2).json()
        assert len(got["items"]) == 5 and "http-0" not in _ids(got)
        third = ApiServer(env, tmp_path / "api-2.log")
        servers.append(third)
        third.wait_ready()
        assert httpx.get(third.url + "/items/http-7", timeout=2).json()["source"] == "added"
        assert httpx.get(third.url + "/model", timeout=2).json()["model_version"] == contract.read_current(
            store_root
        )
    finally:
        for s in servers:
            s.stop()
