"""``service.app:app`` with a CPU-time cProfile switched by signals, for one-process servers.

    uvicorn benchmarks.serve.cpuprof:app      (CPUPROF_OUT=/path/prefix)

SIGUSR1 starts a ``cProfile.Profile(time.process_time)`` of the event-loop thread; SIGUSR2 stops it
and writes ``{CPUPROF_OUT}-{n}.prof`` (n counts the dumps). CPU time, not wall time: a worker that
waits for a core on a busy machine is not charged for the wait, as a sampling profiler charges it.
"""

from __future__ import annotations

import cProfile
import os
import signal
import time
from types import FrameType

from service.app import app

_prof: cProfile.Profile | None = None
_dumps = 0


def _start(signum: int, frame: FrameType | None) -> None:
    global _prof
    _prof = cProfile.Profile(time.process_time)
    _prof.enable()


def _stop(signum: int, frame: FrameType | None) -> None:
    global _prof, _dumps
    if _prof is None:
        return
    _prof.disable()
    _prof.dump_stats(f"{os.environ.get('CPUPROF_OUT', 'cpuprof')}-{_dumps}.prof")
    _dumps += 1
    _prof = None


signal.signal(signal.SIGUSR1, _start)
signal.signal(signal.SIGUSR2, _stop)

__all__ = ["app"]
