"""A stand-in retrain job for the fault scenarios (no torch): same contract as
``training.jobs.retrain_job``; it "trains" by writing a perturbed copy of the serving artifact and
promotes it. ``spec["overrides"]``: ``sleep`` (seconds spent "training", with progress every second).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from artifact import contract


def retrain_job(spec: dict[str, Any]) -> dict[str, Any]:
    from training.jobs import ProgressReporter  # torch-free; the trainer's own Redis-tolerant reporter

    report = ProgressReporter(None)
    root = Path(spec["artifact_root"])
    sleep = float(spec.get("overrides", {}).get("sleep", 0.0))
    serving = contract.read_current(root)
    assert serving is not None, "the stand-in copies the serving artifact"
    old = contract.load_artifact(root / serving)
    t_end = time.monotonic() + sleep
    epoch = 0
    while time.monotonic() < t_end:
        epoch += 1
        report({"epoch": epoch, "stage": "training"})
        time.sleep(min(1.0, max(0.0, t_end - time.monotonic())))
    m, a = old.manifest, old.arrays
    rng = np.random.default_rng(len(contract.list_versions(root)))
    a.item_embeddings = (a.item_embeddings + rng.normal(scale=0.1, size=a.item_embeddings.shape)).astype(
        np.float32
    )
    m.parent_version = serving
    m.model_version = contract.new_model_version()
    m.created_at = contract.utc_now()
    m.metrics = {"val": {"recall@20": (old.manifest.val_recall20() or 0.0) + 0.01}}
    path = contract.write_artifact(root, m, a)
    # a stand-in for the champion/challenger gate: the scores are the ones it made up
    promoted, reason = contract.promotion_decision(
        m.val_recall20(), old.manifest.val_recall20(), spec["tolerance"], bool(spec.get("force"))
    )
    if promoted:
        contract.set_current(root, m.model_version)
    report({"epoch": epoch, "stage": "exported"})
    return {"job_id": spec["job_id"], "model_version": m.model_version, "artifact_path": str(path),
            "promoted": promoted, "reason": reason, "metrics": m.metrics}  # fmt: skip
