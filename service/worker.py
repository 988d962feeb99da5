"""RQ worker for retrain jobs: ``python -m service.worker [--burst]``.

Reads the same settings as the API (REDIS_URL, RETRAIN_QUEUE, ...). It needs the ``train`` extra:
the job (RETRAIN_JOB_FUNC, by default ``training.jobs.retrain_job``) is imported when it runs.
"""

from __future__ import annotations

import argparse
import logging
import sys

from redis import Redis
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
    # A 10 s heartbeat (RQ adds 60 s of grace) lets the API notice a killed worker within ~70 s.
    worker = Worker([queue], connection=connection, job_monitoring_interval=10)
    worker.work(burst=args.burst, logging_level=settings.log_level)
    return 0


if __name__ == "__main__":
    sys.exit(main())
