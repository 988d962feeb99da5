"""The content path: an item's vector h_i from its raw features alone (issue 11, option (a)).

A linear map from the standardised, concatenated raw features of all modalities to the trained
model's final item vector h_i (Eq. 12), fitted after training on the items that had training
interactions (the DeepMusic / ALDI "mapper" family). It changes nothing in the trainer's objective
and works for any trained model, the ID-only one included:

    z_i = concat_m ((x_i^m - mu^m) / sigma^m)          (D = sum_m D_m)
    h_i ~= z_i A + c                                   A: (D, d), c: (d,)

fitted by ridge regression in closed form (``ridge_solution``). Pure PyTorch; the numpy twin that
the service runs is ``artifact.content.ContentPath``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ContentMapper(nn.Module):
    """Raw features of every modality (in ``modality_dims`` order) -> h_i, (n, d)."""

    def __init__(self, modality_dims: dict[str, int], dim: int) -> None:
        super().__init__()
        if not modality_dims:
            raise ValueError("a content mapper needs at least one modality")
        self.modality_dims = {str(k): int(v) for k, v in modality_dims.items()}
        for name, size in self.modality_dims.items():
            self.register_buffer(f"mean_{name}", torch.zeros(size))
            self.register_buffer(f"scale_{name}", torch.ones(size))
        self.linear = nn.Linear(sum(self.modality_dims.values()), dim)

    def stats(self, name: str) -> tuple[Tensor, Tensor]:
        """(mu^m, sigma^m) of modality ``name``, (D_m,) each."""
        mean: Tensor = getattr(self, f"mean_{name}")
        scale: Tensor = getattr(self, f"scale_{name}")
        return mean, scale

    @torch.no_grad()
    def set_stats(self, raw: list[Tensor]) -> None:
        """Standardisation statistics from the raw features (n, D_m) of the fitting items."""
        for name, x in zip(self.modality_dims, raw, strict=True):
            mean, scale = self.stats(name)
            mean.copy_(x.mean(dim=0))
            scale.copy_(x.std(dim=0, unbiased=False).clamp(min=1e-6))

    def standardized(self, raw: list[Tensor]) -> Tensor:
        """z_i: (n, D) from raw features (n, D_m) per modality."""
        parts = []
        for name, x in zip(self.modality_dims, raw, strict=True):
            mean, scale = self.stats(name)
            parts.append((x - mean) / scale)
        return torch.cat(parts, dim=1)

    def forward(self, raw: list[Tensor]) -> Tensor:
        """raw: per modality (n, D_m) -> h_i (n, d)."""
        return self.linear(self.standardized(raw))


def ridge_solution(x: Tensor, y: Tensor, lam: float) -> tuple[Tensor, Tensor]:
    """argmin_{A, c} ||x A + c - y||^2 + lam ||A||^2 (intercept not penalised), in closed form.

    x: (n, D), y: (n, d) -> A (D, d), c (d,), in x's dtype. Solved on centred data:
    A = (Xc^T Xc + lam I)^-1 Xc^T Yc, c = mean(y) - mean(x) A.
    """
    if lam < 0:
        raise ValueError(f"ridge lambda must be >= 0 (got {lam})")
    x_mean, y_mean = x.mean(dim=0), y.mean(dim=0)
    xc, yc = x - x_mean, y - y_mean
    gram = xc.T @ xc + lam * torch.eye(x.shape[1], dtype=x.dtype, device=x.device)
    weight = torch.linalg.solve(gram, xc.T @ yc)
    return weight, y_mean - x_mean @ weight
