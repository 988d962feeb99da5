"""Post-training content fit: the content mapper from raw item features to the trained h_i.

Run at export (``training.export``) on the final item vectors of any trained model, ID-only
included; see ``model.content`` for the maths and ``artifact.content`` for the exported files.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from artifact.content import (
    CONTENT_FILLED,
    CONTENT_KNN_LINE,
    CONTENT_KNN_SOURCES,
    CONTENT_KNN_VECTORS,
    CONTENT_KNN_WEIGHTS,
    CONTENT_MAPPER,
    content_input_file,
    content_knn_features_file,
    content_knn_input_file,
    content_mapper_input_file,
    content_projection_file,
)
from model.content import ContentMapper, ridge_solution
from model.graph import ItemGraph, item_graph_inputs, spmm
from model.mmssl import MMSSL

log = logging.getLogger(__name__)

# Ridge strengths, as multiples of the number of fitting items (the Gram matrix grows with it).
DEFAULT_ALPHAS = (1e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0, 3.0)
HOLDOUT_SHARE = 0.2


@dataclass
class ContentFit:
    mapper: ContentMapper
    report: dict[str, Any]  # alpha, lambda, n_fit_items, held-out cosine and R^2 per alpha


def _raw_tensors(features: Mapping[str, np.ndarray], items: np.ndarray | None = None) -> list[torch.Tensor]:
    out = []
    for f in features.values():
        arr = np.asarray(f, dtype=np.float64)
        out.append(torch.as_tensor(arr if items is None else arr[items]))
    return out


def _heldout_scores(pred: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """(mean cosine, R^2) of predicted vs true item vectors."""
    cos = torch.nn.functional.cosine_similarity(pred, target, dim=1).mean()
    resid = ((pred - target) ** 2).sum()
    total = ((target - target.mean(dim=0)) ** 2).sum().clamp(min=1e-12)
    return float(cos), float(1.0 - resid / total)


@torch.no_grad()
def fit_content_mapper(
    features: Mapping[str, np.ndarray],
    item_vectors: np.ndarray,
    fit_items: np.ndarray,
    *,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    seed: int = 0,
) -> ContentFit:
    """Fit h_i ~= z_i A + c on ``fit_items`` (the warm items) by ridge regression.

    features: modality -> (n_items, D_m) raw; item_vectors: (n_items, d) trained h_i; fit_items:
    indices of the items to fit on. The ridge strength lam = alpha * n is chosen among ``alphas``
    by the R^2 on a seeded 20% of the fitting items, then refitted on all of them.
    """
    fit_items = np.asarray(fit_items, dtype=np.int64)
    if fit_items.size < 10:
        raise ValueError(f"content mapper: need at least 10 items to fit, got {fit_items.size}")
    d = item_vectors.shape[1]
    mapper = ContentMapper({k: int(v.shape[1]) for k, v in features.items()}, d).double()
    raw_fit = _raw_tensors(features, fit_items)
    mapper.set_stats(raw_fit)
    z = mapper.standardized(raw_fit)  # (n_fit, D)
    y = torch.as_tensor(np.asarray(item_vectors, dtype=np.float64)[fit_items])

    perm = torch.as_tensor(np.random.default_rng(seed).permutation(fit_items.size))
    n_hold = max(1, int(round(HOLDOUT_SHARE * fit_items.size)))
    hold, train = perm[:n_hold], perm[n_hold:]
    scores: dict[str, dict[str, float]] = {}
    best_alpha, best_r2 = alphas[0], -float("inf")
    for alpha in alphas:
        weight, bias = ridge_solution(z[train], y[train], alpha * train.numel())
        cos, r2 = _heldout_scores(z[hold] @ weight + bias, y[hold])
        scores[f"{alpha:g}"] = {"cosine": round(cos, 4), "r2": round(r2, 4)}
        if r2 > best_r2:
            best_alpha, best_r2 = alpha, r2
    lam = best_alpha * fit_items.size
    weight, bias = ridge_solution(z, y, lam)
    mapper.linear.weight.copy_(weight.T)
    mapper.linear.bias.copy_(bias)
    report = {
        "alpha": best_alpha,
        "lambda": lam,
        "n_fit_items": int(fit_items.size),
        "heldout_share": HOLDOUT_SHARE,
        "heldout": scores,
    }
    log.info(
        "content mapper: ridge alpha %g on %d items, held-out R^2 %.3f cosine %.3f",
        best_alpha,
        fit_items.size,
        scores[f"{best_alpha:g}"]["r2"],
        scores[f"{best_alpha:g}"]["cosine"],
    )
    return ContentFit(mapper.float(), report)


def fit_content_mapper_bpr(
    features: Mapping[str, np.ndarray],
    user_vectors: np.ndarray,
    train_users: np.ndarray,
    train_items: np.ndarray,
    fit_items: np.ndarray,
    *,
    epochs: int = 10,
    batch_size: int = 2048,
    lr: float = 1e-3,
    seed: int = 0,
) -> ContentFit:
    """Fit the same linear map by ranking instead of regression: with the trained h_u fixed, BPR on
    the training pairs, h_u . (z_i A + c) for a positive above a uniform negative among ``fit_items``.

    This trains exactly what the content path is used for (ranking items that have only content)
    on the items that have interactions. Adam, ``epochs`` passes over the pairs, seeded.
    """
    fit_items = np.asarray(fit_items, dtype=np.int64)
    generator = torch.Generator().manual_seed(seed)
    d = user_vectors.shape[1]
    mapper = ContentMapper({k: int(v.shape[1]) for k, v in features.items()}, d)
    with torch.no_grad():
        mapper.set_stats([t.float() for t in _raw_tensors(features, fit_items)])
        z = mapper.standardized([t.float() for t in _raw_tensors(features)])  # (n_items, D)
        mapper.linear.weight.zero_()
        mapper.linear.bias.zero_()
    users = torch.as_tensor(np.asarray(user_vectors, dtype=np.float32))
    pair_users = torch.as_tensor(np.asarray(train_users, dtype=np.int64))
    pair_items = torch.as_tensor(np.asarray(train_items, dtype=np.int64))
    negatives_from = torch.as_tensor(fit_items)
    opt = torch.optim.Adam(mapper.linear.parameters(), lr=lr)
    losses = []
    with torch.enable_grad():  # export runs under no_grad
        _bpr_epochs(
            mapper,
            z,
            users,
            pair_users,
            pair_items,
            negatives_from,
            opt,
            epochs,
            batch_size,
            generator,
            losses,
        )
    report = {"epochs": epochs, "lr": lr, "n_fit_items": int(fit_items.size), "bpr_loss": losses}
    log.info("content mapper: BPR %d epochs on %d pairs, loss %s", epochs, pair_users.numel(), losses)
    return ContentFit(mapper, report)


def _bpr_epochs(
    mapper: ContentMapper,
    z: torch.Tensor,
    users: torch.Tensor,
    pair_users: torch.Tensor,
    pair_items: torch.Tensor,
    negatives_from: torch.Tensor,
    opt: torch.optim.Optimizer,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    losses: list[float],
) -> None:
    for _ in range(epochs):
        order = torch.randperm(pair_users.numel(), generator=generator)
        total = 0.0
        for start in range(0, order.numel(), batch_size):
            idx = order[start : start + batch_size]
            h_u = users[pair_users[idx]]
            neg = negatives_from[
                torch.randint(0, negatives_from.numel(), (idx.numel(),), generator=generator)
            ]
            pos_score = (h_u * mapper.linear(z[pair_items[idx]])).sum(1)
            neg_score = (h_u * mapper.linear(z[neg])).sum(1)
            loss = -torch.nn.functional.logsigmoid(pos_score - neg_score).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * idx.numel()
        losses.append(round(total / max(1, order.numel()), 4))


def _fit_line(mapped: torch.Tensor, target: torch.Tensor) -> tuple[float, torch.Tensor, str]:
    """s > 0 and c (d,) of the least-squares line target ~= s * mapped + c over the rows (float64).

    A positive s never flips a user's ranking of mapped items, and c adds h_u . c to all of them:
    the line only places mapped items among the trained ones. A least-squares s <= 0 falls back to
    matching the spread (rule "spread").
    """
    mapped, target = mapped.double(), target.double()
    m_c, t_c = mapped - mapped.mean(0), target - target.mean(0)
    scale = float((m_c * t_c).sum() / (m_c**2).sum().clamp(min=1e-12))
    rule = "least squares"
    if scale <= 0:  # never flip the ranking: match the spread instead
        scale, rule = float(((t_c**2).sum() / (m_c**2).sum().clamp(min=1e-12)).sqrt()), "spread"
    return scale, target.mean(0) - scale * mapped.mean(0), rule


@torch.no_grad()
def calibrate_mapper(
    fit: ContentFit, features: Mapping[str, np.ndarray], item_vectors: np.ndarray, fit_items: np.ndarray
) -> ContentFit:
    """The map scaled by the least-squares line of the warm items' trained h_i on their mapped ones.

    BPR fits only the order of items for each fixed h_u, so its map's scale is free: on the full
    model the mapped vectors scored above the trained items and crowded warm items out of top-20
    lists (docs/BENCHMARKS.md). The line h_i ~= s * map(z_i) + c with s > 0 keeps every user's order
    of mapped items (h_u . c is the same for all of them) and places them among the trained items
    as the warm items' own fit says.
    """
    fit_items = np.asarray(fit_items, dtype=np.int64)
    mapped = torch.as_tensor(mapper_vectors(fit.mapper, features, fit_items))
    target = torch.as_tensor(np.asarray(item_vectors)[fit_items])
    scale, bias, rule = _fit_line(mapped, target)
    linear = fit.mapper.linear
    linear.bias.copy_((scale * linear.bias.double() + bias).to(linear.bias.dtype))
    linear.weight.mul_(scale)
    report = dict(fit.report, calibration={"scale": scale, "rule": rule})
    log.info("content mapper: calibrated, scale %.4g (%s)", scale, rule)
    return ContentFit(fit.mapper, report)


PROFILE_ALPHA = 1e-3  # ridge strength per user, chosen on the cold-start benchmark's cold-validation half


@torch.no_grad()
def fit_content_mapper_profile(
    features: Mapping[str, np.ndarray],
    user_vectors: np.ndarray,
    item_vectors: np.ndarray,
    train_users: np.ndarray,
    train_items: np.ndarray,
    fit_items: np.ndarray,
    *,
    alpha: float = PROFILE_ALPHA,
) -> ContentFit:
    """Fit the same linear map so that h_u . h_i imitates the user's content profile (closed form).

    z_i are the standardised features (statistics of ``fit_items``, the warm items); p_u is the mean
    z_i of user u's training items. Ridge regression of p_u on the trained h_u over the users with
    training items, W = (H^T H + alpha n I)^-1 H^T P (d, D), makes h_u W ~= p_u, so the map
    h_i = s z_i W^T + c scores a new item by h_u . h_i ~= s p_u . z_i + h_u . c: the content
    profile's score, carried through the user's own vector. s > 0 and c are the least-squares line
    of the warm items' trained h_i on their mapped z_i W^T (positive s keeps every user's ranking of
    new items; s and c only place new items among the trained ones). float64 throughout.
    """
    if alpha < 0:
        raise ValueError(f"profile alpha must be >= 0 (got {alpha})")
    fit_items = np.asarray(fit_items, dtype=np.int64)
    d = user_vectors.shape[1]
    mapper = ContentMapper({k: int(v.shape[1]) for k, v in features.items()}, d).double()
    mapper.set_stats(_raw_tensors(features, fit_items))
    z = mapper.standardized(_raw_tensors(features))  # (n_items, D)
    pair_users = torch.as_tensor(np.asarray(train_users, dtype=np.int64))
    pair_items = torch.as_tensor(np.asarray(train_items, dtype=np.int64))
    n_users = user_vectors.shape[0]
    counts = torch.bincount(pair_users, minlength=n_users)
    active = torch.nonzero(counts > 0).flatten()
    profiles = torch.zeros(n_users, z.shape[1], dtype=torch.float64).index_add_(0, pair_users, z[pair_items])
    profiles = profiles[active] / counts[active, None]
    h = torch.as_tensor(np.asarray(user_vectors, dtype=np.float64))[active]
    n = active.numel()
    gram = h.T @ h + alpha * n * torch.eye(d, dtype=torch.float64)
    weight = torch.linalg.solve(gram, h.T @ profiles)  # (d, D)
    fitted = h @ weight
    r2 = 1.0 - ((fitted - profiles) ** 2).sum() / ((profiles - profiles.mean(0)) ** 2).sum().clamp(min=1e-12)
    mapped = z[fit_items] @ weight.T  # (n_fit, d)
    target = torch.as_tensor(np.asarray(item_vectors, dtype=np.float64)[fit_items])
    scale, bias, rule = _fit_line(mapped, target)
    mapper.linear.weight.copy_(scale * weight)
    mapper.linear.bias.copy_(bias)
    report = {
        "alpha": alpha,
        "lambda": alpha * n,
        "n_users": int(n),
        "n_fit_items": int(fit_items.size),
        "profile_r2": round(float(r2), 4),
        "scale": scale,
        "scale_rule": rule,
    }
    log.info("content mapper: profile alpha %g on %d users, R^2 %.3f, scale %.4g", alpha, n, float(r2), scale)
    return ContentFit(mapper.float(), report)


@torch.no_grad()
def mapper_vectors(
    mapper: ContentMapper, features: Mapping[str, np.ndarray], items: np.ndarray
) -> np.ndarray:
    """h_i from the mapper for ``items``: (len(items), d) float32 (PyTorch side)."""
    raw = [t.float() for t in _raw_tensors(features, np.asarray(items, dtype=np.int64))]
    return mapper(raw).numpy().astype(np.float32)


@torch.no_grad()
def knn_line(graph_side: np.ndarray, item_vectors: np.ndarray, warm: np.ndarray) -> tuple[float, np.ndarray]:
    """(s > 0, c (d,)): the least-squares line h_i ~= s [S^L E]_i + c of the warm items' trained h_i
    on their item-graph rows (``_fit_line``), the map of kind knn-calibrated."""
    scale, bias, rule = _fit_line(
        torch.as_tensor(np.asarray(graph_side)[warm]), torch.as_tensor(np.asarray(item_vectors)[warm])
    )
    log.info("knn content path: calibration line scale %.4g (%s)", scale, rule)
    return scale, bias.numpy()


@torch.no_grad()
def knn_arrays(
    model: MMSSL,
    item_graph: ItemGraph,
    features: Mapping[str, np.ndarray],
    sources: torch.Tensor,
    line: tuple[float, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """The kind-``knn`` files (``artifact.content``): what a new item's row of S^L E needs.

    ``features``: raw (n_items, D_m) per modality in ``model.config.modality_dims`` order, the ones
    the graph was built from; ``sources``: the graph's source items (``item_graph_sources``);
    ``line``: (s, c) of knn-calibrated (None: s = 1, c = 0).
    """
    cfg = model.config
    out: dict[str, np.ndarray] = {}
    for name in cfg.modality_dims:
        raw = torch.as_tensor(np.asarray(features[name], dtype=np.float32))
        mean, scale = item_graph_inputs(raw, cfg.item_graph_features == "standardize")
        unit = torch.nn.functional.normalize((raw - mean) / scale, dim=1)
        out[content_knn_input_file(name)] = torch.stack([mean, scale]).numpy()
        out[content_knn_features_file(name)] = unit[sources].numpy()
    vectors = model.item_embedding.weight
    for _ in range(cfg.item_graph_layers - 1):  # V = S^{L-1} E: a new item adds the last step
        vectors = spmm(item_graph.matrix, vectors)
    out[CONTENT_KNN_SOURCES] = sources.numpy().astype(np.int64)
    out[CONTENT_KNN_WEIGHTS] = item_graph.column_weights[:, sources].float().numpy()
    out[CONTENT_KNN_VECTORS] = vectors[sources].float().numpy()
    scale, bias = line if line is not None else (1.0, np.zeros(vectors.shape[1]))
    out[CONTENT_KNN_LINE] = np.concatenate([[scale], bias]).astype(np.float32)
    return out


@torch.no_grad()
def content_arrays(model: MMSSL, mapper: ContentMapper | None, filled: np.ndarray) -> dict[str, np.ndarray]:
    """The content path's artifact files (``artifact.content``) for ``model`` and ``mapper``
    (None for kind knn: projections and filled items only, ``knn_arrays`` adds the rest)."""
    out: dict[str, np.ndarray] = {}
    for name in model.modalities:
        mean, scale = model.feature_stats(name)
        layer = model.projections[name]
        assert isinstance(layer, torch.nn.Linear)
        out[content_input_file(name)] = torch.stack([mean, scale]).float().numpy()
        out[content_projection_file(name)] = torch.cat([layer.weight.T, layer.bias[None]]).float().numpy()
    out[CONTENT_FILLED] = np.asarray(filled, dtype=np.int64)
    if mapper is None:
        return out
    for name in mapper.modality_dims:
        mean, scale = mapper.stats(name)
        out[content_mapper_input_file(name)] = torch.stack([mean, scale]).float().numpy()
    linear = mapper.linear
    out[CONTENT_MAPPER] = torch.cat([linear.weight.T, linear.bias[None]]).float().numpy()
    return out
