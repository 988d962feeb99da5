"""Redis mode against a real server: cache, fresh interactions, replicas, fail-open and reconnect."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis
import svc_artifacts
from fastapi.testclient import TestClient

from artifact import contract
from benchmarks.serve.procs import RedisServer
from service.metrics import Metrics
from service.store import EmbeddedStore, FailOpenStore, RedisStore, Store


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


def _ids(response: dict[str, Any]) -> list[str]:
    return [it["item_id"] for it in response["items"]]


def test_cache_and_fresh_interactions_in_redis(
    make_client: Callable[..., TestClient],
    artifact_path: Path,
    redis_settings: dict[str, Any],
    shared_redis: dict[str, Any],
) -> None:
    conn: redis.Redis = shared_redis["conn"]
    prefix = redis_settings["redis_prefix"]
    version = artifact_path.name
    client = make_client(**redis_settings, cache_ttl_s=120, fresh_max_per_user=5)
    assert client.get("/readyz").json()["store"] == "redis"

    first = client.post("/recommend", json={"user_id": "u1", "k": 5}).json()
    second = client.post("/recommend", json={"user_id": "u1", "k": 5}).json()
    assert (first["cache_hit"], second["cache_hit"]) == (False, True)
    assert _ids(first) == _ids(second)
    assert conn.hexists(f"{prefix}:vec:u1", version) and 0 < conn.ttl(f"{prefix}:vec:u1") <= 120

    artifact = contract.load_artifact(artifact_path)
    train = artifact.user_items(1)
    fresh = np.setdiff1d(np.arange(artifact.manifest.n_items), train)[:3]
    r = client.post("/interactions", json={"user_id": "u1", "items": [f"i{i}" for i in fresh]})
    assert r.status_code == 200 and r.json()["fresh_count"] == 3
    assert not conn.exists(f"{prefix}:vec:u1")  # invalidated
    assert conn.llen(f"{prefix}:fresh:u1") == 3 and conn.ttl(f"{prefix}:fresh:u1") > 0
    assert conn.sismember(f"{prefix}:fresh_users", "u1")

    after = client.post("/recommend", json={"user_id": "u1", "k": 5}).json()
    assert after["path"] == "fresh" and after["cache_hit"] is False
    a = artifact.arrays
    items = np.union1d(train, fresh)
    side = sum(
        _normalize(f[items].astype(np.float64).sum(0) / np.sqrt(len(items)))
        for f in a.modality_features.values()
    )
    vector = a.user_id_side[1] + artifact.manifest.omega * side
    got = [int(i[1:]) for i in _ids(after)]
    np.testing.assert_allclose(
        [it["score"] for it in after["items"]], a.item_embeddings[got] @ vector, atol=1e-4
    )

    # a second replica on the same Redis sees the fresh interactions and the cached vector
    replica = make_client(**redis_settings)
    seen_by_replica = replica.post("/recommend", json={"user_id": "u1", "k": 5}).json()
    assert seen_by_replica["path"] == "fresh" and seen_by_replica["cache_hit"] is True
    assert _ids(seen_by_replica) == _ids(after)

    # bounded per user: the oldest are dropped
    client.post("/interactions", json={"user_id": "u1", "items": ["i50", "i51", "i52", "i53"]})
    assert conn.llen(f"{prefix}:fresh:u1") == 5


def test_cache_keys_scoped_by_model_version(
    make_client: Callable[..., TestClient],
    artifact_path: Path,
    store_root: Path,
    redis_settings: dict[str, Any],
    shared_redis: dict[str, Any],
) -> None:
    client = make_client(**redis_settings)
    assert client.post("/recommend", json={"user_id": "u2"}).json()["cache_hit"] is False
    assert client.post("/recommend", json={"user_id": "u2"}).json()["cache_hit"] is True
    new = svc_artifacts.write(store_root, seed=4).name
    deadline = time.monotonic() + 10
    while client.get("/model").json()["model_version"] != new:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    r = client.post("/recommend", json={"user_id": "u2"}).json()
    assert r["model_version"] == new and r["cache_hit"] is False
    fields = shared_redis["conn"].hkeys(f"{redis_settings['redis_prefix']}:vec:u2")
    assert sorted(f.decode() for f in fields) == sorted([artifact_path.name, new])


def _store(request: pytest.FixtureRequest, which: str) -> Store:
    if which == "embedded":  # needs no Redis: it must run (and not skip) where Redis is missing
        return EmbeddedStore(cache_ttl_s=60, fresh_max=10, fresh_ttl_s=60, max_entries=100)
    redis_settings = request.getfixturevalue("redis_settings")
    return RedisStore.from_url(redis_settings["redis_url"], redis_settings["redis_prefix"], 1.0, 60, 10, 60)


@pytest.mark.parametrize("which", ["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def test_store_never_serves_a_vector_computed_before_new_interactions(
    request: pytest.FixtureRequest, which: str
) -> None:
    async def scenario() -> None:
        store = _store(request, which)
        vec = np.arange(4, dtype=np.float32)
        before = await store.get_user_state("v1", "alice")
        assert before.cached_vector is None and before.fresh_items == []
        await store.add_interactions("alice", ["i1", "i2"], [1.0, 2.0])  # arrives meanwhile
        await store.set_user_vector("v1", "alice", before.fingerprint, vec)  # stale write
        state = await store.get_user_state("v1", "alice")
        assert state.cached_vector is None and state.fresh_items == ["i1", "i2"]
        await store.set_user_vector("v1", "alice", state.fingerprint, vec)
        state = await store.get_user_state("v1", "alice")
        assert state.cached_vector is not None and state.cached_vector.tolist() == vec.tolist()
        assert (await store.get_user_state("v2", "alice")).cached_vector is None  # other version
        await store.add_interactions("bob", ["i3", "i3", "i4"], [1.0, 2.0, 3.0])
        await store.add_interactions("alice", [f"i{n}" for n in range(10, 20)], [0.0] * 10)
        snapshot = await store.fresh_snapshot()
        assert snapshot == {"alice": [f"i{n}" for n in range(10, 20)], "bob": ["i3", "i4"]}
        await store.close()

    asyncio.run(scenario())


def test_redis_stopped_mid_test_still_serves(
    make_client: Callable[..., TestClient], artifact_path: Path, throwaway_redis: RedisServer
) -> None:
    client = make_client(redis_url=throwaway_redis.url, redis_retry_s=0.2, redis_timeout_s=0.2)
    artifact = contract.load_artifact(artifact_path)
    fresh = np.setdiff1d(np.arange(artifact.manifest.n_items), artifact.user_items(4))[:2]
    assert (
        client.post("/interactions", json={"user_id": "u4", "items": [f"i{i}" for i in fresh]}).status_code
        == 200
    )
    assert client.post("/recommend", json={"user_id": "u4"}).json()["path"] == "fresh"

    throwaway_redis.stop()
    for _ in range(5):
        r = client.post("/recommend", json={"user_id": "u4"})
        assert r.status_code == 200 and r.json()["path"] == "known"  # fresh items are in Redis only
        assert r.json()["items"]
    assert (
        client.post("/recommend", json={"user_id": "stranger", "interactions": ["i1"]}).json()["path"]
        == "fold_in"
    )
    assert client.post("/recommend", json={"user_id": "stranger"}).json()["path"] == "popularity"
    r = client.post("/interactions", json={"user_id": "u4", "items": ["i1"]})
    assert r.status_code == 503 and "Redis is unavailable" in r.json()["detail"]
    assert client.get("/readyz").status_code == 200
    metrics = client.get("/metrics").text
    assert 'mmssl_redis_errors_total{op="get_user_state"}' in metrics

    throwaway_redis.start()  # same port, empty (no persistence)
    time.sleep(0.3)  # past REDIS_RETRY_S
    deadline = time.monotonic() + 10
    while client.post("/interactions", json={"user_id": "u4", "items": ["i1"]}).status_code != 200:
        assert time.monotonic() < deadline, "the service did not reconnect"
        time.sleep(0.1)
    r1 = client.post("/recommend", json={"user_id": "u4"}).json()
    r2 = client.post("/recommend", json={"user_id": "u4"}).json()
    assert r1["path"] == "fresh" and (r1["cache_hit"], r2["cache_hit"]) == (False, True)


def test_fail_open_wrapper_counts_and_skips_while_down() -> None:
    async def scenario() -> None:
        inner = RedisStore.from_url("redis://127.0.0.1:1/0", "x", 0.1, 60, 10, 60)  # nothing listens
        metrics = Metrics()
        store = FailOpenStore(inner, metrics, retry_s=60)
        assert (await store.get_user_state("v", "u")).fresh_items == []
        assert (await store.get_user_state("v", "u")).cached_vector is None  # skipped: no new connect
        await store.set_user_vector("v", "u", b"\0" * 8, np.zeros(2, dtype=np.float32))
        text = metrics.render().decode()
        assert 'mmssl_redis_errors_total{op="get_user_state"} 1.0' in text
        assert 'mmssl_redis_errors_total{op="skipped"} 2.0' in text
        await store.close()

    asyncio.run(scenario())


@pytest.mark.parametrize("which", ["embedded", pytest.param("redis", marks=pytest.mark.redis)])
def test_a_request_id_is_deduplicated_per_user(request: pytest.FixtureRequest, which: str) -> None:
    """Clients may number their requests alike: user B's "1" is not user A's re-send."""

    async def scenario() -> None:
        store = _store(request, which)
        assert await store.add_interactions("alice", ["i1"], [1.0], request_id="1") == 1
        assert await store.add_interactions("alice", ["i2"], [2.0], request_id="1") == 1  # re-send: no-op
        assert await store.add_interactions("bob", ["i3"], [3.0], request_id="1") == 1  # another user
        assert (await store.get_user_state("v1", "alice")).fresh_items == ["i1"]
        assert (await store.get_user_state("v1", "bob")).fresh_items == ["i3"]
        await store.close()

    asyncio.run(scenario())
