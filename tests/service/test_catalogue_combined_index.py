"""The combined search space of a CatalogueView: the artifact's items and those added through the
API in one exact FAISS index, searched once per request. Checked against numpy over the same
vectors (float64), item ids included, not only scores. Beyond ADDED_ITEMS_EXACT_MAX added items the
index is a pq shortlist re-ranked exactly: its scores against numpy, its lists by recall."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest
import svc_artifacts

from artifact import contract
from artifact.content import load_content_path
from service.catalogue import CatalogueView, ItemRecord
from service.index import IndexConfig, build_index
from service.recommender import Recommender

DIMS = svc_artifacts.RAW_DIMS
N_ADDED = 80
_EMPTY = np.zeros(0, dtype=np.int64)


def _features(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {m: rng.normal(size=size).astype(np.float32) for m, size in DIMS.items()}


@pytest.fixture
def setup(store_root: Path) -> tuple[Recommender, Any, dict[str, ItemRecord], np.random.Generator]:
    path, _ = svc_artifacts.write_with_content(store_root, seed=3)
    artifact = contract.load_artifact(path)
    rec = Recommender(artifact, build_index(artifact.arrays.item_embeddings, IndexConfig(use_gpu=False)))
    rng = np.random.default_rng(11)
    records = {f"n{j}": ItemRecord(bool(rng.random() > 0.3), _features(rng), "1-0") for j in range(N_ADDED)}
    records |= {f"i{i}": ItemRecord(False, None, "1-0") for i in rng.choice(120, 25, replace=False)}
    return rec, load_content_path(artifact), records, rng


def _reference(
    view: CatalogueView,
    q: np.ndarray,
    k: int,
    exclude: np.ndarray,
    max_slots: int | None = None,
    min_slots: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by numpy over artifact + added h_i: a walk down all available items by score
    that takes an added item while fewer than ``max_slots`` are in, and an artifact item while
    fewer than k minus the reserved ``min_slots`` (at most the added items left) are."""
    vectors = np.concatenate([view.artifact.arrays.item_embeddings, view.new_vectors]).astype(np.float64)
    ok = np.concatenate([view.base_available, view.new_available])
    ok[exclude] = False
    s = vectors @ q.astype(np.float64)
    s[~ok] = -np.inf
    order = [i for i in np.argsort(-s, kind="stable") if np.isfinite(s[i])]
    reserved = min(min_slots, sum(1 for i in order if i >= view.n_base), k)
    cap = k if max_slots is None else max_slots
    listed: list[int] = []
    n_added = n_model = 0
    for i in order:
        if len(listed) == k:
            break
        if i >= view.n_base and n_added < cap:
            listed.append(i)
            n_added += 1
        elif i < view.n_base and n_model < k - reserved:
            listed.append(i)
            n_model += 1
    top = np.array(listed, dtype=np.int64)
    return top, s[top]


def _draw(
    view: CatalogueView, rng: np.random.Generator, k_range: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray, int]:
    """One random query: (user vector, up to 29 excluded items, k in ``k_range``)."""
    q = rng.normal(size=view.dim).astype(np.float32)
    exclude = rng.choice(view.n_items, size=int(rng.integers(0, 30)), replace=False)
    return q, exclude, int(rng.integers(*k_range))


def _check(
    view: CatalogueView,
    rng: np.random.Generator,
    trials: int,
    max_slots: int | None = None,
    min_slots: int = 0,
) -> None:
    for _ in range(trials):
        q, exclude, k = _draw(view, rng, (1, 80))
        labels, scores = view.top_k(q, k, exclude)
        want_labels, want_scores = _reference(view, q, k, exclude, max_slots, min_slots)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
        gaps = np.diff(want_scores)
        if want_scores.size < 2 or np.abs(gaps).min() > 1e-4:  # no near-tie: the ids are determined
            assert labels.tolist() == want_labels.tolist()


def test_one_search_over_artifact_and_added_items_is_exact(setup: Any) -> None:
    rec, content, records, rng = setup
    view = CatalogueView.build(rec, content, records, "1-0", None)
    assert view.space is not None and view.space.n_items == view.n_items == 120 + N_ADDED
    before = rec.exact_searches
    _check(view, rng, trials=60)
    # every answer came from the one combined search: the side index was never even built
    assert "_side_index" not in view.__dict__
    assert rec.exact_searches == before
    # some answers do hold added items (else the check above says nothing about the merge)
    q = view.new_vectors[int(np.flatnonzero(view.new_available)[0])]
    assert (view.top_k(q, 5, np.zeros(0, dtype=np.int64))[0] >= view.n_base).any()


def test_max_slots_bound_still_holds_and_stays_exact(setup: Any) -> None:
    rec, content, records, rng = setup
    view = CatalogueView.build(rec, content, records, "1-0", 2)
    _check(view, rng, trials=60, max_slots=2)
    for _ in range(20):
        labels, _ = view.top_k(rng.normal(size=view.dim).astype(np.float32), 30, np.zeros(0, np.int64))
        assert int((labels >= view.n_base).sum()) <= 2


@pytest.mark.parametrize("min_slots,max_slots", [(1, None), (3, None), (2, 2), (2, 5), (90, None)])
def test_reserved_slots_hold_the_best_added_items_and_stay_exact(
    setup: Any, min_slots: int, max_slots: int | None
) -> None:
    rec, content, records, rng = setup
    view = CatalogueView.build(rec, content, records, "1-0", max_slots, min_slots=min_slots)
    # added items scaled down: by score alone they rarely reach a list, so the slots decide
    view = CatalogueView(
        view.rec, view.content, view.records, view.base_available, view.new_ids, 0.05 * view.new_vectors,
        view.new_modality, view.new_available, "1-0", max_slots, min_slots=min_slots,
    )  # fmt: skip
    searches: list[bool] = []  # one per search of the artifact's items: merged (True) or alone
    real_top_k = rec.top_k

    def counting_top_k(*args: Any, **kwargs: Any) -> Any:
        searches.append(len(args) > 5 or "space" in kwargs)
        return real_top_k(*args, **kwargs)

    rec.top_k = counting_top_k  # type: ignore[method-assign]
    _check(view, rng, trials=60, max_slots=max_slots, min_slots=min_slots)
    if max_slots is None:  # the slots are filled from the side index, never by a second search
        assert searches == [True] * 60
    n_shown = int(view.new_available.sum())
    for _ in range(20):
        q = rng.normal(size=view.dim).astype(np.float32)
        labels, scores = view.top_k(q, 30, np.zeros(0, np.int64))
        assert int((labels >= view.n_base).sum()) >= min(min_slots, n_shown, 30) and labels.size == 30
        assert np.all(np.diff(scores) <= 1e-6)
    # the popularity path: added items have no popularity, the first available ones take the slots
    labels, _ = view.top_k(None, 10, np.zeros(0, np.int64))
    first = [view.n_base + j for j in np.flatnonzero(view.new_available)[: min(min_slots, 10)]]
    assert [i for i in labels.tolist() if i >= view.n_base] == first


def test_availability_change_reuses_the_space_and_new_items_rebuild_it(setup: Any) -> None:
    rec, content, records, rng = setup
    view = CatalogueView.build(rec, content, records, "1-0", None)
    # availability only (an added item and an artifact item): the same index, the new masks
    flipped = {"n0": ItemRecord(not records["n0"].available, records["n0"].features, "2-0")}
    flipped["i7"] = ItemRecord(False, None, "2-0")
    records2 = records | flipped
    view2 = view.apply(list(flipped), records2, "1-0")
    assert view2.space is view.space
    _check(view2, rng, trials=30)
    # a new item and a re-featured one: a new combined index, the old view's one untouched
    more = {"n1": ItemRecord(True, _features(rng), "3-0"), "z0": ItemRecord(True, _features(rng), "3-0")}
    records3 = records2 | more
    view3 = view2.apply(list(more), records3, "3-0")
    assert view3.space is not None and view3.space is not view2.space
    assert view3.space.n_items == view3.n_items == view2.n_items + 1
    assert view2.space is not None and view2.space.index.ntotal == view2.n_items
    _check(view3, rng, trials=30)
    _check(view2, rng, trials=10)


def test_searches_while_views_are_rebuilt_all_succeed(setup: Any) -> None:
    """Readers search whatever view is current while a writer builds new ones (copy, then swap)."""
    rec, content, records, rng = setup
    current = [CatalogueView.build(rec, content, records, "1-0", None)]
    stop = threading.Event()
    failures: list[BaseException] = []
    counts = [0, 0, 0]

    def reader(n: int) -> None:
        r = np.random.default_rng(n)
        while not stop.is_set():
            view = current[0]
            try:
                q = r.normal(size=view.dim).astype(np.float32)
                labels, scores = view.top_k(q, 10, np.zeros(0, np.int64))
                assert labels.size == 10 and (labels < view.n_items).all()
                assert np.all(np.diff(scores) <= 1e-6)
                counts[n] += 1
            except BaseException as exc:  # noqa: BLE001 - collected and reported below
                failures.append(exc)
                return

    threads = [threading.Thread(target=reader, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    try:
        recs = dict(records)
        for b in range(15):
            batch = {f"w{b}-{j}": ItemRecord(True, _features(rng), f"{4 + b}-0") for j in range(10)}
            recs = recs | batch
            current[0] = current[0].apply(list(batch), recs, f"{4 + b}-0")
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    assert min(counts) > 0
    assert current[0].n_items == 120 + N_ADDED + 150
    _check(current[0], rng, trials=10)


def test_item_ids_of_mixed_indices_match_an_independent_id_list(setup: Any) -> None:
    """Indices of artifact items, added items, both and none map to the ids they were given."""
    rec, content, records, rng = setup
    view = CatalogueView.build(rec, content, records, "1-0", None)
    # reference: the artifact's ids in artifact order, then the added ids in first-PUT order
    added = [i for i, r in records.items() if i not in rec.item_index and r.features is not None]
    ids = list(view.artifact.arrays.item_ids) + added
    assert view.n_items == len(ids)
    cases = [
        np.zeros(0, dtype=np.int64),
        np.array([3, 0, view.n_base - 1]),  # artifact items only
        np.array([view.n_base, view.n_items - 1]),  # added items only
        rng.permutation(view.n_items)[:40],  # both, in any order
    ]
    for indices in cases:
        assert view.item_ids(indices) == [ids[i] for i in indices]
    # and what top_k returns maps to the ids of the vectors that scored it
    q = view.new_vectors[0]
    labels, _ = view.top_k(q, 10, np.zeros(0, dtype=np.int64))
    assert view.item_ids(labels) == [ids[i] for i in labels]
    plain = CatalogueView.build(rec, content, {}, None, None)
    assert plain.item_ids(np.array([5, 1])) == [ids[5], ids[1]]


# ------------------------------------------------------------------ beyond ADDED_ITEMS_EXACT_MAX

N_MANY = 1500  # with the artifact's 120: enough vectors for a pq index (service.index.PQ_MIN_ITEMS)


@pytest.fixture
def many(setup: Any) -> tuple[Recommender, Any, dict[str, ItemRecord], np.random.Generator]:
    rec, content, records, rng = setup
    more = {f"m{j}": ItemRecord(bool(rng.random() > 0.2), _features(rng), "2-0") for j in range(N_MANY)}
    return rec, content, records | more, rng


def _recall_and_exact_scores(
    view: CatalogueView, rng: np.random.Generator, trials: int, min_slots: int = 0
) -> float:
    """Mean share of the numpy reference's list that ``top_k`` returns; on the way, every returned
    score must be the exact inner product of its item, in order, and no hidden item may appear."""
    vectors = np.concatenate([view.artifact.arrays.item_embeddings, view.new_vectors]).astype(np.float64)
    shown = np.concatenate([view.base_available, view.new_available])
    hits = total = 0
    for _ in range(trials):
        q, exclude, k = _draw(view, rng, (5, 60))
        labels, scores = view.top_k(q, k, exclude)
        want, _ = _reference(view, q, k, exclude, None, min_slots)
        assert labels.size == want.size and np.unique(labels).size == labels.size
        np.testing.assert_allclose(scores, vectors[labels] @ q.astype(np.float64), rtol=1e-4, atol=1e-4)
        assert np.all(np.diff(scores) <= 1e-6)
        assert shown[labels].all() and not np.isin(labels, exclude).any()
        assert int((labels >= view.n_base).sum()) >= min(min_slots, k)
        hits += len(set(labels.tolist()) & set(want.tolist()))
        total += want.size
    return hits / total


def test_many_added_items_go_through_a_pq_shortlist_with_exact_scores(many: Any) -> None:
    rec, content, records, rng = many
    exact = CatalogueView.build(rec, content, records, "2-0", None, exact_max=None)
    assert exact.space is not None and exact.space.index.kind == "flat"
    view = CatalogueView.build(rec, content, records, "2-0", None, exact_max=100, refine=8)
    assert view.space is not None and view.space.index.kind == "pq" and not view.space.index.exact
    assert view.space.n_items == view.n_items == 120 + N_ADDED + N_MANY
    before = rec.exact_searches
    deep = _recall_and_exact_scores(view, rng, trials=80)
    # one candidate per result (no re-ranking depth) misses more: the refine setting is applied
    shallow = CatalogueView.build(rec, content, records, "2-0", None, exact_max=100, refine=1)
    assert deep >= 0.995 and _recall_and_exact_scores(shallow, rng, trials=80) < deep
    assert rec.exact_searches == before  # answered by the index, not by the numpy fallback


def test_reserved_slots_over_a_pq_side_index(many: Any) -> None:
    rec, content, records, rng = many
    built = CatalogueView.build(rec, content, records, "2-0", None, min_slots=2, exact_max=100)
    # added items scaled down: the reserved slots come from the side index, which is pq as well
    view = CatalogueView(
        rec, content, built.records, built.base_available, built.new_ids, 0.05 * built.new_vectors,
        built.new_modality, built.new_available, "2-0", None, min_slots=2, exact_max=100,
    )  # fmt: skip
    assert _recall_and_exact_scores(view, rng, trials=60, min_slots=2) >= 0.97
    assert isinstance(view.__dict__["_side_index"], faiss.IndexRefineFlat)
    # a small side (exact_max not exceeded) stays exact
    small = CatalogueView(
        rec, content, built.records, built.base_available, built.new_ids, 0.05 * built.new_vectors,
        built.new_modality, built.new_available, "2-0", None, min_slots=2, exact_max=10_000,
    )  # fmt: skip
    _check(small, rng, trials=20, min_slots=2)
    assert isinstance(small.__dict__["_side_index"], faiss.IndexFlatIP)


def test_apply_carries_the_exact_bound_into_the_next_view(many: Any) -> None:
    rec, content, records, rng = many
    view = CatalogueView.build(rec, content, records, "2-0", None, exact_max=100, refine=4)
    batch = {"late": ItemRecord(True, _features(rng), "3-0")}
    nxt = view.apply(list(batch), records | batch, "3-0")
    assert (nxt.exact_max, nxt.refine) == (100, 4)
    assert view.space is not None and nxt.space is not None and nxt.space.index.kind == "pq"
    assert nxt.space.index.index.k_factor == 4
    # the new vectors reuse the previous index's training (no 0.35 s k-means per batch) and are
    # searched as well; the side index was built with the view, from the same training
    assert nxt.space.index.trained_on == view.space.index.trained_on == view.n_items
    assert nxt.space.index.ntotal == nxt.n_items == view.n_items + 1
    assert "_side_index" in nxt.__dict__ and nxt._side_index.ntotal == len(nxt.new_ids)
    assert _recall_and_exact_scores(nxt, rng, trials=40) >= 0.97
    # availability alone: the same index and the same side index
    flip = {"m0": ItemRecord(False, records["m0"].features, "4-0")}
    same = nxt.apply(list(flip), records | batch | flip, "3-0")
    assert same.space is nxt.space and same._side_index is nxt._side_index
    # more than twice the vectors it was trained on: trained again
    grown = {f"g{j}": ItemRecord(True, _features(rng), "5-0") for j in range(view.n_items + 10)}
    big = nxt.apply(list(grown), records | batch | grown, "5-0")
    assert big.space is not None and big.space.index.trained_on == big.n_items


def test_best_rows_per_user_equals_a_numpy_sort_and_extends_exactly() -> None:
    from service.catalogue import best_rows_per_user

    rng = np.random.default_rng(5)
    users = rng.normal(size=(37, 6)).astype(np.float32)
    vectors = rng.normal(size=(90, 6)).astype(np.float32)

    def numpy_top(vecs: np.ndarray, w: int) -> np.ndarray:
        s = users.astype(np.float64) @ vecs.astype(np.float64).T
        return np.argsort(-s, axis=1, kind="stable")[:, :w]

    rows, scores = best_rows_per_user(users, vectors, 8)
    assert rows.shape == scores.shape == (37, 8)
    assert rows.tolist() == numpy_top(vectors, 8).tolist()
    np.testing.assert_allclose(scores, np.take_along_axis(users @ vectors.T, rows, 1), rtol=1e-6)
    # extended by appended rows: equal to the table built over all of them at once
    first = best_rows_per_user(users, vectors[:60], 8)
    extended = best_rows_per_user(users, vectors, 8, first, covered=60)
    assert extended[0].tolist() == rows.tolist()
    np.testing.assert_allclose(extended[1], scores, rtol=1e-6)
    # fewer rows than the width: all of them, best first; then extended past the width
    few = best_rows_per_user(users, vectors[:3], 8)
    assert few[0].shape == (37, 3) and few[0].tolist() == numpy_top(vectors[:3], 3).tolist()
    assert best_rows_per_user(users, vectors, 8, few, covered=3)[0].tolist() == rows.tolist()


def _scaled(
    view: CatalogueView, min_slots: int, scale: float = 0.05, max_slots: int | None = None
) -> CatalogueView:
    """The view with its added items scaled (down: the reserved slots decide, as above)."""
    return CatalogueView(
        view.rec, view.content, view.records, view.base_available, view.new_ids, scale * view.new_vectors,
        view.new_modality, view.new_available, "1-0", max_slots, min_slots=min_slots,
    )  # fmt: skip


@pytest.mark.parametrize("width", [24, 8, 200])  # a row of 24 (the default), a narrow one, every item
@pytest.mark.parametrize(
    "min_slots,max_slots,scale", [(1, None, 0.05), (3, None, 0.05), (2, 2, 0.3), (1, None, 1.0), (2, 4, 1.0)]
)
def test_known_users_search_the_artifacts_index_merge_their_row_and_equal_the_reference(
    setup: Any, monkeypatch: Any, min_slots: int, max_slots: int | None, scale: float, width: int
) -> None:
    """A known user's vector is its exported h_u: their list is the artifact's own index searched
    (as with no added items) merged with their row of the per-user table, and it equals the numpy
    reference (blend, floor and cap), also when the request excludes added items or they are
    unavailable. Where the row cannot decide the list (the blend reaches below its last entry, or
    hidden entries leave too few) the combined search answers, exactly as well."""
    from service import catalogue

    monkeypatch.setattr(catalogue, "USER_TABLE_WIDTH", width)
    monkeypatch.setattr(catalogue, "USER_TABLE_MIN_WIDTH", min(width, 8))
    rec, content, records, rng = setup
    view = CatalogueView.build(rec, content, records, "1-0", max_slots, min_slots=min_slots)
    view = _scaled(view, min_slots, scale, max_slots)
    n_users = rec.user_embeddings.shape[0]
    assert view.user_table is not None and view.user_table[0].shape == (n_users, min(width, N_ADDED))
    assert view.space is not None and view.shown_rows is not None
    side = svc_artifacts.CountingSearch(view._side_index)
    view.__dict__["_side_index"] = side
    combined = svc_artifacts.CountingSearch(view.space.index.index)
    view.space.index.index = combined
    undecided: list[int] = []  # the lists the row could not decide
    known_top_k = view._known_top_k

    def spy(user: int, *args: Any) -> Any:
        found = known_top_k(user, *args)
        if found is None:
            undecided.append(user)
        return found

    view._known_top_k = spy  # type: ignore[method-assign]
    for trial in range(3 * n_users):
        u = trial % n_users
        q = rec.user_embeddings[u]
        # exclude a few items, among them some of this user's best added ones
        best_added = view.n_base + view.user_table[0][u][:3]
        exclude = np.unique(
            np.concatenate((rng.choice(view.n_items, size=5, replace=False), best_added[: trial % 4]))
        )
        k = int(rng.integers(1, 40))
        labels, scores = view.top_k(q, k, exclude, user=u)
        want_labels, want_scores = _reference(view, q, k, exclude, max_slots, min_slots)
        np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
        if want_scores.size < 2 or np.abs(np.diff(want_scores)).min() > 1e-4:
            assert labels.tolist() == want_labels.tolist(), (trial, k)
    assert view.table_misses == len(undecided)  # each list the row could not decide, counted
    if width >= N_ADDED:  # the row holds every added item: it always decides
        assert combined.calls == side.calls == 0 and not undecided
    elif scale < 0.1 and width == 24:  # slots decide, and the row is deep enough for them
        assert combined.calls <= n_users // 2 and side.calls <= combined.calls
    searched = combined.calls
    # every entry of user 0's row hidden: the row cannot decide, and the answer is still exact
    q = rec.user_embeddings[0]
    exclude = view.n_base + view.user_table[0][0]
    labels, scores = view.top_k(q, 10, exclude, user=0)
    if width < N_ADDED:
        assert combined.calls == searched + 1
    want = _reference(view, q, 10, exclude, max_slots, min_slots)[1]
    np.testing.assert_allclose(scores, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("width", [8, 200])
def test_known_users_with_few_model_items_left_fill_the_list_from_the_row_or_the_combined_search(
    setup: Any, monkeypatch: Any, width: int
) -> None:
    """A request that excludes nearly all of the artifact's items: the artifact's search returns
    fewer than k, so added items fill the list. A row that holds every added item decides it; a
    narrow one cannot (items outside it join a short list): the combined search answers."""
    from service import catalogue

    monkeypatch.setattr(catalogue, "USER_TABLE_WIDTH", width)
    monkeypatch.setattr(catalogue, "USER_TABLE_MIN_WIDTH", min(width, 8))
    rec, content, records, rng = setup
    view = _scaled(CatalogueView.build(rec, content, records, "1-0", None, min_slots=1), 1, 0.05)
    combined = svc_artifacts.CountingSearch(view.space.index.index)  # type: ignore[union-attr]
    view.space.index.index = combined  # type: ignore[union-attr]
    shown_base = np.flatnonzero(view.base_available)
    exclude = shown_base[5:]  # five of the artifact's items left
    for u in range(rec.user_embeddings.shape[0]):
        q = rec.user_embeddings[u]
        labels, scores = view.top_k(q, 30, exclude, user=u)
        want_labels, want_scores = _reference(view, q, 30, exclude, None, 1)
        assert labels.size == 30 and int((labels < view.n_base).sum()) <= 5
        np.testing.assert_allclose(scores, want_scores, rtol=1e-4, atol=1e-4)
        assert labels.tolist() == want_labels.tolist()
        # more asked for than there are items to show: every shown one, from a whole row too
        labels, scores = view.top_k(q, 100, exclude, user=u)
        want_labels, want_scores = _reference(view, q, 100, exclude, None, 1)
        assert labels.size == 5 + view.n_new_available and labels.tolist() == want_labels.tolist()
    assert combined.calls == (0 if width >= N_ADDED else 2 * rec.user_embeddings.shape[0])


def test_known_users_row_tracks_availability_changes(setup: Any) -> None:
    """Unavailable added items leave the rows requests read (the table itself is reused), and a
    known user's list never holds one."""
    rec, content, records, rng = setup
    view = _scaled(CatalogueView.build(rec, content, records, "1-0", None, min_slots=2), 2, 1.0)
    best = {view.new_ids[int(r)] for r in view.user_table[0][:, :4].ravel()}  # type: ignore[index]
    hidden = {i: ItemRecord(False, records[i].features, "2-0") for i in sorted(best)[:20]}
    view2 = view.apply(list(hidden), records | hidden, "1-0")
    assert view2.user_table is view.user_table and view2.shown_rows is not view.shown_rows
    gone = {view2.n_base + view2.new_row[i] for i in hidden}
    for u in range(rec.user_embeddings.shape[0]):
        q = rec.user_embeddings[u]
        labels, scores = view2.top_k(q, 20, _EMPTY, user=u)
        assert not gone & set(labels.tolist())
        np.testing.assert_allclose(scores, _reference(view2, q, 20, _EMPTY, None, 2)[1], rtol=1e-4, atol=1e-4)


def test_user_table_follows_the_views_appended_reused_rebuilt_or_skipped(
    setup: Any, monkeypatch: Any
) -> None:
    from service import catalogue
    from service.catalogue import best_rows_per_user

    rec, content, records, rng = setup
    view = CatalogueView.build(rec, content, records, "1-0", None, min_slots=1)
    users = rec.user_embeddings

    def fresh(v: CatalogueView) -> list[list[int]]:
        return best_rows_per_user(users, v.new_vectors, catalogue.USER_TABLE_WIDTH)[0].tolist()

    assert view.user_table is not None and view.user_table[0].tolist() == fresh(view)
    # availability only: the same table (hidden entries are filtered per request)
    flipped = {"n0": ItemRecord(not records["n0"].available, records["n0"].features, "2-0")}
    view2 = view.apply(list(flipped), records | flipped, "1-0")
    assert view2.user_table is view.user_table and view2.shown_rows is not view.shown_rows
    # a model item's availability: the shown rows too stay as they were
    model_item = next(i for i in records if i.startswith("i"))
    again = {model_item: ItemRecord(True, None, "2-1")}
    view2b = view2.apply(list(again), records | flipped | again, "1-0")
    assert view2b.shown_rows is view2.shown_rows and view2b.is_available(int(model_item[1:]))
    # appended items: extended, equal to a table built from scratch
    more = {f"z{j}": ItemRecord(True, _features(rng), "3-0") for j in range(30)}
    view3 = view2.apply(list(more), records | flipped | more, "3-0")
    assert view3.user_table is not None and view3.user_table[0].tolist() == fresh(view3)
    # a re-featured item changes an earlier row: rebuilt from scratch
    refeat = {"n1": ItemRecord(True, _features(rng), "4-0")}
    view4 = view3.apply(list(refeat), records | flipped | more | refeat, "4-0")
    assert not np.array_equal(view4.new_vectors, view3.new_vectors)
    assert view4.user_table is not None and view4.user_table[0].tolist() == fresh(view4)
    # without reserved slots too (known users' lists still merge a row); none for more reserved
    # slots than a row holds, or too many inner products to build it: the combined search answers
    assert CatalogueView.build(rec, content, records, "1-0", None).user_table is not None
    assert CatalogueView.build(rec, content, records, "1-0", None, min_slots=25).user_table is None
    monkeypatch.setattr(catalogue, "USER_TABLE_MAX_PRODUCTS", users.shape[0] * len(view.new_ids) - 1)
    big = CatalogueView.build(rec, content, records, "1-0", None, min_slots=1)
    assert big.user_table is None and big.shown_rows is None
    q = users[2]
    labels, scores = _scaled(big, 1).top_k(q, 12, np.zeros(0, np.int64), user=2)
    np.testing.assert_allclose(
        scores, _reference(_scaled(big, 1), q, 12, _EMPTY, None, 1)[1], rtol=1e-4, atol=1e-4
    )


def test_user_table_width_shrinks_with_users_and_stops_at_its_floor() -> None:
    from service import catalogue
    from service.catalogue import user_table_width

    assert user_table_width(9_319, 1) == catalogue.USER_TABLE_WIDTH == 24
    assert user_table_width(9_319, 24) == 24 and user_table_width(9_319, 25) == 0
    many = catalogue.USER_TABLE_MAX_ENTRIES // 10
    assert user_table_width(many, 1) == 10 and user_table_width(many, 11) == 0
    assert user_table_width(catalogue.USER_TABLE_MAX_USERS, 0) == catalogue.USER_TABLE_MIN_WIDTH
    assert user_table_width(catalogue.USER_TABLE_MAX_USERS + 1, 0) == 0 and user_table_width(0, 0) == 0


def test_user_table_keeps_faiss_missing_rows_out_and_is_built_only_for_the_combined_search(
    setup: Any,
) -> None:
    """A vector FAISS finds no score for (non-finite) leaves -1 in the table, built or extended,
    and a reserved slot never turns -1 into an item (it would be the artifact's last one); views
    over an approximate artifact index, which never read the table, do not build it."""
    from service.catalogue import best_rows_per_user

    rng = np.random.default_rng(8)
    users = rng.normal(size=(4, 6)).astype(np.float32)
    vectors = rng.normal(size=(3, 6)).astype(np.float32)
    vectors[1] = np.nan
    rows, _ = best_rows_per_user(users, vectors, 8)
    assert rows.shape == (4, 3) and (rows == -1).sum(axis=1).tolist() == [1] * 4
    assert set(rows[rows >= 0].tolist()) == {0, 2}
    more = np.concatenate((vectors, vectors[1:2], vectors[:1]))  # one more missing row, one good
    extended, _ = best_rows_per_user(users, more, 8, (rows, _), covered=3)
    assert (extended == -1).sum(axis=1).tolist() == [2] * 4  # still -1, not -1 + covered
    assert set(extended[extended >= 0].tolist()) == {0, 2, 4}

    rec, content, records, rng = setup
    three = {i: ItemRecord(True, records[i].features, "1-0") for i in ("n0", "n1", "n2")}
    base = CatalogueView.build(rec, content, three, "1-0", None, min_slots=2)
    vectors = base.new_vectors.copy()
    vectors[1] = np.nan  # FAISS scores it nowhere: every row is [best, other, -1]
    view = CatalogueView(
        rec, content, three, base.base_available, base.new_ids, vectors, base.new_modality,
        base.new_available, "1-0", None, min_slots=2,
    )  # fmt: skip
    assert view.user_table is not None and view.shown_rows is not None
    assert (view.user_table[0][:, -1] == -1).all() and (view.shown_rows.n_shown == 2).all()
    assert np.isneginf(view.shown_rows.bound).all()  # a row left short holds every added item
    last = view.n_base - 1
    for u in range(rec.user_embeddings.shape[0]):
        q = rec.user_embeddings[u]
        labels, scores = view.top_k(q, 10, np.array([last]), user=u)
        assert last not in labels.tolist() and view.n_base + 1 not in labels.tolist()
        want = _reference(view, q, 10, np.array([last]), None, 2)
        np.testing.assert_allclose(scores, want[1], rtol=1e-4, atol=1e-4)
        assert int((labels >= view.n_base).sum()) == 2

    hnsw = Recommender(
        rec.artifact,
        build_index(rec.artifact.arrays.item_embeddings, IndexConfig(kind="hnsw", use_gpu=False)),
    )
    assert CatalogueView.build(hnsw, content, records, "1-0", None, min_slots=1).user_table is None
