"""Run the API under uvicorn for ``make serve`` / ``make demo``; a Ctrl-C or SIGTERM stop exits 0.

uvicorn shuts down gracefully on SIGINT and SIGTERM, then raises the same signal again with the
handler it found at start-up, so that the process dies of it. Under ``make`` that turns a clean
stop into ``make: *** [serve] Interrupt`` (Ctrl-C) or ``Error 143`` (``kill``), which reads like
a failure. Here the handler uvicorn finds is a no-op: the re-raised signal is ignored, ``run()``
returns and the process exits 0. A second Ctrl-C still forces the exit (uvicorn's own handling).

    python scripts/serve.py [--host 127.0.0.1] [--port 8000]   (settings come from the environment)
"""

from __future__ import annotations

import argparse
import signal
import sys
from types import FrameType


def _ignore(signum: int, frame: FrameType | None) -> None:
    """Stands in for the default action when uvicorn re-raises the signal after its shutdown."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scripts/serve.py", description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--app", default="service.app:app")
    args = p.parse_args(argv)

    import uvicorn

    server = uvicorn.Server(uvicorn.Config(args.app, host=args.host, port=args.port))
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _ignore)
    server.run()
    # Port taken, or the app failed to start: uvicorn logged why; exit like its CLI does (3).
    return 0 if server.started else 3


if __name__ == "__main__":
    sys.exit(main())
