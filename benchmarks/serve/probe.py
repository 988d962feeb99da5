"""``service.app:app`` wrapped with server-side request counters, for the SIGTERM scenario.

    PROBE_FILE=/tmp/probe uvicorn benchmarks.serve.probe:app

Counts the POST requests (the load, not the harness's health checks) that the application started
handling, those whose response it finished sending, and those that ended otherwise. When the lifespan
shutdown completes (uvicorn runs it after draining the connections) each process writes
``PROBE_FILE.<pid>.json``. The client's view (what it sent, what failed and how) is then compared with
what the server accepted: graceful shutdown is proven when every request the server started was
completed, and answered.

``PROBE_DELAY_S`` (default 0) holds every counted request that long before the service handles it,
like a slow dependency would: with it, the connections of the load are all busy with a request when
SIGTERM comes, so the drain has real work to finish (the scenario reports how many were in flight).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from typing import Any

from starlette.types import Message, Receive, Scope, Send

from service.app import create_app

_inner = create_app()
counts: dict[str, Any] = {
    "pid": os.getpid(),
    "started": 0,
    "completed": 0,
    "unfinished": 0,
    "max_in_flight": 0,
}
_in_flight = 0
_delay = float(os.environ.get("PROBE_DELAY_S", "0"))


def _write() -> None:
    base = os.environ.get("PROBE_FILE")
    if base:
        with open(f"{base}.{os.getpid()}.json", "w") as fh:
            json.dump(counts | {"in_flight_at_shutdown": _in_flight}, fh)


def _observe_sigterm() -> None:
    """Chain in front of uvicorn's SIGTERM handler (installed before the lifespan starts) to record
    how many requests were in flight when the signal came."""
    previous = signal.getsignal(signal.SIGTERM)

    def handler(signum: int, frame: Any) -> None:
        counts.setdefault("in_flight_at_sigterm", _in_flight)
        if callable(previous):
            previous(signum, frame)

    signal.signal(signal.SIGTERM, handler)


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    global _in_flight
    if scope["type"] == "lifespan":

        async def send_lifespan(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                _observe_sigterm()
            if message["type"] == "lifespan.shutdown.complete":
                _write()
            await send(message)

        await _inner(scope, receive, send_lifespan)
        return
    if scope["type"] != "http" or scope["method"] != "POST":
        await _inner(scope, receive, send)
        return
    counts["started"] += 1
    _in_flight += 1
    counts["max_in_flight"] = max(counts["max_in_flight"], _in_flight)
    finished = False

    async def send_tracking(message: Message) -> None:
        nonlocal finished
        await send(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            finished = True

    try:
        if _delay:
            await asyncio.sleep(_delay)
        await _inner(scope, receive, send_tracking)
    finally:
        _in_flight -= 1
        counts["completed" if finished else "unfinished"] += 1
