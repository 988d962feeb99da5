"""The MMSSL model (Wei et al., WWW 2023), section 3 of the paper.

Pure PyTorch: sizes and a config in, tensors out. Graphs and raw item features are passed to
``forward``; the caller moves the module with ``.to(device)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from model.config import MMSSLConfig
from model.graph import InteractionGraph, ItemGraph, ModalityViews, spmm


class ModalityFeatures(NamedTuple):
    projected_items: list[Tensor]  # fbar_i^m, per modality (n_items, d)
    users: list[Tensor]  # f_u^m (Eq. 2), per modality (n_users, d)
    items: list[Tensor]  # f_i^m (Eq. 2), per modality (n_items, d)


class MMSSLOutput(NamedTuple):
    user: Tensor  # h_u (Eq. 12), (n_users, d)
    item: Tensor  # h_i (Eq. 12), (n_items, d)
    user_id_side: Tensor  # e_hat_u, GNN output (Eq. 10), (n_users, d)
    item_id_side: Tensor  # e_hat_i, (n_items, d)
    item_layers: tuple[Tensor, ...]  # E_hat_i^l for l = 0..L-1, each (n_items, d): the fold-in operands
    user_layer0: Tensor  # E_hat_u^0, (n_users, d)
    features: ModalityFeatures  # empty lists for the ID-only model
    view_users: list[Tensor]  # e_u^m (Eq. 8), per modality (n_users, d)
    view_items: list[Tensor]  # e_i^m (Eq. 8), per modality (n_items, d)
    # S^L E_i of the frozen item kNN graph (included in ``item``), (n_items, d); None without one
    item_graph_side: Tensor | None = None


class ModalityAttention(nn.Module):
    """Eq. 9: multi-head self-attention across the modalities of one node.

    For head h: weights over m' = softmax_m'((e^m W_h^Q) . (e^m' W_h^K) / sqrt(d/H)); the head's
    output is the weighted sum of the h-th slice of e^m' (no value projection, as in Eq. 9); heads
    are concatenated back to d.
    """

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.head_dim = dim // n_heads
        self.query = nn.Linear(dim, dim, bias=False)
        self.key = nn.Linear(dim, dim, bias=False)
        nn.init.xavier_uniform_(self.query.weight)
        nn.init.xavier_uniform_(self.key.weight)

    def forward(self, x: Tensor) -> Tensor:
        """x: (N, M, d) modality-specific embeddings of N nodes -> (N, M, d)."""
        n, m, d = x.shape
        q = self.query(x).view(n, m, self.n_heads, self.head_dim).transpose(1, 2)  # (N, H, M, d/H)
        k = self.key(x).view(n, m, self.n_heads, self.head_dim).transpose(1, 2)
        v = x.view(n, m, self.n_heads, self.head_dim).transpose(1, 2)
        weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.head_dim), dim=-1)  # (N,H,M,M')
        return (weights @ v).transpose(1, 2).reshape(n, m, d)

    def pooled(self, x: Tensor | Sequence[Tensor]) -> Tensor:
        """forward(x).mean(dim=1), the mean pooling over modalities that follows Eq. 9.

        x: (N, M, d), or the M modalities' (N, d) embeddings as a sequence (what the model passes:
        no (N, M, d) stack, and no full-size zero-filled gradient for each modality's slice of it
        in the backward, which at 16x TikTok's size cost more than the attention's arithmetic)
        -> (N, d). The mean over queries m commutes with the weighted sum, so the weights are
        averaged first: out = sum_m' (mean_m w[m, m']) x^m'. The softmax over m' is unchanged by a
        shift of its logits and the key projection is linear without bias, so the logits are taken
        relative to m' = 0: q_m . k_m' - q_m . k_0 = q_m . key(x^m' - x^0), with M - 1 key
        projections and M (M - 1) dot products instead of M and M^2. For M = 2 the softmax over
        (0, l) is (1 - sigmoid(l), sigmoid(l)), and out = x^0 + (mean_m sigmoid(l_m)) (x^1 - x^0).
        Broadcast products, not N*H batched (M x M) matrix products, which cost more than their
        arithmetic on a CPU when M is 2 or 3.
        """
        parts = list(x.unbind(1)) if isinstance(x, Tensor) else list(x)
        n, d = parts[0].shape
        h, hd = self.n_heads, self.head_dim
        scale = math.sqrt(hd)
        if len(parts) == 1:  # a softmax over one modality: the weight is 1
            return parts[0]
        if len(parts) == 2:
            x0, x1 = parts
            diff = x1 - x0
            k = self.key(diff).view(n, h, hd)
            logit_0 = (self.query(x0).view(n, h, hd) * k).sum(-1) / scale
            logit_1 = (self.query(x1).view(n, h, hd) * k).sum(-1) / scale
            weight_1 = (torch.sigmoid(logit_0) + torch.sigmoid(logit_1)) / 2  # (N, H): mean_m w[m, 1]
            return torch.addcmul(x0.view(n, h, hd), weight_1.unsqueeze(-1), diff.view(n, h, hd)).view(n, d)
        stacked = torch.stack(parts, 1)  # (N, M, d)
        m = len(parts)
        q = self.query(stacked).view(n, m, 1, h, hd)
        k = self.key(stacked[:, 1:] - stacked[:, :1]).view(n, 1, m - 1, h, hd)
        relative = (q * k).sum(-1) / scale  # (N, M, M' - 1, H): logits minus those of m' = 0
        logits = torch.cat([relative.new_zeros(n, m, 1, h), relative], dim=2)
        weights = torch.softmax(logits, dim=2).mean(dim=1)  # (N, M', H), averaged over queries m
        return (weights.unsqueeze(-1) * stacked.view(n, m, h, hd)).sum(dim=1).reshape(n, d)


class _NormalizeRows(torch.autograd.Function):
    """F.normalize(x, dim=1) with a one-pass backward (see ``normalize_rows``)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, eps: float) -> Tensor:
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        unclamped = norm > eps
        norm = norm.clamp_min(eps)
        y = x / norm
        ctx.save_for_backward(y, norm, unclamped)
        return y

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        y, norm, unclamped = ctx.saved_tensors
        # d(x / |x|) = (g - y (g . y)) / |x|; where |x| <= eps the divisor is the constant eps
        # (n, 1) through a batched dot: no (n, d) temporary for g * y
        dot = torch.bmm(grad.unsqueeze(1), y.unsqueeze(2)).squeeze(2) * unclamped
        return torch.addcmul(grad, y, dot, value=-1).div_(norm), None


def normalize_rows(x: Tensor, eps: float = 1e-12) -> Tensor:
    """F.normalize(x, dim=1), equal in value and gradient, for (n, d) x.

    Autograd's own backward of x / max(|x|, eps) takes five full-size passes (the quotient
    rule's products, a negation, the expand's sum); this one takes one (n, 1) batched dot and one
    fused (n, d) pass. At 16x TikTok the node tensors are 27-36 MiB each, so every full-size
    temporary is a fresh mapping faulted in at every step.
    """
    if not (torch.is_grad_enabled() and x.requires_grad):
        return F.normalize(x, dim=1, eps=eps)
    out: Tensor = _NormalizeRows.apply(x, eps)
    return out


def _mean_of(layers: list[Tensor]) -> Tensor:
    """The mean of equally shaped tensors, summed in list order."""
    total = layers[0]
    for layer in layers[1:]:
        total = total + layer
    return total / len(layers)


def _gamma(n_in: int, n_out: int, slope: float, dropout: float) -> nn.Sequential:
    """Γ(a) = Drop(BN(LeakyReLU(Linear(a)))) of Eq. 4."""
    return nn.Sequential(
        nn.Linear(n_in, n_out), nn.LeakyReLU(slope), nn.BatchNorm1d(n_out), nn.Dropout(dropout)
    )


class Discriminator(nn.Module):
    """Eq. 4: D(a) = sigmoid(Γ(Γ(a))) over a user's row a in R^{|I|}.

    Two Γ layers of widths ``hidden`` and ``hidden // 2`` followed by a linear read-out to one
    score (as the authors' code does); the width is a setting, independent of |I|.
    """

    def __init__(self, n_items: int, hidden: int, slope: float, dropout: float) -> None:
        super().__init__()
        self.net = nn.Sequential(
            _gamma(n_items, hidden, slope, dropout),
            _gamma(hidden, hidden // 2, slope, dropout),
            nn.Linear(hidden // 2, 1),
        )

    def forward(self, rows: Tensor, columns: Tensor | None = None) -> Tensor:
        """rows: (B, n_items) -> (B,) in (0, 1).

        With ``columns`` (C,) item indices, rows are (B, C): the entries of those items only, and
        the first layer uses only their weight columns, i.e. D of a full row that is zero elsewhere.
        """
        return self.from_hidden(self.hidden(rows, columns))

    def _first_linear(self) -> nn.Linear:
        first = self.net[0]
        assert isinstance(first, nn.Sequential)
        linear = first[0]
        assert isinstance(linear, nn.Linear)
        return linear

    def first_weight(self, columns: Tensor | None = None) -> Tensor:
        """The first layer's weight, (hidden, n_items), or only its ``columns``: (hidden, C)."""
        weight = self._first_linear().weight
        return weight if columns is None else weight[:, columns]

    def first_bias(self) -> Tensor:
        """The first layer's bias b, (hidden,)."""
        return self._first_linear().bias

    def hidden(self, rows: Tensor, columns: Tensor | None = None) -> Tensor:
        """The first Linear's output W a + b, (B, hidden): affine in the rows, so that for
        alpha*real + (1-alpha)*fake it is alpha*hidden(real) + (1-alpha)*hidden(fake)."""
        return F.linear(rows, self.first_weight(columns), self._first_linear().bias)

    def from_hidden(self, hidden: Tensor) -> Tensor:
        """D from the first Linear's output: (B, hidden) -> (B,) in (0, 1)."""
        first = self.net[0]
        assert isinstance(first, nn.Sequential)
        return torch.sigmoid(self.net[1:](first[1:](hidden))).squeeze(1)


class MMSSL(nn.Module):
    def __init__(self, config: MMSSLConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        d = config.embed_dim
        self.user_embedding = nn.Embedding(config.n_users, d)  # E_u, Xavier (Eq. 8)
        self.item_embedding = nn.Embedding(config.n_items, d)  # E_i
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.projections = nn.ModuleDict(
            {name: nn.Linear(config.modality_dims[name], d) for name in config.modalities}
        )
        for layer in self.projections.values():
            nn.init.xavier_uniform_(layer.weight)
        if config.feature_norm != "none":  # statistics set by set_feature_stats, saved in state_dict
            for name in config.modalities:
                dim = config.modality_dims[name]
                self.register_buffer(f"feature_mean_{name}", torch.zeros(dim))
                self.register_buffer(f"feature_scale_{name}", torch.ones(dim))
        self.feat_dropout = nn.Dropout(config.feat_dropout)
        self.attention = ModalityAttention(d, config.n_heads) if config.modalities else None
        self.discriminator = (
            Discriminator(config.n_items, config.disc_hidden, config.leaky_slope, config.disc_dropout)
            if config.modalities and config.use_adversarial
            else None
        )

    @property
    def modalities(self) -> list[str]:
        return self.config.modalities

    def model_parameters(self) -> list[nn.Parameter]:
        """Everything the model optimiser updates: all parameters except the discriminator's."""
        skip = {id(p) for p in self.discriminator.parameters()} if self.discriminator else set()
        return [p for p in self.parameters() if id(p) not in skip]

    @torch.no_grad()
    def set_feature_stats(self, item_raw: list[Tensor]) -> None:
        """Set the feature_norm statistics from the raw features of all items (one per modality)."""
        if self.config.feature_norm == "none":
            return
        for name, raw in zip(self.modalities, item_raw, strict=True):
            getattr(self, f"feature_mean_{name}").copy_(raw.mean(dim=0))
            getattr(self, f"feature_scale_{name}").copy_(raw.std(dim=0, unbiased=False).clamp(min=1e-6))

    def feature_stats(self, name: str) -> tuple[Tensor, Tensor]:
        """(mean, scale) applied to modality ``name``'s raw features before its projection, (D_m,) each."""
        if self.config.feature_norm == "none":
            dim = self.config.modality_dims[name]
            device = self.user_embedding.weight.device
            return torch.zeros(dim, device=device), torch.ones(dim, device=device)
        mean: Tensor = getattr(self, f"feature_mean_{name}")
        scale: Tensor = getattr(self, f"feature_scale_{name}")
        return mean, scale

    def project(self, name: str, raw: Tensor) -> Tensor:
        """fbar_i^m without dropout: the modality projection of raw features (n, D_m) -> (n, d)."""
        if self.config.feature_norm != "none":
            mean, scale = self.feature_stats(name)
            raw = (raw - mean) / scale
        return self.projections[name](raw)

    def modality_features(self, item_raw: list[Tensor], graph: InteractionGraph) -> ModalityFeatures:
        """Projection (Linear + dropout) and Eq. 2 for every modality."""
        projected = [
            self.feat_dropout(self.project(name, raw))  # (n_items, d)
            for name, raw in zip(self.modalities, item_raw, strict=True)
        ]
        if not projected:
            return ModalityFeatures([], [], [])
        # The same operators for every modality: one product over the modalities side by side,
        # (n_items, M d), instead of M (each output column depends on its input column alone).
        widths = [f.shape[1] for f in projected]
        stacked = projected[0] if len(projected) == 1 else torch.cat(projected, dim=1)
        f_u = spmm(graph.user_mean, stacked, graph.user_mean_t)  # sum_{i in N_u} fbar_i / sqrt|N_u|
        f_i = spmm(graph.item_mean, f_u, graph.item_mean_t)  # sum_{u in N_i} f_u / sqrt|N_i|
        return ModalityFeatures(projected, list(f_u.split(widths, dim=1)), list(f_i.split(widths, dim=1)))

    def forward(
        self,
        graph: InteractionGraph,
        item_raw: list[Tensor],
        views: ModalityViews | None,
        item_graph: ItemGraph | None = None,
    ) -> MMSSLOutput:
        """``item_graph``: the frozen kNN graph, needed (only) when ``config.item_graph_k`` > 0."""
        cfg = self.config
        if (cfg.item_graph_k > 0) != (item_graph is not None):
            raise ValueError(
                f"item_graph_k is {cfg.item_graph_k}: forward needs an item graph exactly when it is > 0"
            )
        e_u, e_i = self.user_embedding.weight, self.item_embedding.weight
        view_users: list[Tensor] = []
        view_items: list[Tensor] = []
        if self.modalities:
            if views is None:
                raise ValueError("a multi-modal MMSSL forward needs the modality views (Eq. 8)")
            feats = self.modality_features(item_raw, graph)
            n_views = len(views.user_to_item)
            no_t: list[Tensor | None] = [None] * n_views
            ui_t: list[Tensor | None] = list(views.user_to_item_t) if views.user_to_item_t else no_t
            iu_t: list[Tensor | None] = list(views.item_to_user_t) if views.item_to_user_t else no_t
            for m in range(n_views):
                # e_u^m = sum_{N_u^m} e_i / sqrt|N_u^m|, and e_i^m
                view_users.append(spmm(views.user_to_item[m], e_i, ui_t[m]))
                view_items.append(spmm(views.item_to_user[m], e_u, iu_t[m]))
            assert self.attention is not None
            # Eq. 9 then mean pooling over modalities (per node: users and items separately)
            fused_u, fused_i = self.attention.pooled(view_users), self.attention.pooled(view_items)
            layer_u = e_u + cfg.eta * normalize_rows(fused_u)  # E_hat_u^0 (Eq. 10)
            layer_i = e_i + cfg.eta * normalize_rows(fused_i)
        else:
            feats = ModalityFeatures([], [], [])
            layer_u, layer_i = e_u, e_i
        layers_u, layers_i = [layer_u], [layer_i]
        for _ in range(cfg.n_layers):  # Eq. 10: E_u^{l+1} = A E_i^l, E_i^{l+1} = A^T E_u^l
            layers_u, layers_i = (
                layers_u + [spmm(graph.user_gnn, layers_i[-1], graph.user_gnn_t)],
                layers_i + [spmm(graph.item_gnn, layers_u[-1], graph.item_gnn_t)],
            )
        # mean pooling over l = 0..L, as a sum: no (L + 1, n, d) stack, nor its expanded gradient
        user_id_side = _mean_of(layers_u)
        item_id_side = _mean_of(layers_i)
        user, item = user_id_side, item_id_side
        if feats.users:  # Eq. 12
            user = user + cfg.omega * sum(normalize_rows(f) for f in feats.users)
            item = item + cfg.omega * sum(normalize_rows(f) for f in feats.items)
        graph_side = None
        if item_graph is not None:  # FREEDOM: h_i += S^L e_i, S frozen
            graph_side = e_i
            for _ in range(cfg.item_graph_layers):
                graph_side = spmm(item_graph.matrix, graph_side, item_graph.matrix_t)
            item = item + graph_side
        return MMSSLOutput(
            user=user,
            item=item,
            user_id_side=user_id_side,
            item_id_side=item_id_side,
            item_layers=tuple(layers_i[: cfg.n_layers]),  # not stacked: training never reads them
            user_layer0=layer_u,
            features=feats,
            view_users=view_users,
            view_items=view_items,
            item_graph_side=graph_side,
        )
