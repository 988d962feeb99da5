"""The multi-replica topology of docker-compose.yml without Docker (scripts/topology.py): a private
redis-server, the first model made by docker/init-model.sh, two uvicorn replicas sharing Redis and
the artifact store, one RQ worker; the scenario is driven through both replicas over HTTP."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import topology  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    workdir = tmp_path_factory.mktemp("topology")
    lines: list[str] = []
    with topology.topology(workdir) as topo:
        result = topology.run_scenario(topo, lines.append)
    result["log"] = lines
    result["workdir"] = str(workdir)
    return result


def test_replicas_share_the_model_and_the_fresh_interactions(report: dict[str, Any]) -> None:
    first = report["first_version"]
    assert report["recommend"]["versions"] == [first, first]
    assert report["recommend"]["paths"] == ["known", "known"]
    assert report["recommend"]["same_items"] is True

    fresh = report["fresh"]
    assert fresh["record_status"] == 200 and fresh["fresh_count"] == 3
    assert fresh["path_on_b"] == "fresh"  # recorded on A, used on B
    assert fresh["clicked_excluded_on_b"] is True
    assert fresh["items_changed"] is True
    assert fresh["new_user_path_on_b"] == "fold_in"
    assert fresh["new_user_items_excluded"] is True


def test_retrain_swaps_every_replica_without_a_failed_request(report: dict[str, Any], capsys: Any) -> None:
    retrain = report["retrain"]
    assert retrain["accepted_status"] == 202
    assert retrain["accepted"]["mode"] == "rq"
    assert retrain["accepted"]["extra_interactions"] == 6  # 3 + 3 recorded on A
    assert retrain["state"] == "finished", retrain["error"]
    assert retrain["promoted"] is True
    new = retrain["model_version"]
    assert new != report["first_version"]
    assert retrain["versions_after"] == dict.fromkeys(report["replicas"], new)
    assert retrain["n_users_after"] == retrain["n_users_before"] + 1  # the new user was trained in

    load = retrain["load"]
    assert load["failed"] == 0, load["errors"]
    assert load["sent"] >= 50
    for url in report["replicas"]:  # the load saw both versions on both replicas: it spanned the swap
        assert load["versions"][url] == sorted([report["first_version"], new])
    with capsys.disabled():
        print(
            f"\n[topology] swap: requests sent={load['sent']} failed={load['failed']}; "
            f"job {retrain['job_seconds']}s, replicas swapped {retrain['swap_seconds_after_finish']}s after"
        )


def test_killed_worker_leaves_the_old_model_serving(report: dict[str, Any], capsys: Any) -> None:
    killed = report["killed_retrain"]
    serving = report["retrain"]["model_version"]
    assert killed["progress_before_kill"]["stage"] == "training"  # killed mid-training
    assert len(killed["killed_pids"]) >= 2  # the worker and its work-horse
    assert killed["serving_after_kill"] == dict.fromkeys(report["replicas"], serving)
    assert killed["current_after_kill"] == serving
    assert killed["load"]["failed"] == 0, killed["load"]["errors"]
    assert killed["load"]["versions"] == {url: [serving] for url in report["replicas"]}
    # While the dead job still reads as running, its lock refuses another retrain.
    assert killed["state_right_after_kill"] == "running"
    assert killed["conflict_status_while_dead"] == 409
    # RQ's registry cleanup marks the abandoned job failed, and retraining is possible again.
    assert killed["state_after_rq_cleanup"] == "failed"
    assert "AbandonedJobError" in (killed["error_after_rq_cleanup"] or "")
    assert killed["retrain_after_cleanup_status"] == 202
    with capsys.disabled():
        print(
            f"\n[topology] total: requests sent={report['requests']['sent']} "
            f"failed={report['requests']['failed']} in {report['seconds']}s"
        )


def test_service_reports_a_dead_workers_job_failed(report: dict[str, Any]) -> None:
    """The service itself should say 'failed' once RQ's heartbeat of the job has expired."""
    killed = report["killed_retrain"]
    assert killed["detected_by_service"], (
        f"GET /retrain/{{id}} read {killed['state_after_heartbeat_expiry']!r} "
        f"{killed['seconds_kill_to_rq_expiry']}s after the SIGKILL, past RQ's heartbeat expiry"
    )
    assert killed["state_after_heartbeat_expiry"] == "failed"
