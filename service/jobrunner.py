"""Runs one retrain job function by its dotted name, in the RQ worker or as a subprocess.

Only the process executing a job imports the trainer (and torch): this module imports it lazily.

    python -m service.jobrunner --func training.jobs.retrain_job --spec SPEC.json

exits non-zero when the job fails; the status file named in the spec then says why.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import logging
import math
import os
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

JOB_RUNNER_FUNC = "service.jobrunner.run_retrain"

# Delete the lock only if it still names this job (another job may hold it by now).
LOCK_RELEASE_SCRIPT = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)


def import_function(dotted: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        raise ValueError(f"RETRAIN_JOB_FUNC {dotted!r} is not a dotted name like package.module.function")
    func = getattr(importlib.import_module(module_name), attr, None)
    if not callable(func):
        raise ValueError(f"RETRAIN_JOB_FUNC {dotted!r}: {module_name} has no function {attr!r}")
    return func


def write_status(path: Path, status: dict[str, Any]) -> None:
    """Atomically replace a JSON status file (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".status-", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(status, fh, default=str)
    os.replace(tmp, path)


# Extend the lock's TTL only while it still names this job.
LOCK_REFRESH_SCRIPT = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('expire', KEYS[1], ARGV[2]) end return 0"
)


class LockHeartbeat:
    """While a job runs, keep its lock alive with a short TTL (``3 * interval_s``), refreshed every
    ``interval_s``: if the job's process dies (worker SIGKILLed, machine lost) the lock lapses within
    that bound and the next retrain is accepted; Redis errors are logged and retried next beat."""

    def __init__(self, connection: Any, lock_key: str, job_id: str, interval_s: float) -> None:
        self.connection = connection
        self.lock_key = lock_key
        self.job_id = job_id
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retrain-lock-heartbeat", daemon=True)

    def _beat(self) -> None:
        ttl = max(1, math.ceil(3 * self.interval_s))
        self.connection.eval(LOCK_REFRESH_SCRIPT, 1, self.lock_key, self.job_id, ttl)

    def _run(self) -> None:
        while True:
            try:
                self._beat()
            except Exception as exc:  # noqa: BLE001 - a blip: the next beat retries
                log.warning("could not refresh the retrain lock", extra={"error": repr(exc)})
            if self._stop.wait(self.interval_s):
                return

    def __enter__(self) -> LockHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_retrain(
    func_name: str, spec: dict[str, Any], lock_key: str | None = None, heartbeat_s: float | None = None
) -> dict[str, Any]:
    """RQ entry point: run the job while heart-beating its lock, then release the lock if it still
    names this job."""
    from rq import get_current_job

    job = get_current_job()
    heartbeat: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
    if lock_key and job is not None and heartbeat_s:
        heartbeat = LockHeartbeat(job.connection, lock_key, spec["job_id"], heartbeat_s)
    try:
        with heartbeat:
            return import_function(func_name)(spec)
    finally:
        if lock_key and job is not None:
            try:
                job.connection.eval(LOCK_RELEASE_SCRIPT, 1, lock_key, spec["job_id"])
            except Exception:  # the lock's TTL and the stale-holder check clean up instead
                log.exception("could not release the retrain lock")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.jobrunner", description=__doc__)
    parser.add_argument("--func", required=True, help="dotted name of the job function")
    parser.add_argument("--spec", required=True, type=Path, help="JSON job spec")
    args = parser.parse_args(argv)
    from service.logging import configure_logging

    configure_logging(os.environ.get("LOG_LEVEL", "INFO"))
    spec = json.loads(args.spec.read_text())
    status_file = Path(spec["status_file"]) if spec.get("status_file") else None
    try:
        result = import_function(args.func)(spec)
    except BaseException as exc:
        log.exception("retrain job failed", extra={"job_id": spec.get("job_id")})
        if status_file is not None:
            previous = read_status(status_file)
            write_status(
                status_file,
                {
                    **previous,
                    "state": "failed",
                    "error": previous.get("error") or f"{type(exc).__name__}: {exc}",
                    "traceback": traceback.format_exc(),
                },
            )
        return 1
    if status_file is not None:
        previous = read_status(status_file)
        if previous.get("state") != "finished":
            write_status(status_file, {**previous, "state": "finished", "result": result})
    return 0


def read_status(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


if __name__ == "__main__":
    sys.exit(main())
