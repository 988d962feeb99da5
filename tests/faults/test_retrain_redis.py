"""Retrain jobs and Redis outages, against a private redis-server: progress reports never raise out
of the job, and the one-at-a-time lock of a job whose process died lapses within 3 heartbeats."""

from __future__ import annotations

import pickle
import time
from pathlib import Path

import redis
from rq import Queue

from benchmarks.serve.procs import RedisServer
from service.jobrunner import LockHeartbeat
from training.jobs import ProgressReporter


def test_progress_reports_survive_a_redis_outage_and_the_latest_goes_out_after(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    conn = redis.Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
    try:
        job = Queue("q", connection=conn).enqueue("builtins.print", "x")
        report = ProgressReporter(None, retries=2, backoff_s=0.01)
        report.rq_job = job  # as get_current_job() returns it inside the worker
        report({"epoch": 1})
        server.kill()
        report({"epoch": 2})  # Redis is gone: must not raise
        report({"epoch": 3})
        assert report.pending is True
        server.start()  # empty: the job's hash went with the old process
        report({"epoch": 4})
        assert report.pending is False
        meta = pickle.loads(conn.hget(job.key, "meta"))  # noqa: S301 - RQ's own serialisation
        assert meta["progress"] == {"epoch": 4}
    finally:
        conn.close()
        server.stop()


def test_the_lock_of_a_dead_job_lapses_within_three_heartbeats(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)
    server.start()
    conn = redis.Redis.from_url(server.url)
    try:
        conn.set("lock", "job-a", ex=6 * 3600)  # as POST /retrain takes it
        beat = LockHeartbeat(conn, "lock", "job-a", interval_s=0.2)
        with beat:
            time.sleep(0.5)
            ttl = conn.pttl("lock")
            assert 0 < ttl <= 1000, ttl  # running: a short TTL, refreshed
            time.sleep(0.5)
            assert conn.get("lock") == b"job-a"  # still held while beating
        # the process died (no release ran): the lock lapses by itself, within 3 * interval
        deadline = time.monotonic() + 3
        while conn.get("lock") is not None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        # a heartbeat never extends another job's lock
        conn.set("lock", "job-b", ex=100)
        with LockHeartbeat(conn, "lock", "job-a", interval_s=0.1):
            time.sleep(0.3)
        assert conn.get("lock") == b"job-b" and conn.ttl("lock") > 90
    finally:
        conn.close()
        server.stop()
