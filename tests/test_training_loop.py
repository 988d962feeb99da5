"""The training loop's decisions on scripted inputs: best checkpoint, early stopping, negatives, hold-out.

Each test drives ``training.trainer.train`` (or the sampler it uses) and asserts on values a bug
would change: which epoch's weights land in ``best.pt``, on which epoch training stops, which items
come out of the negative sampler, and which edges the model's Eq. 2 operators hold during a step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from model.mmssl import MMSSL
from tests.conftest import FAST_OVERRIDES
from training import trainer
from training.config import load_config
from training.data import load_dataset
from training.trainer import BEST, LAST, TrainingState, load_checkpoint, model_config_for, train


def _scripted_evaluations(monkeypatch: pytest.MonkeyPatch, recalls: list[float]) -> list[dict[str, Any]]:
    """Make the loop's validation return ``recalls`` in order; record what each call saw."""
    calls: list[dict[str, Any]] = []

    def fake_evaluate(model: MMSSL, *args: Any, **kwargs: Any) -> dict[str, float]:
        value = recalls[len(calls)]
        calls.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        return {"recall@20": value, "ndcg@20": value / 2, "recall@10": value / 3, "n_users": 1.0}

    monkeypatch.setattr(trainer, "evaluate_model", fake_evaluate)
    return calls


def _states_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory):
    from training.synthetic import write_synthetic

    root = write_synthetic(tmp_path_factory.mktemp("loop") / "d", n_users=60, n_items=40, seed=11)
    return load_dataset(root)


def test_best_checkpoint_is_the_first_strict_maximum_and_early_stop_fires_after_patience(
    dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # epoch:   1     2     3     4     5 (tie) 6     7 (never reached)
    recalls = [0.10, 0.05, 0.30, 0.20, 0.30, 0.25, 0.90]
    calls = _scripted_evaluations(monkeypatch, recalls)
    cfg = load_config(None, [*FAST_OVERRIDES, "epochs=7", "patience=3"])
    result = train(dataset, cfg, tmp_path / "run", progress_bar=False)

    # epoch 2 is bad, epoch 3 improves (the count starts again), then three evaluations without a
    # strict improvement (4, 5, 6): stop after epoch 6
    assert result.stopped_early is True
    assert result.epochs_run == 6 and len(calls) == 6
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4, 5, 6]
    # a tie (epoch 5) does not replace the best: the first epoch that reached 0.30 is kept
    assert result.best_epoch == 3
    assert result.best_metrics["recall@20"] == pytest.approx(0.30)
    best = load_checkpoint(tmp_path / "run" / BEST)
    assert best["epoch"] == 3 and best["val_metrics"]["recall@20"] == pytest.approx(0.30)
    # best.pt holds the weights that were evaluated at epoch 3, not those of a later epoch
    assert _states_equal(best["state_dict"], calls[2])
    assert not _states_equal(best["state_dict"], calls[4])
    last = load_checkpoint(tmp_path / "run" / LAST)
    assert last["finished"] is True and last["bad_epochs"] == 3 and last["best_epoch"] == 3
    assert _states_equal(last["state_dict"], calls[5])


def test_a_run_that_keeps_improving_runs_every_epoch_and_keeps_the_last(
    dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _scripted_evaluations(monkeypatch, [0.1, 0.2, 0.3])
    cfg = load_config(None, [*FAST_OVERRIDES, "epochs=3", "patience=1"])
    result = train(dataset, cfg, tmp_path / "run", progress_bar=False)
    assert result.stopped_early is False and result.epochs_run == 3
    assert result.best_epoch == 3
    assert _states_equal(load_checkpoint(tmp_path / "run" / BEST)["state_dict"], calls[2])


def test_patience_one_stops_on_the_first_evaluation_without_improvement(
    dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _scripted_evaluations(monkeypatch, [0.2, 0.1, 0.5, 0.6])
    cfg = load_config(None, [*FAST_OVERRIDES, "epochs=4", "patience=1"])
    result = train(dataset, cfg, tmp_path / "run", progress_bar=False)
    assert result.stopped_early is True and result.epochs_run == 2 and result.best_epoch == 1


def test_negative_sampler_never_returns_a_training_positive_and_reaches_every_other_item() -> None:
    # user 0 has half the catalogue: a sampler without rejection returns a positive half the time.
    # (The sampler redraws clashes 20 times, so a user holding nearly every item could still get
    # a positive with probability (|N_u| / |I|)^21; no real user is that dense.)
    from training.data import Dataset, Interactions

    n_items = 12
    rows = [list(range(6)), [0, 1], [2, 5, 6, 11], []]
    train_split = Interactions.from_lists(rows)
    dataset = Dataset(
        root=Path("."),
        n_users=len(rows),
        n_items=n_items,
        user_ids=[f"u{u}" for u in range(len(rows))],
        item_ids=[f"i{i}" for i in range(n_items)],
        train=train_split,
        val=Interactions.from_lists([[7], [2], [0], [3]]),
        test=Interactions.from_lists([[], [], [], []]),
        features={},
        fingerprint="hand",
    )
    cfg = load_config(None, ["id_only=true", "embed_dim=4"])
    state = TrainingState(dataset, model_config_for(dataset, cfg.model), torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    users = torch.tensor([0, 1, 2] * 2000)
    negatives = state.sample_negatives(users, generator)
    assert negatives.shape == users.shape and negatives.dtype == torch.int64
    for u in range(3):
        drawn = negatives[users == u].numpy()
        allowed = sorted(set(range(n_items)) - set(rows[u]))
        assert sorted(set(drawn.tolist())) == allowed, u  # nothing else, and all of them
        # uniform over the allowed items (2000 draws per user; 5 standard deviations)
        counts = np.bincount(drawn, minlength=n_items)[allowed]
        p = 1 / len(allowed)
        assert np.all(np.abs(counts / 2000 - p) <= 5 * math.sqrt(p * (1 - p) / 2000) + 1e-12), (u, counts)


def _dense(sparse: torch.Tensor) -> np.ndarray:
    return sparse.to_dense().numpy()


@pytest.mark.parametrize("holdout", [True, False])
def test_holdout_batch_edges_removes_each_steps_positives_from_eq2(
    dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, holdout: bool
) -> None:
    """With the setting on, every training forward sees Eq. 2 operators rebuilt without exactly one
    batch of training pairs, and over an epoch every pair is held out once; off, the full graph."""
    seen: list[tuple[np.ndarray, np.ndarray]] = []
    original = MMSSL.forward

    def spy(self: MMSSL, graph: Any, *args: Any, **kwargs: Any) -> Any:
        if self.training:
            seen.append((_dense(graph.user_mean), _dense(graph.item_mean)))
        return original(self, graph, *args, **kwargs)

    monkeypatch.setattr(MMSSL, "forward", spy)
    batch = 64
    cfg = load_config(
        None,
        [*FAST_OVERRIDES, "epochs=1", f"batch_size={batch}", f"holdout_batch_edges={str(holdout).lower()}"],
    )
    train(dataset, cfg, tmp_path / "run", progress_bar=False)

    full = dataset.train
    n_users, n_items = dataset.n_users, dataset.n_items
    observed = np.zeros((n_users, n_items), dtype=bool)
    users, items = full.to_pairs()
    observed[users, items] = True
    assert len(seen) == math.ceil(full.nnz / batch)
    held_out_total = np.zeros((n_users, n_items), dtype=np.int64)
    for user_mean, item_mean in seen:
        present = user_mean != 0
        assert not np.any(present & ~observed)  # never an edge that is not a training pair
        assert np.array_equal(present, item_mean.T != 0)  # both sides of Eq. 2 agree
        removed = observed & ~present
        if not holdout:
            assert not removed.any()
            continue
        held_out_total += removed
        n_removed = int(removed.sum())
        assert n_removed in (batch, full.nnz % batch)
        # the operators are renormalised on the remaining degrees, not just masked
        deg_u = present.sum(1)
        deg_i = present.sum(0)
        rows, cols = np.nonzero(present)
        np.testing.assert_allclose(user_mean[rows, cols], 1 / np.sqrt(deg_u[rows]), rtol=1e-6)
        np.testing.assert_allclose(item_mean[cols, rows], 1 / np.sqrt(deg_i[cols]), rtol=1e-6)
    if holdout:
        assert np.array_equal(held_out_total, observed.astype(np.int64))  # each pair once per epoch


def _hand_state(overrides: list[str]) -> tuple[Any, TrainingState]:
    from training.data import Dataset, Interactions

    rows = [list(range(6)), [0, 1], [2, 5, 6, 11], []]  # user 3, the last, has no items
    dataset = Dataset(
        root=Path("."),
        n_users=4,
        n_items=12,
        user_ids=[f"u{u}" for u in range(4)],
        item_ids=[f"i{i}" for i in range(12)],
        train=Interactions.from_lists(rows),
        val=Interactions.from_lists([[7], [2], [0], [3]]),
        test=Interactions.from_lists([[], [], [], []]),
        features={},
        fingerprint="hand",
    )
    cfg = load_config(None, ["id_only=true", "embed_dim=4", *overrides])
    return dataset, TrainingState(dataset, model_config_for(dataset, cfg.model), torch.device("cpu"))


def test_negatives_of_the_last_user_without_items_and_reproducible_from_the_generator() -> None:
    _, state = _hand_state([])
    assert state.users.dtype == torch.int64 and state.items.dtype == torch.int64
    # user 3's keys lie above every training pair's key: searchsorted returns the end
    users = torch.tensor([3] * 500 + [0] * 500)
    first = state.sample_negatives(users, torch.Generator().manual_seed(5))
    assert sorted(set(first[:500].tolist())) == list(range(12))
    assert set(first[500:].tolist()) <= set(range(6, 12))
    # the same generator seed gives the same negatives, whatever the global RNG did in between
    # (user 0 clashes half the time, so the redraws are covered too)
    torch.manual_seed(123)
    torch.rand(7)
    again = state.sample_negatives(users, torch.Generator().manual_seed(5))
    assert again.tolist() == first.tolist()


def test_training_state_builds_the_configured_graph_normalisation() -> None:
    dataset, state = _hand_state(["graph_norm=paper"])
    # paper: the Eq. 10 operators are the Eq. 2 ones, 1/sqrt(|N_u|), not 1/sqrt(|N_u| |N_i|)
    a = np.zeros((4, 12))
    for u, items in enumerate([list(range(6)), [0, 1], [2, 5, 6, 11], []]):
        a[u, items] = 1.0
    expected = a / np.sqrt(np.maximum(a.sum(1), 1))[:, None]
    np.testing.assert_allclose(_dense(state.graph.user_gnn), expected, rtol=1e-6)
    np.testing.assert_allclose(_dense(state.graph.user_mean), expected, rtol=1e-6)


def test_step_gradients_are_bitwise_repeatable_on_two_threads(tmp_path: Path) -> None:
    """A batch repeats users and items; on several CPU threads the backward of ``x[idx]`` summed the
    repeated rows in a run-dependent order (two-thread TikTok runs of the same seed drifted apart
    from the first epoch). ``step_losses`` must give the same gradients every time."""
    from training.synthetic import write_synthetic

    dataset = load_dataset(write_synthetic(tmp_path / "d", n_users=400, n_items=300, seed=3))
    cfg = load_config(None, [*FAST_OVERRIDES, "embed_dim=64", "n_heads=4"])
    state = TrainingState(dataset, model_config_for(dataset, cfg.model), torch.device("cpu"))
    torch.manual_seed(0)
    model = MMSSL(model_config_for(dataset, cfg.model))
    views = trainer.refresh_views(model, state, cfg.train)
    pick = torch.Generator().manual_seed(1)
    idx = torch.randint(0, state.users.numel(), (8192,), generator=pick)  # with replacement
    users, positives = state.users[idx], state.items[idx]
    negatives = state.sample_negatives(users, pick)
    assert users.unique().numel() < users.numel() / 10  # many repeats: the case that raced

    def gradients() -> dict[str, torch.Tensor]:
        torch.manual_seed(5)  # the same dropout masks
        model.zero_grad(set_to_none=True)
        out = model(state.graph, state.item_raw, views)
        generator = torch.Generator().manual_seed(2)
        bpr, cl, l2 = trainer.step_losses(
            model, out, users, positives, negatives, users.unique(), cfg.train, generator
        )
        (bpr + cl + l2).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        first = gradients()
        again = [gradients() for _ in range(6)]
    finally:
        torch.set_num_threads(threads)
    assert {"user_embedding.weight", "item_embedding.weight"} <= first.keys()
    for other in again:
        assert [n for n in first if not torch.equal(first[n], other[n])] == []


def test_the_kept_heap_is_released_whether_training_finishes_or_fails(
    dataset, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """heap_only() lifts glibc's trim threshold until allocator.release(); train() must restore it
    on every way out, a failed run included (a retrain worker goes on running after it)."""
    from training import allocator

    events: list[str] = []
    real_heap_only, real_release = allocator.heap_only, allocator.release

    def heap_only():  # type: ignore[no-untyped-def]
        events.append("step")
        return real_heap_only()

    def release() -> bool:
        events.append("release")
        return real_release()

    monkeypatch.setattr(allocator, "heap_only", heap_only)
    monkeypatch.setattr(allocator, "release", release)
    cfg = load_config(None, [*FAST_OVERRIDES, "epochs=2", "patience=5"])
    train(dataset, cfg, tmp_path / "ok", progress_bar=False)
    assert events.count("step") > 0 and events[-1] == "release"
    assert events.count("release") == 3  # before each of the two evaluations, and at the end

    events.clear()

    def failing_step(*args: Any, **kwargs: Any) -> Any:
        raise FloatingPointError("a step failed")

    monkeypatch.setattr(trainer, "step_losses", failing_step)
    with pytest.raises(FloatingPointError, match="a step failed"):
        train(dataset, cfg, tmp_path / "fails", progress_bar=False)
    assert events == ["step", "release"]
