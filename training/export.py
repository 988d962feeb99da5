"""Export a trained checkpoint as a serving artifact (see artifact/contract.py for the format)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from artifact.content import CONTENT_KINDS, KNN_KINDS, content_manifest_entry
from artifact.contract import ArtifactArrays, Manifest, new_model_version, utc_now, write_artifact
from training.content import (
    calibrate_mapper,
    content_arrays,
    fit_content_mapper,
    fit_content_mapper_bpr,
    fit_content_mapper_profile,
    knn_arrays,
    knn_line,
    mapper_vectors,
)
from training.data import Dataset
from training.evaluate import rank_metrics
from training.trainer import TrainingState, item_graph_sources, load_checkpoint, model_from_checkpoint

CONTENT_CHOICES = (*CONTENT_KINDS, "none")

log = logging.getLogger(__name__)


class ExportError(RuntimeError):
    pass


@torch.no_grad()
def export_checkpoint(
    checkpoint_path: str | Path,
    dataset: Dataset,
    artifact_root: str | Path,
    *,
    version: str | None = None,
    parent_version: str | None = None,
    extra_metrics: dict[str, Any] | None = None,
    notes: dict[str, Any] | None = None,
    content: str = "bpr-calibrated",
) -> Path:
    """Write ``artifact_root/<version>`` from ``checkpoint_path`` (a best.pt) and return its path.

    With item features in the data, ``content`` fits the content mapper on the items with training
    interactions, exports it (artifact/content.py) and gives every item without one its h_i from
    its features: ``"bpr"`` by BPR against the trained h_u, ``"bpr-calibrated"`` (default: the
    service reserves list slots for new items, docs/BENCHMARKS.md "Slots for new items") the same
    map placed among the trained items by the warm items' least-squares line, ``"profile"`` in
    closed form so that h_u . h_i imitates the user's content profile, ``"ridge"`` by ridge
    regression onto the trained h_i (training.content); ``"knn"`` (a model trained with
    ``item_graph_k`` > 0 only) by the frozen item kNN graph: such an item's h_i is its row of S^L E
    alone, and the artifact carries what a new item's row needs; ``"knn-calibrated"`` that row on
    the warm items' least-squares line of h_i on their rows; ``"none"`` exports the model as trained.
    """
    if content not in CONTENT_CHOICES:
        raise ExportError(f"content must be one of {CONTENT_CHOICES} (got {content!r})")
    ckpt = load_checkpoint(Path(checkpoint_path))
    if ckpt["dataset_fingerprint"] != dataset.fingerprint:
        raise ExportError(
            f"{checkpoint_path}: trained on dataset {ckpt['dataset_fingerprint'][:12]}..., "
            f"but the given data is {dataset.fingerprint[:12]}..."
        )
    device = torch.device("cpu")
    model, views = model_from_checkpoint(ckpt, device)
    config = model.config
    if content in KNN_KINDS and config.item_graph_k <= 0:
        raise ExportError(
            f"{checkpoint_path}: content path {content!r} needs a model trained with item_graph_k > 0 "
            f"(this one has item_graph_k={config.item_graph_k})"
        )
    state = TrainingState(dataset, config, device)
    out = model(state.graph, state.item_raw, views, state.item_graph)
    item_embeddings = out.item.numpy().copy()
    popularity = dataset.train.item_counts(dataset.n_items)

    metrics: dict[str, Any] = {"val": ckpt["val_metrics"], "best_epoch": ckpt["epoch"]}
    extra: dict[str, np.ndarray] = {}
    content_entry: dict[str, Any] | None = None
    if content in KNN_KINDS:
        assert state.item_graph is not None and out.item_graph_side is not None
        filled = np.flatnonzero(popularity == 0)
        graph_side = out.item_graph_side.numpy()
        line = None
        if content == "knn-calibrated":
            line = knn_line(graph_side, item_embeddings, np.flatnonzero(popularity > 0))
        scale, bias = line if line is not None else (1.0, np.zeros(config.embed_dim))
        # An item without training interactions: its row of S^L E alone (its own e_i is untrained),
        # on the calibration line for knn-calibrated.
        item_embeddings[filled] = (scale * graph_side[filled] + bias).astype(np.float32)
        extra = content_arrays(model, None, filled)
        sources = item_graph_sources(dataset, device)
        extra.update(knn_arrays(model, state.item_graph, dataset.features, sources, line))
        knn_settings = {
            "k": config.item_graph_k,
            "layers": config.item_graph_layers,
            "features": config.item_graph_features,
            "norm": config.item_graph_norm,
        }
        content_entry = content_manifest_entry(
            {name: int(f.shape[1]) for name, f in dataset.features.items()},
            list(config.modalities),
            int(filled.size),
            {"n_sources": int(sources.numel()), **({"calibration": {"scale": scale}} if line else {})},
            kind=content,
            knn=knn_settings,
        )
    elif content != "none" and dataset.features:
        warm = np.flatnonzero(popularity > 0)
        if content == "ridge":
            fit = fit_content_mapper(dataset.features, item_embeddings, warm)
        elif content in ("bpr", "bpr-calibrated"):
            pair_users, pair_items = dataset.train.to_pairs()
            fit = fit_content_mapper_bpr(dataset.features, out.user.numpy(), pair_users, pair_items, warm)
            if content == "bpr-calibrated":
                fit = calibrate_mapper(fit, dataset.features, item_embeddings, warm)
        else:
            pair_users, pair_items = dataset.train.to_pairs()
            fit = fit_content_mapper_profile(
                dataset.features, out.user.numpy(), item_embeddings, pair_users, pair_items, warm
            )
        filled = np.flatnonzero(popularity == 0)
        if filled.size:
            item_embeddings[filled] = mapper_vectors(fit.mapper, dataset.features, filled)
        extra = content_arrays(model, fit.mapper, filled)
        content_entry = content_manifest_entry(
            {name: int(f.shape[1]) for name, f in dataset.features.items()},
            list(config.modalities),
            int(filled.size),
            fit.report,
            kind=content,
        )
    if content_entry is not None:
        # Validation of the vectors as exported (cold items filled), beside the checkpoint's.
        metrics["val_exported"] = rank_metrics(
            out.user,
            torch.as_tensor(item_embeddings),
            dataset.train.indptr,
            dataset.train.indices,
            dataset.val.indptr,
            dataset.val.indices,
        )
    metrics.update(extra_metrics or {})
    manifest = Manifest(
        model_version=version or new_model_version(),
        parent_version=parent_version,
        created_at=utc_now(),
        dataset_fingerprint=dataset.fingerprint,
        n_users=dataset.n_users,
        n_items=dataset.n_items,
        dim=config.embed_dim,
        n_layers=config.n_layers,
        omega=float(config.omega) if config.modalities else 0.0,
        graph_norm=config.graph_norm,
        modalities=[
            {"name": name, "raw_dim": config.modality_dims[name], "dim": config.embed_dim}
            for name in config.modalities
        ],
        model_config=config.to_dict(),
        train_config=ckpt["config"]["train"],
        metrics=metrics,
        notes={"dataset": dataset.summary(), **(notes or {})},
        content=content_entry,
    )
    arrays = ArtifactArrays(
        user_ids=list(dataset.user_ids),
        item_ids=list(dataset.item_ids),
        user_embeddings=out.user.numpy(),
        item_embeddings=item_embeddings,
        user_id_side=out.user_id_side.numpy(),
        item_layer_embeddings=np.stack([t.numpy() for t in out.item_layers])
        if out.item_layers
        else np.zeros((0, *out.item.shape), dtype=np.float32),
        modality_features={
            name: fbar.numpy()
            for name, fbar in zip(config.modalities, out.features.projected_items, strict=True)
        },
        train_indptr=np.asarray(dataset.train.indptr, dtype=np.int64),
        train_indices=np.asarray(dataset.train.indices, dtype=np.int32),
        item_popularity=popularity,
        extra=extra,
    )
    path = write_artifact(artifact_root, manifest, arrays)
    log.info("exported %s (val recall@20 %.4f)", path, ckpt["val_metrics"]["recall@20"])
    return path
