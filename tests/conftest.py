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
