"""Retrain jobs: submission, the one-at-a-time lock, status.

With Redis the job goes to an RQ queue served by ``python -m service.worker`` (the only process that
imports the trainer, hence torch); without Redis it runs in a subprocess of the API process
(``python -m service.jobrunner``). Either way the job is ``RETRAIN_JOB_FUNC(spec) -> result``
(``training.jobs.retrain_job``): it trains on the dataset plus the fresh interactions recorded here,
exports an artifact, scores it and the serving model on the same validation data
(``training.jobs.promotion_gate``), decides with ``contract.promotion_decision`` and, if promoted, moves
CURRENT; every replica's ModelManager then swaps the new model in.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
import sys
import uuid
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from fastapi.exceptions import RequestValidationError
from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job, JobStatus
from rq.registry import StartedJobRegistry

from service.catalogue import Catalogue
from service.errors import (
    JobNotFoundError,
    RetrainConflictError,
    RetrainNotConfiguredError,
    StoreUnavailableError,
)
from service.jobrunner import JOB_RUNNER_FUNC, LOCK_RELEASE_SCRIPT, read_status, write_status
from service.metrics import Metrics
from service.model_manager import ModelManager
from service.overrides import check_overrides
from service.settings import TRAINER_JOB_FUNC, Settings
from service.store import Store

log = logging.getLogger(__name__)

_REPO_ROOT = Path(__file__).resolve().parent.parent
# Ids RQ accepts and a file name can hold (ours are uuid4 hex); RQ would also read "id:anything"
# as the job "id".
_JOB_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")
_TERMINAL = {JobStatus.FINISHED, JobStatus.FAILED, JobStatus.STOPPED, JobStatus.CANCELED}
_STATE = {
    JobStatus.STARTED: "running",
    JobStatus.FINISHED: "finished",
    JobStatus.FAILED: "failed",
    JobStatus.STOPPED: "failed",
    JobStatus.CANCELED: "failed",
}


def new_job_id() -> str:
    return uuid.uuid4().hex


class JobBackend(ABC):
    mode: str

    @abstractmethod
    async def start(self, spec: dict[str, Any]) -> None:
        """Take the one-at-a-time lock and start the job; RetrainConflictError if one is running."""

    @abstractmethod
    async def status(self, job_id: str) -> dict[str, Any]:
        """{"state", "progress", "result", "error"}; JobNotFoundError if unknown."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass


class RQBackend(JobBackend):
    """RQ queue on Redis; the lock is a Redis key holding the running job id (with a TTL)."""

    mode = "rq"

    def __init__(self, settings: Settings) -> None:
        assert settings.redis_url is not None
        self.settings = settings
        self.connection = Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=5)
        self.queue = Queue(settings.retrain_queue, connection=self.connection)
        self.lock_key = f"{settings.redis_prefix}:retrain:lock"
        self.lock_ttl = settings.retrain_timeout_s + 600

    def _reap_dead_workers(self) -> None:
        """Move jobs whose worker stopped heart-beating (killed mid-job) to failed.

        RQ only does this from a live worker's periodic maintenance (every 10 minutes), so a job
        whose worker died would read "running" and hold the lock that long; reading through the
        registry's cleanup marks it failed (AbandonedJobError) once its heartbeat has expired.
        """
        StartedJobRegistry(self.queue.name, connection=self.connection).cleanup()

    def _holder_active(self, holder: str) -> bool:
        try:
            job = Job.fetch(holder, connection=self.connection)
            if job.get_status() == JobStatus.STARTED:
                self._reap_dead_workers()
            return job.get_status() not in _TERMINAL
        except NoSuchJobError:
            return False

    def _start(self, spec: dict[str, Any]) -> None:
        job_id = spec["job_id"]
        for _ in range(2):
            if self.connection.set(self.lock_key, job_id, nx=True, ex=self.lock_ttl):
                break
            raw = self.connection.get(self.lock_key)
            holder = raw.decode() if isinstance(raw, bytes) else None
            if holder is not None and self._holder_active(holder):
                raise RetrainConflictError(f"retrain job {holder} is still running", holder)
            # The holder ended without releasing (worker killed): clear its lock and try again.
            self.connection.eval(LOCK_RELEASE_SCRIPT, 1, self.lock_key, holder or "")
        else:
            raise RetrainConflictError("another retrain took the lock first", None)
        # The lock alone is not proof that nothing runs: a Redis outage longer than its TTL
        # (3 x RETRAIN_HEARTBEAT_S) lets it lapse under a job that is still training. RQ's started
        # registry still lists that job while its worker heart-beats (dead workers' jobs are moved
        # to failed by the cleanup that get_job_ids runs first): refuse while it holds one.
        running = [
            j
            for j in StartedJobRegistry(self.queue.name, connection=self.connection).get_job_ids()
            if j != job_id
        ]
        if running:
            self.connection.eval(LOCK_RELEASE_SCRIPT, 1, self.lock_key, job_id)
            raise RetrainConflictError(
                f"retrain job {running[0]} is still running (its lock lapsed, RQ still runs it)", running[0]
            )
        try:
            self.queue.enqueue_call(
                JOB_RUNNER_FUNC,
                kwargs={
                    "func_name": self.settings.retrain_job_func,
                    "spec": spec,
                    "lock_key": self.lock_key,
                    "heartbeat_s": self.settings.retrain_heartbeat_s,
                },
                job_id=job_id,
                timeout=self.settings.retrain_timeout_s,
                result_ttl=7 * 86400,
                failure_ttl=7 * 86400,
                description=f"retrain {job_id}",
            )
        except BaseException:
            self.connection.eval(LOCK_RELEASE_SCRIPT, 1, self.lock_key, job_id)
            raise

    def _status(self, job_id: str) -> dict[str, Any]:
        try:
            job = Job.fetch(job_id, connection=self.connection)
        except NoSuchJobError as exc:
            raise JobNotFoundError(f"no retrain job {job_id!r} (unknown or expired)") from exc
        status = job.get_status()
        if status == JobStatus.STARTED:
            self._reap_dead_workers()
            status = job.get_status()
        out: dict[str, Any] = {
            "state": _STATE.get(status, "queued"),
            "progress": job.get_meta(refresh=False).get("progress"),
            "result": None,
            "error": None,
        }
        if status == JobStatus.FINISHED:
            out["result"] = job.return_value()
        elif status == JobStatus.FAILED:
            latest = job.latest_result()
            exc_string = (latest.exc_string if latest else None) or "failed without a traceback"
            out["error"] = exc_string.strip().splitlines()[-1]
            out["traceback"] = exc_string
        elif status in (JobStatus.STOPPED, JobStatus.CANCELED):
            out["error"] = f"job was {status.value}"
        return out

    async def start(self, spec: dict[str, Any]) -> None:
        try:
            await asyncio.to_thread(self._start, spec)
        except RedisError as exc:
            log.warning("cannot enqueue the retrain", extra={"error": repr(exc)})
            raise StoreUnavailableError("cannot enqueue the retrain: Redis is unavailable") from exc

    async def status(self, job_id: str) -> dict[str, Any]:
        try:
            return await asyncio.to_thread(self._status, job_id)
        except RedisError as exc:
            log.warning("cannot read the job status", extra={"job_id": job_id, "error": repr(exc)})
            raise StoreUnavailableError("cannot read the job status: Redis is unavailable") from exc

    async def close(self) -> None:
        self.connection.close()


class SubprocessBackend(JobBackend):
    """``python -m service.jobrunner`` as a child process; one at a time within this process.

    Spec, status and log files live in ``RETRAIN_JOBS_DIR/<job_id>/``; the job rewrites status.json.
    A job still running when the service stops is terminated.
    """

    mode = "subprocess"

    def __init__(self, settings: Settings, manager: ModelManager) -> None:
        self.settings = settings
        self.manager = manager
        self.jobs_dir = settings.jobs_dir
        self._running: tuple[str, asyncio.subprocess.Process] | None = None
        self._watchers: set[asyncio.Task[None]] = set()
        self._start_lock = asyncio.Lock()

    def status_file(self, job_id: str) -> Path:
        return self.jobs_dir / job_id / "status.json"

    async def start(self, spec: dict[str, Any]) -> None:
        async with self._start_lock:  # the check and the spawn must not interleave with another submit
            if self._running is not None:
                holder = self._running[0]
                raise RetrainConflictError(f"retrain job {holder} is still running", holder)
            await self._spawn(spec)

    async def _spawn(self, spec: dict[str, Any]) -> None:
        job_id = spec["job_id"]
        job_dir = self.jobs_dir / job_id
        job_dir.mkdir(parents=True, exist_ok=True)
        spec_path = job_dir / "spec.json"
        spec_path.write_text(json.dumps(spec))
        write_status(Path(spec["status_file"]), {"state": "queued"})
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(_REPO_ROOT), env.get("PYTHONPATH")) if p)
        with open(job_dir / "log.txt", "wb") as logfile:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "service.jobrunner",
                "--func",
                self.settings.retrain_job_func,
                "--spec",
                str(spec_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                cwd=str(_REPO_ROOT),
            )
        self._running = (job_id, proc)
        task = asyncio.create_task(self._watch(job_id, proc), name=f"retrain-{job_id}")
        self._watchers.add(task)
        task.add_done_callback(self._watchers.discard)
        log.info("retrain subprocess started", extra={"job_id": job_id, "pid": proc.pid})

    async def _watch(self, job_id: str, proc: asyncio.subprocess.Process) -> None:
        status_path = self.status_file(job_id)
        try:
            try:
                rc = await asyncio.wait_for(proc.wait(), self.settings.retrain_timeout_s)
                timeout_msg = None
            except TimeoutError:
                proc.kill()
                rc = await proc.wait()
                timeout_msg = f"killed after RETRAIN_TIMEOUT_S={self.settings.retrain_timeout_s}s"
            state = read_status(status_path)
            if state.get("state") not in ("finished", "failed") or timeout_msg:
                tail = _tail(status_path.parent / "log.txt")
                write_status(
                    status_path,
                    {
                        **state,
                        "state": "failed",
                        "error": timeout_msg
                        or f"job process exited with code {rc} without a result; log: {tail}",
                    },
                )
            log.info("retrain subprocess ended", extra={"job_id": job_id, "exit_code": rc})
        finally:
            self._running = None
        await self.manager.check()  # swap at once if the job promoted a model

    async def status(self, job_id: str) -> dict[str, Any]:
        path = self.status_file(job_id)
        if not path.is_file():
            raise JobNotFoundError(f"no retrain job {job_id!r}")
        state = read_status(path)
        tracked = self._running is not None and self._running[0] == job_id
        if tracked and state.get("state") in ("finished", "failed"):
            # The job wrote its result but its process has not exited yet: until it has, the lock
            # is held, so report it as running (a new job submitted now would get 409).
            state = {"state": "running", "progress": state.get("progress")}
        elif state.get("state") in ("queued", "running") and not tracked:
            state = {**state, "state": "failed", "error": "the service process that ran this job stopped"}
        return state

    async def close(self) -> None:
        if self._running is not None:
            job_id, proc = self._running
            log.warning("terminating the running retrain job", extra={"job_id": job_id})
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        if self._watchers:  # let them reap the process and record the outcome
            _, pending = await asyncio.wait(list(self._watchers), timeout=10)
            for task in pending:
                task.cancel()


def _tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_bytes()[-n:].decode(errors="replace").strip()
    except OSError:
        return "(no log)"


class Retrainer:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        manager: ModelManager,
        metrics: Metrics,
        catalogue: Catalogue | None = None,
    ) -> None:
        self.settings = settings
        self.catalogue = catalogue  # items added through PUT /items go into the job as new rows
        self.store = store
        self.manager = manager
        self.metrics = metrics
        self.backend: JobBackend = (
            RQBackend(settings) if settings.redis_url else SubprocessBackend(settings, manager)
        )

    async def submit(self, force: bool, overrides: dict[str, Any]) -> dict[str, Any]:
        s = self.settings
        if s.retrain_data_dir is None:
            raise RetrainNotConfiguredError("retraining is not configured: set RETRAIN_DATA_DIR")
        serving = self.manager.current
        # the manifest's schema is the real trainer's: a custom job function reads its own overrides
        if overrides and serving is not None and s.retrain_job_func == TRAINER_JOB_FUNC:
            manifest = serving.artifact.manifest
            bad = check_overrides(overrides, manifest.model_config, manifest.train_config)
            if bad:
                raise RequestValidationError(bad)
        if self.catalogue is not None:
            # This replica's overlay may lag the shared item log (it polls every
            # ITEMS_POLL_INTERVAL_S): an interaction snapshotted below with an item added on another
            # replica would reach the job without that item's row, and the job would fail. Read the
            # log up to now first; if it cannot be read, queue nothing.
            try:
                await self.catalogue.sync()
            except Exception as exc:
                log.warning("cannot read the item log before a retrain", extra={"error": repr(exc)})
                raise StoreUnavailableError(
                    "cannot start the retrain: the item log could not be read (Redis is unavailable), "
                    "so the job could miss items that interactions refer to; nothing was queued"
                ) from exc
        job_id = new_job_id()
        extra = await self.store.fresh_snapshot()
        spec = {
            "job_id": job_id,
            "data_dir": str(s.retrain_data_dir),
            "artifact_root": str(s.artifact_root),
            "config": s.retrain_config,
            "overrides": {**s.retrain_overrides, **overrides},
            "extra_interactions": extra,
            # service.catalogue.Catalogue.retrain_items: ids, availability, raw features (base64 f32)
            "extra_items": self.catalogue.retrain_items() if self.catalogue is not None else None,
            "tolerance": s.retrain_tolerance,
            "force": force,
            "status_file": None,
        }
        if isinstance(self.backend, SubprocessBackend):
            spec["status_file"] = str(self.backend.status_file(job_id))
        await self.backend.start(spec)
        self.metrics.retrain_jobs.inc()
        n_extra = sum(len(v) for v in extra.values())
        log.info(
            "retrain submitted",
            extra={
                "job_id": job_id,
                "mode": self.backend.mode,
                "force": force,
                "extra_interactions": n_extra,
            },
        )
        return {"job_id": job_id, "state": "queued", "mode": self.backend.mode, "extra_interactions": n_extra}

    async def status(self, job_id: str) -> dict[str, Any]:
        # One check for every backend: RQ raises ValueError (a 500) on other characters, and a long
        # id is a file name too long for the subprocess backend's status folder.
        if not _JOB_ID.fullmatch(job_id):
            shown = job_id if len(job_id) <= 40 else job_id[:40] + "..."
            raise JobNotFoundError(f"no retrain job {shown!r}: job ids are 1-128 of A-Z a-z 0-9 _ -")
        raw = await self.backend.status(job_id)
        result = raw.get("result") or None
        out: dict[str, Any] = {
            "job_id": job_id,
            "state": raw.get("state", "queued"),
            "progress": raw.get("progress"),
            "result": result,
            "error": raw.get("error"),
        }
        if isinstance(result, dict):
            out["promoted"] = result.get("promoted")
            out["reason"] = result.get("reason")
            out["model_version"] = result.get("model_version")
            out["metrics"] = result.get("metrics")
            if result.get("promoted"):
                self.manager.check_soon()  # this replica need not wait for its next poll
        current = self.manager.current
        out["serving_version"] = current.version if current else None
        return out

    async def close(self) -> None:
        await self.backend.close()
