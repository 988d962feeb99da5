"""scripts/compose_test.py without a Docker engine: how it reads the stack's state (a broken
service is named), the faults it can plant, and CI's one-line skip when no engine can start. The
test itself runs the real stack (`make compose-test`, docs/DEPLOY.md): too slow for the suite."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any, cast

import httpx
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import compose_test as ct  # noqa: E402
import validate_docker as vd  # noqa: E402


def row(service: str, state: str, health: str = "", exit_code: int = 0, n: int = 1) -> dict[str, object]:
    return {
        "Service": service,
        "Name": f"mmssl-compose-test-{service}-{n}",
        "ID": f"{service}{n}",
        "State": state,
        "Health": health,
        "ExitCode": exit_code,
        "Status": f"{state} {health}".strip(),
    }


HEALTHY = [
    row("redis", "running", "healthy"),
    row("init", "exited", exit_code=0),
    row("api", "running", "healthy", n=1),
    row("api", "running", "healthy", n=2),
    row("proxy", "running", "healthy"),
    row("worker", "running"),
]


def test_the_healthy_stack_has_nothing_broken_or_pending() -> None:
    assert ct.diagnose(HEALTHY, ct.EXPECTED) == ([], [])


def test_each_kind_of_broken_service_is_named() -> None:
    cases = {
        "proxy": row("proxy", "running", "unhealthy"),
        "worker": row("worker", "restarting", exit_code=2),
        "init": row("init", "exited", exit_code=1),
        "redis": row("redis", "exited", exit_code=137),
    }
    for service, bad in cases.items():
        rows = [r for r in HEALTHY if r["Service"] != service] + [bad]
        broken, _ = ct.diagnose(rows, ct.EXPECTED)
        assert len(broken) == 1 and broken[0].startswith(f"{service}: "), (service, broken)
    broken, _ = ct.diagnose([*HEALTHY[:-1], row("worker", "restarting", exit_code=2)], ct.EXPECTED)
    assert "exit code 2" in broken[0]


def test_starting_and_missing_services_are_pending_not_broken() -> None:
    rows = [row("redis", "running", "starting"), row("init", "running")]
    broken, pending = ct.diagnose(rows, ct.EXPECTED)
    assert broken == []
    assert [p.split(":", 1)[0] for p in pending] == ["redis", "init", "api", "proxy", "worker"]


def test_planted_faults_are_valid_overrides_of_existing_services() -> None:
    compose = vd.load_compose(REPO / "docker-compose.yml")
    assert set(ct.FAULTS) == {"proxy-healthcheck", "worker-env"}
    for fault in ct.FAULTS.values():
        assert set(fault["services"]) <= set(compose["services"])
        merged = {**compose, "services": {**compose["services"]}}
        for name, override in fault["services"].items():
            merged["services"][name] = {**compose["services"][name], **override}
        assert vd.schema_findings(merged, "fault", vd.load_schema()) == []
    # The healthcheck fault is a path that the proxy answers 404 to, not the real /readyz.
    test = ct.FAULTS["proxy-healthcheck"]["services"]["proxy"]["healthcheck"]["test"]
    assert "/readyz" not in " ".join(test) and compose["services"]["proxy"]["healthcheck"]["test"] != test


def test_expected_states_cover_every_service_of_the_stack() -> None:
    compose = vd.load_compose(REPO / "docker-compose.yml")
    assert set(ct.EXPECTED) == set(compose["services"])
    assert ct.PINNED["PYTHON_IMAGE"] == vd.arg_defaults(REPO / "docker" / "api.Dockerfile")["PYTHON_IMAGE"]
    assert ct.PINNED["REDIS_IMAGE"] == compose["services"]["redis"]["image"]
    assert ct.PINNED["NGINX_IMAGE"] == compose["services"]["proxy"]["image"]


def run_without_docker(cache: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # No docker, no dockerd; a cache (and its one-run-at-a-time lock) of its own.
    env = {**os.environ, "PATH": "/nonexistent", "COMPOSE_TEST_CACHE": str(cache)}
    return subprocess.run(
        [sys.executable, str(REPO / "scripts" / "compose_test.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        cwd=REPO,
    )


def test_without_an_engine_ci_skips_in_one_line_and_a_user_gets_a_failure(tmp_path: Path) -> None:
    skipped = run_without_docker(tmp_path, "--skip-without-engine")
    assert skipped.returncode == 0, skipped.stdout + skipped.stderr
    lines = skipped.stdout.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("compose test skipped: no Docker engine"), lines
    failed = run_without_docker(tmp_path)
    assert failed.returncode == 1
    assert "FAILED: no docker CLI" in failed.stdout


class FakeStack:
    """Two replicas on made-up container addresses; only what the items checks read."""

    url = "http://proxy"

    def replica_urls(self) -> dict[str, str]:
        return {"api-1": "http://api-1", "api-2": "http://api-2"}


def replica_handler(served: dict[str, dict[str, dict[str, bool]]]) -> Any:
    """A replica per host: GET /items/{id} from served[host] (404 if absent), similar = every
    other item it holds (available or not, as a broken replica would) padded to 100."""

    def handle(request: httpx.Request) -> httpx.Response:
        items = served[request.url.host]
        parts = request.url.path.strip("/").split("/")
        item = parts[1]
        if item not in items:
            return httpx.Response(404, json={"detail": "no item"})
        if request.method == "GET":
            return httpx.Response(200, json={"item_id": item, "source": "added", **items[item]})
        others = [i for i in items if i != item and items[i].get("shown", items[i]["available"])]
        rows = [{"item_id": i, "score": 1.0} for i in [*others, *(str(n) for n in range(100))][:100]]
        return httpx.Response(200, json={"item_id": item, "items": rows})

    return handle


def scenario_on(served: dict[str, dict[str, dict[str, bool]]]) -> ct.Scenario:
    scenario = ct.Scenario(cast("ct.Stack", FakeStack()), "token")
    scenario.http.close()
    scenario.http = httpx.Client(transport=httpx.MockTransport(replica_handler(served)))
    return scenario


def test_items_checks_pass_only_when_every_replica_serves_the_change() -> None:
    ok = {i: {"available": a} for i, a in ct.ITEMS_AFTER.items()}
    assert set(ct.ITEMS_AFTER) == set(ct.ITEMS) and not all(ct.ITEMS_AFTER.values())
    scenario = scenario_on({"api-1": ok, "api-2": ok})
    assert scenario.items_on("http://api-1", ct.ITEMS_AFTER) is None
    assert set(scenario.items_everywhere(ct.ITEMS_AFTER, 1)) == {"api-1", "api-2"}

    # api-2 never saw the batch: a 404, and the step fails naming that replica only.
    scenario = scenario_on({"api-1": ok, "api-2": {}})
    with pytest.raises(ct.StepFailed, match=r"within 0s: api-2: GET /items/ct-item-0 answered 404"):
        scenario.items_everywhere(ct.ITEMS_AFTER, 0.2)

    # api-2 still says available / still returns the hidden item in similar.
    stale = {**ok, "ct-item-1": {"available": True}}
    assert "expected added, available=False" in str(
        scenario_on({"x": stale}).items_on("http://x", ct.ITEMS_AFTER)
    )
    leaky = {**ok, "ct-item-1": {"available": False, "shown": True}}
    why = scenario_on({"x": leaky}).items_on("http://x", ct.ITEMS_AFTER)
    assert why == "similar of ct-item-0 returned unavailable items ['ct-item-1']"


def test_both_scripts_use_the_one_wait_for_of_benchmarks_serve_procs() -> None:
    import topology

    from benchmarks.serve import procs

    assert ct.procs is procs and topology.procs is procs
    calls = iter([0, "", "ready"])
    assert procs.wait_for("x", lambda: next(calls), 5, 0.0) == "ready"
    for module, error in ((ct, ct.StepFailed), (topology, topology.TopologyError)):
        with pytest.raises(error, match="timed out after 0s waiting for nothing"):
            module.wait_for("nothing", lambda: None, 0.05, 0.01)
    # stdlib-only: compose_test.py --help works with a Python that has none of the project's packages
    r = subprocess.run(
        [sys.executable, "-S", "-c", "import sys; sys.argv = ['compose_test.py', '--help']; "
         f"sys.path.insert(0, {str(REPO / 'scripts')!r}); import runpy; "
         f"runpy.run_path({str(REPO / 'scripts' / 'compose_test.py')!r}, run_name='__main__')"],
        capture_output=True, text=True, cwd=REPO, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0 and "usage: compose_test.py" in r.stdout, r.stderr
