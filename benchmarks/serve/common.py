"""Shared bits of the serving benchmarks: machine description, percentiles, result files, tables."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.serve.procs import REPO

RESULTS = REPO / "benchmarks" / "results"


def machine() -> dict[str, Any]:
    """What the numbers were taken on, and how busy the machine was when they were."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    load1, load5, load15 = os.getloadavg()
    busy = []
    try:  # other CPU-heavy processes at measurement time (ours excluded by pid)
        out = subprocess.run(["ps", "-eo", "pid,pcpu,args", "--sort=-pcpu"], capture_output=True, text=True)
        for line in out.stdout.splitlines()[1:8]:
            pid, pcpu, args = line.strip().split(None, 2)
            if float(pcpu) >= 10 and int(pid) != os.getpid():
                busy.append(f"{pcpu}% {args[:100]}")
    except (OSError, ValueError):
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu_model": cpu,
        "python": platform.python_version(),
        "loadavg_1_5_15": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "busy_processes": busy,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def idle_warning(threshold: float = 0.5) -> str | None:
    load1 = os.getloadavg()[0]
    if load1 >= threshold:
        return f"1-minute load is {load1:.2f} (>= {threshold}): the machine is busy, timings are not idle-machine numbers"
    return None


def percentiles_ms(samples_s: list[float] | np.ndarray) -> dict[str, float]:
    a = np.asarray(samples_s, dtype=np.float64) * 1e3
    if a.size == 0:
        return {"n": 0}
    p50, p95, p99 = np.percentile(a, [50, 95, 99])
    return {"n": int(a.size), "mean": round(float(a.mean()), 4), "p50": round(float(p50), 4),
            "p95": round(float(p95), 4), "p99": round(float(p99), 4), "max": round(float(a.max()), 4)}  # fmt: skip


def write_result(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str))
    return path


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table (printed, and pasteable into the docs)."""
    cells = [[str(h) for h in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)
