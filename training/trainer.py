"""The MMSSL training loop: alternating discriminator and model steps, validation, checkpoints.

Checkpoints live in a run directory: ``last.pt`` (everything needed to resume, rewritten atomically
after every epoch) and ``best.pt`` (the model at the best validation Recall@20 so far, with the
Eq. 8 views it was evaluated with, so evaluation and export reproduce it exactly).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model import MMSSL, MMSSLConfig, MMSSLOutput, ModalityViews, build_interaction_graph, views_from_topk
from model.graph import (
    InteractionGraph,
    ItemGraph,
    build_item_graph,
    dense_times_weight_t,
    mean_operators_with_transposes,
    modality_topk,
    observed_rows,
)
from model.losses import (
    bpr_loss,
    cross_modal_info_nce,
    discriminator_loss,
    generator_loss,
    gradient_penalty_gram,
    gram_matrix,
    gumbel_transform,
    l2_penalty,
)
from training import allocator
from training.config import Config, ConfigError, TrainConfig
from training.data import Dataset
from training.evaluate import rank_metrics
from training.views import faiss_available, flat_modality_topk, ivf_modality_topk

log = logging.getLogger(__name__)

BEST = "best.pt"
LAST = "last.pt"
HISTORY = "history.json"
CURVES = "curves.png"
SELECT_METRIC = "recall@20"

ProgressFn = Callable[[dict[str, Any]], None]


@dataclass
class TrainResult:
    run_dir: Path
    best_epoch: int
    best_metrics: dict[str, float]
    epochs_run: int
    seconds: float
    seconds_per_epoch: float
    peak_rss_mb: float
    stopped_early: bool
    history: list[dict[str, Any]]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def model_config_for(dataset: Dataset, model_settings: dict[str, Any]) -> MMSSLConfig:
    cfg = MMSSLConfig(
        n_users=dataset.n_users,
        n_items=dataset.n_items,
        modality_dims={name: int(f.shape[1]) for name, f in dataset.features.items()},
        **model_settings,
    )
    try:
        cfg.validate()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return cfg


def item_graph_sources(dataset: Dataset, device: torch.device) -> Tensor:
    """The items an item-graph row may point at: those with training interactions, sorted."""
    warm = np.flatnonzero(dataset.train.item_counts(dataset.n_items) > 0)
    return torch.as_tensor(warm, dtype=torch.int64, device=device)


class TrainingState:
    """Tensors derived from the dataset, on the training device."""

    def __init__(self, dataset: Dataset, config: MMSSLConfig, device: torch.device) -> None:
        users, items = dataset.train.to_pairs()
        self.users = torch.as_tensor(users, dtype=torch.int64, device=device)
        self.items = torch.as_tensor(items, dtype=torch.int64, device=device)
        self.graph: InteractionGraph = build_interaction_graph(
            self.users, self.items, dataset.n_users, dataset.n_items, config.graph_norm
        )
        self.item_raw = [
            torch.as_tensor(dataset.features[name], dtype=torch.float32, device=device)
            for name in config.modalities
        ]
        self.item_graph: ItemGraph | None = None
        if config.item_graph_k > 0:  # issue 11 (b): built once, from every modality's raw features
            self.item_graph = build_item_graph(
                [
                    torch.as_tensor(dataset.features[name], dtype=torch.float32, device=device)
                    for name in config.modality_dims
                ],
                item_graph_sources(dataset, device),
                config.item_graph_k,
                standardize=config.item_graph_features == "standardize",
                norm=config.item_graph_norm,
            )
        self.active_users = torch.as_tensor(dataset.train.users_with_items(), device=device)
        # Sorted keys u * n_items + i of the observed pairs, for rejection of sampled negatives.
        self.pair_keys = torch.sort(self.users * dataset.n_items + self.items).values
        self.n_items = dataset.n_items
        # The pairs' orders by (user, item) and by (item, user), so that graph_without builds its
        # CSR operators with masks and no sort: O(nnz) per step.
        self.user_order = torch.argsort(self.users * dataset.n_items + self.items)
        self.item_order = torch.argsort(self.items * dataset.n_users + self.users)

    def graph_without(self, pair_idx: Tensor) -> InteractionGraph:
        """The graph with the Eq. 2 operators rebuilt without the given training pairs."""
        keep = torch.ones(self.users.numel(), dtype=torch.bool, device=self.users.device)
        keep[pair_idx] = False
        # positions of the kept pairs in each sorted order, renumbered into the kept subset
        kept_index = torch.cumsum(keep, 0) - 1
        user_order = kept_index[self.user_order[keep[self.user_order]]]
        item_order = kept_index[self.item_order[keep[self.item_order]]]
        user_mean, item_mean, user_mean_t, item_mean_t = mean_operators_with_transposes(
            self.users[keep],
            self.items[keep],
            self.graph.user_mean.shape[0],
            self.n_items,
            user_order=user_order,
            item_order=item_order,
        )
        return self.graph._replace(
            user_mean=user_mean, item_mean=item_mean, user_mean_t=user_mean_t, item_mean_t=item_mean_t
        )

    def sample_negatives(self, users: Tensor, generator: torch.Generator) -> Tensor:
        """Uniform items the user has not interacted with in training (resampled on collision)."""
        negatives = torch.randint(0, self.n_items, users.shape, generator=generator, device=users.device)
        for _ in range(20):
            keys = users * self.n_items + negatives
            pos = torch.searchsorted(self.pair_keys, keys).clamp(max=self.pair_keys.numel() - 1)
            clash = self.pair_keys[pos] == keys
            if not bool(clash.any()):
                break
            fresh = torch.randint(0, self.n_items, users.shape, generator=generator, device=users.device)
            negatives = torch.where(clash, fresh, negatives)
        return negatives


@torch.no_grad()
def refresh_views(model: MMSSL, state: TrainingState, tc: TrainConfig | None = None) -> ModalityViews | None:
    """Rebuild the Eq. 8 top-k views from the current (dropout-free) modality features.

    The top-k search is ``tc.view_index``'s: exact over all items (also when ``tc`` is None; on
    CPU through FAISS's flat search where faiss is installed, else torch's blocks), or the FAISS
    IVF search of ``training.views``.
    """
    if not model.modalities:
        return None
    was_training = model.training
    model.eval()
    feats = model.modality_features(state.item_raw, state.graph)
    model.train(was_training)
    k = model.config.view_topk
    if tc is not None and tc.view_index == "ivf":
        tops = ivf_modality_topk(
            feats.users, feats.items, k, state.active_users, tc.view_ivf_lists, tc.view_ivf_probe, tc.seed
        )
    elif feats.users[0].device.type == "cpu" and faiss_available():
        tops = flat_modality_topk(feats.users, feats.items, k, state.active_users)
    else:
        tops = modality_topk(feats.users, feats.items, k, state.active_users)
    return views_from_topk(tops, state.n_items)


def view_refresh_interval(tc: TrainConfig, steps_per_epoch: int) -> int:
    """Steps between Eq. 8 view refreshes: ``view_refresh_steps``, or with
    ``view_refreshes_per_epoch`` = N > 0, ceil(steps_per_epoch / N) (N refreshes an epoch at most,
    however many steps it has)."""
    if tc.view_refreshes_per_epoch > 0:
        return max(1, math.ceil(steps_per_epoch / tc.view_refreshes_per_epoch))
    return tc.view_refresh_steps


def eval_user_sample(target: Any, n_users: int, seed: int) -> np.ndarray | None:
    """A fixed sample of ``n_users`` users with items in ``target`` (sorted), or None for all of
    them (``n_users`` 0 or at least their number)."""
    with_items = np.flatnonzero(np.diff(target.indptr) > 0)
    if n_users <= 0 or n_users >= with_items.size:
        return None
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(with_items, size=n_users, replace=False))


@torch.no_grad()
def evaluate_model(
    model: MMSSL,
    state: TrainingState,
    views: ModalityViews | None,
    dataset: Dataset,
    target: Any,
    batch_users: int,
    users: np.ndarray | None = None,
) -> dict[str, float]:
    """Ranking metrics on ``target``, over ``users`` only when given (see ``rank_metrics``)."""
    was_training = model.training
    model.eval()
    out = model(state.graph, state.item_raw, views, state.item_graph)
    model.train(was_training)
    return rank_metrics(
        out.user,
        out.item,
        dataset.train.indptr,
        dataset.train.indices,
        target.indptr,
        target.indices,
        batch_users=batch_users,
        users=users,
    )


def _atomic_save(obj: Any, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "sampler": generator.get_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _restore_rng(state: dict[str, Any], generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    generator.set_state(state["sampler"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    return torch.load(path, map_location=map_location, weights_only=False)


def model_from_checkpoint(ckpt: dict[str, Any], device: torch.device) -> tuple[MMSSL, ModalityViews | None]:
    config = MMSSLConfig.from_dict(ckpt["model_config"])
    model = MMSSL(config).to(device)
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    views = None
    if ckpt.get("views_topk"):
        views = views_from_topk([t.to(device) for t in ckpt["views_topk"]], config.n_items)
    return model, views


def evaluate_checkpoint(
    checkpoint_path: Path, dataset: Dataset, target: Any, batch_users: int = 2048
) -> dict[str, Any]:
    """Score the model saved at ``checkpoint_path`` on ``target`` (an Interactions split)."""
    ckpt = load_checkpoint(checkpoint_path)
    if ckpt["dataset_fingerprint"] != dataset.fingerprint:
        raise ConfigError(f"{checkpoint_path}: was trained on a different dataset than {dataset.root}")
    device = torch.device("cpu")
    model, views = model_from_checkpoint(ckpt, device)
    state = TrainingState(dataset, model.config, device)
    metrics = evaluate_model(model, state, views, dataset, target, batch_users)
    return {"epoch": ckpt["epoch"], **metrics}


def make_optimizers(
    model: MMSSL, cfg: Config, device: torch.device
) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """(opt_model, opt_discriminator): AdamW on everything but D, Adam on D (None without one).

    On CPU and CUDA they run torch's fused kernels: one pass over each parameter instead of about
    six (D's first layer alone is hidden x |I|); the same update up to float rounding.
    """
    tc = cfg.train
    fused = True if device.type in ("cpu", "cuda") else None
    opt_model = torch.optim.AdamW(
        model.model_parameters(), lr=tc.lr, weight_decay=tc.weight_decay, fused=fused
    )
    opt_discriminator = None
    if model.discriminator is not None:
        betas = (float(tc.d_betas[0]), float(tc.d_betas[1]))
        opt_discriminator = torch.optim.Adam(
            model.discriminator.parameters(), lr=tc.d_lr, betas=betas, fused=fused
        )
    return opt_model, opt_discriminator


def adversarial_step(
    model: MMSSL,
    out: Any,
    state: TrainingState,
    batch_users: Tensor,
    opt_discriminator: torch.optim.Optimizer,
    cfg: Config,
    generator: torch.Generator,
) -> tuple[Tensor, float]:
    """One discriminator update, then L_G for the model update (Eq. 3-7).

    Returns (L_G with graph to the generator, L_D value).
    """
    mc, tc = model.config, cfg.train
    disc = model.discriminator
    assert disc is not None
    users = batch_users[torch.randperm(batch_users.numel(), generator=generator, device=batch_users.device)]
    users = users[: tc.adv_users]
    columns = None
    if 0 < tc.adv_item_columns < state.n_items:
        columns = sample_item_columns(state, users, tc.adv_item_columns, generator)
    # Generated relations A_hat^m = cos(f_u^m, f_i^m) (Eq. 3) over all items or the sampled
    # columns, kept as factors U V^T (unit rows, (B, d) and (C, d)): D's first layer is affine,
    # W (U V^T)^T = U (W V)^T, so W V, one (hidden x d) product per modality, replaces the
    # [B x C] rows and their [B x C] x [C x hidden] products (d = 64 << B = 128).
    fake_left = [F.normalize(f_u[users], dim=1) for f_u in out.features.users]
    fake_right = [F.normalize(f_i if columns is None else f_i[columns], dim=1) for f_i in out.features.items]
    # Real rows A_tilde (Eq. 5): Gumbel-softmax of the observed rows (normalised over all items,
    # then the sampled columns are taken) plus zeta * cos(h_u, h_i), the latter as factors too.
    with torch.no_grad():
        observed = observed_rows(state.graph, users, state.n_items)
        transformed = gumbel_transform(observed, mc.gumbel_tau, generator) if mc.use_gumbel else observed
        if columns is not None:
            transformed = transformed[:, columns]
        real_left = F.normalize(out.user[users], dim=1)
        real_right = F.normalize(out.item if columns is None else out.item[columns], dim=1)
    use_zeta = mc.zeta != 0.0
    dim = real_right.shape[1]

    opt_discriminator.zero_grad(set_to_none=True)
    loss_d = torch.zeros((), device=users.device)
    weight, bias = disc.first_weight(columns), disc.first_bias()  # (hidden, C), (hidden,)
    # W V for the real rows' cosine part and every modality in one product: (hidden, (1 + M) d)
    rights = ([real_right] if use_zeta else []) + [r.detach() for r in fake_right]
    projected = list((weight @ torch.cat(rights, dim=1)).split(dim, dim=1))
    # The Gumbel-softmax rows at a small tau are exact zeros but for a few entries per row.
    hidden_real = dense_times_weight_t(transformed, weight) + bias
    if use_zeta:
        hidden_real = hidden_real + mc.zeta * (real_left @ projected.pop(0).T)
    real_scores = disc.from_hidden(hidden_real)
    # The gradient penalty's interpolated rows reuse the real and fake rows' first-layer outputs,
    # and its norms ||g W|| come from one Gram matrix W W^T shared by the modalities
    # (gradient_penalty_gram): no [B x C] product is left in the D update.
    gram = gram_matrix(weight)  # (hidden, hidden)
    for left, proj in zip(fake_left, projected, strict=True):
        hidden_fake = left.detach() @ proj.T + bias
        loss_d = loss_d + discriminator_loss(real_scores, disc.from_hidden(hidden_fake))
        loss_d = loss_d + tc.gp_weight * gradient_penalty_gram(
            disc.from_hidden, gram, hidden_real, hidden_fake
        )
    loss_d = loss_d / len(fake_left)
    # Only D's parameters: ``inputs`` keeps any leaf that requires grad out of this backward.
    loss_d.backward(inputs=list(disc.parameters()))
    opt_discriminator.step()
    # L_G trains the generator only: with D's parameters frozen while its graph is recorded, the
    # model's backward skips D's weight gradients (they would be discarded by the next D step).
    # The weight is read again: the step changed it (and a column slice is a copy).
    disc.requires_grad_(False)
    try:
        weight, bias = disc.first_weight(columns), disc.first_bias()
        projected = list((weight @ torch.cat(fake_right, dim=1)).split(dim, dim=1))
        loss_g = torch.stack(
            [
                generator_loss(disc.from_hidden(left @ proj.T + bias))
                for left, proj in zip(fake_left, projected, strict=True)
            ]
        ).mean()
    finally:
        disc.requires_grad_(True)
    return loss_g, float(loss_d.detach())


def step_losses(
    model: MMSSL,
    out: MMSSLOutput,
    users: Tensor,
    positives: Tensor,
    negatives: Tensor,
    batch_users: Tensor,
    tc: TrainConfig,
    generator: torch.Generator,
) -> tuple[Tensor, Tensor, Tensor]:
    """(L_BPR, the Eq. 11 InfoNCE averaged over modalities, the L2 term) of one batch.

    Rows are taken with ``index_select``, not ``x[idx]``: the batch repeats users and items, and
    the backward of ``x[idx]`` (an accumulating ``index_put_``) sums the repeated rows' gradients in
    an order that changes from run to run on several CPU threads; ``index_add_`` does not.
    """
    user_rows = out.user.index_select(0, users)
    loss_bpr = bpr_loss(
        (user_rows * out.item.index_select(0, positives)).sum(1),
        (user_rows * out.item.index_select(0, negatives)).sum(1),
    )
    loss_cl = torch.zeros((), device=users.device)
    if model.config.use_contrastive and out.view_users:
        cl_users = contrastive_users(batch_users, tc.cl_users, generator)
        anchor = out.user.index_select(0, cl_users)
        loss_cl = sum(
            cross_modal_info_nce(anchor, view.index_select(0, cl_users), tc.cl_temperature)
            for view in out.view_users
        ) / len(out.view_users)
    loss_l2 = l2_penalty(
        model.user_embedding.weight.index_select(0, users),
        model.item_embedding.weight.index_select(0, positives),
        model.item_embedding.weight.index_select(0, negatives),
    )
    return loss_bpr, loss_cl, loss_l2


def contrastive_users(batch_users: Tensor, n_users: int, generator: torch.Generator) -> Tensor:
    """The batch users of the Eq. 11 InfoNCE: all of them (``n_users`` 0 or at least their
    number), else a uniform sample of ``n_users`` without replacement.  (B,) -> (min(B, N),)"""
    if n_users <= 0 or n_users >= batch_users.numel():
        return batch_users
    pick = torch.randperm(batch_users.numel(), generator=generator, device=batch_users.device)[:n_users]
    return batch_users[pick]


def sample_item_columns(
    state: TrainingState, users: Tensor, n_columns: int, generator: torch.Generator
) -> Tensor:
    """Sorted unique item columns for the discriminator's rows: every item the users interacted
    with in training (where the Gumbel-softmax mass of A_tilde lies), plus uniform items up to
    ``n_columns`` in all (more when the users' own items alone exceed it).  -> (C,) int64
    """
    starts, ends = state.graph.indptr[users], state.graph.indptr[users + 1]
    lengths = ends - starts
    offsets = torch.cumsum(lengths, 0) - lengths
    flat = torch.arange(int(lengths.sum()), device=users.device) - torch.repeat_interleave(offsets, lengths)
    own = state.graph.indices[torch.repeat_interleave(starts, lengths) + flat]
    uniform = torch.randperm(state.n_items, generator=generator, device=users.device)[:n_columns]
    own = torch.unique(own)
    extra = uniform[~torch.isin(uniform, own)][: max(0, n_columns - own.numel())]
    return torch.sort(torch.cat([own, extra])).values


def train(
    dataset: Dataset,
    cfg: Config,
    run_dir: str | Path,
    *,
    progress_bar: bool = True,
    on_epoch: ProgressFn | None = None,
) -> TrainResult:
    """Train MMSSL on ``dataset`` into ``run_dir``, resuming from ``run_dir/last.pt`` if present.

    However it ends, the heap the steps kept (``allocator.heap_only``) is released and glibc's
    trim threshold restored, so a process that goes on (a retrain job's export) does not keep them.
    """
    try:
        return _train(dataset, cfg, run_dir, progress_bar=progress_bar, on_epoch=on_epoch)
    finally:
        allocator.release()


def _train(
    dataset: Dataset,
    cfg: Config,
    run_dir: str | Path,
    *,
    progress_bar: bool,
    on_epoch: ProgressFn | None,
) -> TrainResult:
    tc = cfg.train
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    device = resolve_device(tc.device)
    if device.type == "cpu" and tc.num_threads > 0:
        torch.set_num_threads(tc.num_threads)
    allocator.tune()  # keep the step's freed tensors in the heap (training.allocator)
    seed_everything(tc.seed)
    model_config = model_config_for(dataset, cfg.model)
    state = TrainingState(dataset, model_config, device)
    model = MMSSL(model_config).to(device)
    model.set_feature_stats(state.item_raw)  # no-op unless model.feature_norm is set
    opt_model, opt_discriminator = make_optimizers(model, cfg, device)
    sampler = torch.Generator(device=device).manual_seed(tc.seed)

    history: list[dict[str, Any]] = []
    best_metric, best_epoch, bad_epochs, start_epoch, step = -1.0, 0, 0, 1, 0
    elapsed_before = 0.0
    identity = {"dataset_fingerprint": dataset.fingerprint, "config": cfg.to_dict()}
    last_path = run_dir / LAST
    finished_before = False
    resumed_views: list[Tensor] = []
    if last_path.is_file():
        ckpt = load_checkpoint(last_path, device)
        mismatch = [k for k, v in identity.items() if ckpt.get(k) != v]
        if mismatch:
            raise ConfigError(
                f"{last_path}: run directory holds a run with a different {' and '.join(mismatch)}; "
                "use another --out directory or delete it"
            )
        model.load_state_dict(ckpt["state_dict"])
        opt_model.load_state_dict(ckpt["opt_model"])
        if opt_discriminator is not None:
            opt_discriminator.load_state_dict(ckpt["opt_discriminator"])
        _restore_rng(ckpt["rng"], sampler)
        history, best_metric, best_epoch = ckpt["history"], ckpt["best_metric"], ckpt["best_epoch"]
        bad_epochs, step, elapsed_before = ckpt["bad_epochs"], ckpt["step"], ckpt["elapsed"]
        start_epoch = ckpt["epoch"] + 1
        finished_before = bool(ckpt["finished"])
        resumed_views = [t.to(device) for t in ckpt["views_topk"]]
        log.info("resuming %s at epoch %d (best %s %.4f)", run_dir, start_epoch, SELECT_METRIC, best_metric)
    if finished_before:
        log.info("%s already finished; nothing to do", run_dir)
        start_epoch = tc.epochs + 1

    n_pairs = state.users.numel()
    steps_per_epoch = max(1, math.ceil(n_pairs / tc.batch_size))
    if resumed_views:
        views = views_from_topk(resumed_views, state.n_items)
    else:
        views = refresh_views(model, state, tc)
    refresh_every = view_refresh_interval(tc, steps_per_epoch)
    val_users = eval_user_sample(dataset.val, tc.eval_users, tc.seed)
    t_start = time.perf_counter()
    stopped_early = False
    epoch = start_epoch - 1
    for epoch in range(start_epoch, tc.epochs + 1):
        model.train()
        t_epoch = time.perf_counter()
        sums = {"loss": 0.0, "bpr": 0.0, "cl": 0.0, "g": 0.0, "d": 0.0}
        order = torch.randperm(n_pairs, generator=sampler, device=device)
        batches = range(steps_per_epoch)
        if progress_bar:
            from tqdm import tqdm

            batches = tqdm(batches, desc=f"epoch {epoch}", leave=False, dynamic_ncols=True)
        for b in batches:
            idx = order[b * tc.batch_size : (b + 1) * tc.batch_size]
            users, positives = state.users[idx], state.items[idx]
            negatives = state.sample_negatives(users, sampler)
            if views is not None and step % refresh_every == 0 and step > 0:
                views = refresh_views(model, state, tc)
            step += 1

            with allocator.heap_only():  # the step's large blocks are reused by the next step
                holdout = tc.holdout_batch_edges and model.modalities
                graph = state.graph_without(idx) if holdout else state.graph
                out = model(graph, state.item_raw, views, state.item_graph)
                batch_users = torch.unique(users)

                loss_g = torch.zeros((), device=device)
                if model.discriminator is not None and opt_discriminator is not None:
                    loss_g, loss_d = adversarial_step(
                        model, out, state, batch_users, opt_discriminator, cfg, sampler
                    )
                    sums["d"] += loss_d

                loss_bpr, loss_cl, loss_l2 = step_losses(
                    model, out, users, positives, negatives, batch_users, tc, sampler
                )
                loss = loss_bpr + tc.cl_weight * loss_cl + tc.g_weight * loss_g + tc.l2_weight * loss_l2
                opt_model.zero_grad(set_to_none=True)
                loss.backward()
                opt_model.step()
                del out, graph
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {float(loss)} at epoch {epoch}, step {step}")
            sums["loss"] += float(loss.detach())
            sums["bpr"] += float(loss_bpr.detach())
            sums["cl"] += float(loss_cl.detach())
            sums["g"] += float(loss_g.detach())
        train_seconds = time.perf_counter() - t_epoch

        record: dict[str, Any] = {"epoch": epoch, "train_seconds": round(train_seconds, 3)}
        record.update({k: v / steps_per_epoch for k, v in sums.items()})
        improved = False
        if epoch % tc.eval_every == 0 or epoch == tc.epochs:
            allocator.release()  # the steps' freed heap, before evaluation's own large blocks
            t_eval = time.perf_counter()
            val = evaluate_model(model, state, views, dataset, dataset.val, tc.eval_batch_users, val_users)
            record["eval_seconds"] = round(time.perf_counter() - t_eval, 3)
            record["val"] = val
            if val[SELECT_METRIC] > best_metric:
                improved = True
                best_metric, best_epoch, bad_epochs = val[SELECT_METRIC], epoch, 0
                _atomic_save(
                    {
                        "model_config": model_config.to_dict(),
                        "config": cfg.to_dict(),
                        "state_dict": model.state_dict(),
                        "views_topk": [t.cpu() for t in views.topk_items] if views else [],
                        "epoch": epoch,
                        "val_metrics": val,
                        "dataset_fingerprint": dataset.fingerprint,
                        "dataset_summary": dataset.summary(),
                    },
                    run_dir / BEST,
                )
            else:
                bad_epochs += 1
        record["peak_rss_mb"] = round(peak_rss_mb(), 1)
        history.append(record)
        elapsed = elapsed_before + time.perf_counter() - t_start
        val_txt = ""
        if "val" in record:
            v = record["val"]
            val_txt = (
                f" | val R@20 {v['recall@20']:.4f} N@20 {v['ndcg@20']:.4f}"
                f"{' *' if improved else ''} (best {best_metric:.4f} @ {best_epoch})"
            )
        log.info(
            "epoch %d | loss %.4f bpr %.4f cl %.4f g %.4f d %.4f | %.1fs%s",
            epoch,
            record["loss"],
            record["bpr"],
            record["cl"],
            record["g"],
            record["d"],
            train_seconds,
            val_txt,
        )
        out_of_patience = bad_epochs >= tc.patience
        out_of_time = tc.max_minutes > 0 and elapsed >= tc.max_minutes * 60
        finished = out_of_patience or out_of_time or epoch == tc.epochs
        _atomic_save(
            {
                **identity,
                "state_dict": model.state_dict(),
                "opt_model": opt_model.state_dict(),
                "opt_discriminator": opt_discriminator.state_dict() if opt_discriminator else None,
                "rng": _rng_state(sampler),
                "history": history,
                "best_metric": best_metric,
                "best_epoch": best_epoch,
                "bad_epochs": bad_epochs,
                "step": step,
                "epoch": epoch,
                "elapsed": elapsed,
                "finished": finished,
                "views_topk": [t.cpu() for t in views.topk_items] if views else [],
            },
            last_path,
        )
        write_history(run_dir, history)
        if on_epoch is not None:
            on_epoch(
                {
                    "epoch": epoch,
                    "max_epochs": tc.epochs,
                    "best_recall@20": best_metric,
                    "best_epoch": best_epoch,
                    "stage": "training",
                }
            )
        if out_of_patience:
            stopped_early = True
            log.info("early stop: no %s improvement for %d epochs", SELECT_METRIC, tc.patience)
            break
        if out_of_time:
            log.info("stopping: max_minutes=%s reached", tc.max_minutes)
            break

    plot_history(run_dir, history)
    train_times = [h["train_seconds"] for h in history]
    if not (run_dir / BEST).is_file():
        raise RuntimeError(f"{run_dir}: training produced no checkpoint (no validation run)")
    best = load_checkpoint(run_dir / BEST)
    return TrainResult(
        run_dir=run_dir,
        best_epoch=best_epoch,
        best_metrics=best["val_metrics"],
        epochs_run=len(history),
        seconds=round(elapsed_before + time.perf_counter() - t_start, 2),
        seconds_per_epoch=round(float(np.mean(train_times)) if train_times else 0.0, 3),
        peak_rss_mb=round(peak_rss_mb(), 1),
        stopped_early=stopped_early,
        history=history,
    )


def write_history(run_dir: Path, history: list[dict[str, Any]]) -> None:
    tmp = run_dir / (HISTORY + ".tmp")
    tmp.write_text(json.dumps(history, indent=1))
    os.replace(tmp, run_dir / HISTORY)


def plot_history(run_dir: Path, history: list[dict[str, Any]]) -> Path | None:
    """Training curves: losses and validation Recall/NDCG@20 per epoch, as a PNG."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("loss", "bpr", "cl", "g", "d"):
        ax_loss.plot(epochs, [h[key] for h in history], label=key)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_title("training losses (epoch means)")
    ax_loss.legend()
    evals = [h for h in history if "val" in h]
    for key in ("recall@20", "ndcg@20"):
        ax_val.plot([h["epoch"] for h in evals], [h["val"][key] for h in evals], marker="o", label=key)
    ax_val.set_xlabel("epoch")
    ax_val.set_title("validation")
    ax_val.legend()
    fig.tight_layout()
    path = run_dir / CURVES
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
