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
    gradient_penalty_affine,
    gradient_penalty_gram,
    gram_matrix,
    gumbel_transform,
    l2_penalty,
)
from model.mmssl import Discriminator


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


def test_info_nce_asymmetric_hand_example_fixes_the_denominator_axis():
    # h_0 = h_1 = (1, 0), e_0 = (1, 0), e_1 = (0, 1), tau = 1: s(h_u', e_u) is not symmetric in
    # (u', u), so summing over the wrong index gives another number.
    h = torch.tensor([[1.0, 0.0], [2.0, 0.0]])  # h_1 not unit: the cosine normalises it
    e = torch.tensor([[1.0, 0.0], [0.0, 3.0]])
    # user 0: positive s(h0, e0) = 1; sum_u' exp s(h_u', e0) = e + e, sum_u' exp s(e_u', e0) = e + 1
    loss0 = math.log(3 * math.e + 1) - 1
    # user 1: positive s(h1, e1) = 0; sum_u' exp s(h_u', e1) = 1 + 1, sum_u' exp s(e_u', e1) = 1 + e
    loss1 = math.log(3 + math.e) - 0
    assert cross_modal_info_nce(h, e, 1.0).item() == pytest.approx((loss0 + loss1) / 2, rel=1e-6)
    # the temperature divides every similarity: tau = 0.5 doubles them
    loss0_half = math.log(3 * math.e**2 + 1) - 2
    loss1_half = math.log(3 + math.e**2)
    assert cross_modal_info_nce(h, e, 0.5).item() == pytest.approx((loss0_half + loss1_half) / 2, rel=1e-6)


def _info_nce_reference(h, e, tau):
    """Eq. 11 written as loops over plain Python floats."""

    def cos(a, b):
        return sum(x * y for x, y in zip(a, b, strict=True)) / math.sqrt(
            sum(x * x for x in a) * sum(y * y for y in b)
        )

    h, e = h.tolist(), e.tolist()
    losses = []
    for u in range(len(h)):
        positive = math.exp(cos(h[u], e[u]) / tau)
        denominator = sum(
            math.exp(cos(h[v], e[u]) / tau) + math.exp(cos(e[v], e[u]) / tau) for v in range(len(h))
        )
        losses.append(-math.log(positive / denominator))
    return sum(losses) / len(losses)


def test_info_nce_equals_a_loop_reference_on_random_unequal_inputs():
    g = torch.Generator().manual_seed(5)
    for batch, tau in ((3, 0.5), (5, 0.2), (4, 1.3)):
        h = torch.randn(batch, 6, generator=g, dtype=torch.float64) * torch.rand(
            batch, 1, generator=g, dtype=torch.float64
        )
        e = torch.randn(batch, 6, generator=g, dtype=torch.float64) + 0.3
        assert cross_modal_info_nce(h, e, tau).item() == pytest.approx(
            _info_nce_reference(h, e, tau), rel=1e-9
        )


def test_bpr_loss_is_not_symmetric_in_its_arguments_and_averages():
    pos = torch.tensor([3.0, -1.0, 0.5])
    neg = torch.tensor([1.0, 0.0, 2.5])
    expected = sum(math.log1p(math.exp(n - p)) for p, n in zip(pos.tolist(), neg.tolist(), strict=True)) / 3
    assert bpr_loss(pos, neg).item() == pytest.approx(expected, rel=1e-6)
    assert bpr_loss(neg, pos).item() != pytest.approx(expected, rel=1e-3)


def test_l2_penalty_uses_the_first_tensors_batch_and_squares():
    a = torch.tensor([[1.0, -2.0], [0.0, 3.0], [1.0, 1.0]])  # batch 3, sum of squares 16
    b = torch.tensor([[-1.0, 0.5]])  # 1.25
    assert l2_penalty(a, b).item() == pytest.approx((16 + 1.25) / 3)
    assert l2_penalty(b, a).item() == pytest.approx((16 + 1.25) / 1)


def test_gumbel_transform_keeps_dtype_and_adds_noise_before_the_temperature():
    # with the same uniforms, softmax((A + g) / tau): recompute g from the generator's stream
    g1 = torch.Generator().manual_seed(9)
    observed = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    out = gumbel_transform(observed, 0.3, g1)
    g2 = torch.Generator().manual_seed(9)
    uniform = torch.rand(observed.shape, generator=g2, dtype=torch.float64).clamp(1e-10, 1.0 - 1e-7)
    gumbel = -torch.log(-torch.log(uniform))
    expected = torch.softmax((observed + gumbel) / 0.3, dim=1)
    assert out.dtype == torch.float64
    assert torch.equal(out, expected)  # the in-place form runs the same operations, bit for bit


def test_wgan_objectives_on_unequal_batches():
    real = torch.tensor([0.9, 0.5, 0.1])
    fake = torch.tensor([0.3, 0.6, 0.0])
    assert discriminator_loss(real, fake).item() == pytest.approx(0.3 - 0.5)
    assert discriminator_loss(fake, real).item() == pytest.approx(0.5 - 0.3)
    assert generator_loss(real).item() == pytest.approx(-0.5)


def test_gradient_penalty_of_a_quadratic_critic_depends_on_the_interpolation():
    # D(a) = 0.5 ||a||^2 has gradient a: the penalty is mean (||alpha r + (1 - alpha) f|| - 1)^2,
    # with alpha drawn from torch's global generator, one per row.
    class Quadratic(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return 0.5 * (x * x).sum(1)

    real = torch.tensor([[2.0, 0.0], [0.0, 4.0], [1.0, 1.0]])
    fake = torch.tensor([[0.0, 0.0], [0.0, 0.0], [3.0, -1.0]])
    torch.manual_seed(4)
    got = gradient_penalty(Quadratic(), real, fake).item()
    torch.manual_seed(4)
    alpha = torch.rand(3, 1)
    point = alpha * real + (1 - alpha) * fake
    expected = ((point.norm(dim=1) - 1) ** 2).mean().item()
    assert got == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("extreme", [0.0, 1.0])
def test_gumbel_transform_stays_finite_at_the_ends_of_the_uniform_range(monkeypatch, extreme):
    # torch.rand may return exactly 0 (and the clamp also guards 1): both logs must stay finite
    def fake_rand(shape, generator=None, device=None, dtype=None):
        return torch.full(shape, extreme, dtype=dtype, device=device)

    monkeypatch.setattr(torch, "rand", fake_rand)
    observed = torch.tensor([[1.0, 0.0, 0.0]], dtype=torch.float64)
    rows = gumbel_transform(observed, 0.5)
    assert torch.isfinite(rows).all()
    # equal noise everywhere: the softmax of observed / tau alone
    assert torch.allclose(rows, torch.softmax(observed / 0.5, dim=1), atol=1e-9)


def _d_loss_old(disc, real, fakes, columns):
    """The discriminator step as it was: every critic call on |I|-wide rows."""

    def critic(rows):
        return disc(rows, columns)

    loss = torch.zeros(())
    real_scores = critic(real)
    for f in fakes:
        loss = loss + discriminator_loss(real_scores, critic(f)) + 0.7 * gradient_penalty(critic, real, f)
    return loss / len(fakes)


def _d_loss_new(disc, real, fakes, columns):
    """As training.trainer.adversarial_step now computes it."""
    weight = disc.first_weight(columns)
    hidden_real = disc.hidden(real, columns)
    real_scores = disc.from_hidden(hidden_real)
    loss = torch.zeros(())
    for f in fakes:
        hidden_fake = disc.hidden(f, columns)
        loss = loss + discriminator_loss(real_scores, disc.from_hidden(hidden_fake))
        loss = loss + 0.7 * gradient_penalty_affine(disc.from_hidden, weight, hidden_real, hidden_fake)
    return loss / len(fakes)


def _d_loss_gram(disc, real, fakes, columns):
    """The penalty through one Gram matrix W W^T (training.trainer.adversarial_step since issue 12)."""
    gram = gram_matrix(disc.first_weight(columns))
    hidden_real = disc.hidden(real, columns)
    real_scores = disc.from_hidden(hidden_real)
    loss = torch.zeros(())
    for f in fakes:
        hidden_fake = disc.hidden(f, columns)
        loss = loss + discriminator_loss(real_scores, disc.from_hidden(hidden_fake))
        loss = loss + 0.7 * gradient_penalty_gram(disc.from_hidden, gram, hidden_real, hidden_fake)
    return loss / len(fakes)


@pytest.mark.parametrize("new_loss", [_d_loss_new, _d_loss_gram])
@pytest.mark.parametrize("with_columns", [False, True])
def test_affine_gradient_penalty_step_equals_the_row_wise_one(with_columns, new_loss):
    """Same loss and same discriminator gradients on a fixed seed, BatchNorm and dropout included
    (the global RNG is consumed in the same order: dropout masks, alpha, dropout masks)."""
    n_items, batch = 40, 6
    torch.manual_seed(3)
    disc = Discriminator(n_items, hidden=16, slope=0.2, dropout=0.3).train()
    columns = torch.tensor([0, 3, 4, 9, 17, 21, 30, 39]) if with_columns else None
    width = n_items if columns is None else columns.numel()
    real = torch.rand(batch, width)
    fakes = [torch.randn(batch, width), torch.randn(batch, width)]
    grads, losses = [], []
    for fn in (_d_loss_old, new_loss):
        torch.manual_seed(11)
        disc.zero_grad(set_to_none=True)
        loss = fn(disc, real, fakes, columns)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad.clone() for p in disc.parameters()])
    assert losses[0].item() != 0.0
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-5, atol=1e-6)
    for new, old in zip(grads[1], grads[0], strict=True):
        torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-6)
    # a different alpha draw changes the penalty: the test can tell the two draws apart
    torch.manual_seed(12)
    other = new_loss(disc, real, fakes, columns)
    assert abs(other.item() - losses[0].item()) > 1e-6


def test_gram_matrix_value_and_gradient_equal_the_plain_product():
    """W W^T and its one-product backward (G + G^T) W against autograd of the plain product, with
    an upstream gradient that is not symmetric."""
    torch.manual_seed(0)
    weight = torch.randn(5, 9, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(5, 5, dtype=torch.float64)
    (expected,) = torch.autograd.grad(((weight @ weight.T) * upstream).sum(), weight)
    gram = gram_matrix(weight)
    (got,) = torch.autograd.grad((gram * upstream).sum(), weight)
    torch.testing.assert_close(gram, weight.detach() @ weight.detach().T)
    torch.testing.assert_close(got, expected)
    # hand example: W = [[1, 2]] -> W W^T = [[5]], d/dW of 3 * 5 = 3 * 2 W = [[6, 12]]
    w = torch.tensor([[1.0, 2.0]], requires_grad=True)
    (g,) = torch.autograd.grad(3 * gram_matrix(w).sum(), w)
    assert gram_matrix(w).item() == 5.0 and g.tolist() == [[6.0, 12.0]]
