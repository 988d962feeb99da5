"""Model pieces against independent references: attention, graphs, top-k views, Eq. 2/10/12."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model import MMSSL, MMSSLConfig, build_interaction_graph, build_modality_views
from model.graph import (
    cosine_blocks,
    csr_rows_dense,
    mean_operators,
    modality_topk,
    observed_rows,
    spmm,
    views_from_topk,
)
from model.mmssl import Discriminator, ModalityAttention


def test_attention_matches_a_per_head_loop_and_depends_on_all_modalities():
    torch.manual_seed(0)
    att = ModalityAttention(dim=8, n_heads=2)
    x = torch.randn(5, 3, 8)  # 5 nodes, 3 modalities
    out = att(x)
    # independent reference: explicit loops over nodes, heads, modalities
    ref = torch.zeros_like(x)
    q, k = att.query(x), att.key(x)
    for n in range(5):
        for h in range(2):
            sl = slice(4 * h, 4 * h + 4)
            for m in range(3):
                logits = torch.stack([q[n, m, sl] @ k[n, mp, sl] / math.sqrt(4) for mp in range(3)])
                w = torch.softmax(logits, 0)
                ref[n, m, sl] = sum(w[mp] * x[n, mp, sl] for mp in range(3))
    assert torch.allclose(out, ref, atol=1e-5)
    # changing modality 2 of node 0 changes the refined embedding of modality 0 (cross-modal)
    x2 = x.clone()
    x2[0, 2] += 1.0
    assert not torch.allclose(att(x2)[0, 0], out[0, 0])
    # and not through a mean: the output is not a fixed linear map of the modality mean
    assert not torch.allclose(out[:, 0], out[:, 1])


def test_discriminator_width_does_not_grow_with_items_and_uses_leaky_slope():
    d_small = Discriminator(n_items=100, hidden=32, slope=0.2, dropout=0.0)
    d_big = Discriminator(n_items=10_000, hidden=32, slope=0.2, dropout=0.0)
    assert d_small.net[0][0].out_features == d_big.net[0][0].out_features == 32
    act = d_small.net[0][1]
    assert isinstance(act, torch.nn.LeakyReLU) and act.negative_slope == 0.2
    d_small.eval()
    out = d_small(torch.randn(7, 100))
    assert out.shape == (7,) and bool(((out > 0) & (out < 1)).all())


def _toy_graph():
    # 3 users x 4 items; user 2 has no items
    users = torch.tensor([0, 0, 1, 1, 1])
    items = torch.tensor([0, 1, 1, 2, 3])
    return users, items


def test_interaction_graph_normalisations():
    users, items = _toy_graph()
    g = build_interaction_graph(users, items, 3, 4, "symmetric")
    dense = g.user_mean.to_dense()
    assert dense[0, 0] == pytest.approx(1 / math.sqrt(2))  # 1/sqrt(|N_u|)
    assert dense[1, 3] == pytest.approx(1 / math.sqrt(3))
    assert g.item_mean.to_dense()[1, 0] == pytest.approx(1 / math.sqrt(2))  # item 1 has 2 users
    sym = g.user_gnn.to_dense()
    assert sym[0, 1] == pytest.approx(1 / math.sqrt(2 * 2))
    assert sym[1, 2] == pytest.approx(1 / math.sqrt(3 * 1))
    paper = build_interaction_graph(users, items, 3, 4, "paper")
    assert torch.allclose(paper.user_gnn.to_dense(), dense)
    rows = observed_rows(g, torch.tensor([1, 2, 0]), 4)
    assert rows.tolist() == [[0, 1, 1, 1], [0, 0, 0, 0], [1, 1, 0, 0]]


def test_csr_rows_dense_matches_numpy():
    indptr = torch.tensor([0, 2, 2, 5])
    indices = torch.tensor([1, 3, 0, 2, 4])
    out = csr_rows_dense(indptr, indices, torch.tensor([2, 0]), 5)
    assert out.tolist() == [[1, 0, 1, 0, 1], [0, 1, 0, 1, 0]]


def test_topk_views_pair_each_user_with_its_own_items():
    torch.manual_seed(0)
    n_users, n_items, k = 6, 9, 3
    f_u = [torch.randn(n_users, 4)]
    f_i = [torch.randn(n_items, 4)]
    active = torch.tensor([0, 1, 2, 4, 5])  # user 3 inactive
    tops = modality_topk(f_u, f_i, k, active, chunk=2)  # chunking across users
    cos = F.normalize(f_u[0], dim=1) @ F.normalize(f_i[0], dim=1).T
    for u in active.tolist():
        expected = set(cos[u].topk(k).indices.tolist())
        assert set(tops[0][u].tolist()) == expected
    assert tops[0][3].tolist() == [-1, -1, -1]
    views = views_from_topk(tops, n_items)
    ui = views.user_to_item[0].to_dense()
    for u in active.tolist():
        assert set(ui[u].nonzero().squeeze(1).tolist()) == set(tops[0][u].tolist())
        assert torch.allclose(ui[u][ui[u] > 0], torch.full((k,), k**-0.5))
    assert ui[3].abs().sum() == 0
    iu = views.item_to_user[0].to_dense()
    # item side: users that picked the item, weighted 1/sqrt(in-degree)
    for i in range(n_items):
        pickers = (ui[:, i] > 0).nonzero().squeeze(1)
        if len(pickers):
            assert torch.allclose(iu[i, pickers], torch.full((len(pickers),), len(pickers) ** -0.5))
    # e_u^m = sum over own top-k of e_i / sqrt(k)
    e_i = torch.randn(n_items, 5)
    e_u_view = torch.sparse.mm(views.user_to_item[0], e_i)
    for u in active.tolist():
        assert torch.allclose(e_u_view[u], e_i[tops[0][u]].sum(0) / math.sqrt(k), atol=1e-6)


def _tiny_model(**overrides):
    torch.manual_seed(0)
    users = torch.tensor([0, 0, 1, 1, 1, 2, 3, 3])
    items = torch.tensor([0, 1, 1, 2, 3, 4, 0, 4])
    cfg = MMSSLConfig(
        n_users=5,
        n_items=6,
        modality_dims={"image": 7, "audio": 3},
        embed_dim=8,
        n_heads=2,
        view_topk=2,
        feat_dropout=0.0,
        **overrides,
    )
    graph = build_interaction_graph(users, items, 5, 6, cfg.graph_norm)
    raw = [torch.randn(6, 7), torch.randn(6, 3)]
    return MMSSL(cfg).eval(), graph, raw, users, items


@pytest.mark.parametrize("graph_norm", ["symmetric", "paper"])
def test_forward_implements_eq_2_10_12(graph_norm):
    model, graph, raw, users, items = _tiny_model(graph_norm=graph_norm)
    feats = model.modality_features(raw, graph)
    active = torch.tensor([0, 1, 2, 3])
    views = build_modality_views(feats.users, feats.items, 2, active)
    out = model(graph, raw, views)
    cfg = model.config
    # Eq. 2 by hand
    for m, name in enumerate(cfg.modalities):
        fbar = model.projections[name](raw[m])
        for u in range(5):
            mine = items[users == u]
            expect = fbar[mine].sum(0) / math.sqrt(len(mine)) if len(mine) else torch.zeros(8)
            assert torch.allclose(feats.users[m][u], expect, atol=1e-5)
        for i in range(6):
            theirs = users[items == i]
            expect = feats.users[m][theirs].sum(0) / math.sqrt(len(theirs)) if len(theirs) else torch.zeros(8)
            assert torch.allclose(feats.items[m][i], expect, atol=1e-5)
    # Eq. 10: mean pooling over L+1 layers, user layer l+1 = A E_i^l
    a = graph.user_gnn.to_dense()
    at = graph.item_gnn.to_dense()
    lu, li = [out.user_layer0], [None]
    li[0] = out.item_layers[0]
    for _ in range(cfg.n_layers):
        lu, li = lu + [a @ li[-1]], li + [at @ lu[-1]]
    assert torch.allclose(out.user_id_side, torch.stack(lu).mean(0), atol=1e-5)
    assert len(out.item_layers) == cfg.n_layers
    for got, want in zip(out.item_layers, li[: cfg.n_layers], strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    # Eq. 12
    h_u = out.user_id_side + cfg.omega * sum(F.normalize(f, dim=1) for f in feats.users)
    assert torch.allclose(out.user, h_u, atol=1e-5)
    # a user without interactions has no modality part
    assert torch.allclose(out.user[4], out.user_id_side[4])


def test_id_only_model_is_lightgcn():
    torch.manual_seed(0)
    users, items = _toy_graph()
    cfg = MMSSLConfig(n_users=3, n_items=4, embed_dim=4, n_heads=1, id_only=True, n_layers=2)
    model = MMSSL(cfg)
    assert model.discriminator is None and model.attention is None and len(model.projections) == 0
    g = build_interaction_graph(users, items, 3, 4, "symmetric")
    out = model(g, [], None)
    e_u, e_i = model.user_embedding.weight, model.item_embedding.weight
    a = g.user_gnn.to_dense()
    u1, i1 = a @ e_i, a.T @ e_u
    u2 = a @ i1
    assert torch.allclose(out.user, (e_u + u1 + u2) / 3, atol=1e-6)


def test_ablation_switches_build_the_right_parts():
    model, *_ = _tiny_model(use_adversarial=False)
    assert model.discriminator is None
    model, *_ = _tiny_model()
    assert model.discriminator is not None
    d_params = {id(p) for p in model.discriminator.parameters()}
    assert not d_params & {id(p) for p in model.model_parameters()}


def test_config_validation_names_the_problem():
    with pytest.raises(ValueError, match="n_heads"):
        MMSSLConfig(n_users=2, n_items=2, modality_dims={"a": 2}, embed_dim=10, n_heads=3).validate()
    with pytest.raises(ValueError, match="graph_norm"):
        MMSSLConfig(n_users=2, n_items=2, modality_dims={"a": 2}, graph_norm="rw", view_topk=1).validate()
    with pytest.raises(ValueError, match="id_only"):
        MMSSLConfig(n_users=2, n_items=2, view_topk=1).validate()


@pytest.mark.parametrize("n_modalities", [1, 2, 3])
def test_pooled_attention_equals_attention_then_mean_over_modalities(n_modalities):
    """pooled (relative logits; the sigmoid form for two modalities) against the plain Eq. 9
    (forward: every q_m . k_m', softmax, weighted sum) then the mean, in value and in the gradients
    into x and into both projections."""
    torch.manual_seed(1)
    att = ModalityAttention(dim=8, n_heads=2).double()
    x = torch.randn(6, n_modalities, 8, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(6, 8, dtype=torch.float64)
    pooled = att.pooled(x)
    assert pooled.shape == (6, 8)
    torch.testing.assert_close(pooled, att(x).mean(dim=1))
    # the gradients agree too (the trainer differentiates through pooled)
    inputs = [x, att.query.weight, att.key.weight]
    got = torch.autograd.grad((pooled * upstream).sum(), inputs, allow_unused=True)
    ref = torch.autograd.grad((att(x).mean(dim=1) * upstream).sum(), inputs)
    for g, r in zip(got, ref, strict=True):
        torch.testing.assert_close(torch.zeros_like(r) if g is None else g, r)
    if n_modalities > 1:
        assert float(ref[1].abs().sum()) > 0  # the projections do receive a gradient
    # the form the model calls: the modalities as separate (N, d) tensors, same value and gradients
    parts = [x[:, m].detach().clone().requires_grad_() for m in range(n_modalities)]
    from_parts = att.pooled(parts)
    torch.testing.assert_close(from_parts, pooled)
    got = torch.autograd.grad((from_parts * upstream).sum(), [*parts, *inputs[1:]], allow_unused=True)
    ref_x = ref[0].unbind(1)
    for g, r in zip(got, [*ref_x, *ref[1:]], strict=True):
        torch.testing.assert_close(torch.zeros_like(r) if g is None else g, r)


@pytest.mark.parametrize("graph_norm", ["symmetric", "paper"])
def test_every_operator_carries_its_exact_transpose_and_spmm_differentiates_through_it(graph_norm):
    from model.graph import spmm

    users, items = _toy_graph()
    g = build_interaction_graph(users, items, 3, 4, graph_norm)
    pairs = [
        (g.user_mean, g.user_mean_t),
        (g.item_mean, g.item_mean_t),
        (g.user_gnn, g.user_gnn_t),
        (g.item_gnn, g.item_gnn_t),
    ]
    torch.manual_seed(2)
    for op, op_t in pairs:
        assert op.layout == torch.sparse_csr and op_t is not None
        dense = op.to_dense()
        assert torch.equal(op_t.to_dense(), dense.T)
        x = torch.randn(dense.shape[1], 5, requires_grad=True)
        w = torch.randn(dense.shape[0], 5)
        y = spmm(op, x, op_t)
        assert torch.allclose(y, dense @ x, atol=1e-6)
        (grad,) = torch.autograd.grad((y * w).sum(), x)
        assert torch.allclose(grad, dense.T @ w, atol=1e-6)  # independent reference: dense A^T w
    # the views carry theirs too
    tops = [torch.tensor([[0, 1], [2, 3], [-1, -1]])]
    views = views_from_topk(tops, 4)
    assert views.user_to_item_t is not None and views.item_to_user_t is not None
    assert torch.equal(views.user_to_item_t[0].to_dense(), views.user_to_item[0].to_dense().T)
    assert torch.equal(views.item_to_user_t[0].to_dense(), views.item_to_user[0].to_dense().T)


def test_discriminator_on_sampled_columns_equals_d_of_the_full_row_zero_elsewhere():
    torch.manual_seed(3)
    d = Discriminator(n_items=12, hidden=8, slope=0.2, dropout=0.0).eval()
    columns = torch.tensor([1, 4, 5, 10])
    rows = torch.rand(6, 4)
    full = torch.zeros(6, 12)
    full[:, columns] = rows
    assert torch.allclose(d(rows, columns), d(full), atol=1e-6)
    # and it depends on which columns the values sit in
    assert not torch.allclose(d(rows, torch.tensor([0, 2, 3, 11])), d(full), atol=1e-4)


def test_the_default_config_still_builds_the_papers_model():
    from training.config import TrainConfig

    cfg = MMSSLConfig(n_users=5, n_items=16, modality_dims={"image": 7, "audio": 3})
    model = MMSSL(cfg)
    assert (cfg.embed_dim, cfg.n_layers, cfg.n_heads, cfg.eta, cfg.omega) == (64, 2, 4, 0.36, 0.55)
    assert [p.out_features for p in model.projections.values()] == [64, 64]
    assert model.attention is not None and model.attention.n_heads == 4 and model.attention.head_dim == 16
    first, second = model.discriminator.net[0][0], model.discriminator.net[1][0]
    assert (first.in_features, first.out_features, second.out_features) == (
        16,
        256,
        128,
    )  # D over |I|-wide rows
    assert model.discriminator.net[0][1].negative_slope == 0.2
    assert cfg.use_adversarial and cfg.use_contrastive and cfg.use_gumbel and not cfg.id_only
    tc = TrainConfig()
    assert tc.adv_item_columns == 0  # the discriminator sees every item column, as in Eq. 4-7
    assert (tc.cl_temperature, tc.cl_weight, tc.gp_weight) == (0.5, 0.03, 1.0)


# ------------------------------------------------------------------ graph operators, numpy references

# 4 users, 5 items; user 3 and item 4 have no interactions, user 2 and item 3 have exactly one
_U = [0, 0, 0, 1, 1, 2]
_I = [2, 0, 1, 1, 3, 0]


def _pairs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor(_U), torch.tensor(_I)


def _dense_a() -> np.ndarray:
    a = np.zeros((4, 5))
    a[_U, _I] = 1.0
    return a


def test_mean_operators_without_given_orders_equal_numpy():
    a = _dense_a()
    du, di = a.sum(1), a.sum(0)
    user_mean, item_mean = mean_operators(*_pairs(), 4, 5)
    expected_u = a / np.sqrt(np.maximum(du, 1))[:, None]
    expected_i = a.T / np.sqrt(np.maximum(di, 1))[:, None]
    np.testing.assert_allclose(user_mean.to_dense().numpy(), expected_u, rtol=1e-6)
    np.testing.assert_allclose(item_mean.to_dense().numpy(), expected_i, rtol=1e-6)
    # the CSR row pointers say the same as the dense values (a wrong sort order breaks them)
    assert user_mean.crow_indices().tolist() == [0, 3, 5, 6, 6]
    assert item_mean.crow_indices().tolist() == [0, 2, 4, 5, 6, 6]


def test_interaction_graph_default_is_symmetric_and_equals_numpy():
    a = _dense_a()
    du, di = a.sum(1), a.sum(0)
    g = build_interaction_graph(*_pairs(), 4, 5)  # default normalisation
    sym = a / np.sqrt(np.maximum(du, 1))[:, None] / np.sqrt(np.maximum(di, 1))[None, :]
    np.testing.assert_allclose(g.user_gnn.to_dense().numpy(), sym, rtol=1e-6)
    np.testing.assert_allclose(g.item_gnn.to_dense().numpy(), sym.T, rtol=1e-6)
    assert sym[2, 0] == pytest.approx(1 / math.sqrt(1 * 2))  # the degree-1 user
    assert g.item_degree.dtype == torch.float32
    assert g.item_degree.tolist() == di.tolist()  # 5 entries: item 4 has none
    assert g.indptr.tolist() == [0, 3, 5, 6, 6]
    assert g.indices.tolist() == [0, 1, 2, 1, 3, 0]
    with pytest.raises(ValueError, match="graph_norm must be 'paper' or 'symmetric', got 'row'"):
        build_interaction_graph(*_pairs(), 4, 5, "row")


def test_csr_rows_dense_with_a_single_interaction():
    out = csr_rows_dense(torch.tensor([0, 0, 1]), torch.tensor([2]), torch.tensor([1, 0]), 3)
    assert out.tolist() == [[0, 0, 1], [0, 0, 0]]


def test_cosine_blocks_equal_numpy_cosines():
    gen = torch.Generator().manual_seed(0)
    f_u, f_i = torch.randn(4, 3, generator=gen) * 5, torch.randn(6, 3, generator=gen)
    users = torch.tensor([2, 0])
    u, i = f_u.numpy()[[2, 0]], f_i.numpy()
    expected = (u @ i.T) / np.linalg.norm(u, axis=1)[:, None] / np.linalg.norm(i, axis=1)[None, :]
    np.testing.assert_allclose(cosine_blocks(f_u, f_i, users).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_views_with_one_modality_k_one_and_item_zero_on_top():
    # user 0's best item is item 0 (it must stay active), user 1 inactive
    f_u = [torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.2, 1.0]])]
    f_i = [torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])]
    views = build_modality_views(f_u, f_i, 1, torch.tensor([0, 2]))
    assert views.topk_items[0].tolist() == [[0], [-1], [1]]
    expected = np.zeros((3, 3))
    expected[0, 0] = expected[2, 1] = 1.0  # 1/sqrt(k), k = 1
    np.testing.assert_allclose(views.user_to_item[0].to_dense().numpy(), expected)
    np.testing.assert_allclose(views.item_to_user[0].to_dense().numpy(), expected.T)
    with pytest.raises(ValueError):
        modality_topk(f_u, f_i + f_i, 1, torch.tensor([0]))


def test_spmm_values_and_that_its_backward_uses_the_given_transpose():
    a = torch.tensor(_dense_a(), dtype=torch.float32)
    matrix = a.to_sparse_csr()
    gen = torch.Generator().manual_seed(1)
    dense = torch.randn(5, 3, generator=gen, requires_grad=True)
    weight = torch.randn(4, 3, generator=gen)
    out = spmm(matrix, dense)  # no transpose: torch's own product and backward
    torch.testing.assert_close(out, a @ dense.detach())
    (out * weight).sum().backward()
    torch.testing.assert_close(dense.grad, a.T @ weight)
    # with a transpose the backward is that matrix's product: a doubled one doubles the gradient
    dense.grad = None
    out = spmm(matrix, dense, (2 * a.T).to_sparse_csr())
    torch.testing.assert_close(out, a @ dense.detach())
    (out * weight).sum().backward()
    torch.testing.assert_close(dense.grad, 2 * a.T @ weight)


@pytest.mark.parametrize("index_dtype", [torch.int64, torch.int32])
def test_csr_matmul_is_the_embedding_bag_product_and_equals_a_numpy_reference(index_dtype, monkeypatch):
    """The CPU CSR product through a weighted embedding bag against numpy's dense product: empty
    rows, an all-empty matrix, float64, a non-contiguous operand, int32 indices; then spmm's value
    and gradient through it (gradcheck), and that the bag is what computed them."""
    from model import graph as graph_mod

    calls = []
    bag = graph_mod.F.embedding_bag
    monkeypatch.setattr(graph_mod.F, "embedding_bag", lambda *a, **k: calls.append(1) or bag(*a, **k))
    gen = torch.Generator().manual_seed(4)
    dense_a = torch.rand(6, 9, generator=gen, dtype=torch.float64)
    dense_a = torch.where(torch.rand(6, 9, generator=gen, dtype=torch.float64) < 0.3, dense_a, 0.0)
    dense_a[2] = 0.0
    dense_a[5] = 0.0  # the last row empty too: the final offset closes an empty bag
    full = dense_a.to_sparse_csr()
    a = torch.sparse_csr_tensor(
        full.crow_indices().to(index_dtype), full.col_indices().to(index_dtype), full.values(), full.shape
    )
    x = torch.randn(4, 9, generator=gen, dtype=torch.float64).T  # (9, 4), not contiguous
    np.testing.assert_allclose(
        graph_mod.csr_matmul(a, x).numpy(), dense_a.numpy() @ x.numpy(), rtol=1e-12, atol=1e-15
    )
    empty = torch.zeros(3, 9, dtype=torch.float64).to_sparse_csr()
    assert torch.equal(graph_mod.csr_matmul(empty, x), torch.zeros(3, 4, dtype=torch.float64))
    assert len(calls) == 2
    xg = x.detach().clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v: spmm(a, v, dense_a.T.to_sparse_csr()), (xg,))
    assert len(calls) > 2  # forward and backward went through the bag
    with pytest.raises(ValueError, match="inner sizes differ"):
        graph_mod.csr_matmul(a, x[:-1])  # as `@` refuses it
    assert graph_mod.csr_matmul(a, x[:, :0]).shape == (6, 0)


@pytest.mark.parametrize("density", [0.02, 0.6])
def test_dense_times_weight_t_equals_the_dense_product_in_value_and_gradient(density):
    """Mostly-zero rows (the gather over nonzeros) and dense rows (the plain product) against a
    numpy reference rows @ W^T, and W's gradient against autograd of the dense product."""
    from model.graph import dense_times_weight_t

    gen = torch.Generator().manual_seed(1)
    rows = torch.rand(7, 50, generator=gen, dtype=torch.float64)
    rows = torch.where(torch.rand(7, 50, generator=gen, dtype=torch.float64) < density, rows, 0.0)
    rows[3] = 0.0  # a row without nonzeros
    weight = torch.randn(6, 50, generator=gen, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(7, 6, generator=gen, dtype=torch.float64)
    got = dense_times_weight_t(rows, weight)
    np.testing.assert_allclose(got.detach().numpy(), rows.numpy() @ weight.detach().numpy().T, rtol=1e-12)
    (grad,) = torch.autograd.grad((got * upstream).sum(), weight)
    np.testing.assert_allclose(grad.numpy(), upstream.numpy().T @ rows.numpy(), rtol=1e-12, atol=1e-12)


def test_normalize_rows_equals_f_normalize_in_value_and_gradient():
    """The model's row normalisation (Eq. 10 and Eq. 12) against F.normalize, including a zero row
    and a row below eps (where the divisor is the constant eps), and torch's gradcheck."""
    from model.mmssl import normalize_rows

    torch.manual_seed(3)
    x = torch.randn(7, 5, dtype=torch.float64)
    x[2] = 0.0
    x[4] = 1e-14
    upstream = torch.randn(7, 5, dtype=torch.float64)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = normalize_rows(a), F.normalize(b, dim=1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-15)
    (ga,) = torch.autograd.grad((got * upstream).sum(), a)
    (gb,) = torch.autograd.grad((want * upstream).sum(), b)
    torch.testing.assert_close(ga, gb)
    assert float(ga[2].abs().sum()) > 0  # a clamped row still passes g / eps
    torch.autograd.gradcheck(normalize_rows, (torch.randn(4, 3, dtype=torch.float64, requires_grad=True),))
    with torch.no_grad():  # no autograd: F.normalize itself
        torch.testing.assert_close(normalize_rows(x), F.normalize(x, dim=1))
