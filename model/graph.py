"""Sparse graph operators of MMSSL, built from index tensors (no file I/O, no device calls).

The caller builds the graphs once on the device of its choice and passes them to ``forward``.
Every operator is a CSR matrix stored with its transpose (``*_t``), so that the backward of a
product ``A @ X`` is one more CSR product ``A^T @ G`` (``spmm``) instead of a transpose built on
every step: about half the cost of COO products on one CPU thread. On CPU the product itself is a
weighted ``embedding_bag`` over the CSR arrays (``csr_matmul``), several times faster than
PyTorch's CSR kernel there (docs/BENCHMARKS.md, "Sparse products as embedding bags").
"""

from __future__ import annotations

import warnings
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor


class InteractionGraph(NamedTuple):
    """The observed user-item graph in the forms MMSSL needs.

    ``user_mean`` / ``item_mean`` are the Eq. 2 operators (A[u,i] = 1/sqrt(|N_u|), and
    1/sqrt(|N_i|) for the item side); ``user_gnn`` / ``item_gnn`` the Eq. 10 message-passing
    operators under the configured normalisation. ``indptr``/``indices`` are the CSR of the binary
    matrix A, used to materialise observed rows for a batch of users (Eq. 5).
    """

    user_mean: Tensor  # sparse (n_users, n_items)
    item_mean: Tensor  # sparse (n_items, n_users)
    user_gnn: Tensor  # sparse (n_users, n_items)
    item_gnn: Tensor  # sparse (n_items, n_users)
    indptr: Tensor  # (n_users + 1,) int64
    indices: Tensor  # (nnz,) int64
    item_degree: Tensor  # (n_items,) float
    # The transposes, for the backward of spmm; None falls back to torch.sparse.mm's own.
    user_mean_t: Tensor | None = None  # sparse (n_items, n_users)
    item_mean_t: Tensor | None = None  # sparse (n_users, n_items)
    user_gnn_t: Tensor | None = None  # sparse (n_items, n_users)
    item_gnn_t: Tensor | None = None  # sparse (n_users, n_items)


class ModalityViews(NamedTuple):
    """Modality-aware contrastive views (Eq. 8): per modality, top-k items of A_hat^m per user."""

    user_to_item: list[Tensor]  # per modality, sparse (n_users, n_items), values 1/sqrt(k)
    item_to_user: list[Tensor]  # per modality, sparse (n_items, n_users), values 1/sqrt(|N_i^m|)
    topk_items: list[Tensor]  # per modality, (n_users, k) int64; -1 rows for users without items
    user_to_item_t: list[Tensor] | None = None  # the transposes, for spmm's backward
    item_to_user_t: list[Tensor] | None = None


class _CsrMatmul(torch.autograd.Function):
    """matrix @ dense for a constant sparse matrix, the backward through its cached transpose."""

    @staticmethod
    def forward(ctx: Any, matrix: Tensor, transpose: Tensor, dense: Tensor) -> Tensor:
        ctx.transpose = transpose
        return csr_matmul(matrix, dense)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, None, Tensor]:
        return None, None, csr_matmul(ctx.transpose, grad)


def csr_matmul(matrix: Tensor, dense: Tensor) -> Tensor:
    """matrix @ dense for a sparse ``matrix`` and a dense (m, d) ``dense``, without autograd.

    A CPU CSR matrix is multiplied as a weighted ``embedding_bag`` (mode "sum"): row r of the result
    is the sum of ``values[j] * dense[col[j]]`` over row r's entries, in the CSR's order, one row per
    thread. That is the product's definition; PyTorch's CPU CSR kernel computes the same sums
    1.4-4.3 times slower on the trainer's graphs at TikTok's size and 2.8-3.5 times at 16 times it
    (one thread, ``python -m benchmarks.spmm``). Other layouts and devices (CUDA: cuSPARSE) use ``@``.
    """
    if (
        matrix.layout is torch.sparse_csr
        and matrix.device.type == "cpu"
        and dense.dim() == 2
        and dense.shape[1] > 0
        and matrix.dtype == dense.dtype
        and dense.is_floating_point()
    ):
        if dense.shape[0] != matrix.shape[1]:
            raise ValueError(f"sparse {tuple(matrix.shape)} @ dense {tuple(dense.shape)}: inner sizes differ")
        return F.embedding_bag(
            matrix.col_indices(),
            dense.contiguous(),  # a strided operand takes embedding_bag's slow generic loop
            matrix.crow_indices(),
            mode="sum",
            per_sample_weights=matrix.values(),
            include_last_offset=True,
        )
    return matrix @ dense


def spmm(matrix: Tensor, dense: Tensor, transpose: Tensor | None = None) -> Tensor:
    """matrix @ dense: (n, m) sparse x (m, d) -> (n, d); gradients flow to ``dense`` only.

    With ``transpose`` (the (m, n) transpose of ``matrix``) the backward is one sparse product.
    """
    if not (torch.is_grad_enabled() and dense.requires_grad):
        return csr_matmul(matrix, dense)
    if transpose is None:
        return torch.sparse.mm(matrix, dense)
    return _CsrMatmul.apply(matrix, transpose, dense)


def _sparse(
    rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int], *, row_major: bool = False
) -> Tensor:
    """A CSR matrix from (row, col, value) triples without duplicates.

    ``row_major=True`` promises the triples are already sorted by (row, col) and skips the sort.
    """
    if not row_major:
        order = torch.argsort(rows * shape[1] + cols)
        rows, cols, values = rows[order], cols[order], values[order]
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64, device=rows.device)
    crow[1:] = torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0)
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta": CSR @ dense is what we use
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)


def mean_operators(users: Tensor, items: Tensor, n_users: int, n_items: int) -> tuple[Tensor, Tensor]:
    """The Eq. 2 operators: (n_users, n_items) with 1/sqrt(|N_u|), (n_items, n_users) with 1/sqrt(|N_i|)."""
    ops = mean_operators_with_transposes(users, items, n_users, n_items)
    return ops[0], ops[1]


def mean_operators_with_transposes(
    users: Tensor,
    items: Tensor,
    n_users: int,
    n_items: int,
    user_order: Tensor | None = None,
    item_order: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(user_mean, item_mean, user_mean^T, item_mean^T) of Eq. 2.

    ``user_order`` / ``item_order``: optional permutations of the pairs sorted by (user, item) and
    by (item, user), to skip the two sorts (the trainer rebuilds these every step).
    """
    inv_sqrt_u = torch.bincount(users, minlength=n_users).to(torch.float32).clamp_min(1).rsqrt()
    inv_sqrt_i = torch.bincount(items, minlength=n_items).to(torch.float32).clamp_min(1).rsqrt()
    if user_order is None:
        user_order = torch.argsort(users * n_items + items)
    if item_order is None:
        item_order = torch.argsort(items * n_users + users)
    u_r, i_r = users[user_order], items[user_order]  # row-major over users
    u_c, i_c = users[item_order], items[item_order]  # row-major over items
    return (
        _sparse(u_r, i_r, inv_sqrt_u[u_r], (n_users, n_items), row_major=True),
        _sparse(i_c, u_c, inv_sqrt_i[i_c], (n_items, n_users), row_major=True),
        _sparse(i_c, u_c, inv_sqrt_u[u_c], (n_items, n_users), row_major=True),
        _sparse(u_r, i_r, inv_sqrt_i[i_r], (n_users, n_items), row_major=True),
    )


def build_interaction_graph(
    users: Tensor, items: Tensor, n_users: int, n_items: int, graph_norm: str = "symmetric"
) -> InteractionGraph:
    """users, items: (nnz,) int64 pairs of the training interactions, unique."""
    device = users.device
    deg_i = torch.bincount(items, minlength=n_items).to(torch.float32)
    order = torch.argsort(users * n_items + items)
    user_mean, item_mean, user_mean_t, item_mean_t = mean_operators_with_transposes(
        users, items, n_users, n_items, user_order=order
    )
    if graph_norm == "paper":
        user_gnn, item_gnn, user_gnn_t, item_gnn_t = user_mean, item_mean, user_mean_t, item_mean_t
    elif graph_norm == "symmetric":
        inv_sqrt_u = torch.bincount(users, minlength=n_users).to(torch.float32).clamp_min(1).rsqrt()
        w = inv_sqrt_u[users] * deg_i.clamp_min(1).rsqrt()[items]  # 1/sqrt(|N_u| |N_i|)
        user_gnn = _sparse(users, items, w, (n_users, n_items))
        item_gnn = _sparse(items, users, w, (n_items, n_users))
        user_gnn_t, item_gnn_t = item_gnn, user_gnn  # symmetric weights: each is the other's transpose
    else:
        raise ValueError(f"graph_norm must be 'paper' or 'symmetric', got {graph_norm!r}")
    indptr = torch.zeros(n_users + 1, dtype=torch.int64, device=device)
    indptr[1:] = torch.cumsum(torch.bincount(users, minlength=n_users), 0)
    return InteractionGraph(
        user_mean,
        item_mean,
        user_gnn,
        item_gnn,
        indptr,
        items[order],
        deg_i,
        user_mean_t=user_mean_t,
        item_mean_t=item_mean_t,
        user_gnn_t=user_gnn_t,
        item_gnn_t=item_gnn_t,
    )


def csr_rows_dense(indptr: Tensor, indices: Tensor, users: Tensor, n_cols: int) -> Tensor:
    """Dense binary rows of a CSR matrix.  users: (B,) -> (B, n_cols) float32"""
    starts = indptr[users]
    lengths = indptr[users + 1] - starts
    total = int(lengths.sum())
    rows = torch.zeros(users.shape[0], n_cols, device=users.device)
    if total == 0:
        return rows
    row_ids = torch.repeat_interleave(torch.arange(users.shape[0], device=users.device), lengths)
    offsets = torch.cumsum(lengths, 0) - lengths  # start of each row in the flat output
    within = torch.arange(total, device=users.device) - torch.repeat_interleave(offsets, lengths)
    cols = indices[torch.repeat_interleave(starts, lengths) + within]
    rows[row_ids, cols] = 1.0
    return rows


def observed_rows(graph: InteractionGraph, users: Tensor, n_items: int) -> Tensor:
    """Dense binary rows A[users, :] of the interaction matrix.  users: (B,) -> (B, n_items)"""
    return csr_rows_dense(graph.indptr, graph.indices, users, n_items)


def cosine_blocks(user_feats: Tensor, item_feats: Tensor, users: Tensor) -> Tensor:
    """Eq. 3 for a block of users: A_hat^m[u, i] = cos(f_u^m, f_i^m).  -> (len(users), n_items)"""
    return F.normalize(user_feats[users], dim=1) @ F.normalize(item_feats, dim=1).T


def dense_times_weight_t(rows: Tensor, weight: Tensor, max_density: float = 0.125) -> Tensor:
    """rows @ weight.T for constant rows that are mostly exact zeros: (B, C) x (H, C) -> (B, H).

    The Gumbel-softmax rows of Eq. 5 at a small tau are zero in all but a few entries (exp
    underflows), so the product is a gather of the weight's columns at the nonzeros, scaled and
    summed per row (gradients reach ``weight`` only, through the same gather). Same value as the
    dense product up to float rounding (the zeros contribute exact zeros). Rows with more than
    ``max_density`` nonzeros take the dense product.
    """
    nonzero = rows.nonzero()
    if nonzero.shape[0] > max_density * rows.numel():
        return rows @ weight.T
    row, col = nonzero.unbind(1)
    scaled = weight.index_select(1, col).T * rows[row, col].unsqueeze(1)  # (nnz, H)
    return torch.zeros(rows.shape[0], weight.shape[0], dtype=weight.dtype, device=weight.device).index_add(
        0, row, scaled
    )


@torch.no_grad()
def modality_topk(
    user_feats: list[Tensor], item_feats: list[Tensor], k: int, active_users: Tensor, chunk: int = 2048
) -> list[Tensor]:
    """Eq. 8 neighbourhoods: for every user with training items, its top-k items under A_hat^m.

    A_hat^m (Eq. 3) is computed in [chunk users x all items] blocks, never as a full |U| x |I|
    matrix. Returns per modality (n_users, k) int64 item indices, rows of -1 for inactive users.
    """
    n_users = user_feats[0].shape[0]
    tops = []
    for f_u, f_i in zip(user_feats, item_feats, strict=True):
        top = torch.full((n_users, k), -1, dtype=torch.int64, device=f_u.device)
        for start in range(0, active_users.shape[0], chunk):
            block = active_users[start : start + chunk]
            top[block] = cosine_blocks(f_u, f_i, block).topk(k, dim=1).indices
        tops.append(top)
    return tops


def views_from_topk(topk_items: list[Tensor], n_items: int) -> ModalityViews:
    """Eq. 8 operators from top-k lists: e_u^m = sum_{N_u^m} e_i / sqrt|N_u^m|, and the item side.

    Each (user, item) edge is paired with the user whose row produced it.
    """
    ui, iu, ui_t, iu_t = [], [], [], []
    for top in topk_items:
        n_users, k = top.shape
        active = (top[:, 0] >= 0).nonzero().squeeze(1)
        users = torch.repeat_interleave(active, k)  # row-major, like top[active].reshape(-1)
        items = top[active].reshape(-1)
        in_degree = torch.bincount(items, minlength=n_items).to(torch.float32).clamp_min(1)
        weights = torch.full(items.shape, k**-0.5, dtype=torch.float32, device=top.device)
        to_user = in_degree[items].rsqrt()
        ui.append(_sparse(users, items, weights, (n_users, n_items)))
        iu.append(_sparse(items, users, to_user, (n_items, n_users)))
        ui_t.append(_sparse(items, users, weights, (n_items, n_users)))
        iu_t.append(_sparse(users, items, to_user, (n_users, n_items)))
    return ModalityViews(ui, iu, list(topk_items), ui_t, iu_t)


def build_modality_views(
    user_feats: list[Tensor], item_feats: list[Tensor], k: int, active_users: Tensor, chunk: int = 2048
) -> ModalityViews:
    """Eq. 8 views refreshed from the current modality features."""
    tops = modality_topk(user_feats, item_feats, k, active_users, chunk)
    return views_from_topk(tops, item_feats[0].shape[0])


class ItemGraph(NamedTuple):
    """The frozen item-item kNN graph S (issue 11 (b), FREEDOM's item graph), built once.

    ``matrix`` is S (n_items, n_items): row i mixes the ID embeddings of item i's nearest source
    items, ``matrix_t`` its transpose for spmm's backward. ``neighbours`` are the same edges per
    modality and ``column_weights`` the value S^m / M gives an edge into item j: a new item's row
    is sum_m sum_{j in kNN_m} column_weights[m, j], the form the artifact stores.
    """

    matrix: Tensor  # sparse CSR (n_items, n_items)
    matrix_t: Tensor  # sparse CSR (n_items, n_items)
    neighbours: Tensor  # (M, n_items, k) int64 item indices
    column_weights: Tensor  # (M, n_items) float32


def item_graph_inputs(raw: Tensor, standardize: bool) -> tuple[Tensor, Tensor]:
    """(mean, scale) of the raw features (n_items, D_m) that the kNN similarity centres with;
    scale is 1 unless ``standardize`` (then the std over items, at least 1e-6)."""
    mean = raw.mean(dim=0)
    scale = raw.std(dim=0, unbiased=False).clamp(min=1e-6) if standardize else torch.ones_like(mean)
    return mean, scale


@torch.no_grad()
def build_item_graph(
    raw: list[Tensor],
    sources: Tensor,
    k: int,
    *,
    standardize: bool = False,
    norm: str = "symmetric",
    chunk: int = 2048,
) -> ItemGraph:
    """S = (1/M) sum_m S^m, S^m the normalised binary kNN matrix of modality m's cosine similarity.

    raw: per modality (n_items, D_m) raw features of all items; sources: (n_src,) int64 the items a
    row may point at (those with training interactions), sorted. Features are centred (and
    standardised) with statistics over all items (``item_graph_inputs``), then unit-normalised;
    each item's k most similar sources other than itself form its row. ``norm``: "symmetric"
    gives the edge i -> j the value 1/sqrt(k * indeg_m(j)) (indeg over all rows, at least 1),
    "mean" gives 1/k.
    """
    if norm not in ("symmetric", "mean"):
        raise ValueError(f"item graph norm must be 'symmetric' or 'mean', got {norm!r}")
    n_items = raw[0].shape[0]
    if not 0 < k < sources.numel():
        raise ValueError(f"item graph k ({k}) must be in [1, {sources.numel() - 1}] (source items)")
    device = raw[0].device
    is_source = torch.full((n_items,), -1, dtype=torch.int64, device=device)
    is_source[sources] = torch.arange(sources.numel(), device=device)
    all_nb, all_col = [], []
    for x in raw:
        mean, scale = item_graph_inputs(x, standardize)
        unit = F.normalize((x - mean) / scale, dim=1)  # (n_items, D_m)
        src = unit[sources]
        neighbours = torch.empty(n_items, k, dtype=torch.int64, device=device)
        for start in range(0, n_items, chunk):
            rows = torch.arange(start, min(start + chunk, n_items), device=device)
            sims = unit[rows] @ src.T  # (chunk, n_src)
            own = is_source[rows]
            has_own = own >= 0
            sims[has_own.nonzero().squeeze(1), own[has_own]] = -float("inf")  # never itself
            neighbours[rows] = sources[sims.topk(k, dim=1).indices]
        in_degree = torch.bincount(neighbours.reshape(-1), minlength=n_items).to(torch.float32)
        if norm == "symmetric":
            column = (k * in_degree.clamp(min=1)).rsqrt()
        else:
            column = torch.full((n_items,), 1.0 / k, device=device)
        column = column / len(raw)  # the mean over modalities
        all_nb.append(neighbours)
        all_col.append(column)
    neighbours_t, columns_t = torch.stack(all_nb), torch.stack(all_col)  # (M, n_items, k), (M, n_items)
    rows = torch.arange(n_items, device=device).repeat_interleave(k).repeat(len(raw))
    cols = neighbours_t.reshape(-1)
    vals = torch.gather(columns_t, 1, neighbours_t.reshape(len(raw), -1)).reshape(-1)
    # The modalities can share an edge: sum duplicates before building the CSR.
    keys, inverse = torch.unique(rows * n_items + cols, return_inverse=True)
    summed = torch.zeros(keys.numel(), dtype=torch.float32, device=device).index_add_(0, inverse, vals)
    r, c = keys // n_items, keys % n_items
    matrix = _sparse(r, c, summed, (n_items, n_items), row_major=True)
    matrix_t = _sparse(c, r, summed, (n_items, n_items))
    return ItemGraph(matrix, matrix_t, neighbours_t, columns_t)
