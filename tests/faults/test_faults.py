"""Faults under load, each against the API as deployed (uvicorn, private Redis, RQ worker), with the
load from a separate process: requests sent / failed are counted and asserted on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from benchmarks.serve import faults


def explain(r: dict[str, Any]) -> str:
    """A failed scenario in full (pytest shortens a dict message): its numbers, its problems, and
    the logs and stacks it kept for them."""
    return json.dumps(r, indent=1, default=str)


def test_redis_killed_under_load_and_restarted(tmp_path: Path) -> None:
    r = faults.redis_restart(tmp_path, workers=1, before_s=1.5, down_s=2.5, after_s=1.0, concurrency=4)
    assert r["ok"] > 0 and r["failed"] == 0, r
    assert r["ok_while_down"] > 0 and r["cache_hits_while_down"] == 0, r  # served from the artifact alone
    assert r["metrics_redis_errors_while_down"] > 0, r  # Redis really was gone
    assert r["cache_hits_after_restart"] > 0 and r["metrics_cache_hits_after_restart"] > 0, r
    assert r["problems"] == []


def test_retrain_and_swap_under_load(tmp_path: Path) -> None:
    r = faults.retrain_swap(tmp_path, workers=1, settle_s=1.0, concurrency=4)
    assert r["ok"] > 0 and r["failed"] == 0, r
    assert r["job_state"] == "finished" and r["promoted"] is True
    assert r["versions_seen_in_order"] == [r["old_version"], r["new_version"]]
    assert r["old_version"] != r["new_version"]
    assert r["problems"] == []


def test_corrupted_artifact_is_refused_and_old_model_keeps_serving(tmp_path: Path) -> None:
    r = faults.corrupt_artifact(tmp_path, workers=1, wait_s=1.0, concurrency=4)
    assert r["ok"] > 0 and r["failed"] == 0, r
    flipped, missing = r["refusals"]["flipped_byte"], r["refusals"]["missing_file"]
    assert "sha256 mismatch" in flipped["last_load_error"] and flipped["serving"] == r["old_version"]
    assert "missing" in missing["last_load_error"] and missing["serving"] == r["old_version"]
    assert flipped["metrics_load_failures"] == 1 and missing["metrics_load_failures"] == 1
    assert flipped["readyz"] == missing["readyz"] == 200
    # a good artifact promoted afterwards is taken: the refusals did not wedge the manager
    assert r["versions_seen_in_order"] == [r["old_version"], r["recovered_version"]]
    assert r["problems"] == []


def test_worker_killed_mid_job(tmp_path: Path) -> None:
    r = faults.worker_killed(tmp_path, workers=1, concurrency=4)
    assert r["ok"] > 0 and r["failed"] == 0, r
    assert len(r["killed_pids"]) >= 2  # the worker and its work-horse
    assert r["serving_after_kill"] == r["old_version"] == r["current_after_kill"]  # CURRENT re-read after
    # the death shows once the job's heartbeat lapses (fast-forwarded here): until then the job reads
    # running and holds the one-at-a-time lock; then the service itself reports it failed
    assert r["state_right_after_kill"] == "running" and r["retrain_while_dead_job_holds_lock"] == 409
    assert r["expired_executions"] == 1
    assert r["state_after_heartbeat_expiry"] == "failed" and "Abandoned" in r["error_after_heartbeat_expiry"]
    assert r["next_retrain_status"] == 202 and r["next_retrain_state"] == "finished"
    assert r["problems"] == []


def test_sigterm_under_load_completes_every_accepted_request(tmp_path: Path) -> None:
    r = faults.sigterm(tmp_path, workers=2, before_s=2.0, concurrency=16, delay_s=0.05)
    server = r["server"]
    assert server["processes"] == 2 and server["in_flight_at_sigterm"] > 0, explain(r)
    assert server["started"] == server["completed"] == r["ok"] > 50, explain(r)
    assert server["unfinished"] == 0
    # what failed on the client was never accepted by the application
    assert set(r["failures"]) <= {"refused", "closed_before_response"}, r
    assert r["exit_code"] in (0, -15) and r["shutdown_s"] < 10
    assert r["problems"] == []


def test_redis_killed_during_a_retrain(tmp_path: Path) -> None:
    r = faults.redis_killed_during_retrain(tmp_path, workers=1, down_s=3.0, job_s=6.0, concurrency=4)
    assert r["ok"] > 0 and r["failed"] == 0, explain(r)
    assert r["worker_alive_after"] is True, r  # it used to exit on the first Redis error
    assert r["first_job_promoted"] is True, r  # a failed progress write used to end the job
    assert r["next_retrain_state"] == "finished", r
    assert r["problems"] == []


def test_redis_restarted_under_write_load_loses_no_acknowledged_write(tmp_path: Path) -> None:
    r = faults.redis_restart_writes(tmp_path, workers=1, before_s=1.5, down_s=1.5, after_s=1.5, writers=4)
    assert r["failed"] == 0, r  # recommends
    assert r["writes_acknowledged"] > 0 and r["writes"]["answered_503"] > 0, r
    assert r["acknowledged_but_lost"] == 0 and r["applied_twice"] == 0, r
    assert r["problems"] == []
