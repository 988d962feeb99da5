"""POST /retrain reads the shared item log up to now before it snapshots interactions (review fix):
a replica whose overlay lags must still hand the job every item an interaction refers to."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import svc_artifacts
from fastapi.testclient import TestClient
from rq.job import Job

from benchmarks.serve.procs import RedisServer

TOKEN = "sync-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _item(item_id: str, rng: np.random.Generator) -> dict[str, Any]:
    features = {m: rng.normal(size=n).astype(np.float32).tolist() for m, n in svc_artifacts.RAW_DIMS.items()}
    return {"item_id": item_id, "features": features, "available": True}


@pytest.fixture
def content_path(store_root: Path) -> Path:
    return svc_artifacts.write_with_content(store_root, seed=0)[0]


def test_a_lagging_replica_syncs_the_item_log_before_the_retrain_snapshot(
    make_client: Callable[..., TestClient],
    content_path: Path,
    tmp_path: Path,
    redis_settings: dict[str, Any],
    shared_redis: dict[str, Any],
) -> None:
    common = {**redis_settings, "admin_token": TOKEN, "retrain_data_dir": tmp_path}
    writer = make_client(**common)
    lagging = make_client(**common, items_poll_interval_s=3600)  # replayed an empty log, never polls
    rng = np.random.default_rng(0)
    r = writer.put("/items", json={"items": [_item("added-on-a", rng)]}, headers=AUTH)
    assert r.status_code == 200, r.text
    r = writer.post("/interactions", json={"user_id": "u3", "items": ["added-on-a", "i1"]})
    assert r.status_code == 200, r.text
    assert lagging.get("/items/added-on-a").status_code == 404  # it does lag

    r = lagging.post("/retrain", headers=AUTH)  # RQ mode: queued, no worker runs it
    assert r.status_code == 202, r.text
    job_id = r.json()["job_id"]
    shared_redis["job_ids"].append(job_id)
    spec = Job.fetch(job_id, connection=shared_redis["conn"]).kwargs["spec"]
    assert spec["extra_interactions"]["u3"] == ["added-on-a", "i1"]
    assert spec["extra_items"] is not None and spec["extra_items"]["item_ids"] == ["added-on-a"]
    assert spec["extra_items"]["has_features"] == [True]
    assert lagging.get("/items/added-on-a").json()["source"] == "added"  # synced on the way


def test_retrain_with_the_item_log_unreadable_is_503_and_queues_nothing(
    make_client: Callable[..., TestClient],
    content_path: Path,
    tmp_path: Path,
    throwaway_redis: RedisServer,
) -> None:
    client = make_client(
        redis_url=throwaway_redis.url,
        redis_retry_s=0.2,
        redis_timeout_s=0.2,
        items_redis_timeout_s=0.5,
        admin_token=TOKEN,
        retrain_data_dir=tmp_path,
    )
    throwaway_redis.stop()
    r = client.post("/retrain", headers=AUTH)
    assert r.status_code == 503, r.text
    assert "item log could not be read" in r.json()["detail"] and "nothing was queued" in r.json()["detail"]
    assert b"mmssl_retrain_jobs_submitted_total 0.0" in client.get("/metrics").content
