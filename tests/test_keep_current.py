"""``python -m training train --keep-current`` (make demo's second run): the model the store's CURRENT
names keeps serving, nothing is trained or exported, and the command does not even import torch."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from artifact.contract import list_versions, read_current, read_manifest, set_current
from tests.conftest import FAST_OVERRIDES

ROOT = Path(__file__).resolve().parents[1]
# Runs the CLI in-process and reports whether torch got imported.
PROBE = "import sys; from training.cli import main; rc = main(sys.argv[1:]); print('torch' in sys.modules); sys.exit(rc)"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", PROBE, *args], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300
    )


def train_args(data: Path, tmp: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(tmp / "run"), "--no-progress",
            "--export-to", str(tmp / "store"), "--promote", *extra, *FAST_OVERRIDES, "epochs=1"]  # fmt: skip


def test_keep_current_trains_when_the_store_is_empty_then_keeps_what_current_names(tiny_data, tmp_path):
    store = tmp_path / "store"
    first = cli(*train_args(tiny_data, tmp_path, "--keep-current"))
    assert first.returncode == 0, first.stderr
    summary = json.loads(first.stdout.rsplit("\n", 2)[0])
    assert "epochs_run" in summary and read_current(store) == Path(summary["artifact"]).name

    # Another model becomes CURRENT (as POST /retrain promotes one), then the same command again.
    newer = read_manifest(store / str(read_current(store)))
    retrained = "20991231T000000Z-0badcafe"
    shutil.copytree(store / newer.model_version, store / retrained)
    manifest_path = store / retrained / "manifest.json"
    data = json.loads(manifest_path.read_text())
    data["model_version"], data["notes"]["job_id"] = retrained, "job-i17"
    manifest_path.write_text(json.dumps(data))
    set_current(store, retrained)
    versions = list_versions(store)
    run_files = {p: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()}

    again = cli(*train_args(tiny_data, tmp_path, "--keep-current"))
    assert again.returncode == 0, again.stderr
    out, torch_imported = again.stdout.rsplit("\n", 2)[:2]
    assert json.loads(out) == {"artifact": str(store / retrained), "version": retrained, "kept_current": True}
    assert torch_imported == "False"
    assert read_current(store) == retrained and list_versions(store) == versions
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "run").iterdir()} == run_files
    assert f"CURRENT names {retrained} (promoted by retrain job job-i17" in again.stderr
    assert "make demo-reset" in again.stderr

    # Without --keep-current the run's best checkpoint is exported and promoted over it (demo-reset).
    reset = cli(*train_args(tiny_data, tmp_path))
    assert reset.returncode == 0, reset.stderr
    assert read_current(store) not in (retrained, None) and len(list_versions(store)) == len(versions) + 1


def test_keep_current_refuses_a_current_model_of_other_data(tiny_data, tmp_path):
    from training.synthetic import write_synthetic

    assert cli(*train_args(tiny_data, tmp_path, "--keep-current")).returncode == 0
    other = write_synthetic(tmp_path / "other", n_users=50, n_items=40, seed=1)
    res = cli(*train_args(other, tmp_path, "--keep-current"))
    assert res.returncode == 2
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1 and "has 90 items but" in errors[0] and "has 40" in errors[0], res.stderr
    assert "make demo-reset" in errors[0]


def test_keep_current_needs_a_store_to_promote_into(tiny_data, tmp_path):
    res = cli("train", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--keep-current")
    assert res.returncode == 2 and "error: --keep-current needs --export-to STORE --promote" in res.stderr
    assert not (tmp_path / "run").exists()


def test_make_demo_keeps_current_and_only_demo_reset_trains_from_scratch(tmp_path):
    if shutil.which("make") is None:
        pytest.skip("make is not installed (.ci/run installs it)")
    args = ["make", "-n", "--no-print-directory", "-o", str(Path(sys.prefix) / ".installed"),
            f"VENV={sys.prefix}", f"DEMO_RUN={tmp_path / 'run'}"]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}

    def recipe(target: str) -> list[str]:
        out = subprocess.run([*args, target], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
        return out.stdout.splitlines()

    demo, reset = recipe("demo"), recipe("demo-reset")
    train = [ln for ln in demo if " -m training train " in ln]
    assert len(train) == 1 and "--keep-current" in train[0] and "--promote" in train[0]
    assert not any(ln.startswith("rm ") for ln in demo)
    train = [ln for ln in reset if " -m training train " in ln]
    assert len(train) == 1 and "--keep-current" not in train[0] and "--promote" in train[0]
    assert reset[0] == f"rm -rf {tmp_path / 'run'}"
    assert demo[-1] == reset[-1] and demo[-1].startswith("exec env ") and "scripts/serve.py" in demo[-1]
