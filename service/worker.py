"""RQ worker for retrain jobs: ``python -m service.worker [--burst]``.

Reads the same settings as the API (REDIS_URL, RETRAIN_QUEUE, ...). It needs the ``train`` extra:
the job (RETRAIN_JOB_FUNC, by default ``training.jobs.retrain_job``) is imported when it runs.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import Queue, Worker
from rq.job import Job

from service.logging import configure_logging, redact_url
from service.settings import get_settings

log = logging.getLogger(__name__)


class RetrainWorker(Worker):
    """RQ's worker with the heartbeat grace as a setting instead of RQ's fixed 60 s.

    A running job's registry entry expires ``heartbeat_grace_s`` after its last heartbeat (a beat
    every ``job_monitoring_interval`` s); once expired, the API's read of the job marks it failed.
    """

    heartbeat_grace_s = 60

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        interval = self.job_monitoring_interval
        if job.timeout and job.timeout > 0:
            interval = int(min(job.timeout - working_time, interval))
        return int(interval) + self.heartbeat_grace_s


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m service.worker", description=__doc__)
    parser.add_argument("--burst", action="store_true", help="exit once the queue is empty")
    args = parser.parse_args(argv)
    settings = get_settings()
    configure_logging(settings.log_level)
    if not settings.redis_url:
        print(
            "REDIS_URL is not set: the worker needs Redis (without it the API runs jobs itself)",
            file=sys.stderr,
        )
        return 2
    connection = Redis.from_url(settings.redis_url)
    queue = Queue(settings.retrain_queue, connection=connection)
    log.info("retrain worker starting", extra={"queue": queue.name, "redis": redact_url(settings.redis_url)})
    delay = 0.5
    while True:
        # A killed worker's job is noticed WORKER_HEARTBEAT_S + WORKER_HEARTBEAT_GRACE_S after its
        # last heartbeat (70 s by default; the topology test sets a few seconds).
        worker = RetrainWorker(
            [queue], connection=connection, job_monitoring_interval=settings.worker_heartbeat_s
        )
        worker.heartbeat_grace_s = settings.worker_heartbeat_grace_s
        try:
            worker.work(burst=args.burst, logging_level=settings.log_level)
            return 0
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
            # Redis went away (restart, network blip): RQ's loop raises and would end the process,
            # leaving later jobs queued forever. Wait for Redis and serve the queue again.
            log.warning(
                "Redis unavailable; the worker waits for it", extra={"error": repr(exc), "retry_in_s": delay}
            )
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
            with contextlib.suppress(RedisConnectionError, RedisTimeoutError, OSError):
                connection.ping()
                delay = 0.5


if __name__ == "__main__":
    sys.exit(main())
