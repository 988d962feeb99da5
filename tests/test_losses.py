"""Loss functions on hand-checkable values."""

from __future__ import annotations

import math

import pytest
import torch

from model.losses import (
    bpr_loss,
    cross_modal_info_nce,
    discriminator_loss,
    generator_loss,
    gradient_penalty,
    gumbel_transform,
    l2_penalty,
)


def test_bpr_loss_matches_closed_form():
    pos = torch.tensor([2.0, 0.0])
    neg = torch.tensor([0.0, 0.0])
    expected = (-math.log(1 / (1 + math.exp(-2.0))) - math.log(0.5)) / 2
    assert bpr_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)


def test_bpr_loss_is_stable_for_large_margins():
    assert bpr_loss(torch.tensor([-200.0]), torch.tensor([0.0])).item() == pytest.approx(200.0)
    assert bpr_loss(torch.tensor([200.0]), torch.tensor([0.0])).item() == pytest.approx(0.0, abs=1e-12)


def test_l2_penalty_divides_by_batch():
    a = torch.ones(2, 3)  # 6
    b = torch.full((2, 1), 2.0)  # 8
    assert l2_penalty(a, b).item() == pytest.approx(7.0)


def test_info_nce_hand_computed_two_users():
    # h and e already unit vectors: s = cos / tau
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    e = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    tau = 0.5
    # user 0: positive s(h0,e0)=2; denominator over u' of exp s(h_u',e0) + exp s(e_u',e0):
    # exp(2) + exp(0) + exp(2) + exp(0)
    loss0 = -(2.0 - math.log(2 * math.exp(2) + 2 * math.exp(0)))
    expected = loss0  # symmetric for user 1
    assert cross_modal_info_nce(h, e, tau).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_is_scale_invariant_and_rewards_alignment():
    torch.manual_seed(0)
    e = torch.randn(8, 4)
    aligned = cross_modal_info_nce(3.0 * e, e, 0.2)
    aligned_unscaled = cross_modal_info_nce(e, e, 0.2)
    shuffled = cross_modal_info_nce(e[torch.randperm(8)], e, 0.2)
    assert aligned.item() == pytest.approx(aligned_unscaled.item(), rel=1e-5)
    assert aligned.item() < shuffled.item()


def test_gumbel_transform_rows_are_distributions_and_follow_observed_at_low_tau():
    torch.manual_seed(0)
    observed = torch.zeros(20000, 50)
    observed[:, 7] = 1.0
    rows = gumbel_transform(observed, tau=0.002)
    assert torch.allclose(rows.sum(1), torch.ones(20000), atol=1e-5)
    # low tau: nearly one-hot at argmax(A + g); by the Gumbel-max property the observed item wins
    # with probability e^1 / (e^1 + 49).
    assert (rows.max(1).values > 0.99).float().mean() > 0.95
    hit = (rows.argmax(1) == 7).float().mean().item()
    assert hit == pytest.approx(math.e / (math.e + 49), abs=0.006)
    # a large tau flattens the rows towards uniform
    flat = gumbel_transform(observed, tau=1e4)
    assert torch.allclose(flat, torch.full_like(flat, 1 / 50), atol=1e-4)


def test_gumbel_transform_is_seeded():
    g1 = torch.Generator().manual_seed(3)
    g2 = torch.Generator().manual_seed(3)
    obs = torch.zeros(4, 6)
    assert torch.equal(gumbel_transform(obs, 0.5, g1), gumbel_transform(obs, 0.5, g2))


def test_wgan_objectives_signs():
    real = torch.tensor([0.9, 0.7])
    fake = torch.tensor([0.2, 0.4])
    assert discriminator_loss(real, fake).item() == pytest.approx(0.3 - 0.8)
    assert generator_loss(fake).item() == pytest.approx(-0.3)


class _Linear(torch.nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.w


def test_gradient_penalty_of_a_linear_critic():
    # D(a) = a . w has gradient w everywhere: penalty = (||w|| - 1)^2
    w = torch.tensor([3.0, 4.0])
    real, fake = torch.randn(5, 2), torch.randn(5, 2)
    assert gradient_penalty(_Linear(w), real, fake).item() == pytest.approx(16.0)
    unit = torch.tensor([0.6, 0.8])
    assert gradient_penalty(_Linear(unit), real, fake).item() == pytest.approx(0.0, abs=1e-10)


def test_gradient_penalty_reaches_the_critic_parameters():
    critic = _Linear(torch.tensor([3.0, 4.0]))
    gradient_penalty(critic, torch.randn(4, 2), torch.randn(4, 2)).backward()
    # d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w|| = 2 * 4 * w / 5
    assert torch.allclose(critic.w.grad, torch.tensor([4.8, 6.4]))
