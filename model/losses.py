"""Loss functions of MMSSL (Eq. 5, 7, 11, 13, 14): small pure functions on tensors."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    """Eq. 14, averaged over the batch: mean(-log sigmoid(y_pos - y_neg)).

    pos_scores, neg_scores: (B,) -> scalar
    """
    return F.softplus(neg_scores - pos_scores).mean()


def l2_penalty(*tensors: Tensor) -> Tensor:
    """Sum of squared entries divided by the batch size of the first tensor (λ4 term of Eq. 13)."""
    batch = tensors[0].shape[0]
    return sum((t.pow(2).sum() for t in tensors), torch.zeros((), device=tensors[0].device)) / batch


def cross_modal_info_nce(h_users: Tensor, view_users: Tensor, temperature: float) -> Tensor:
    """Eq. 11 for one modality, averaged over the batch's users.

    loss_u = -log( exp s(h_u, e_u) / sum_{u'} [exp s(h_u', e_u) + exp s(e_u', e_u)] )
    with s(a, b) = cos(a, b) / temperature; u' runs over the batch (in-batch negatives, self included
    in both sums, exactly as the equation is written).

    h_users: (B, d) fused user embeddings h_u; view_users: (B, d) modality view e_u^m. -> scalar
    """
    h = F.normalize(h_users, dim=1)
    e = F.normalize(view_users, dim=1)
    cross = h @ e.T / temperature  # (B_u', B_u): s(h_u', e_u)
    intra = e @ e.T / temperature  # (B_u', B_u): s(e_u', e_u)
    positive = cross.diagonal()
    denominator = torch.logsumexp(torch.cat([cross, intra], dim=0), dim=0)  # over u' for each u
    return (denominator - positive).mean()


def gumbel_transform(observed: Tensor, tau: float, generator: torch.Generator | None = None) -> Tensor:
    """The transformation term of Eq. 5: softmax over items of (A[u, i] + g) / tau, g ~ Gumbel(0, 1).

    observed: (B, n_items) binary interaction rows -> (B, n_items), rows sum to 1
    """
    noise = torch.rand(observed.shape, generator=generator, device=observed.device, dtype=observed.dtype)
    # in place, the same operations as -log(-log(u)), then (A + g) / tau: one (B, n_items) buffer
    # instead of seven (at 16x TikTok each is a 55 MB pass, rows of 107,248 items)
    noise.clamp_(1e-10, 1.0 - 1e-7).log_().neg_().log_().neg_()  # keep both logs finite
    return torch.softmax(noise.add_(observed).div_(tau), dim=1)


def generator_loss(fake_scores: Tensor) -> Tensor:
    """L_G of Eq. 7: -E[D(A_hat^m)].  fake_scores: (B,) discriminator outputs -> scalar"""
    return -fake_scores.mean()


def discriminator_loss(real_scores: Tensor, fake_scores: Tensor) -> Tensor:
    """L_D of Eq. 7 without the penalty: -E[D(A_tilde)] + E[D(A_hat^m)]. -> scalar"""
    return fake_scores.mean() - real_scores.mean()


def gradient_penalty(discriminator: Callable[[Tensor], Tensor], real: Tensor, fake: Tensor) -> Tensor:
    """WGAN-GP term of Eq. 7: E[(||grad_a D(a)||_2 - 1)^2] at a = alpha*real + (1-alpha)*fake.

    real, fake: (B, n_items), detached from the model. -> scalar (graph kept for D's update)
    """
    alpha = torch.rand(real.shape[0], 1, device=real.device, dtype=real.dtype)
    interpolated = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    scores = discriminator(interpolated)
    (grads,) = torch.autograd.grad(scores.sum(), interpolated, create_graph=True)
    return (grads.norm(2, dim=1) - 1).pow(2).mean()


def gradient_penalty_affine(
    head: Callable[[Tensor], Tensor], weight: Tensor, hidden_real: Tensor, hidden_fake: Tensor
) -> Tensor:
    """``gradient_penalty`` for a critic D(a) = head(W a + b) whose first layer is affine.

    At a = alpha*real + (1-alpha)*fake, W a + b = alpha*(W real + b) + (1-alpha)*(W fake + b), so
    the interpolated rows' first layer comes from the real and fake ones already computed, and
    grad_a D = (dD/d(W a + b)) @ W. Same value and gradients as ``gradient_penalty`` (same alpha
    draw), without a second |I|-wide product per fake.

    weight: (hidden, n_items) W; hidden_real, hidden_fake: (B, hidden). -> scalar (graph kept)
    """
    alpha = torch.rand(hidden_real.shape[0], 1, device=hidden_real.device, dtype=hidden_real.dtype)
    interpolated = alpha * hidden_real + (1 - alpha) * hidden_fake
    if not interpolated.requires_grad:
        interpolated = interpolated.requires_grad_(True)
    scores = head(interpolated)
    (grad_hidden,) = torch.autograd.grad(scores.sum(), interpolated, create_graph=True)
    grads = grad_hidden @ weight
    return (grads.norm(2, dim=1) - 1).pow(2).mean()


class _Gram(torch.autograd.Function):
    """W W^T with the backward (G + G^T) W: one product, where autograd's generic matmul backward
    takes two (G W and G^T W, one per factor)."""

    @staticmethod
    def forward(ctx: Any, weight: Tensor) -> Tensor:
        ctx.save_for_backward(weight)
        return weight @ weight.T

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (weight,) = ctx.saved_tensors
        return (grad + grad.T) @ weight


def gram_matrix(weight: Tensor) -> Tensor:
    """W W^T: (hidden, n) -> (hidden, hidden); first-order gradients only (no double backward)."""
    out: Tensor = _Gram.apply(weight)
    return out


def gradient_penalty_gram(
    head: Callable[[Tensor], Tensor], gram: Tensor, hidden_real: Tensor, hidden_fake: Tensor
) -> Tensor:
    """``gradient_penalty_affine`` with the norm taken through the Gram matrix of W.

    ||g W||^2 = g (W W^T) g^T for g = dD/d(W a + b): with ``gram`` = W W^T computed once per D
    update (and shared by every modality), the penalty needs no [B x n_items] product at all.
    Same value and gradients as ``gradient_penalty_affine`` up to float rounding (same alpha draw).
    The squared norm is clamped at 1e-30 before its square root, whose gradient at 0 is infinite
    (the row-wise norm's is 0 there); a zero gradient row does not occur in practice.

    gram: (hidden, hidden) W W^T; hidden_real, hidden_fake: (B, hidden). -> scalar (graph kept)
    """
    alpha = torch.rand(hidden_real.shape[0], 1, device=hidden_real.device, dtype=hidden_real.dtype)
    interpolated = alpha * hidden_real + (1 - alpha) * hidden_fake
    if not interpolated.requires_grad:
        interpolated = interpolated.requires_grad_(True)
    scores = head(interpolated)
    (grad_hidden,) = torch.autograd.grad(scores.sum(), interpolated, create_graph=True)
    squared = ((grad_hidden @ gram) * grad_hidden).sum(1)  # ||grad_hidden @ W||^2 per row, (B,)
    return (squared.clamp_min(1e-30).sqrt() - 1).pow(2).mean()
