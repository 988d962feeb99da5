"""Stand-in for ``training.jobs.retrain_job`` following the same contract, without torch.

It "trains" by writing a perturbed copy of the serving artifact. ``spec["overrides"]`` steer it:
``recall`` (validation Recall@20 of the new artifact; default serving + 0.01), ``sleep`` (seconds
spent "training"), ``fail`` (raise). The fresh interactions it was given are kept in the new
manifest's notes so that tests can check they reached the job.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from artifact import contract


def _progress(spec: dict[str, Any], state: str, progress: dict[str, Any], **extra: Any) -> None:
    try:
        from rq import get_current_job

        job = get_current_job()
    except ImportError:
        job = None
    if job is not None:
        job.meta["progress"] = progress
        job.save_meta()
    if spec.get("status_file"):
        path = Path(spec["status_file"])
        fd, tmp = tempfile.mkstemp(dir=path.parent)
        with os.fdopen(fd, "w") as fh:
            json.dump({"state": state, "progress": progress, **extra}, fh)
        os.replace(tmp, path)


def retrain_job(spec: dict[str, Any]) -> dict[str, Any]:
    started = time.time()
    root = Path(spec["artifact_root"])
    overrides = spec.get("overrides", {})
    progress = {"epoch": 0, "max_epochs": 2, "best_recall@20": None, "stage": "loading"}
    _progress(spec, "running", progress)
    if overrides.get("fail"):
        raise RuntimeError("stand-in trainer failed on purpose")
    serving = contract.read_current(root)
    assert serving is not None, "the stand-in needs a serving artifact to copy"
    old = contract.load_artifact(root / serving)
    time.sleep(float(overrides.get("sleep", 0.0)))
    old_recall = old.manifest.val_recall20() or 0.0
    recall = float(overrides.get("recall", old_recall + 0.01))
    progress = {"epoch": 2, "max_epochs": 2, "best_recall@20": recall, "stage": "exporting"}
    _progress(spec, "running", progress)

    m, a = old.manifest, old.arrays
    rng = np.random.default_rng(len(contract.list_versions(root)))
    a.item_embeddings = a.item_embeddings + rng.normal(scale=0.5, size=a.item_embeddings.shape).astype(
        np.float32
    )
    m.parent_version = serving
    m.model_version = contract.new_model_version()
    m.created_at = contract.utc_now()
    m.metrics = {"val": {"recall@20": recall, "ndcg@20": recall / 2}}
    m.notes = {"extra_interactions": spec.get("extra_interactions", {}), "job_id": spec["job_id"]}
    path = contract.write_artifact(root, m, a)
    # a stand-in for the champion/challenger gate: the scores are the ones it made up
    promoted, reason = contract.promotion_decision(
        recall, old_recall, spec["tolerance"], bool(spec.get("force"))
    )
    if promoted:
        contract.set_current(root, m.model_version)
    result = {
        "job_id": spec["job_id"],
        "model_version": m.model_version,
        "artifact_path": str(path),
        "promoted": promoted,
        "reason": reason,
        "metrics": m.metrics,
        "epochs": 2,
        "seconds": time.time() - started,
    }
    _progress(spec, "finished", progress, result=result)
    return result
