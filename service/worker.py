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

from service.logging import configure_logging, redact_url
from service.settings import get_settings

log = logging.getLogger(__name__)


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
        # A 10 s heartbeat (RQ adds 60 s of grace) lets the API notice a killed worker within ~70 s.
        worker = Worker([queue], connection=connection, job_monitoring_interval=10)
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
