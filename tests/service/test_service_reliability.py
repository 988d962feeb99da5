"""Traps found by trying the service as a demanding user would: reload loops, log floods, leaks of
internal paths and addresses, job ids the backends cannot hold."""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import svc_artifacts
from conftest import REPO_ROOT
from fastapi.testclient import TestClient

from artifact import contract
from artifact.contract import ArtifactError

AUTH = {"Authorization": "Bearer rel-token"}


def _renamed_copy(store_root: Path, artifact_path: Path) -> str:
    """An artifact whose folder name differs from its manifest's model_version (valid otherwise)."""
    other = contract.new_model_version()
    shutil.copytree(artifact_path, store_root / other)
    return other


def test_promote_refuses_a_folder_whose_name_and_manifest_disagree(
    store_root: Path, artifact_path: Path
) -> None:
    other = _renamed_copy(store_root, artifact_path)
    with pytest.raises(ArtifactError, match="disagree"):
        contract.set_current(store_root, other)
    assert contract.read_current(store_root) == artifact_path.name
    r = subprocess.run(
        [sys.executable, "-m", "service.admin", "promote", "--root", str(store_root), "--to", other],
        capture_output=True, text=True, cwd=REPO_ROOT,
    )  # fmt: skip
    assert r.returncode == 1 and "disagree" in r.stderr, r.stderr
    assert contract.read_current(store_root) == artifact_path.name


def test_a_mismatched_folder_in_current_is_refused_once_not_reloaded_every_poll(
    client: TestClient, store_root: Path, artifact_path: Path
) -> None:
    other = _renamed_copy(store_root, artifact_path)
    (store_root / contract.CURRENT).write_text(other + "\n")  # by hand: set_current refuses it
    time.sleep(1.0)  # ten polls at MODEL_POLL_INTERVAL_S=0.1
    metrics = client.get("/metrics").text
    swaps = [ln for ln in metrics.splitlines() if ln.startswith("mmssl_model_swaps_total")]
    failures = [ln for ln in metrics.splitlines() if ln.startswith("mmssl_model_load_failures_total")]
    assert float(swaps[0].split()[-1]) == 1.0, swaps  # the start-up load only
    assert float(failures[0].split()[-1]) == 1.0, failures  # refused once, not once per poll
    model = client.get("/model").json()
    assert model["model_version"] == artifact_path.name and "disagree" in model["last_load_error"]


def test_a_non_utf8_current_is_logged_once(
    client: TestClient, store_root: Path, artifact_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="service.model_manager"):
        (store_root / contract.CURRENT).write_bytes(b"\xff\xfe garbage\n")
        time.sleep(1.0)  # ten polls
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(errors) == 1, [r.getMessage() for r in errors]
    assert "Traceback" not in caplog.text
    assert client.get("/model").json()["model_version"] == artifact_path.name
    assert client.get("/readyz").status_code == 200


def test_public_responses_show_no_file_system_path(
    make_client: Callable[..., TestClient], store_root: Path
) -> None:
    client = make_client()  # no CURRENT: not ready
    where = str(store_root.resolve())
    bodies = [
        client.get("/readyz").text,
        client.get("/model").text,
        client.post("/recommend", json={"user_id": "u1"}).text,
    ]
    assert all(where not in b for b in bodies), bodies
    assert "ARTIFACT_ROOT/CURRENT" in bodies[1]
    svc_artifacts.write(store_root, seed=0)
    good = contract.read_current(store_root)
    deadline = time.monotonic() + 10
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    bad = svc_artifacts.write(store_root, seed=1, set_current=False)
    (bad / contract.ITEM_EMB).chmod(0o644)
    (bad / contract.ITEM_EMB).write_bytes((bad / contract.ITEM_EMB).read_bytes()[:-4] + b"\0\0\0\0")
    (store_root / contract.CURRENT).write_text(bad.name + "\n")
    while not client.get("/model").json()["last_load_error"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    model = client.get("/model").json()
    assert model["model_version"] == good
    assert where not in client.get("/model").text and where not in client.get("/readyz").text
    assert model["artifact_path"] == f"ARTIFACT_ROOT/{good}"
    assert f"ARTIFACT_ROOT/{bad.name}/" in model["last_load_error"]


def test_redis_down_503_names_no_host_or_port(
    artifact_path: Path, make_client: Callable[..., TestClient], throwaway_redis: Any, tmp_path: Path
) -> None:
    (tmp_path / "data").mkdir()
    client = make_client(
        redis_url=throwaway_redis.url, redis_timeout_s=0.2, redis_retry_s=0.0,
        admin_token="rel-token", retrain_data_dir=tmp_path / "data",
    )  # fmt: skip
    throwaway_redis.stop()
    port = throwaway_redis.url.rsplit(":", 1)[1].split("/")[0]
    answers = [
        client.post("/interactions", json={"user_id": "u1", "items": ["i1"]}),
        client.post("/retrain", headers=AUTH),
        client.get("/retrain/abc", headers=AUTH),
    ]
    assert [r.status_code for r in answers] == [503, 503, 503], [r.text for r in answers]
    for r in answers:
        assert port not in r.text and "127.0.0.1" not in r.text and "localhost" not in r.text, r.text


@pytest.mark.parametrize("mode", ["subprocess", "rq"])
def test_job_ids_are_checked_by_length_and_alphabet_in_every_mode(
    mode: str,
    artifact_path: Path,
    make_client: Callable[..., TestClient],
    redis_settings: dict[str, Any],
    tmp_path: Path,
) -> None:
    extra = redis_settings if mode == "rq" else {}
    client = make_client(admin_token="rel-token", **extra)
    for job_id in ("x" * 129, "x" * 300, "a.b", "é", "abc:def"):
        r = client.get(f"/retrain/{job_id}", headers=AUTH)
        assert r.status_code == 404, (job_id, r.status_code, r.text)
        assert "1-128" in r.json()["detail"]
    r = client.get(f"/retrain/{'a' * 128}", headers=AUTH)
    assert r.status_code == 404 and "1-128" not in r.json()["detail"]  # well-formed, just unknown


# ------------------------------------------------------------------------------- embedded store


async def _fill(store: Any, users: int) -> None:
    for u in range(users):
        await store.add_interactions(f"u{u}", [f"i{u}"], [1.0])


def test_embedded_store_never_evicts_acknowledged_interactions() -> None:
    import asyncio

    import numpy as np

    from service.errors import StoreUnavailableError
    from service.store import EmbeddedStore

    async def scenario() -> None:
        store = EmbeddedStore(cache_ttl_s=60, fresh_max=10, fresh_ttl_s=60, max_entries=3, max_fresh_users=5)
        await _fill(store, 5)  # five acknowledged writes
        for u in range(10):  # cache traffic of other users beyond the cache bound
            await store.set_user_vector("v1", f"other{u}", b"\0" * 8, np.ones(4, np.float32))
        snapshot = await store.fresh_snapshot()
        assert snapshot == {f"u{u}": [f"i{u}"] for u in range(5)}  # none evicted by the cache LRU
        with pytest.raises(StoreUnavailableError, match="FRESH_MAX_USERS=5"):
            await store.add_interactions("u-new", ["i9"], [1.0])
        assert "u-new" not in await store.fresh_snapshot()  # refused means not recorded
        assert await store.add_interactions("u1", ["i7"], [2.0]) == 2  # known users may still write
        states = [await store.get_user_state("v1", f"other{u}") for u in range(10)]
        cached = sum(1 for st in states if st.cached_vector is not None)
        assert cached == 3  # the cache itself is still bounded

    asyncio.run(scenario())


def test_embedded_store_full_is_a_503_over_http(
    artifact_path: Path, make_client: Callable[..., TestClient]
) -> None:
    client = make_client(fresh_max_users=2, cache_max_entries=1)
    for u in ("u1", "u2"):
        assert client.post("/interactions", json={"user_id": u, "items": ["i1"]}).status_code == 200
    for u in range(5):
        client.post("/recommend", json={"user_id": f"u{u + 10}"})  # fills the one-entry cache
    r = client.post("/interactions", json={"user_id": "u3", "items": ["i1"]})
    assert r.status_code == 503 and "FRESH_MAX_USERS=2" in r.json()["detail"]
    fresh = client.post("/recommend", json={"user_id": "u1"}).json()
    assert fresh["path"] == "fresh"  # u1's acknowledged interaction is still used


def test_embedded_store_refuses_several_worker_processes(
    tmp_path: Path, store_root: Path, artifact_path: Path
) -> None:
    from conftest import subprocess_env

    from benchmarks.serve.procs import ApiServer

    env = subprocess_env(
        ARTIFACT_ROOT=str(store_root), REDIS_URL="", FAISS_USE_GPU="false", LOG_LEVEL="WARNING"
    )
    api = ApiServer(env, tmp_path / "api.log", workers=2)
    try:
        deadline = time.monotonic() + 120
        while "would split" not in api.log_text():
            assert time.monotonic() < deadline, api.log_text()[-3000:]
            time.sleep(0.2)
        assert "Set REDIS_URL, or run one worker" in api.log_text()
        import httpx

        with pytest.raises(httpx.HTTPError):
            httpx.get(api.url + "/readyz", timeout=2).raise_for_status()
    finally:
        api.stop()


# ------------------------------------------------------------------------------- who may write


def test_interactions_token_restricts_who_feeds_the_next_retrain(
    artifact_path: Path, make_client: Callable[..., TestClient]
) -> None:
    client = make_client(interactions_token="writer-token", admin_token="rel-token")
    body = {"user_id": "u1", "items": ["i1"]}
    assert client.post("/interactions", json=body).status_code == 401
    wrong = client.post("/interactions", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and "INTERACTIONS_TOKEN" in wrong.json()["detail"]
    ok = client.post("/interactions", json=body, headers={"Authorization": "Bearer writer-token"})
    assert ok.status_code == 200 and ok.json()["fresh_count"] == 1
    assert client.post("/interactions", json=body, headers=AUTH).status_code == 200  # the admin token too
    assert client.post("/recommend", json={"user_id": "u1"}).status_code == 200  # reads stay open
    open_client = make_client()  # unset: open, as before
    assert open_client.post("/interactions", json=body).status_code == 200


def test_a_shutdown_step_that_never_finishes_is_abandoned_with_a_warning(caplog: Any) -> None:
    """The lifespan's shutdown runs each step bounded: a step stuck forever (as one uvicorn worker's
    shutdown was once seen idle in its event loop, tests/faults) is cancelled after its timeout
    without waiting on the cancellation, and the next steps still run; a failing step is logged."""
    import asyncio

    from service.app import _stop_step

    ran: list[str] = []

    async def stuck() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            await asyncio.sleep(3600)  # even ignoring the cancellation does not hold shutdown up

    async def fails() -> None:
        raise RuntimeError("boom")

    async def fine() -> None:
        ran.append("fine")

    async def steps() -> float:
        started = time.monotonic()
        await _stop_step("stuck", stuck(), 0.2)
        await _stop_step("fails", fails(), 1.0)
        await _stop_step("fine", fine(), 1.0)
        return time.monotonic() - started

    async def main() -> float:  # bounded itself, so that a regression fails instead of hanging
        task = asyncio.ensure_future(steps())
        done, _ = await asyncio.wait({task}, timeout=5)
        assert done, "a stuck step held the shutdown up"
        return task.result()

    with caplog.at_level(logging.WARNING, logger="service.app"):
        loop = asyncio.new_event_loop()
        try:
            elapsed = loop.run_until_complete(main())
        finally:
            for task in asyncio.all_tasks(loop):
                task.cancel()
            loop.run_until_complete(asyncio.sleep(0))
            loop.close()
    assert ran == ["fine"] and elapsed < 1.0
    levels = {getattr(r, "step", None): r.levelname for r in caplog.records}
    assert levels.get("stuck") == "WARNING" and levels.get("fails") == "ERROR"
