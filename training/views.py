"""Bounded-cost Eq. 8 neighbourhoods: the top-k items of A_hat^m per user from a FAISS IVF index.

``model.graph.modality_topk`` scores every item for every active user: |U| x |I| x d work per
refresh, which grows with the square of the data. Here the items' normalised modality features go
into an inverted-file index (k-means cells, inner product = cosine of Eq. 3) and each user scores
only the items of its ``n_probe`` nearest cells: about |U| x (n_lists + n_probe |I| / n_lists) x d,
with n_lists = 4 sqrt(|I|) by default. The result is approximate (an item in an unprobed cell is
missed); with ``n_probe >= n_lists`` every item is scored and the result is the exact top-k.

faiss is imported only when this search is chosen (``view_index: ivf``); it ships with the
``serve`` extra.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from model.graph import cosine_blocks

# k-means training points per cell: enough for stable cells, and the refresh's training cost stays
# a small share of the search (faiss's default, 256, trains on every item at 16x TikTok).
TRAIN_POINTS_PER_LIST = 32
KMEANS_ITERATIONS = 10


def default_n_lists(n_items: int) -> int:
    """FAISS's rule of thumb for an IVF index: about 4 sqrt(N) cells."""
    return max(1, round(4 * math.sqrt(n_items)))


def _import_faiss():  # type: ignore[no-untyped-def]
    try:
        import faiss
    except ImportError as exc:  # pragma: no cover - faiss is installed with the serve extra
        raise ImportError(
            "view_index=ivf needs faiss: pip install faiss-cpu (or the project's 'serve' extra)"
        ) from exc
    return faiss


@torch.no_grad()
def ivf_modality_topk(
    user_feats: list[Tensor],
    item_feats: list[Tensor],
    k: int,
    active_users: Tensor,
    n_lists: int = 0,
    n_probe: int = 16,
    seed: int = 0,
) -> list[Tensor]:
    """Approximate ``model.graph.modality_topk``: per modality (n_users, k) int64, -1 rows for
    users without training items. ``n_lists`` 0 = ``default_n_lists(n_items)``.

    Users whose probed cells hold fewer than k items get the exact top-k (rare: a cell holds about
    sqrt(|I|) / 4 items).
    """
    faiss = _import_faiss()
    faiss.omp_set_num_threads(torch.get_num_threads())  # respect num_threads, as torch does
    n_users = user_feats[0].shape[0]
    n_items, dim = item_feats[0].shape
    lists = min(n_lists or default_n_lists(n_items), n_items)
    tops = []
    for f_u, f_i in zip(user_feats, item_feats, strict=True):
        device = f_u.device
        items = np.ascontiguousarray(F.normalize(f_i, dim=1).cpu().numpy(), dtype=np.float32)
        queries = np.ascontiguousarray(F.normalize(f_u[active_users], dim=1).cpu().numpy(), dtype=np.float32)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, lists, faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        index.cp.niter = KMEANS_ITERATIONS
        index.cp.max_points_per_centroid = TRAIN_POINTS_PER_LIST
        index.cp.min_points_per_centroid = 1  # small catalogues: no warning, cells may be small
        index.train(items)
        index.add(items)
        index.nprobe = min(n_probe, lists)
        _, labels = index.search(queries, k)  # (n_active, k), -1 past the probed items
        found = torch.as_tensor(labels, dtype=torch.int64, device=device)
        short = (found < 0).any(1).nonzero().squeeze(1)
        if short.numel():
            found[short] = cosine_blocks(f_u, f_i, active_users[short]).topk(k, dim=1).indices
        top = torch.full((n_users, k), -1, dtype=torch.int64, device=device)
        top[active_users] = found
        tops.append(top)
    return tops


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


@torch.no_grad()
def flat_modality_topk(
    user_feats: list[Tensor], item_feats: list[Tensor], k: int, active_users: Tensor
) -> list[Tensor]:
    """``model.graph.modality_topk`` (exact: every item scored for every active user) through a
    FAISS flat inner-product search over the normalised features, on CPU. FAISS fuses the
    blocked product with a running top-k, so the [users x items] scores are never written out
    and sorted: about half the refresh's CPU time on TikTok (docs/BENCHMARKS.md, "The view refresh
    through FAISS"). Same result up to float rounding (items with equal cosines may come in another order).
    """
    faiss = _import_faiss()
    faiss.omp_set_num_threads(torch.get_num_threads())  # respect num_threads, as torch does
    n_users = user_feats[0].shape[0]
    tops = []
    for f_u, f_i in zip(user_feats, item_feats, strict=True):
        items = np.ascontiguousarray(F.normalize(f_i, dim=1).numpy(), dtype=np.float32)
        queries = np.ascontiguousarray(F.normalize(f_u[active_users], dim=1).numpy(), dtype=np.float32)
        index = faiss.IndexFlatIP(items.shape[1])
        index.add(items)
        _, labels = index.search(queries, k)
        top = torch.full((n_users, k), -1, dtype=torch.int64)
        top[active_users] = torch.from_numpy(labels).to(torch.int64)
        tops.append(top)
    return tops


def topk_recall(approx: Tensor, exact: Tensor) -> float:
    """Mean over rows of |approx row ∩ exact row| / k; rows of -1 (inactive users) are skipped.

    approx, exact: (n_users, k) int64.
    """
    rows = (exact[:, 0] >= 0).nonzero().squeeze(1)
    if rows.numel() == 0:
        return 1.0
    a, e = approx[rows], exact[rows]
    hits = (a.unsqueeze(2) == e.unsqueeze(1)).any(2).sum(1)  # (rows,)
    return float(hits.to(torch.float64).mean()) / exact.shape[1]
