"""Hostile input against the service as deployed (uvicorn process, real Redis, RQ worker):

* schemathesis over the whole OpenAPI schema (every operation, the admin ones with a valid token;
  coverage, fuzzing and stateful phases): no 5xx, every status and body as the schema documents.
  The one check left out is ``positive_data_acceptance``: a schema-valid item id is still unknown to
  the catalogue (422 by design), which a schema cannot express;
* bodies beyond MAX_BODY_BYTES get 413, announced by Content-Length or streamed chunked;
* nothing secret in the logs: the API and the worker run at DEBUG with an admin token and a Redis
  password, requests are made with the right and a wrong token, and the captured logs are searched.

    python -m benchmarks.serve.hostile [--max-examples 400]

prints a table and writes benchmarks/results/serve_hostile.json; tests/faults/test_hostile.py runs a
short version.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from benchmarks.serve.common import machine, table, write_result
from benchmarks.serve.faults import ADMIN_TOKEN, deploy, start_worker

EXCLUDED_CHECKS = ("positive_data_acceptance",)
REDIS_PASSWORD = "redis-pw-must-not-be-logged-7c1d"


def schemathesis(url: str, token: str, max_examples: int, report_dir: Path, seed: int | None = None,
                 max_time: float | None = None) -> dict[str, Any]:  # fmt: skip
    st = shutil.which("st") or str(Path(sys.executable).parent / "st")
    if not Path(st).exists():
        raise RuntimeError("schemathesis is not installed (pip install schemathesis)")
    cmd = [st, "run", url + "/openapi.json", "--checks", "all", "--exclude-checks", ",".join(EXCLUDED_CHECKS),
           "-H", f"Authorization: Bearer {token}", "--max-examples", str(max_examples), "--workers", "1",
           "--continue-on-failure", "--report", "json", "--report-dir", str(report_dir)]  # fmt: skip
    if seed is not None:
        cmd += ["--seed", str(seed)]
    if max_time:
        cmd += ["--max-time", str(max_time)]
    t = time.monotonic()
    report_dir.mkdir(parents=True, exist_ok=True)  # cwd too: st keeps its .schemathesis/ cache there
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, cwd=report_dir)
    reports = sorted(report_dir.glob("json-*.json"))
    if not reports:
        raise RuntimeError(
            f"schemathesis wrote no report ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-2000:]}"
        )
    report = json.loads(reports[-1].read_text())
    return {
        "exit_code": proc.returncode,
        "seconds": round(time.monotonic() - t, 1),
        "generated": report["test_cases"]["generated"],
        "operations": report["operations"],
        "phases": {k: v["status"] for k, v in report["phases"].items()},
        "failures": report["failures"],
        "errors": report["errors"],
        "seed": report["seed"],
        "command": " ".join(c if token not in c else "Authorization: Bearer $ADMIN_TOKEN" for c in cmd),
        "output_tail": proc.stdout[-4000:] if proc.returncode else "",
    }


def _chunks(total: int, size: int = 65536) -> Iterator[bytes]:
    yield b'{"user_id": "u1", "exclude_items": ["'
    sent = 0
    while sent < total:
        yield b"x" * size
        sent += size
    yield b'"]}'


def body_limit(url: str, limit: int = 1_048_576) -> dict[str, Any]:
    """Status codes for bodies just under and over the limit, by Content-Length and chunked."""
    big = b'{"user_id": "u1", "exclude_items": ["' + b"x" * (limit + 10) + b'"]}'
    small = (
        b'{"user_id": "u1", "k": 5, "exclude_items": ["'
        + b"i1"
        + b'"], "x": "'
        + b"y" * (limit - 200)
        + b'"}'
    )
    headers = {"content-type": "application/json"}
    out: dict[str, Any] = {"limit": limit}
    with httpx.Client(base_url=url, timeout=30) as client:
        for path in ("/recommend", "/interactions", "/retrain"):
            auth = {"authorization": f"Bearer {ADMIN_TOKEN}"} if path == "/retrain" else {}
            r = client.post(path, content=big, headers=headers | auth)
            out[f"{path} content-length {len(big)}"] = r.status_code
            r = client.post(path, content=_chunks(limit + 10), headers=headers | auth)
            out[f"{path} chunked > limit"] = r.status_code
        r = client.post("/recommend", content=small, headers=headers)  # under the limit: parsed (422: "x")
        out[f"/recommend content-length {len(small)} (under)"] = r.status_code
    return out


def secrets_in_logs(work: Path) -> dict[str, Any]:
    """Run API + worker at DEBUG with secrets configured; the captured logs must not contain them."""
    with deploy(work, workers=1, redis_password=REDIS_PASSWORD, access_log=True, LOG_LEVEL="DEBUG") as dep:
        dep.worker = start_worker(dep.env, work / "worker.log")
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        wrong = {"Authorization": f"Bearer {ADMIN_TOKEN}-wrong"}
        with httpx.Client(base_url=dep.api.url, timeout=10) as c:
            codes = [
                c.post("/recommend", json={"user_id": "u1"}).status_code,
                c.post("/interactions", json={"user_id": "u1", "items": ["i1"]}).status_code,
                c.post("/retrain", headers=wrong).status_code,
                c.get("/retrain/abc", headers=wrong).status_code,
                c.post("/retrain", json={"overrides": {"sleep": 0}}, headers=auth).status_code,
            ]
            job = c.post("/retrain", headers=auth)  # 409 while the first runs, or 202
            codes.append(job.status_code)
            # wait for the worker to pick the job up and log it (an event with a deadline: starting
            # the worker imports the job's libraries, slow on a busy machine)
            deadline = time.monotonic() + 60
            while dep.worker.log_text().count("\n") <= 3 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(0.5)  # the lines that follow the first ones
        logs = {"api": dep.api.log_text(), "worker": dep.worker.log_text()}
    found = {
        name: {secret: text.count(secret) for secret in (ADMIN_TOKEN, REDIS_PASSWORD)}
        for name, text in logs.items()
    }
    return {
        "status_codes": codes,
        "log_bytes": {k: len(v) for k, v in logs.items()},
        "log_lines": {k: v.count("\n") for k, v in logs.items()},
        "secret_occurrences": found,
        "settings_line_redacted": '"admin_token":"**********"' in logs["api"].replace(" ", ""),
        "redis_url_redacted": ":***@" in logs["api"],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serve.hostile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument(
        "--max-examples", type=int, default=400, help="schemathesis examples per operation and phase"
    )
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="hostile-"))
    result: dict[str, Any] = {"machine": machine(), "args": vars(args) | {"out": str(args.out)}}
    try:
        with deploy(work / "st", workers=1, with_worker=False) as dep:
            result["schemathesis"] = schemathesis(
                dep.api.url, ADMIN_TOKEN, args.max_examples, work / "report", args.seed
            )
            result["body_limit"] = body_limit(dep.api.url)
            result["api_alive_after"] = httpx.get(dep.api.url + "/readyz").status_code
        result["logs"] = secrets_in_logs(work / "logs")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    st = result["schemathesis"]
    limits = {k: v for k, v in result["body_limit"].items() if k != "limit"}
    leaks = sum(n for d in result["logs"]["secret_occurrences"].values() for n in d.values())
    rows = [
        [
            "schemathesis cases",
            st["generated"],
            f"exit {st['exit_code']}, failures {[f['code'] for f in st['failures']]}",
        ],
        [
            "over-limit bodies -> 413",
            sum(v == 413 for k, v in limits.items() if "under" not in k),
            str(limits),
        ],
        ["secrets found in logs", leaks, str(result["logs"]["secret_occurrences"])],
    ]
    print(table(["check", "count", "detail"], rows))
    out = write_result("serve_hostile", result, args.out)
    print(f"wrote {out}")
    ok = st["exit_code"] == 0 and leaks == 0 and all(v == 413 for k, v in limits.items() if "under" not in k)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
