"""The adversarial step (Eq. 3-7) as optimised in ``training.trainer`` against a plain reference.

The reference below is the straightforward computation (every loss on its own, a plain
``backward()`` into every leaf); the trainer's version must give the same L_D, L_G, the same
gradients of L_G into the model, and the same discriminator after its update, on a fixed seed.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch

from model.graph import cosine_blocks, observed_rows
from model.losses import discriminator_loss, generator_loss, gradient_penalty, gumbel_transform
from model.mmssl import MMSSL
from tests.conftest import FAST_OVERRIDES
from training.config import load_config
from training.data import load_dataset
from training.trainer import (
    TrainingState,
    adversarial_step,
    model_config_for,
    refresh_views,
    sample_item_columns,
)


def _reference_step(
    model: MMSSL, out: Any, state: TrainingState, batch_users: torch.Tensor, opt: Any, cfg: Any, gen: Any
) -> tuple[torch.Tensor, float]:
    mc, tc = model.config, cfg.train
    disc = model.discriminator
    assert disc is not None
    users = batch_users[torch.randperm(batch_users.numel(), generator=gen)][: tc.adv_users]
    columns = None
    if 0 < tc.adv_item_columns < state.n_items:
        columns = sample_item_columns(state, users, tc.adv_item_columns, gen)
    # dense [users x items] rows of A_hat^m, A_tilde, every critic call on them
    fake = [
        cosine_blocks(f_u, f_i, users)
        for f_u, f_i in zip(out.features.users, out.features.items, strict=True)
    ]
    with torch.no_grad():
        observed = observed_rows(state.graph, users, state.n_items)
        transformed = gumbel_transform(observed, mc.gumbel_tau, gen) if mc.use_gumbel else observed
        real = transformed + mc.zeta * cosine_blocks(out.user, out.item, users)
    if columns is not None:
        real, fake = real[:, columns], [f[:, columns] for f in fake]

    def critic(rows: torch.Tensor) -> torch.Tensor:
        return disc(rows, columns)

    opt.zero_grad(set_to_none=True)
    loss_d = torch.zeros(())
    real_scores = critic(real)
    for f in fake:
        loss_d = loss_d + discriminator_loss(real_scores, critic(f.detach()))
        loss_d = loss_d + tc.gp_weight * gradient_penalty(critic, real, f.detach())
    loss_d = loss_d / len(fake)
    loss_d.backward()
    opt.step()
    loss_g = torch.stack([generator_loss(critic(f)) for f in fake]).mean()
    return loss_g, float(loss_d.detach())


# The trainer's paths: the default (Gumbel rows at tau = 0.002, mostly exact zeros: the sparse
# product), dense Gumbel rows (a large tau), no cosine term (zeta = 0), w/o-GT (binary observed
# rows), and sampled item columns (the weight's column slice is re-read after D's step).
VARIANTS = {
    "default": [],
    "dense_gumbel": ["gumbel_tau=1.0"],
    "zeta0": ["zeta=0.0"],
    "no_gumbel": ["use_gumbel=false"],
    "columns": ["adv_item_columns=30"],
}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    from training.synthetic import write_synthetic

    return load_dataset(write_synthetic(tmp_path_factory.mktemp("adv") / "d", n_users=70, n_items=45, seed=5))


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def setup(request: pytest.FixtureRequest, dataset: Any):
    cfg = load_config(None, [*FAST_OVERRIDES, "adv_users=32", *VARIANTS[request.param]])
    mc = model_config_for(dataset, cfg.model)
    state = TrainingState(dataset, mc, torch.device("cpu"))
    torch.manual_seed(3)
    model = MMSSL(mc).train()
    assert model.discriminator is not None and model.modalities
    views = refresh_views(model, state)
    return cfg, state, model, views


def _run(step: Any, setup: Any) -> tuple[float, float, dict[str, torch.Tensor], list[torch.Tensor]]:
    cfg, state, base, views = setup
    model = copy.deepcopy(base)
    disc = model.discriminator
    assert disc is not None
    opt = torch.optim.Adam(disc.parameters(), lr=cfg.train.d_lr, betas=tuple(cfg.train.d_betas))
    torch.manual_seed(7)  # dropout and the penalty's alpha
    gen = torch.Generator().manual_seed(9)
    out = model(state.graph, state.item_raw, views)
    batch_users = torch.unique(state.users[:200])
    loss_g, loss_d = step(model, out, state, batch_users, opt, cfg, gen)
    params = model.model_parameters()
    grads = torch.autograd.grad(loss_g, params, allow_unused=True)
    model_grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads, strict=True)]
    return float(loss_g.detach()), loss_d, copy.deepcopy(disc.state_dict()), model_grads


def test_adversarial_step_equals_the_plain_reference(setup) -> None:
    g_new, d_new, disc_new, grads_new = _run(adversarial_step, setup)
    g_ref, d_ref, disc_ref, grads_ref = _run(_reference_step, setup)
    assert d_new == pytest.approx(d_ref, rel=1e-5, abs=1e-6)
    assert g_new == pytest.approx(g_ref, rel=1e-5, abs=1e-6)
    assert disc_new.keys() == disc_ref.keys()
    for k in disc_ref:
        torch.testing.assert_close(disc_new[k], disc_ref[k], rtol=1e-5, atol=1e-6)
    assert any(float(g.abs().sum()) > 0 for g in grads_ref)  # L_G reaches the model
    for a, b in zip(grads_new, grads_ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # the discriminator did move: the comparison is not between two untouched copies
    base_disc = setup[2].discriminator.state_dict()
    assert any(
        not torch.equal(disc_ref[k], base_disc[k]) for k in disc_ref if disc_ref[k].is_floating_point()
    )
