"""Writes around Redis faults, against a private redis-server: after a restart no write fails on a
stale pooled connection; with Redis frozen (SIGSTOP) a 503 write may be applied when it resumes, and
re-sending it with the same request id applies it exactly once."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import pytest

from benchmarks.serve.procs import RedisServer
from service.errors import StoreUnavailableError
from service.metrics import Metrics
from service.store import FailOpenStore, RedisStore


def _store(server: RedisServer, timeout_s: float = 0.25) -> FailOpenStore:
    inner = RedisStore.from_url(
        server.url, prefix="w", timeout_s=timeout_s, cache_ttl_s=60, fresh_max=100, fresh_ttl_s=600
    )
    return FailOpenStore(inner, Metrics(), retry_s=0.0)


async def _write_many(store: FailOpenStore, n: int, tag: str) -> list[str]:
    async def one(i: int) -> str:
        try:
            await store.add_interactions(f"u{i}", [f"{tag}{i}"], [1.0])
        except StoreUnavailableError as exc:
            return exc.message
        return "ok"

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def test_no_write_fails_on_a_stale_pooled_connection_after_a_redis_restart(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()

    async def scenario() -> None:
        store = _store(server)
        try:
            assert await _write_many(store, 8, "a") == ["ok"] * 8  # eight pooled connections
            server.kill()
            server.start()  # same port, empty
            assert await _write_many(store, 8, "b") == ["ok"] * 8  # each on a connection that died
            states = await asyncio.gather(*(store.get_user_state("v", f"u{i}") for i in range(8)))
            assert [s.fresh_items for s in states] == [[f"b{i}"] for i in range(8)]
        finally:
            await store.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_a_write_503d_while_redis_is_frozen_is_applied_once_when_re_sent(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    assert server.proc is not None

    async def fresh(store: FailOpenStore) -> list[str]:
        return (await store.get_user_state("v", "u1")).fresh_items

    async def scenario() -> None:
        store = _store(server, timeout_s=0.2)
        try:
            await store.add_interactions("u1", ["i0"], [1.0], request_id="req-0")
            assert server.proc is not None
            server.proc.signal(signal.SIGSTOP)
            try:
                with pytest.raises(StoreUnavailableError, match="same request_id") as info:
                    await store.add_interactions("u1", ["i1"], [2.0], request_id="req-1")
                assert "127.0.0.1" not in info.value.message and str(server.port) not in info.value.message
            finally:
                server.proc.signal(signal.SIGCONT)
            # the frozen server reads what was sent to it once it resumes: the "failed" write lands
            deadline = time.monotonic() + 10
            while (items := await fresh(store)) != ["i0", "i1"]:
                assert time.monotonic() < deadline, items
                await asyncio.sleep(0.05)
            # the client re-sends after its 503: not applied twice
            assert await store.add_interactions("u1", ["i1"], [2.0], request_id="req-1") == 2
            assert await fresh(store) == ["i0", "i1"]
            # a new request id is a new write
            assert await store.add_interactions("u1", ["i1"], [3.0], request_id="req-2") == 3
        finally:
            await store.close()

    try:
        asyncio.run(scenario())
    finally:
        server.stop()


def test_request_id_makes_a_re_sent_write_a_no_op_over_http(make_app_client) -> None:  # type: ignore[no-untyped-def]
    client = make_app_client()
    body = {"user_id": "3", "items": ["i1", "i2"], "request_id": "abc-1"}
    first = client.post("/interactions", json=body).json()
    again = client.post("/interactions", json=body).json()
    assert first["request_id"] == again["request_id"] == "abc-1"
    assert first["fresh_count"] == again["fresh_count"] == 2  # the re-send was not applied
    other = client.post("/interactions", json=body | {"request_id": "abc-2"}).json()
    assert other["fresh_count"] == 4
    generated = client.post("/interactions", json={"user_id": "3", "items": ["i1"]}).json()["request_id"]
    assert len(generated) == 32
    r = client.post("/interactions", json=body | {"request_id": "bad id!"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "request_id"]
