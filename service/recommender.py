"""The serving model: a verified artifact plus its FAISS index. No HTTP, no cache, no I/O.

Which user vector is used (the ``path`` reported to clients):

* ``known``      user in the artifact, no fresh items beyond the training ones: exported h_u;
* ``fresh``      user in the artifact with fresh items: f_u^m recomputed over training + fresh items
                 (Eq. 2), then h_u (Eq. 12) with the trained ID side e_hat_u;
* ``fold_in``    user unknown to the artifact, with items: ID and modality sides folded in;
* ``popularity`` user unknown to the artifact, no items: most popular training items.

The maths is ``artifact.contract.user_vector``; this class only decides which call to make.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from artifact import contract
from artifact.contract import Artifact
from service.index import ItemIndex

VectorPath = Literal["known", "fresh", "fold_in", "popularity"]
_EMPTY = np.zeros(0, dtype=np.int64)


@dataclass(frozen=True)
class UserPlan:
    path: VectorPath
    user_index: int | None
    train_items: np.ndarray  # (n,) item indices seen in training (empty for unknown users)
    vector_items: np.ndarray  # (m,) items N_u the vector is computed from (fresh and fold_in paths)


@dataclass(frozen=True)
class SearchSpace:
    """Item vectors to rank by inner product and the index over them (never changed once built).

    The Recommender's own is the artifact's items; ``service.catalogue`` builds one over the
    artifact's items followed by those added through the API, so one search ranks them all.
    """

    index: ItemIndex
    item_embeddings: np.ndarray  # (n_items, d) float32, row i is index label i
    n_items: int


class Recommender:
    def __init__(self, artifact: Artifact, index: ItemIndex, overfetch_cap: int = 2048) -> None:
        a = artifact.arrays
        if index.ntotal != artifact.manifest.n_items:
            raise ValueError(f"index holds {index.ntotal} items, artifact {artifact.manifest.n_items}")
        self.artifact = artifact
        self.index = index
        self.version = artifact.version
        self.dim = artifact.manifest.dim
        self.n_items = artifact.manifest.n_items
        self.overfetch_cap = overfetch_cap
        self.exact_searches = 0  # top-K answered by exact numpy scoring (beyond the cap, or short)
        self.loaded_at = time.time()
        self.user_index = {u: i for i, u in enumerate(a.user_ids)}
        self.item_index = {it: i for i, it in enumerate(a.item_ids)}
        self._item_ids = np.array(a.item_ids, dtype=object)
        self._item_embeddings = np.ascontiguousarray(a.item_embeddings, dtype=np.float32)
        self._user_embeddings = np.ascontiguousarray(a.user_embeddings, dtype=np.float32)
        self._pop_order = np.argsort(-a.item_popularity, kind="stable")  # most popular first
        self._pop_scores = a.item_popularity[self._pop_order].astype(np.float32)
        self.space = SearchSpace(index, self._item_embeddings, self.n_items)

    # ---------------------------------------------------------------- ids

    def lookup_items(self, item_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """External item ids -> (indices of the known ones, the unknown ids in request order)."""
        index = self.item_index
        found: list[int] = []
        unknown: list[str] = []
        for item_id in item_ids:
            i = index.get(item_id)
            if i is None:
                unknown.append(item_id)
            else:
                found.append(i)
        return np.array(found, dtype=np.int64), unknown

    def item_ids(self, indices: np.ndarray) -> list[str]:
        return self._item_ids[indices].tolist()

    # ---------------------------------------------------------------- user vectors

    @property
    def user_embeddings(self) -> np.ndarray:
        """(n_users, d) float32: the exported h_u, the vector of the "known" path."""
        return self._user_embeddings

    def plan(self, user_id: str, fresh_items: np.ndarray, n_items: int | None = None) -> UserPlan:
        """Decide the path for ``user_id`` given its fresh item indices (stored + in the request).

        ``n_items``: size of the item index space when it is larger than the artifact's (items
        added through the API, ``service.catalogue``).
        """
        user_index = self.user_index.get(user_id)
        if user_index is not None:
            train = self.artifact.user_items(user_index)
            new = _EMPTY
            if fresh_items.size:
                # fresh items not in training, as np.setdiff1d but by a per-call boolean mask (its
                # np.isin was a fifth of an in-process fresh request)
                seen = np.zeros(n_items or self.n_items, dtype=bool)
                seen[train] = True
                new = np.unique(fresh_items[~seen[fresh_items]])
            if new.size == 0:  # nothing beyond training: the exported h_u is exactly Eq. 12
                return UserPlan("known", user_index, train, _EMPTY)
            return UserPlan("fresh", user_index, train, np.union1d(train, new))
        if fresh_items.size:
            return UserPlan("fold_in", None, _EMPTY, np.unique(fresh_items))
        return UserPlan("popularity", None, _EMPTY, _EMPTY)

    def user_vector(self, plan: UserPlan) -> np.ndarray | None:
        """(d,) float32 for the plan's path; None for the popularity path."""
        if plan.path == "known":
            assert plan.user_index is not None
            return self._user_embeddings[plan.user_index]
        if plan.path == "popularity":
            return None
        # Eq. 2 + Eq. 12; fold-in of the ID side when the user is unknown (user_index None).
        return contract.user_vector(self.artifact, plan.vector_items, plan.user_index)

    # ---------------------------------------------------------------- retrieval

    def top_k(
        self,
        vector: np.ndarray | None,
        k: int,
        exclude: np.ndarray,
        unavailable: np.ndarray | None = None,
        n_unavailable: int | None = None,
        space: SearchSpace | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` items not in ``exclude`` nor marked in ``unavailable``: (item indices (k',),
        scores (k',)), best first.

        ``exclude``: this request's item indices (its excluded and seen items); ``unavailable``: a
        precomputed (n_items,) bool mask that holds for every request (the catalogue's unavailable
        items), with ``n_unavailable`` its count (counted here when not given). The mask is applied
        to the candidates, never turned into a longer exclude list: however many items are
        unavailable, the index search stays the fast path while it finds ``k`` available ones.
        ``vector`` None ranks by training popularity (the score is the interaction count).
        ``space``: the items to rank and their index when not the artifact's own (a vector is then
        required: popularity covers the artifact's items only); indices and masks are over it.
        """
        if space is None:
            space = self.space
        elif vector is None:
            raise ValueError("the popularity path ranks the artifact's items only")
        n_items, index = space.n_items, space.index
        exclude = np.unique(exclude) if exclude.size else _EMPTY
        if unavailable is not None and n_unavailable is None:
            n_unavailable = int(unavailable.sum())
        if not n_unavailable:
            unavailable = None
        excluded = None
        if exclude.size:
            # (n_items,) bool; np.zeros is calloc'd (pages touched only where set): much cheaper
            # than np.isin, and per call so it is safe from any thread.
            excluded = np.zeros(n_items, dtype=bool)
            excluded[exclude] = True
        n_gone = exclude.size
        if unavailable is not None:
            assert n_unavailable is not None
            n_gone += n_unavailable - int(unavailable[exclude].sum())
        want = min(k, n_items - n_gone)
        if want <= 0:
            return _EMPTY, np.zeros(0, dtype=np.float32)

        def keep(labels: np.ndarray) -> np.ndarray:
            ok = np.ones(labels.size, dtype=bool)
            if excluded is not None:
                ok &= ~excluded[labels]
            if unavailable is not None:
                ok &= ~unavailable[labels]
            return ok

        # At most |exclude| of the first want + |exclude| candidates are excluded: over-fetch that
        # many. Unavailable items are not counted one by one (there may be more of them than the
        # cap): the fetch is widened by the share of the catalogue they take, and grown if short.
        base_fetch = fetch = want + exclude.size
        limit = min(self.overfetch_cap, index.max_k)
        if unavailable is not None:
            assert n_unavailable is not None
            share = n_unavailable / n_items
            fetch = min(n_items, int(np.ceil(fetch / max(1.0 - share, 1e-3) * 1.25)) + 8)
            if base_fetch <= limit:
                fetch = min(fetch, limit)
        if vector is None:
            while True:
                labels = self._pop_order[:fetch]
                scores = self._pop_scores[:fetch]
                ok = keep(labels)
                if int(ok.sum()) >= want or fetch >= self.n_items:
                    return labels[ok][:want], scores[ok][:want]
                fetch = min(self.n_items, 4 * fetch)
        query = np.ascontiguousarray(vector, dtype=np.float32)
        while fetch <= limit:
            scores, labels = index.search(query, fetch)
            ok = keep(labels)
            labels, scores = labels[ok], scores[ok]
            if labels.size >= want:
                return labels[:want], scores[:want]
            if fetch >= min(limit, n_items):
                break  # an approximate index found too few candidates
            fetch = min(limit, 4 * fetch)
        # beyond the cap, or too few candidates: exact scoring
        self.exact_searches += 1
        return self._exact_top_k(query, want, exclude, unavailable, space.item_embeddings)

    def _exact_top_k(
        self,
        query: np.ndarray,
        want: int,
        exclude: np.ndarray,
        unavailable: np.ndarray | None = None,
        item_embeddings: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        embeddings = self._item_embeddings if item_embeddings is None else item_embeddings
        scores = embeddings @ query  # (n_items,)
        scores[exclude] = -np.inf
        if unavailable is not None:
            scores[unavailable] = -np.inf
        top = np.argpartition(-scores, want - 1)[:want]
        top = top[np.argsort(-scores[top], kind="stable")]
        return top, scores[top]
