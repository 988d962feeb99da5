"""Recommender and FAISS index against independent numpy references (no HTTP)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import svc_artifacts

from artifact import contract
from service.index import IndexConfig, build_index
from service.recommender import Recommender


def _recommender(path: Path, kind: str = "flat", overfetch_cap: int = 2048) -> Recommender:
    artifact = contract.load_artifact(path)
    index = build_index(artifact.arrays.item_embeddings, IndexConfig(kind=kind))
    return Recommender(artifact, index, overfetch_cap=overfetch_cap)


def _brute_force(item_emb: np.ndarray, query: np.ndarray, k: int, exclude: np.ndarray) -> np.ndarray:
    scores = item_emb.astype(np.float64) @ query.astype(np.float64)
    scores[exclude] = -np.inf
    return np.argsort(-scores, kind="stable")[:k]


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


def test_flat_index_equals_numpy_brute_force(artifact_path: Path) -> None:
    rec = _recommender(artifact_path)
    item_emb = rec.artifact.arrays.item_embeddings
    rng = np.random.default_rng(1)
    for trial in range(20):
        query = rng.normal(size=rec.dim).astype(np.float32)
        k = int(rng.integers(1, 50))
        exclude = rng.choice(rec.n_items, size=int(rng.integers(0, 30)), replace=False)
        labels, scores = rec.top_k(query, k, exclude)
        expected = _brute_force(item_emb, query, k, exclude)
        assert labels.tolist() == expected.tolist(), f"trial {trial}"
        np.testing.assert_allclose(scores, item_emb[expected] @ query, rtol=1e-5, atol=1e-5)


def test_exact_fallback_beyond_overfetch_cap_equals_brute_force(artifact_path: Path) -> None:
    rec = _recommender(artifact_path, overfetch_cap=10)  # k + |exclude| > 10 -> numpy scoring
    query = np.random.default_rng(2).normal(size=rec.dim).astype(np.float32)
    exclude = np.arange(0, 60, 3)
    labels, _ = rec.top_k(query, 15, exclude)
    assert labels.tolist() == _brute_force(rec.artifact.arrays.item_embeddings, query, 15, exclude).tolist()


@pytest.mark.parametrize("kind", ["ivf", "hnsw", "pq"])
def test_approximate_indexes_find_the_true_neighbours(tmp_path: Path, kind: str) -> None:
    path = svc_artifacts.write(tmp_path, n_items=2000, dim=16, seed=3)
    rec = _recommender(path, kind=kind)
    assert not rec.index.exact and rec.index.kind == kind
    rng = np.random.default_rng(4)
    hits = 0
    for _ in range(20):
        query = rng.normal(size=rec.dim).astype(np.float32)
        labels, _ = rec.top_k(query, 10, np.array([], dtype=np.int64))
        assert len(labels) == 10 and len(set(labels.tolist())) == 10
        truth = _brute_force(rec.artifact.arrays.item_embeddings, query, 10, np.array([], dtype=np.int64))
        hits += len(set(labels.tolist()) & set(truth.tolist()))
    assert hits / 200 >= 0.8  # IVF probes 16 of ~44 lists; HNSW and pq are near exact at this size


def test_pq_index_scores_exactly_and_refuses_too_few_vectors(tmp_path: Path) -> None:
    """pq: a shortlist re-ranked by exact inner products, so every score is the exact one and
    k = every item returns them all; below PQ_MIN_ITEMS vectors there is too little to train on."""
    from service.index import PQ_MIN_ITEMS

    x = np.random.default_rng(5).normal(size=(PQ_MIN_ITEMS, 16)).astype(np.float32)
    index = build_index(x, IndexConfig(kind="pq", use_gpu=False, pq_refine=3))
    assert index.index.k_factor == 3 and index.trained_on == PQ_MIN_ITEMS and not index.exact
    q = np.random.default_rng(6).normal(size=16).astype(np.float32)
    for k in (1, 20, PQ_MIN_ITEMS):
        scores, labels = index.search(q, k)
        assert labels.size == k and np.unique(labels).size == k
        np.testing.assert_allclose(scores, x[labels] @ q, rtol=1e-5, atol=1e-5)
        assert np.all(np.diff(scores) <= 1e-6)
    with pytest.raises(ValueError, match="at least"):
        build_index(x[:-1], IndexConfig(kind="pq", use_gpu=False))


def test_builds_in_a_worker_thread_use_the_configured_faiss_threads(tmp_path: Path) -> None:
    """OpenMP's thread count is per thread: an index built in a fresh thread (asyncio.to_thread,
    as the model loader and the catalogue do) must use FAISS_THREADS, not every core."""
    import threading

    import faiss

    from service.model_manager import index_config
    from service.settings import Settings

    settings = Settings(_env_file=None, artifact_root=tmp_path, faiss_threads=1, faiss_use_gpu=False)  # type: ignore[call-arg]
    config = index_config(settings)
    assert config.threads == 1
    seen: dict[str, int] = {}

    def build(name: str, cfg: IndexConfig) -> None:
        seen[name + "_before"] = faiss.omp_get_max_threads()
        build_index(np.eye(4, dtype=np.float32), cfg)
        seen[name] = faiss.omp_get_max_threads()

    for name, cfg in (("configured", config), ("unset", IndexConfig(use_gpu=False))):
        t = threading.Thread(target=build, args=(name, cfg))
        t.start()
        t.join()
    assert seen["configured"] == 1
    assert seen["unset"] == seen["unset_before"]  # threads 0 leaves the thread's own setting


def test_gpu_requested_without_gpu_falls_back_to_cpu(
    artifact_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from service import index as index_module

    monkeypatch.setattr(index_module, "gpu_available", lambda: False)  # whatever this machine has
    artifact = contract.load_artifact(artifact_path)
    index = build_index(artifact.arrays.item_embeddings, IndexConfig(kind="flat", use_gpu=True))
    assert index.on_gpu is False and index.describe()["gpu"] is False
    assert index.ntotal == artifact.manifest.n_items and index.max_k == index.ntotal
    query = np.random.default_rng(5).normal(size=artifact.manifest.dim).astype(np.float32)
    scores, labels = index.search(query, artifact.manifest.n_items)
    empty = np.array([], dtype=np.int64)
    assert (
        labels.tolist()
        == _brute_force(artifact.arrays.item_embeddings, query, artifact.manifest.n_items, empty).tolist()
    )


def test_gpu_index_equals_brute_force(artifact_path: Path) -> None:
    from service.index import GPU_MAX_K, gpu_available

    if not gpu_available():
        pytest.skip("needs a GPU: FAISS sees none")
    artifact = contract.load_artifact(artifact_path)
    index = build_index(artifact.arrays.item_embeddings, IndexConfig(kind="flat", use_gpu=True))
    assert index.on_gpu is True and index.max_k == min(index.ntotal, GPU_MAX_K)
    query = np.random.default_rng(6).normal(size=artifact.manifest.dim).astype(np.float32)
    _, labels = index.search(query, 20)
    empty = np.array([], dtype=np.int64)
    assert labels.tolist() == _brute_force(artifact.arrays.item_embeddings, query, 20, empty).tolist()


def test_paths(artifact_path: Path) -> None:
    rec = _recommender(artifact_path)
    train = rec.artifact.user_items(3)
    outside = np.setdiff1d(np.arange(rec.n_items), train)[:2]
    assert rec.plan("u3", np.array([], dtype=np.int64)).path == "known"
    assert rec.plan("u3", train[:2].astype(np.int64)).path == "known"  # nothing beyond training
    assert rec.plan("u3", outside).path == "fresh"
    assert rec.plan("stranger", outside).path == "fold_in"
    assert rec.plan("stranger", np.array([], dtype=np.int64)).path == "popularity"
    assert rec.user_vector(rec.plan("stranger", np.array([], dtype=np.int64))) is None
    np.testing.assert_array_equal(
        rec.user_vector(rec.plan("u3", np.array([], dtype=np.int64))), rec.artifact.arrays.user_embeddings[3]
    )


def test_fresh_vector_equals_independent_eq2_eq12(artifact_path: Path) -> None:
    rec = _recommender(artifact_path)
    a, omega = rec.artifact.arrays, rec.artifact.manifest.omega
    train = rec.artifact.user_items(5)
    fresh = np.setdiff1d(np.arange(rec.n_items), train)[[0, 7, 11]]
    vector = rec.user_vector(rec.plan("u5", fresh))
    items = np.union1d(train, fresh)
    side = sum(
        _normalize(feats[items].astype(np.float64).sum(0) / np.sqrt(len(items)))
        for feats in a.modality_features.values()
    )
    expected = a.user_id_side[5] + omega * side
    assert vector is not None
    np.testing.assert_allclose(vector, expected, rtol=1e-5, atol=1e-5)
    # the fresh items moved the vector away from the exported h_u ...
    assert not np.allclose(vector, a.user_embeddings[5], atol=1e-3)
    # ... and with training items only, the same recipe reproduces the exported h_u
    only_train = sum(
        _normalize(feats[train].astype(np.float64).sum(0) / np.sqrt(len(train)))
        for feats in a.modality_features.values()
    )
    np.testing.assert_allclose(
        a.user_id_side[5] + omega * only_train, a.user_embeddings[5], rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        contract.user_vector(rec.artifact, train, user_index=5), a.user_embeddings[5], rtol=1e-5, atol=1e-5
    )


def test_fold_in_vector_equals_independent_recomputation(artifact_path: Path) -> None:
    rec = _recommender(artifact_path)
    a, m = rec.artifact.arrays, rec.artifact.manifest
    items = np.array([4, 9, 30, 31])
    vector = rec.user_vector(rec.plan("nobody", items))
    n = len(items)
    id_side = sum(
        a.item_layer_embeddings[layer, items].astype(np.float64).sum(0) for layer in range(m.n_layers)
    )
    id_side = id_side / np.sqrt(n) / (m.n_layers + 1)
    side = sum(
        _normalize(f[items].astype(np.float64).sum(0) / np.sqrt(n)) for f in a.modality_features.values()
    )
    assert vector is not None
    np.testing.assert_allclose(vector, id_side + m.omega * side, rtol=1e-5, atol=1e-5)


def test_popularity_ranking_skips_excluded(artifact_path: Path) -> None:
    rec = _recommender(artifact_path)
    pop = rec.artifact.arrays.item_popularity
    exclude = np.argsort(-pop, kind="stable")[:3]
    labels, scores = rec.top_k(None, 10, exclude)
    expected = [i for i in np.argsort(-pop, kind="stable").tolist() if i not in set(exclude.tolist())][:10]
    assert labels.tolist() == expected
    assert scores.tolist() == pop[expected].astype(np.float32).tolist()


def test_k_larger_than_what_is_left(artifact_path: Path) -> None:
    rec = _recommender(artifact_path)
    exclude = np.arange(rec.n_items - 5)
    labels, _ = rec.top_k(np.ones(rec.dim, dtype=np.float32), 20, exclude)
    assert sorted(labels.tolist()) == list(range(rec.n_items - 5, rec.n_items))
    labels, _ = rec.top_k(None, 20, np.arange(rec.n_items))
    assert labels.size == 0


def test_unknown_item_lookup(artifact_path: Path) -> None:
    rec = _recommender(artifact_path)
    found, unknown = rec.lookup_items(["i3", "nope", "i5", "i3x"])
    assert found.tolist() == [3, 5]
    assert unknown == ["nope", "i3x"]
    assert rec.item_ids(np.array([5, 3])) == ["i5", "i3"]


def test_recommender_identity_and_plan_fields(artifact_path: Path) -> None:
    rec = _recommender(artifact_path)
    assert rec.version == artifact_path.name and isinstance(rec.loaded_at, float)
    train = rec.artifact.user_items(3)
    outside = np.setdiff1d(np.arange(rec.n_items), train)[:2]
    known = rec.plan("u3", np.array([], dtype=np.int64))
    assert known.user_index == 3 and known.train_items.tolist() == train.tolist()
    assert known.vector_items.size == 0
    fresh = rec.plan("u3", outside)
    assert fresh.train_items.tolist() == train.tolist()
    assert fresh.vector_items.tolist() == np.union1d(train, outside).tolist()
    fold = rec.plan("stranger", outside[::-1].copy())
    assert fold.user_index is None and fold.vector_items.tolist() == sorted(outside.tolist())
    _, scores = rec.top_k(None, 5, np.array([], dtype=np.int64))
    assert scores.dtype == np.float32
    found, _ = rec.lookup_items(["i1"])
    assert found.dtype == np.int64


def test_recommender_refuses_an_index_of_another_size(artifact_path: Path) -> None:
    artifact = contract.load_artifact(artifact_path)
    index = build_index(artifact.arrays.item_embeddings[:-1], IndexConfig(kind="flat"))
    with pytest.raises(
        ValueError,
        match=f"index holds {artifact.manifest.n_items - 1} items, artifact {artifact.manifest.n_items}",
    ):
        Recommender(artifact, index)


def test_exact_scoring_for_every_k_equals_brute_force(artifact_path: Path) -> None:
    # overfetch_cap 0: every query goes to the numpy scoring; each k from 1 to all items, so that
    # the partition point (k - 1) is checked at both ends and in between
    rec = _recommender(artifact_path, overfetch_cap=0)
    item_emb = rec.artifact.arrays.item_embeddings
    rng = np.random.default_rng(7)
    for k in [1, 2, 3, 5, 8, 13, 21, 34, 55, 89, rec.n_items - 1, rec.n_items]:
        for _ in range(3):
            query = rng.normal(size=rec.dim).astype(np.float32)
            exclude = rng.choice(rec.n_items, size=int(rng.integers(0, 4)), replace=False)
            want = min(k, rec.n_items - len(exclude))
            labels, scores = rec.top_k(query, k, exclude)
            expected = _brute_force(item_emb, query, want, exclude)
            assert labels.tolist() == expected.tolist(), (k, exclude.tolist())
            assert scores.dtype == np.float32
            np.testing.assert_allclose(scores, item_emb[expected] @ query, rtol=1e-5, atol=1e-5)


def test_float64_query_still_scores_in_float32(artifact_path: Path) -> None:
    rec = _recommender(artifact_path, overfetch_cap=0)
    query = np.random.default_rng(10).normal(size=rec.dim)  # float64, as a caller may pass
    labels, scores = rec.top_k(query, 5, np.array([], dtype=np.int64))
    item_emb = rec.artifact.arrays.item_embeddings
    assert scores.dtype == np.float32
    assert labels.tolist() == _brute_force(item_emb, query, 5, np.array([], dtype=np.int64)).tolist()


def test_an_empty_exclude_of_any_dtype_is_no_exclude(artifact_path: Path) -> None:
    # np.array([]) is float64; an empty exclude must not reach the fallback's fancy indexing
    rec = _recommender(artifact_path, overfetch_cap=0)
    query = np.random.default_rng(11).normal(size=rec.dim).astype(np.float32)
    labels, _ = rec.top_k(query, 4, np.array([]))
    item_emb = rec.artifact.arrays.item_embeddings
    assert labels.tolist() == _brute_force(item_emb, query, 4, np.array([], dtype=np.int64)).tolist()


def test_k_one_and_k_zero(artifact_path: Path) -> None:
    rec = _recommender(artifact_path)
    query = np.random.default_rng(12).normal(size=rec.dim).astype(np.float32)
    empty = np.array([], dtype=np.int64)
    labels, scores = rec.top_k(query, 1, empty)
    assert labels.tolist() == _brute_force(rec.artifact.arrays.item_embeddings, query, 1, empty).tolist()
    assert scores.shape == (1,)
    labels, scores = rec.top_k(None, 1, empty)
    assert labels.tolist() == [int(np.argmax(rec.artifact.arrays.item_popularity))]
    for vector in (query, None):
        labels, scores = rec.top_k(vector, 0, empty)
        assert labels.size == 0 and scores.shape == (0,) and scores.dtype == np.float32
        labels, scores = rec.top_k(vector, 5, np.arange(rec.n_items))
        assert labels.size == 0 and scores.shape == (0,) and scores.dtype == np.float32


def test_an_approximate_index_answers_when_the_fetch_fits_under_the_cap(tmp_path: Path) -> None:
    # IVF probes 16 of ~44 lists, so its top 10 is not always the exact top 10: with k + |exclude|
    # equal to the cap, the index's own answer must come back, not the exact fallback's
    path = svc_artifacts.write(tmp_path, n_items=2000, dim=16, seed=3)
    rec = _recommender(path, kind="ivf", overfetch_cap=10)
    rng = np.random.default_rng(13)
    empty = np.array([], dtype=np.int64)
    differs = 0
    for _ in range(20):
        query = rng.normal(size=rec.dim).astype(np.float32)
        labels, _ = rec.top_k(query, 10, empty)
        _, index_labels = rec.index.search(query, 10)
        assert labels.tolist() == index_labels.tolist()
        truth = _brute_force(rec.artifact.arrays.item_embeddings, query, 10, empty)
        differs += labels.tolist() != truth.tolist()
    assert differs > 0  # the check above could tell the two apart


def test_plans_of_unknown_users_carry_empty_arrays_and_lookup_of_nothing_is_int64(
    artifact_path: Path,
) -> None:
    rec = _recommender(artifact_path)
    assert rec.overfetch_cap == 2048  # the default
    fold = rec.plan("stranger", np.array([7, 2, 7]))
    assert fold.train_items.dtype == np.int64 and fold.train_items.size == 0
    assert fold.vector_items.tolist() == [2, 7]
    pop = rec.plan("stranger", np.array([], dtype=np.int64))
    assert pop.user_index is None
    for arr in (pop.train_items, pop.vector_items):
        assert arr.dtype == np.int64 and arr.size == 0
    found, unknown = rec.lookup_items(["nope", "nada"])
    assert found.dtype == np.int64 and found.size == 0 and unknown == ["nope", "nada"]
    assert rec.item_ids(found) == []
