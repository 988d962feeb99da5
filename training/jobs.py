"""Retrain jobs: train on the dataset plus fresh interactions, export, and promote if not worse.

The service refers to :func:`retrain_job` by its dotted name (RQ) or runs ``python -m training job
--spec SPEC.json`` (no Redis), so it never imports torch itself.

spec = {"job_id", "data_dir", "artifact_root", "config": path | None, "overrides": {key: value},
        "extra_interactions": {external_user_id: [external_item_id, ...]},
        "extra_items": None | {"item_ids": [...], "available": [bool], "has_features": [bool],
                       "features": {modality: {"dtype": "float32", "shape": [n, D_m], "base64": ...}}},
        "tolerance": float, "force": bool, "status_file": path | None, "run_root": path | None}

``extra_items`` is the service's ``Catalogue.retrain_items()`` (items put through ``PUT /items``):
ids not in the dataset become new item rows with the spec's features, existing ids with features
get their rows replaced, and ``extra_interactions`` may name either (``training.data.load_dataset``).
A new item lacking a modality's row, or a malformed block, fails the job with one DataError naming
it. Unavailable items train like the others; the service keeps them hidden after the swap. The
result's ``items`` says how many were added / updated.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _write_status(path: str | None, status: dict[str, Any]) -> None:
    if not path:
        return
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".status-", dir=target.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(status, fh)
    os.replace(tmp, target)


class ProgressReporter:
    """Progress to the RQ job's meta when running under RQ, and to the status file if given.

    A Redis outage must not end the job (it raised out of the training loop and the RQ worker
    exited): each save is retried a few times with backoff, then the latest progress stays buffered
    in the job's meta and goes out with the next report."""

    def __init__(self, status_file: str | None, retries: int = 3, backoff_s: float = 0.2) -> None:
        self.status_file = status_file
        self.retries = retries
        self.backoff_s = backoff_s
        self.pending = False  # the latest progress has not reached Redis yet
        try:
            from rq import get_current_job

            self.rq_job = get_current_job()
        except Exception:  # noqa: BLE001 - rq missing or not inside a worker
            self.rq_job = None

    def _save_meta(self) -> None:
        assert self.rq_job is not None
        for attempt in range(self.retries + 1):
            try:
                self.rq_job.save_meta()
            except Exception as exc:  # noqa: BLE001 - redis errors, whatever the client raises
                if attempt == self.retries:
                    if not self.pending:
                        log.warning("cannot report progress to Redis; kept for the next report: %r", exc)
                    self.pending = True
                    return
                time.sleep(self.backoff_s * 2**attempt)
            else:
                self.pending = False
                return

    def __call__(self, progress: dict[str, Any]) -> None:
        if self.rq_job is not None:
            self.rq_job.meta["progress"] = progress
            self._save_meta()
        _write_status(self.status_file, {"state": "running", "progress": progress})


PROMOTIONS_DIR = ".promotions"  # under ARTIFACT_ROOT: one record per promoted version


def _read_record(root: Path, version: str) -> dict[str, Any]:
    try:
        data = json.loads((root / PROMOTIONS_DIR / f"{version}.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_promotion_record(root: Path, version: str, gate: dict[str, Any]) -> None:
    """What the gate measured when ``version`` was promoted, and its reference (see promotion_gate)."""
    _write_status(str(root / PROMOTIONS_DIR / f"{version}.json"), gate)


def promotion_gate(
    root: Path, champion: str | None, candidate: str, dataset: Any, tolerance: float, force: bool
) -> dict[str, Any]:
    """Champion/challenger: the serving model, the candidate and the serving model's reference are
    scored with ``contract.served_recall`` on this job's validation data, then
    ``contract.promotion_decision`` decides. Never the numbers in the manifests, which may come from
    other validation data.

    The reference is the last model promoted on merit (not within the tolerance): a promotion on
    merit makes the candidate its own reference, one within the tolerance keeps the champion's.
    """
    from artifact.contract import ArtifactError, load_artifact, promotion_decision, served_recall

    val_users = dataset.val.users_with_items()
    target = {dataset.user_ids[u]: [dataset.item_ids[i] for i in dataset.val.items_of(u)] for u in val_users}
    train = {dataset.user_ids[u]: [dataset.item_ids[i] for i in dataset.train.items_of(u)] for u in val_users}

    def score(version: str | None) -> float | None:
        if version is None:
            return None
        try:
            return served_recall(load_artifact(root / version), train, target)[0]
        except (ArtifactError, OSError) as exc:
            log.warning("cannot score %s for the promotion gate: %s", version, exc)
            return None

    reference = _read_record(root, champion).get("reference") if champion else None
    if reference == champion:
        reference = None
    scores = {"candidate": score(candidate), "serving": score(champion), "reference": score(reference)}
    promoted, reason = promotion_decision(
        scores["candidate"], scores["serving"], tolerance, force, reference=scores["reference"]
    )
    # The reference the candidate carries if promoted: itself when it beat the bar (or was forced:
    # the operator's choice is the new baseline), else whichever of serving / reference set the bar.
    bar_holder, bar = champion, scores["serving"]
    if scores["reference"] is not None and (bar is None or scores["reference"] > bar):
        bar_holder, bar = reference, scores["reference"]
    on_merit = bar is None or (scores["candidate"] is not None and scores["candidate"] >= bar)
    carried = candidate if on_merit or force else bar_holder
    return {
        "promoted": promoted,
        "reason": reason,
        "metric": "recall@20",
        "scores": scores,
        "versions": {"candidate": candidate, "serving": champion, "reference": reference},
        "tolerance": tolerance,
        "forced": force,
        "n_val_users": len(target),
        "dataset_fingerprint": dataset.fingerprint,
        "reference": carried,
    }


def retrain_job(spec: dict[str, Any]) -> dict[str, Any]:
    """Run one retrain; raise on failure (RQ marks the job failed with the message)."""
    from artifact.contract import read_current, set_current
    from training.config import load_config
    from training.data import load_dataset
    from training.export import export_checkpoint
    from training.trainer import BEST, train

    t0 = time.perf_counter()
    job_id = str(spec.get("job_id") or "job")
    report = ProgressReporter(spec.get("status_file"))
    report({"stage": "loading", "epoch": 0})
    overrides = [f"{k}={json.dumps(v)}" for k, v in (spec.get("overrides") or {}).items()]
    cfg = load_config(spec.get("config"), overrides)
    dataset = load_dataset(
        spec["data_dir"],
        extra_train=spec.get("extra_interactions") or None,
        extra_items=spec.get("extra_items") or None,
    )
    items = {"added": 0, "updated": 0, **dataset.extra_items_stats}
    n_extra = sum(len(v) for v in (spec.get("extra_interactions") or {}).values())
    root = Path(spec["artifact_root"])
    parent = read_current(root)
    run_root = Path(spec.get("run_root") or root / ".runs")
    run_dir = run_root / job_id
    # Only one retrain runs at a time (the service holds a lock), so any other run directory is
    # the leftover of a job whose worker was killed before its cleanup ran.
    if run_root.is_dir():
        for stale in run_root.iterdir():
            if stale.is_dir() and stale.name != job_id:
                shutil.rmtree(stale, ignore_errors=True)
    try:
        result = train(dataset, cfg, run_dir, progress_bar=False, on_epoch=report)
        report({"stage": "exporting", "epoch": result.epochs_run})
        path = export_checkpoint(
            run_dir / BEST,
            dataset,
            root,
            parent_version=parent,
            notes={
                "job_id": job_id,
                "extra_interactions": n_extra,
                "extra_items": items,
            },
        )
    finally:
        if not spec.get("keep_run"):
            shutil.rmtree(run_dir, ignore_errors=True)
    gate = promotion_gate(
        root, parent, path.name, dataset, float(spec.get("tolerance", 0.0)), bool(spec.get("force"))
    )
    promoted, reason = gate["promoted"], gate["reason"]
    if promoted:
        set_current(root, path.name)
        write_promotion_record(root, path.name, gate)
    log.info("job %s: %s %s (%s)", job_id, path.name, "promoted" if promoted else "rejected", reason)
    return {
        "job_id": job_id,
        "model_version": path.name,
        "artifact_path": str(path),
        "parent_version": parent,
        "promoted": promoted,
        "reason": reason,
        "promotion": gate,
        "metrics": {"val": result.best_metrics},
        "epochs": result.epochs_run,
        "best_epoch": result.best_epoch,
        "seconds": round(time.perf_counter() - t0, 2),
        "items": items,
    }


def run_job_cli(spec_path: str) -> int:
    """``python -m training job --spec FILE``: status file tells running/finished/failed."""
    spec = json.loads(Path(spec_path).read_text())
    status_file = spec.get("status_file")
    try:
        result = retrain_job(spec)
    except Exception as exc:  # noqa: BLE001 - reported to the caller through the status file
        log.error("job failed: %s", exc)
        _write_status(
            status_file,
            {
                "state": "failed",
                "error": f"{type(exc).__name__}: {exc}",
                "trace": traceback.format_exc()[-4000:],
            },
        )
        return 1
    _write_status(status_file, {"state": "finished", "result": result, "progress": {"stage": "done"}})
    print(json.dumps(result))
    return 0
