"""Retrain end to end: subprocess mode, RQ + worker + two real server replicas, and the real trainer.

The first two use ``svc_standin_job.retrain_job`` (same contract as ``training.jobs.retrain_job``,
no torch) so they stay fast; the last one runs the real trainer on a tiny synthetic dataset.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import HERE, REPO_ROOT, subprocess_env
from fastapi.testclient import TestClient

from artifact import contract
from benchmarks.serve.procs import free_port

TOKEN = "test-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def _poll_job(get: Callable[[str], Any], job_id: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        r = get(f"/retrain/{job_id}")
        assert r.status_code == 200, r.text
        status: dict[str, Any] = r.json()
        if status["state"] in ("finished", "failed"):
            return status
        assert time.monotonic() < deadline, f"job {job_id} still {status['state']}"
        time.sleep(0.1)


def _wait_version(get: Callable[[str], Any], version: str, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while get("/model").json()["model_version"] != version:
        assert time.monotonic() < deadline, f"{version} not swapped in"
        time.sleep(0.05)


# ------------------------------------------------------------------------------- subprocess mode


@pytest.fixture
def retrain_client(
    make_client: Callable[..., TestClient],
    artifact_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> TestClient:
    monkeypatch.setenv("PYTHONPATH", str(HERE))  # the job subprocess imports the stand-in from here
    return make_client(admin_token=TOKEN, retrain_data_dir=tmp_path, retrain_tolerance=0.01)


def test_retrain_subprocess_promotes_and_swaps(
    retrain_client: TestClient, store_root: Path, artifact_path: Path
) -> None:
    client = retrain_client
    old = artifact_path.name
    client.post("/interactions", json={"user_id": "u3", "items": ["i1", "i2"]})
    client.post("/interactions", json={"user_id": "newbie", "items": ["i7"]})

    r = client.post("/retrain", json={"overrides": {"sleep": 1.0}}, headers=AUTH)
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["mode"] == "subprocess" and accepted["extra_interactions"] == 3
    job_id = accepted["job_id"]
    busy = client.post("/retrain", headers=AUTH)
    assert busy.status_code == 409 and busy.json()["running_job_id"] == job_id

    versions = []
    while (status := client.get(f"/retrain/{job_id}", headers=AUTH).json())["state"] not in (
        "finished",
        "failed",
    ):
        r = client.post("/recommend", json={"user_id": "u3"})
        assert r.status_code == 200
        versions.append(r.json()["model_version"])
        time.sleep(0.02)
    assert status["state"] == "finished", status
    assert status["promoted"] is True and status["metrics"]["val"]["recall@20"] == pytest.approx(0.11)
    new = status["model_version"]
    assert new != old and contract.read_current(store_root) == new
    _wait_version(client.get, new)
    assert client.post("/recommend", json={"user_id": "u3"}).json()["model_version"] == new
    assert versions and versions[0] == old
    manifest = contract.read_manifest(store_root / new)
    assert manifest.notes["extra_interactions"] == {"u3": ["i1", "i2"], "newbie": ["i7"]}
    assert manifest.parent_version == old


def test_retrain_rejected_failed_and_forced(
    retrain_client: TestClient, store_root: Path, artifact_path: Path
) -> None:
    def run(body: dict[str, Any]) -> dict[str, Any]:
        r = retrain_client.post("/retrain", json=body, headers=AUTH)
        assert r.status_code == 202, r.text
        return _poll_job(lambda p: retrain_client.get(p, headers=AUTH), r.json()["job_id"])

    old = artifact_path.name
    rejected = run({"overrides": {"recall": 0.05}})  # serving 0.10, tolerance 0.01
    assert rejected["state"] == "finished" and rejected["promoted"] is False
    assert "worse than serving 0.1000" in rejected["reason"]
    assert contract.read_current(store_root) == old

    failed = run({"overrides": {"fail": True}})
    assert failed["state"] == "failed" and "stand-in trainer failed on purpose" in failed["error"]
    assert contract.read_current(store_root) == old
    assert retrain_client.get("/model").json()["model_version"] == old

    forced = run({"overrides": {"recall": 0.05}, "force": True})
    assert forced["promoted"] is True and forced["reason"] == "forced"
    _wait_version(retrain_client.get, forced["model_version"])

    r = retrain_client.post("/retrain", json={"force": "yes"}, headers=AUTH)
    assert r.status_code == 422


def test_concurrent_starts_admit_one_job(
    make_settings: Callable[..., Any], artifact_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service.errors import RetrainConflictError
    from service.metrics import Metrics
    from service.model_manager import ModelManager
    from service.retrain import SubprocessBackend, new_job_id

    monkeypatch.setenv("PYTHONPATH", str(HERE))
    settings = make_settings(retrain_data_dir=tmp_path)

    async def scenario() -> list[Any]:
        manager = ModelManager(settings, Metrics())
        await manager.start()
        backend = SubprocessBackend(settings, manager)
        specs = []
        for _ in range(3):
            job_id = new_job_id()
            specs.append({
                "job_id": job_id, "data_dir": str(tmp_path), "artifact_root": str(settings.artifact_root),
                "config": None, "overrides": {"sleep": 5}, "extra_interactions": {}, "tolerance": 0.0,
                "force": False, "status_file": str(backend.status_file(job_id)),
            })  # fmt: skip
        results = await asyncio.gather(*(backend.start(spec) for spec in specs), return_exceptions=True)
        await backend.close()  # terminates the one that started
        await manager.stop()
        return results

    results = asyncio.run(scenario())
    assert sum(r is None for r in results) == 1, results
    assert sum(isinstance(r, RetrainConflictError) for r in results) == 2, results


# ------------------------------------------------------------------------------- RQ mode


class ServerProcess:
    """``uvicorn service.app:app`` in its own process, configured through the environment only."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "service.app:app", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-access-log"],
            env=env, cwd=REPO_ROOT, stdout=self._log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        self.log_path = log_path

    def wait_ready(self, timeout: float = 90) -> None:  # three processes importing at once on 2 cores
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc.poll() is None, self.log_path.read_text()
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(self.url + "/readyz", timeout=1).status_code == 200:
                    return
            assert time.monotonic() < deadline, self.log_path.read_text()
            time.sleep(0.1)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()


@pytest.fixture
def rq_deployment(
    artifact_path: Path,
    store_root: Path,
    tmp_path: Path,
    redis_settings: dict[str, Any],
    shared_redis: dict[str, Any],
) -> Iterator[dict[str, Any]]:
    """Two API replicas and one RQ worker sharing Redis and the artifact store."""
    env = subprocess_env(
        ARTIFACT_ROOT=str(store_root),
        REDIS_URL=redis_settings["redis_url"],
        REDIS_PREFIX=redis_settings["redis_prefix"],
        RETRAIN_QUEUE=redis_settings["retrain_queue"],
        ADMIN_TOKEN=TOKEN,
        RETRAIN_DATA_DIR=str(tmp_path),
        RETRAIN_JOB_FUNC="svc_standin_job.retrain_job",
        MODEL_POLL_INTERVAL_S="0.2",
        LOG_LEVEL="WARNING",
    )
    servers = [ServerProcess(env, tmp_path / f"server{i}.log") for i in range(2)]
    worker_log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115
    worker = subprocess.Popen(
        [sys.executable, "-m", "service.worker"],
        env=env,
        cwd=REPO_ROOT,
        stdout=worker_log,
        stderr=subprocess.STDOUT,
    )
    try:
        for server in servers:
            server.wait_ready()
        yield {"servers": servers, "worker_log": tmp_path / "worker.log", **redis_settings}
    finally:
        for server in servers:
            server.stop()
        worker.terminate()  # warm shutdown: the worker unregisters itself
        try:
            worker.wait(10)
        except subprocess.TimeoutExpired:
            worker.kill()
        worker_log.close()


def test_retrain_rq_worker_swaps_every_replica_without_failed_requests(
    rq_deployment: dict[str, Any], artifact_path: Path, store_root: Path, shared_redis: dict[str, Any]
) -> None:
    a, b = (s.url for s in rq_deployment["servers"])
    old = artifact_path.name
    assert httpx.post(a + "/interactions", json={"user_id": "u5", "items": ["i9"]}).status_code == 200

    seen: list[tuple[str, int, str | None]] = []
    stop = threading.Event()

    def hammer() -> None:
        with httpx.Client(timeout=5) as http:
            while not stop.is_set():
                for url in (a, b):
                    r = http.post(url + "/recommend", json={"user_id": "u5", "k": 10})
                    seen.append((url, r.status_code, r.json().get("model_version")))

    thread = threading.Thread(target=hammer)
    thread.start()
    try:
        r = httpx.post(a + "/retrain", json={"overrides": {"sleep": 0.5}}, headers=AUTH)
        assert r.status_code == 202, r.text
        job_id = r.json()["job_id"]
        shared_redis["job_ids"].append(job_id)
        assert r.json()["mode"] == "rq" and r.json()["extra_interactions"] == 1
        busy = httpx.post(b + "/retrain", headers=AUTH)  # the lock is shared by the replicas
        assert busy.status_code == 409 and busy.json()["running_job_id"] == job_id

        status = _poll_job(lambda p: httpx.get(b + p, headers=AUTH), job_id)
        assert status["state"] == "finished", (status, rq_deployment["worker_log"].read_text())
        assert status["promoted"] is True and status["progress"]["stage"] == "exporting"
        new = status["model_version"]
        for url in (a, b):
            _wait_version(lambda p, url=url: httpx.get(url + p), new)
        time.sleep(0.3)
    finally:
        stop.set()
        thread.join()

    assert seen and all(code == 200 for _, code, _ in seen)
    for url in (a, b):
        versions = [v for u, _, v in seen if u == url]
        assert versions[0] == old and versions[-1] == new
        assert versions == sorted(versions, key=lambda v: v == new)  # old ... old new ... new
    assert contract.read_manifest(store_root / new).notes["extra_interactions"] == {"u5": ["i9"]}

    # the worker released the lock: the next job runs; this one is rejected and the old stays
    r = httpx.post(b + "/retrain", json={"overrides": {"recall": 0.0}}, headers=AUTH)
    assert r.status_code == 202, r.text
    shared_redis["job_ids"].append(r.json()["job_id"])
    rejected = _poll_job(lambda p: httpx.get(a + p, headers=AUTH), r.json()["job_id"])
    assert rejected["promoted"] is False and rejected["serving_version"] == new

    failing = httpx.post(a + "/retrain", json={"overrides": {"fail": True}}, headers=AUTH).json()["job_id"]
    shared_redis["job_ids"].append(failing)
    failed = _poll_job(lambda p: httpx.get(a + p, headers=AUTH), failing)
    assert failed["state"] == "failed" and "stand-in trainer failed on purpose" in failed["error"]
    assert httpx.get(b + "/model").json()["model_version"] == new


# ------------------------------------------------------------------------------- the real trainer

HAS_TRAINER = (
    importlib.util.find_spec("training") is not None and (REPO_ROOT / "training" / "jobs.py").is_file()
)

# Small and fast on 2 CPU cores (keys of training.config, as in tests/conftest.py's FAST_OVERRIDES).
TINY_TRAINER = {
    "embed_dim": 16,
    "n_heads": 2,
    "view_topk": 5,
    "disc_hidden": 32,
    "batch_size": 256,
    "adv_users": 64,
    "view_refresh_steps": 5,
    "epochs": 2,
    "patience": 10,
}


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRAINER, reason="training.jobs (the real trainer) is not importable")
def test_retrain_end_to_end_with_the_real_trainer(
    make_client: Callable[..., TestClient], store_root: Path, tmp_path: Path
) -> None:
    pytest.importorskip("torch")
    from training.synthetic import write_synthetic

    data_dir = write_synthetic(tmp_path / "data", n_users=80, n_items=60, seed=3)
    client = make_client(
        admin_token=TOKEN,
        retrain_data_dir=data_dir,
        retrain_overrides=TINY_TRAINER,
        retrain_job_func="training.jobs.retrain_job",
        retrain_tolerance=0.05,
    )
    assert client.get("/readyz").status_code == 503  # empty store: the first retrain bootstraps it

    def run(body: dict[str, Any]) -> dict[str, Any]:
        r = client.post("/retrain", json=body, headers=AUTH)
        assert r.status_code == 202, r.text
        status = _poll_job(lambda p: client.get(p, headers=AUTH), r.json()["job_id"], timeout=300)
        assert status["state"] == "finished", status
        return status

    first = run({})
    assert first["promoted"] is True and "recall@20" in first["metrics"]["val"]
    _wait_version(client.get, first["model_version"])
    model = client.get("/model").json()
    assert model["n_items"] == 60 and model["dim"] == 16

    # overrides are checked against the serving model's trainer config before a job is queued
    bad = {"epochz": 3, "model.omega": "high", "n_items": 5, "lr": True}
    r = client.post("/retrain", json={"overrides": bad}, headers=AUTH)
    assert r.status_code == 422, r.text
    by_key = {e["loc"][-1]: e["msg"] for e in r.json()["detail"]}
    assert set(by_key) == set(bad)
    assert "did you mean 'epochs'" in by_key["epochz"] and "must be float" in by_key["model.omega"]
    assert "set from the data" in by_key["n_items"] and "must be float" in by_key["lr"]

    artifact = contract.load_artifact(store_root / first["model_version"])
    user = next(u for i, u in enumerate(artifact.arrays.user_ids) if artifact.user_items(i).size)
    r = client.post("/recommend", json={"user_id": user, "k": 5}).json()
    assert r["path"] == "known" and len(r["items"]) == 5 and r["model_version"] == first["model_version"]
    fresh = [it["item_id"] for it in r["items"][:2]]
    assert client.post("/interactions", json={"user_id": user, "items": fresh}).status_code == 200
    r = client.post("/recommend", json={"user_id": user, "k": 5}).json()
    assert r["path"] == "fresh" and not set(fresh) & {it["item_id"] for it in r["items"]}
    cold = client.post("/recommend", json={"user_id": "brand-new", "interactions": fresh, "k": 5}).json()
    assert cold["path"] == "fold_in"

    second = run({"force": True, "overrides": {"train.epochs": 2, "omega": 0.5}})
    assert second["promoted"] is True and second["model_version"] != first["model_version"]
    _wait_version(client.get, second["model_version"])
    assert contract.read_manifest(store_root / second["model_version"]).notes["extra_interactions"] == 2
    r = client.post("/recommend", json={"user_id": user, "k": 5}).json()
    assert r["model_version"] == second["model_version"]
    assert r["path"] == "known"  # the fresh items are training items of the new model
    assert not set(fresh) & {it["item_id"] for it in r["items"]}
