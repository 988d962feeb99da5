"""Shared fixtures: tiny seeded synthetic data in the real file format, and one trained run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tiny models gain nothing from threads, and servers started by tests share the 2 CI cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

# A configuration small enough for tests on 2 CPU cores, exercising every component.
FAST_OVERRIDES = [
    "embed_dim=16",
    "n_heads=2",
    "view_topk=5",
    "disc_hidden=32",
    "batch_size=256",
    "adv_users=64",
    "view_refresh_steps=5",
    "epochs=4",
    "patience=10",
]


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from training.synthetic import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("data") / "tiny", n_users=120, n_items=90, seed=7)


@pytest.fixture(scope="session")
def trained_run(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """(dataset, config, run_dir, artifact_path) of one tiny full-model training + export."""
    from training.config import load_config
    from training.data import load_dataset
    from training.export import export_checkpoint
    from training.trainer import BEST, train

    dataset = load_dataset(tiny_data)
    cfg = load_config(None, FAST_OVERRIDES)
    run_dir = tmp_path_factory.mktemp("run")
    train(dataset, cfg, run_dir, progress_bar=False)
    root = tmp_path_factory.mktemp("artifacts")
    path = export_checkpoint(run_dir / BEST, dataset, root)
    return dataset, cfg, run_dir, path


# ------------------------------------------------------------------------------ markers and skips

# Fixtures that reach a real Redis (the shared server or a private redis-server): their tests get the
# declared ``redis`` marker, so ``pytest -m "not redis"`` runs everything that needs no Redis.
REDIS_FIXTURES = {"shared_redis", "redis_settings", "throwaway_redis"}

# The one reason a test may skip on CI: a missing GPU. Skip messages for it start with this.
GPU_SKIP_PREFIX = "needs a GPU"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if REDIS_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.redis)


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    """Print the number of skipped tests; with PYTEST_FAIL_ON_SKIP=1 (CI) any skip but a missing GPU
    fails the run."""
    skipped = terminalreporter.stats.get("skipped", [])
    not_gpu = [r for r in skipped if not _skip_reason(r).startswith(GPU_SKIP_PREFIX)]
    terminalreporter.write_line(
        f"skipped tests: {len(skipped)} ({len(skipped) - len(not_gpu)} for a missing GPU, {len(not_gpu)} other)"
    )
    if not_gpu and os.environ.get("PYTEST_FAIL_ON_SKIP") == "1":
        for r in not_gpu:
            terminalreporter.write_line(f"  not allowed on CI: {r.nodeid}: {_skip_reason(r)}", red=True)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    # terminal_summary runs after sessionfinish; count here too so the exit status is set in time
    if os.environ.get("PYTEST_FAIL_ON_SKIP") != "1":
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None:
        return
    skipped = reporter.stats.get("skipped", [])
    if any(not _skip_reason(r).startswith(GPU_SKIP_PREFIX) for r in skipped) and exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
