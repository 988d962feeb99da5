"""A retrain lock that lapsed under a running job (a Redis outage longer than 3 x
RETRAIN_HEARTBEAT_S) does not admit a second job while RQ's started registry still holds the first
(review fix). Real Redis, a real RQ worker, the stand-in trainer."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import REPO_ROOT, STANDIN_JOB, subprocess_env
from fastapi.testclient import TestClient
from test_service_retrain import _poll_job

TOKEN = "lapse-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def worker(redis_settings: dict[str, Any], store_root: Path, tmp_path: Path) -> Iterator[None]:
    env = subprocess_env(
        REDIS_URL=redis_settings["redis_url"],
        REDIS_PREFIX=redis_settings["redis_prefix"],
        RETRAIN_QUEUE=redis_settings["retrain_queue"],
        ARTIFACT_ROOT=str(store_root),
        LOG_LEVEL="WARNING",
    )
    with open(tmp_path / "worker.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service.worker"], env=env, cwd=REPO_ROOT, stdout=log, stderr=log
        )
        try:
            yield
        finally:
            proc.terminate()  # warm shutdown: the worker unregisters itself
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def test_a_lapsed_lock_does_not_admit_a_second_job_while_rq_runs_the_first(
    make_client: Callable[..., TestClient],
    artifact_path: Path,
    tmp_path: Path,
    redis_settings: dict[str, Any],
    shared_redis: dict[str, Any],
    worker: None,
) -> None:
    client = make_client(
        **redis_settings, admin_token=TOKEN, retrain_data_dir=tmp_path, retrain_job_func=STANDIN_JOB
    )
    get = lambda p: client.get(p, headers=AUTH)  # noqa: E731

    r = client.post("/retrain", json={"overrides": {"sleep": 4.0}}, headers=AUTH)
    assert r.status_code == 202, r.text
    first = r.json()["job_id"]
    shared_redis["job_ids"].append(first)
    deadline = time.monotonic() + 30
    while get(f"/retrain/{first}").json()["state"] != "running":
        assert time.monotonic() < deadline, (tmp_path / "worker.log").read_text()
        time.sleep(0.05)
    # what an outage longer than the lock's TTL leaves behind: no lock, the job still training
    lock_key = f"{redis_settings['redis_prefix']}:retrain:lock"
    assert shared_redis["conn"].delete(lock_key) == 1

    busy = client.post("/retrain", headers=AUTH)
    assert busy.status_code == 409, busy.text
    assert busy.json()["running_job_id"] == first
    assert shared_redis["conn"].get(lock_key) is None  # the refused submit left no lock behind

    assert _poll_job(get, first)["state"] == "finished"
    r = client.post("/retrain", json={"overrides": {"sleep": 0.0}}, headers=AUTH)  # free again
    assert r.status_code == 202, r.text
    shared_redis["job_ids"].append(r.json()["job_id"])
    assert _poll_job(get, r.json()["job_id"])["state"] == "finished"
