"""All-ranking evaluation: every item scored, the user's training items masked, batched on tensors."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from model.graph import csr_rows_dense

DEFAULT_KS = (10, 20, 50)


def _csr(indptr: np.ndarray, indices: np.ndarray, device: torch.device) -> tuple[Tensor, Tensor]:
    return (
        torch.as_tensor(indptr, dtype=torch.int64, device=device),
        torch.as_tensor(indices, dtype=torch.int64, device=device),
    )


@torch.no_grad()
def rank_metrics(
    user_emb: Tensor,
    item_emb: Tensor,
    train_indptr: np.ndarray,
    train_indices: np.ndarray,
    target_indptr: np.ndarray,
    target_indices: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    batch_users: int = 2048,
    users: np.ndarray | None = None,
) -> dict[str, float]:
    """Recall, Precision and standard NDCG at each K, averaged over users with target items.

    ``users``: only these users (those of them with target items) are ranked; None = all.

    Scores are h_u . h_i over all items; the user's training items get -inf before the top-K.
    NDCG@K = DCG@K / IDCG@K with IDCG@K = sum_{j < min(|rel|, K)} 1/log2(j + 2).
    user_emb: (n_users, d), item_emb: (n_items, d); CSR arrays over users.
    """
    ranked, per_user = rank_metrics_per_user(
        user_emb, item_emb, train_indptr, train_indices, target_indptr, target_indices, ks, batch_users, users
    )
    n = max(int(ranked.size), 1)
    out = {key: float(values.sum()) / n for key, values in per_user.items()}
    out["n_users"] = float(ranked.size)
    return out


@torch.no_grad()
def rank_metrics_per_user(
    user_emb: Tensor,
    item_emb: Tensor,
    train_indptr: np.ndarray,
    train_indices: np.ndarray,
    target_indptr: np.ndarray,
    target_indices: np.ndarray,
    ks: Sequence[int] = DEFAULT_KS,
    batch_users: int = 2048,
    users: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The metrics of ``rank_metrics`` for each user with target items, for paired statistics.

    ``users``: restrict to these users (any order, repeats ignored); None = all users.

    Returns (users (n,) int64 ascending, {"recall@K": (n,) float64, ...}) in the same user order.
    Only [batch_users x n_items] score blocks exist at a time.
    """
    device = user_emb.device
    n_items = item_emb.shape[0]
    max_k = min(max(ks), n_items)
    tr_ptr, tr_idx = _csr(train_indptr, train_indices, device)
    te_ptr, te_idx = _csr(target_indptr, target_indices, device)
    n_rel_all = te_ptr[1:] - te_ptr[:-1]
    has_target = n_rel_all > 0
    if users is not None:
        chosen = torch.zeros_like(has_target)
        chosen[torch.as_tensor(users, dtype=torch.int64, device=device)] = True
        has_target = has_target & chosen
    ranked = torch.nonzero(has_target).squeeze(1)
    discount = 1.0 / torch.log2(torch.arange(2, max_k + 2, device=device, dtype=torch.float64))
    ideal = torch.cumsum(discount, 0)  # ideal[j] = IDCG with j+1 relevant items
    names = ("recall", "precision", "ndcg")
    parts: dict[str, list[Tensor]] = {f"{name}@{k}": [] for k in ks for name in names}
    for start in range(0, ranked.shape[0], batch_users):
        block = ranked[start : start + batch_users]
        scores = user_emb[block] @ item_emb.T  # (B, n_items)
        seen = csr_rows_dense(tr_ptr, tr_idx, block, n_items).bool()
        scores = scores.masked_fill(seen, float("-inf"))
        top = scores.topk(max_k, dim=1).indices  # (B, max_k)
        relevant = csr_rows_dense(te_ptr, te_idx, block, n_items)
        hits = relevant.gather(1, top).to(torch.float64)  # (B, max_k)
        n_rel = n_rel_all[block].to(torch.float64)
        for k in ks:
            kk = min(k, max_k)
            hit_k = hits[:, :kk]
            n_hit = hit_k.sum(1)
            dcg = (hit_k * discount[:kk]).sum(1)
            idcg = ideal[(n_rel.clamp(max=kk) - 1).long()]
            parts[f"recall@{k}"].append(n_hit / n_rel)
            parts[f"precision@{k}"].append(n_hit / k)
            parts[f"ndcg@{k}"].append(dcg / idcg)
    per_user = {
        key: (torch.cat(v).cpu().numpy() if v else np.zeros(0, dtype=np.float64)) for key, v in parts.items()
    }
    return ranked.cpu().numpy().astype(np.int64), per_user
