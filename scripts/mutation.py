"""Mutation testing of the core modules with mutmut, one module at a time with the tests that cover it.

Each module runs in its own scratch copy of the repository (``--workdir``, default
/tmp/mmssl-mutation/<module>) holding a generated ``[tool.mutmut]`` section, so the checkout itself
is never mutated and each module's score comes from its own fast test files only. Prints one line
per module (killed / survived / other and how many of those timed out, score) and writes
``<workdir>/summary.json``; the surviving mutants judged equivalent, and why, are listed in
docs/TESTING.md.

    python scripts/mutation.py                 # every module below
    python scripts/mutation.py losses contract # some of them
    python scripts/mutation.py --show losses   # the diff of each surviving mutant
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_VECTOR_FUNCTIONS = (
    "l2_normalize",
    "modality_user_features",
    "modality_side",
    "fold_in_id_side",
    "user_vector",
)

# name: (package directory, module file, test files, mutant-name globs or [] for every function)
MODULES: dict[str, tuple[str, str, list[str], list[str]]] = {
    "losses": ("model", "model/losses.py", ["tests/test_losses.py"], []),
    "graph": ("model", "model/graph.py", ["tests/test_model.py"], []),
    "evaluate": ("training", "training/evaluate.py", ["tests/test_evaluate.py"], []),
    # the selection and sampling parts of the trainer: negatives and the Eq. 2 hold-out
    "trainer-sampling": (
        "training",
        "training/trainer.py",
        ["tests/test_training_loop.py"],
        ["training.trainer.xǁTrainingStateǁ*"],
    ),
    "contract": ("artifact", "artifact/contract.py", ["tests/test_contract.py"], []),
    # the contract's user-vector maths: hand examples, and numpy references in the recommender tests
    "contract-vectors": (
        "artifact",
        "artifact/contract.py",
        ["tests/test_contract.py", "tests/service/test_service_recommender.py"],
        [f"artifact.contract.x_{f}__mutmut_*" for f in _VECTOR_FUNCTIONS],
    ),
    "recommender": ("service", "service/recommender.py", ["tests/service/test_service_recommender.py"], []),
    "serving": ("service", "service/serving.py", ["tests/service/test_service_api.py"], []),
}


def _toml_list(values: list[str]) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def prepare(name: str, workdir: Path, timeout_multiplier: float = 15.0) -> Path:
    package, module, tests, _ = MODULES[name]
    if workdir.exists():
        shutil.rmtree(workdir)
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for raw in files:
        if not raw:
            continue
        rel = Path(raw.decode())
        src = REPO / rel
        if src.is_file():
            (workdir / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, workdir / rel)
    others = sorted({p.split("/")[0] for p in ("artifact/", "model/", "training/", "service/")} - {package})
    config = f"""

[tool.mutmut]
source_paths = ["{package}"]
only_mutate = ["{module}"]
also_copy = {_toml_list([*others, "benchmarks", "configs", "scripts", "docker"])}
pytest_add_cli_args_test_selection = {_toml_list(tests)}
pytest_add_cli_args = ["-p", "no:cacheprovider", "-q", "-x"]
use_git_change_detection = false
timeout_multiplier = {timeout_multiplier}
"""
    with open(workdir / "pyproject.toml", "a") as fh:
        fh.write(config)
    # mutmut 3 leaves decorated functions alone; ``@torch.no_grad()`` changes no value these tests
    # compare (their inputs do not require grad), so the scratch copy drops it to get them mutated.
    target = workdir / module
    lines = target.read_text().splitlines(keepends=True)
    target.write_text("".join(ln for ln in lines if ln.strip() != "@torch.no_grad()"))
    return workdir


def _mutmut() -> str:
    return str(Path(sys.executable).with_name("mutmut"))


def results(workdir: Path) -> dict[str, str]:
    out = subprocess.run(
        [_mutmut(), "results", "--all", "true"], cwd=workdir, capture_output=True, text=True, check=False
    ).stdout
    status: dict[str, str] = {}
    for line in out.splitlines():
        if ":" in line:
            key, value = line.rsplit(":", 1)
            status[key.strip()] = value.strip()
    return status


def run(name: str, workdir: Path, max_children: int, timeout_multiplier: float = 15.0) -> dict[str, object]:
    prepare(name, workdir, timeout_multiplier)
    globs = MODULES[name][3]
    t0 = time.perf_counter()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [_mutmut(), "run", "--max-children", str(max_children), *globs],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.perf_counter() - t0
    status = results(workdir)
    if globs:
        import fnmatch

        status = {k: v for k, v in status.items() if any(fnmatch.fnmatch(k, g) for g in globs)}
    counts: dict[str, int] = {}
    for value in status.values():
        counts[value] = counts.get(value, 0) + 1
    killed = counts.get("killed", 0)
    total = len(status)
    survived = sorted(k for k, v in status.items() if v == "survived")
    summary: dict[str, object] = {
        "module": MODULES[name][1],
        "tests": MODULES[name][2],
        "mutants": total,
        "killed": killed,
        "survived": len(survived),
        "other": total - killed - len(survived),
        "timeout": counts.get("timeout", 0),
        "counts": counts,
        "seconds": round(seconds, 1),
        "survivors": survived,
        "returncode": proc.returncode,
    }
    if proc.returncode != 0 and total == 0:
        summary["error"] = (proc.stdout + proc.stderr)[-2000:]
    return summary


def show(name: str, workdir: Path) -> None:
    for mutant, value in sorted(results(workdir).items()):
        if value == "survived":
            diff = subprocess.run(
                [_mutmut(), "show", mutant], cwd=workdir, capture_output=True, text=True, check=False
            ).stdout
            changed = [ln for ln in diff.splitlines() if ln[:1] in "+-" and ln[:3] not in ("+++", "---")]
            print(f"{mutant}\n  " + "\n  ".join(changed))


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("modules", nargs="*", help=f"some of: {' '.join(MODULES)} (default: all)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/mmssl-mutation"))
    parser.add_argument("--max-children", type=int, default=2)
    # mutmut stops a mutant's tests after (estimated test time + 1 s) x this many wall-clock seconds
    # and counts it "timeout"; on the loaded shared machine its default of 15 timed out mutants whose
    # tests merely waited for a core, so raise it there (a mutant that really hangs only waits longer).
    parser.add_argument("--timeout-multiplier", type=float, default=15.0)
    parser.add_argument("--show", action="store_true", help="print the surviving mutants of a finished run")
    args = parser.parse_args()
    names = args.modules or list(MODULES)
    unknown = [n for n in names if n not in MODULES]
    if unknown:
        parser.error(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    if args.show:
        for name in names:
            show(name, args.workdir / name)
        return 0
    summaries = {}
    for name in names:
        s = run(name, args.workdir / name, args.max_children, args.timeout_multiplier)
        summaries[name] = s
        score = 100.0 * int(s["killed"]) / max(int(s["mutants"]), 1)  # type: ignore[call-overload]
        print(
            f"{name:18s} {s['module']:24s} mutants {s['mutants']:4} killed {s['killed']:4} "
            f"survived {s['survived']:3} other {s['other']:3} (timeout {s['timeout']:3})  "
            f"raw score {score:5.1f}%  {s['seconds']}s",
            flush=True,
        )
        if "error" in s:
            print(s["error"], file=sys.stderr)
    args.workdir.mkdir(parents=True, exist_ok=True)
    (args.workdir / "summary.json").write_text(json.dumps(summaries, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
