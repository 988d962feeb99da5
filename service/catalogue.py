"""The catalogue the service serves: the immutable artifact underneath, an overlay of items on top.

``PUT /items`` adds items (their vector h_i from the artifact's content path, ``artifact.content``),
updates them, or makes any item unavailable. The ``Catalogue`` is the one owner of that mutable
state; what requests use is a ``CatalogueView``, an immutable pair (serving ``Recommender``, overlay
arrays) that is replaced by one reference assignment, so a search never sees half of a batch:

* over an exact (flat) artifact index, each view holds a copy of it with the added items' h_i
  appended, built before any search sees it and never changed after: one search per request. Over
  an approximate one (IVF, HNSW), and for lists beyond ``NEW_ITEMS_MAX_SLOTS`` or short of
  ``NEW_ITEMS_SLOTS``, the added items
  live in a side index searched beside the artifact's and merged by score. No index
  being searched is ever added to;
* both are exact (flat) while at most ``ADDED_ITEMS_EXACT_MAX`` items are added; beyond, they are
  ``service.index``'s ``pq`` kind (a 4-bit shortlist re-ranked by exact inner products: the scores
  stay exact, a rare miss of the shortlist costs an item its place), since an exact scan reads every
  vector and 10,000 added items made each request scan 2.5 times the model's catalogue;
* unavailable items (of either kind) are excluded from every result: ``/recommend`` (all paths,
  the popularity fallback included) and ``/items/{id}/similar``;
* item indices of a view run over the artifact's items (0..n-1) and then the added ones (n..), so
  the user-vector code works unchanged: Eq. 2 over a user's items uses an added item's projected
  features fbar_i^m (``ContentPath.modality_features``), and the fold-in of an unknown user's ID side
  counts it with a zero graph embedding (it has none);
* on a model swap the overlay is rebuilt on the new model (in the model manager's loading thread)
  and swapped in together with it; an item the new model contains keeps only its availability (the
  trained vector wins over the content path), the others get vectors from the new content path.

Added items are ranked with the artifact's items by score (their h_i lives in the same space: the
content path is fitted to the trained h_i), and a ``/recommend`` list holds at least
``NEW_ITEMS_SLOTS`` of them (reserved slots: the default content path places new items at the
trained items' scale, where they rarely reach a list by score alone; docs/BENCHMARKS.md) and at most
``NEW_ITEMS_MAX_SLOTS``.

Every change goes through the log (``service.itemlog``: a Redis stream shared by the replicas, or a
list in process), which each replica polls every ``ITEMS_POLL_INTERVAL_S`` and applies in order.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np
from fastapi.exceptions import RequestValidationError

from artifact import contract
from artifact.content import ContentPath, load_content_path
from artifact.contract import Artifact, ArtifactError
from service.errors import StoreUnavailableError, limit_exceeded
from service.index import PQ_MIN_ITEMS, IndexConfig, build_index
from service.itemlog import ItemChange, ItemLog
from service.metrics import Metrics
from service.model_manager import ModelManager
from service.recommender import Recommender, SearchSpace, UserPlan
from service.schemas import ItemsRequest
from service.settings import Settings

log = logging.getLogger(__name__)

_EMPTY = np.zeros(0, dtype=np.int64)
_NO_SCORES = np.zeros(0, dtype=np.float32)


# The artifact's own users (the "known" path, whose vector is the exported h_u) read their best
# added items from a per-user table built with each view, so that their request searches the
# artifact's index alone, as it does without added items, and merges one row: no scan of the added
# items' vectors on the request path (benchmarks.serve.items).
USER_TABLE_WIDTH = 24  # most added items kept per user: a list of 20 plus slack for hidden ones
USER_TABLE_MIN_WIDTH = 8  # fewest; the width shrinks to this as users grow (USER_TABLE_MAX_ENTRIES)
USER_TABLE_MAX_ENTRIES = 4_000_000  # users x width: 24 bytes per entry, 92 MiB per view at most
USER_TABLE_MAX_PRODUCTS = 200_000_000  # most (users x added items) inner products to build one
USER_TABLE_MAX_USERS = USER_TABLE_MAX_ENTRIES // USER_TABLE_MIN_WIDTH  # 500,000 users with a row


def user_table_width(n_users: int, min_slots: int) -> int:
    """Entries per user of the table (0: no table): USER_TABLE_WIDTH while users x width fits in
    USER_TABLE_MAX_ENTRIES, fewer for more users, none below the reserved slots or
    USER_TABLE_MIN_WIDTH."""
    if n_users <= 0 or n_users > USER_TABLE_MAX_USERS:
        return 0
    width = min(USER_TABLE_WIDTH, USER_TABLE_MAX_ENTRIES // n_users)
    return width if width >= max(min_slots, USER_TABLE_MIN_WIDTH) else 0


def best_rows_per_user(
    users: np.ndarray,
    vectors: np.ndarray,
    width: int,
    previous: tuple[np.ndarray, np.ndarray] | None = None,
    covered: int = 0,
    threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``users`` (n_users, d): the ``width`` rows of ``vectors`` (n, d) with the largest
    inner products, best first, as (rows (n_users, w) int64, scores (n_users, w) float32), w =
    min(width, n). ``previous``: this function's table over the first ``covered`` rows of
    ``vectors`` (their values unchanged since); only the rows after them are scored and merged.

    One exact FAISS search of all users against those rows (a blocked matrix product with a
    per-query heap; numpy's product plus ``argpartition`` took 2.4 s for 9,308 users x 10,000
    rows, a scan of every score, against FAISS's selection inside its blocks). Rows FAISS found no
    score for (a non-finite vector) are -1. ``threads``: OpenMP threads of this thread's FAISS calls
    (``FAISS_THREADS``; 0 leaves them as set), as for every index build."""
    if threads:
        faiss.omp_set_num_threads(threads)
    if previous is None:
        covered = 0
    fresh = np.ascontiguousarray(vectors[covered:], dtype=np.float32)
    w = min(width, vectors.shape[0])
    index = faiss.IndexFlatIP(fresh.shape[1])
    index.add(fresh)
    scores, rows = index.search(np.ascontiguousarray(users, dtype=np.float32), min(width, fresh.shape[0]))
    rows = np.where(rows >= 0, rows.astype(np.int64) + covered, -1)
    if previous is not None and covered:
        scores = np.concatenate((previous[1], scores), axis=1)
        rows = np.concatenate((previous[0], rows), axis=1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :w]
    return np.take_along_axis(rows, order, axis=1), np.take_along_axis(scores, order, axis=1)


@dataclass(frozen=True)
class ShownRows:
    """A view's per-user table as its requests read it: each row's shown (available) added items
    first, best first, as item indices of the view (n_base + row) and scores, -1 / -inf after."""

    labels: np.ndarray  # (n_users, w) int64
    scores: np.ndarray  # (n_users, w) float32
    n_shown: np.ndarray  # (n_users,) int64: shown entries at the start of each row
    # (n_users,) float32: every added item outside the row scores at most this (-inf: the row
    # holds every added item, being as wide as their number or left short by FAISS)
    bound: np.ndarray


def shown_rows(
    table: tuple[np.ndarray, np.ndarray], available: np.ndarray, n_base: int, n_added: int
) -> ShownRows:
    """``table`` (best_rows_per_user's) with the unavailable items moved out of each row."""
    rows, scores = table
    keep = (rows >= 0) & available[np.maximum(rows, 0)]
    order = np.argsort(~keep, axis=1, kind="stable")  # shown entries first, in their order
    keep = np.take_along_axis(keep, order, axis=1)
    labels = np.where(keep, np.take_along_axis(rows, order, axis=1) + n_base, -1)
    shown_scores = np.where(keep, np.take_along_axis(scores, order, axis=1), -np.inf).astype(np.float32)
    whole = (rows[:, -1] < 0) | (rows.shape[1] == n_added)
    bound = np.where(whole, -np.inf, scores[:, -1]).astype(np.float32)
    return ShownRows(labels, shown_scores, keep.sum(axis=1), bound)


@dataclass(frozen=True)
class ItemRecord:
    """What the overlay holds about one item id: every PUT for it, merged (the last one wins)."""

    available: bool
    features: Mapping[str, np.ndarray] | None  # raw features (D_m,) float32 per modality, last given
    position: str  # log position of the last change


def _fits(content: ContentPath, features: Mapping[str, np.ndarray]) -> bool:
    return set(features) == set(content.modalities) and all(
        features[m].shape == (dim,) for m, dim in content.modalities.items()
    )


def _same_features(a: Mapping[str, np.ndarray] | None, b: Mapping[str, np.ndarray]) -> bool:
    """Whether ``b`` repeats ``a`` value for value (a PUT that re-sends an item's features)."""
    return a is not None and a.keys() == b.keys() and all(np.array_equal(a[m], b[m]) for m in a)


def _project(
    content: ContentPath, rows: list[Mapping[str, np.ndarray]]
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Raw features of n items -> (h_i (n, d), fbar^m name -> (n, d)) through the content path."""
    raw = {m: np.stack([np.asarray(r[m], dtype=np.float32) for r in rows]) for m in content.modalities}
    return content.item_vectors(raw), content.modality_features(raw)


class CatalogueView:
    """One serving model plus the overlay applied on it. Immutable: build a new one to change it.

    It answers the ``Recommender``'s questions (ids, user vectors, top-K) over the combined
    catalogue, so ``service.serving`` uses it in the Recommender's place.
    """

    def __init__(
        self,
        rec: Recommender,
        content: ContentPath | None,
        records: Mapping[str, ItemRecord],
        base_available: np.ndarray,
        new_ids: list[str],
        new_vectors: np.ndarray,
        new_modality: dict[str, np.ndarray],
        new_available: np.ndarray,
        features_position: str | None,
        max_slots: int | None,
        combined: SearchSpace | None = None,
        *,
        min_slots: int = 0,
        exact_max: int | None = None,
        refine: int = 8,
        like: SearchSpace | None = None,
        side_index: Any = None,
        user_table: tuple[tuple[np.ndarray, np.ndarray] | None, int] | None = None,
        shown: tuple[ShownRows | None, np.ndarray] | None = None,
    ) -> None:
        """``combined``: the previous view's search space, when the item vectors are unchanged
        (``side_index``: its side index, if built); ``like``: the previous view's space when they
        changed (a pq index reuses its training).
        ``min_slots`` / ``max_slots``: the fewest / most added items one list holds (see top_k).
        ``exact_max``: most added items searched exactly (None: no bound); beyond, the indexes over
        them are kind ``pq`` with ``refine`` x k candidates re-ranked exactly.
        ``user_table``: the previous view's per-user table (``self.user_table``) and how many of
        the first added rows it covers, when those rows' vectors are unchanged; ``shown``: the
        previous view's ``shown_rows`` and the availability they were derived with."""
        self.rec = rec
        self.exact_max = exact_max
        self.refine = refine
        self.content = content
        self.records = records  # the Catalogue's records this view was built from
        self.artifact = rec.artifact
        self.index = rec.index
        self.version = rec.version
        self.loaded_at = rec.loaded_at
        self.dim = rec.dim
        self.n_base = rec.n_items
        self.n_items = rec.n_items + len(new_ids)
        self.base_available = base_available  # (n_base,) bool
        # applied as a mask in Recommender.top_k, never as exclude entries: past the over-fetch cap
        # a growing exclude list sent every request to exact scoring
        self.unavailable_base_mask = ~base_available
        self.n_unavailable_base = int(self.unavailable_base_mask.sum())
        self.new_ids = new_ids
        self.new_row = {item_id: j for j, item_id in enumerate(new_ids)}
        self.new_vectors = new_vectors  # (n_new, d) h_i of the added items: the side index
        self.new_modality = new_modality  # name -> (n_new, d) fbar^m of the added items
        self.new_available = new_available  # (n_new,) bool
        self.n_new_available = int(new_available.sum())
        self.unavailable_new = np.flatnonzero(~new_available)
        # Where the artifact's index is exact (flat), the added items join it: one index over the
        # artifact's h_i followed by theirs, built here (copy, then swap with the view: nothing being
        # searched is ever added to) and searched once per request, with the unavailable items of
        # both kinds as one mask. Two searches and a merge in Python cost 0.31 ms a query against
        # 0.14 without added items (benchmarks.serve.items, in process). Approximate artifact indexes
        # (IVF, HNSW: large catalogues, slow to rebuild per batch) keep the side index instead.
        self.space: SearchSpace | None = None
        if new_ids and rec.index.exact and rec.index.kind == "flat":
            self.space = combined if combined is not None else self._combined_space(new_vectors, like)
        self.unavailable_mask = np.concatenate((self.unavailable_base_mask, ~new_available))
        self.n_unavailable = self.n_unavailable_base + int(new_available.size - self.n_new_available)
        self.features_position = features_position
        if side_index is not None:
            self.__dict__["_side_index"] = side_index
        elif self.space is not None and self.space.index.kind == "pq":
            _ = self._side_index  # built here, off the request path (its first query paid ~0.4 s)
        self.max_slots = max_slots
        self.min_slots = min_slots
        # The artifact's users (the "known" path: their vector is the exported h_u): each user's
        # best added items (user_table_width of them), exact, built here off the request path,
        # extended by the rows a batch appends; top_k merges a row into the artifact's own search.
        # Only beside an exact (flat) artifact index, where the lists are exact, and within the
        # USER_TABLE_MAX_* bounds; otherwise requests search the combined or side index.
        self.user_table: tuple[np.ndarray, np.ndarray] | None = None
        table_reused = None
        users = rec.user_embeddings
        width = user_table_width(users.shape[0], min_slots)
        if self.space is not None and width and users.shape[0] * len(new_ids) <= USER_TABLE_MAX_PRODUCTS:
            previous, covered = user_table if user_table is not None else (None, 0)
            if previous is not None and covered == len(new_ids):
                self.user_table = table_reused = previous
            else:
                threads = rec.index.config.threads
                self.user_table = best_rows_per_user(
                    users, new_vectors, width, previous, covered, threads=threads
                )
        # known users' lists their row could not decide (statistics only: += from two threads at
        # once may lose one; /recommend runs on the event loop)
        self.table_misses = 0
        self.shown_rows: ShownRows | None = None
        if self.user_table is not None:
            before, before_available = shown if shown is not None else (None, None)
            if (
                table_reused is not None
                and before is not None
                and before_available is not None
                and np.array_equal(before_available, new_available)
            ):
                self.shown_rows = before  # same table, same availability of the added items
            else:
                self.shown_rows = shown_rows(self.user_table, new_available, self.n_base, len(new_ids))
        # Cached user vectors depend on the added items' features: scope them by the log position
        # of the last batch that added or re-featured one (the same on every replica).
        self.cache_version = (
            rec.version if features_position is None else f"{rec.version}~{features_position}"
        )

    # ---------------------------------------------------------------- building

    @classmethod
    def build(
        cls,
        rec: Recommender,
        content: ContentPath | None,
        records: Mapping[str, ItemRecord],
        features_position: str | None,
        max_slots: int | None,
        *,
        min_slots: int = 0,
        exact_max: int | None = None,
        refine: int = 8,
    ) -> CatalogueView:
        """The overlay from scratch on ``rec`` (at start and on a model swap)."""
        base_available = np.ones(rec.n_items, dtype=bool)
        new_ids: list[str] = []
        rows: list[Mapping[str, np.ndarray]] = []
        available: list[bool] = []
        skipped = 0
        for item_id, record in records.items():  # insertion order: first PUT first
            i = rec.item_index.get(item_id)
            if i is not None:  # the model has it: only availability applies
                base_available[i] = record.available
                continue
            if record.features is None or content is None or not _fits(content, record.features):
                skipped += 1
                continue
            new_ids.append(item_id)
            rows.append(record.features)
            available.append(record.available)
        if skipped:
            log.warning(
                "added items not served: this model has no content path for their features",
                extra={"version": rec.version, "items": skipped},
            )
        vectors, modality = cls._empty_new(rec) if not rows else _project(content, rows)  # type: ignore[arg-type]
        return cls(
            rec,
            content,
            records,
            base_available,
            new_ids,
            vectors,
            modality,
            np.array(available, dtype=bool),
            features_position,
            max_slots,
            min_slots=min_slots,
            exact_max=exact_max,
            refine=refine,
        )

    @staticmethod
    def _empty_new(rec: Recommender) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        names = rec.artifact.manifest.modality_names
        return np.zeros((0, rec.dim), np.float32), {m: np.zeros((0, rec.dim), np.float32) for m in names}

    def _index_config(self, n_vectors: int, base: IndexConfig) -> IndexConfig:
        """How to index ``n_vectors`` that include this view's added items: as ``base`` (flat) up
        to ``exact_max`` added items, kind ``pq`` beyond (when there are enough vectors to train)."""
        if self.exact_max is None or len(self.new_ids) <= self.exact_max or n_vectors < PQ_MIN_ITEMS:
            return base
        return dataclasses.replace(base, kind="pq", pq_refine=self.refine)

    def _combined_space(self, new_vectors: np.ndarray, like: SearchSpace | None) -> SearchSpace:
        rec = self.rec
        vectors = np.concatenate((rec.space.item_embeddings, np.asarray(new_vectors, dtype=np.float32)))
        config = self._index_config(vectors.shape[0], rec.index.config)
        index = build_index(vectors, config, like=like.index if like is not None else None)
        return SearchSpace(index, vectors, vectors.shape[0])

    @functools.cached_property
    def _side_index(self) -> Any:
        """Inner product over the added items' h_i alone: exact (flat), or kind ``pq`` beyond
        ``exact_max`` added items (FAISS single-threaded like the main index; numpy's
        matrix-vector product went through a multi-threaded BLAS at 40x the cost on 2 busy cores).
        A pq one is built with the view (``__init__``) or carried over from the previous view; a
        flat one on first use, by the first request that needs it (two threads may each build one:
        each is private until stored, and never changed after)."""
        flat = dataclasses.replace(self.rec.index.config, kind="flat", use_gpu=False)
        config = self._index_config(len(self.new_ids), flat)
        if config.kind == "pq":  # trained like the combined index, when there is one
            like = self.space.index if self.space is not None else None
            return build_index(self.new_vectors, config, like=like).index
        side = faiss.IndexFlatIP(self.dim)
        if self.new_ids:
            side.add(np.ascontiguousarray(self.new_vectors, dtype=np.float32))
        return side

    def apply(
        self, changed: Sequence[str], records: Mapping[str, ItemRecord], features_position: str | None
    ) -> CatalogueView:
        """A new view with the items ``changed`` re-read from ``records`` (copy-on-write)."""
        base_available = self.base_available
        new_ids = list(self.new_ids)
        new_available = self.new_available.copy()
        replace: dict[int, Mapping[str, np.ndarray]] = {}  # row -> raw features
        append: list[Mapping[str, np.ndarray]] = []
        append_available: list[bool] = []
        for item_id in dict.fromkeys(changed):
            record = records[item_id]
            i = self.rec.item_index.get(item_id)
            if i is not None:
                if base_available is self.base_available:
                    base_available = base_available.copy()
                base_available[i] = record.available
                continue
            j = self.new_row.get(item_id)
            if j is not None:
                new_available[j] = record.available
                # a change without features keeps the previous features object: no re-projection
                prev = self.records.get(item_id)
                changed_features = prev is None or prev.features is not record.features
                if (
                    changed_features
                    and record.features is not None
                    and self.content is not None
                    and _fits(self.content, record.features)
                ):
                    replace[j] = record.features
                continue
            if record.features is None or self.content is None or not _fits(self.content, record.features):
                continue
            new_ids.append(item_id)
            append.append(record.features)
            append_available.append(record.available)
        vectors, modality = self.new_vectors, self.new_modality
        if replace or append:
            assert self.content is not None
            h, fbar = _project(self.content, list(replace.values()) + append)
            rows = np.fromiter(replace, dtype=np.int64, count=len(replace))
            k = len(replace)
            vectors = np.concatenate((vectors, h[k:]))
            modality = {m: np.concatenate((modality[m], fbar[m][k:])) for m in modality}
            if k:
                vectors[rows] = h[:k]
                for m in modality:
                    modality[m][rows] = fbar[m][:k]
            new_available = np.concatenate((new_available, np.array(append_available, dtype=bool)))
        return CatalogueView(
            self.rec,
            self.content,
            records,
            base_available,
            new_ids,
            vectors,
            modality,
            new_available,
            features_position,
            self.max_slots,
            self.space if vectors is self.new_vectors else None,
            min_slots=self.min_slots,
            exact_max=self.exact_max,
            refine=self.refine,
            like=self.space,
            side_index=self.__dict__.get("_side_index") if vectors is self.new_vectors else None,
            # appended rows leave the earlier ones' vectors as they were; replaced ones do not
            user_table=None if replace else (self.user_table, len(self.new_ids)),
            shown=(self.shown_rows, self.new_available),
        )

    # ---------------------------------------------------------------- ids

    def lookup_items(self, item_ids: Sequence[str]) -> tuple[np.ndarray, list[str]]:
        """External item ids -> (indices of the known ones, the unknown ids in request order)."""
        if not self.new_ids:
            return self.rec.lookup_items(item_ids)
        base, rows = self.rec.item_index, self.new_row
        found: list[int] = []
        unknown: list[str] = []
        for item_id in item_ids:
            i = base.get(item_id)
            if i is None:
                j = rows.get(item_id)
                if j is None:
                    unknown.append(item_id)
                    continue
                i = self.n_base + j
            found.append(i)
        return np.array(found, dtype=np.int64), unknown

    def item_ids(self, indices: np.ndarray) -> list[str]:
        # One lookup in the combined id array whatever the indices: its first n_base entries are the
        # artifact's ids. (Checking indices.max() first, to use the artifact's array when no added
        # item is among them, cost more per request than it saved.)
        if not self.new_ids:
            return self.rec.item_ids(indices)
        return self._all_ids[indices].tolist()

    @functools.cached_property
    def _all_ids(self) -> np.ndarray:
        return np.array(list(self.artifact.arrays.item_ids) + self.new_ids, dtype=object)

    def item_vector(self, index: int) -> np.ndarray:
        if index < self.n_base:
            return np.asarray(self.artifact.arrays.item_embeddings[index], dtype=np.float32)
        return self.new_vectors[index - self.n_base]

    def is_available(self, index: int) -> bool:
        if index < self.n_base:
            return bool(self.base_available[index])
        return bool(self.new_available[index - self.n_base])

    def describe(self, item_id: str) -> dict[str, Any] | None:
        """What the service holds about one item, or None if it has no such item."""
        indices, _ = self.lookup_items([item_id])
        if not indices.size:
            return None
        index = int(indices[0])
        record = self.records.get(item_id)
        in_model = index < self.n_base
        out: dict[str, Any] = {
            "item_id": item_id,
            "model_version": self.version,
            "source": "model" if in_model else "added",
            "available": self.is_available(index),
            "training_interactions": int(self.artifact.arrays.item_popularity[index]) if in_model else 0,
            "features": None,
            "last_change": record.position if record is not None else None,
        }
        if record is not None and record.features is not None:
            out["features"] = {m: int(v.shape[0]) for m, v in record.features.items()}
        return out

    # ---------------------------------------------------------------- user vectors

    def plan(self, user_id: str, fresh_items: np.ndarray) -> UserPlan:
        return self.rec.plan(user_id, fresh_items, n_items=self.n_items)

    def user_vector(self, plan: UserPlan) -> np.ndarray | None:
        items = plan.vector_items
        if plan.path in ("known", "popularity") or not items.size or items.max() < self.n_base:
            return self.rec.user_vector(plan)
        # Eq. 2 + Eq. 12 over the combined catalogue: the added items' fbar^m rows follow the model's.
        return contract.user_vector(self._extended_artifact, items, plan.user_index)

    @functools.cached_property
    def _extended_artifact(self) -> Artifact:
        a = self.artifact.arrays
        n_new = len(self.new_ids)
        layers = a.item_layer_embeddings
        arrays = dataclasses.replace(
            a,
            modality_features={
                m: np.concatenate((f, self.new_modality[m])) for m, f in a.modality_features.items()
            },
            item_layer_embeddings=np.concatenate(
                (layers, np.zeros((layers.shape[0], n_new, layers.shape[2]), dtype=layers.dtype)), axis=1
            ),
            item_popularity=np.concatenate(
                (a.item_popularity, np.zeros(n_new, dtype=a.item_popularity.dtype))
            ),
        )
        return dataclasses.replace(self.artifact, arrays=arrays)

    # ---------------------------------------------------------------- retrieval

    def top_k(
        self,
        vector: np.ndarray | None,
        k: int,
        exclude: np.ndarray,
        *,
        reserve: bool = True,
        user: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Best ``k`` available items not in ``exclude``, artifact and added ones merged by score.

        How many added items the list holds: as many as the blend by score puts in its top ``k``,
        raised to ``min_slots`` when ``reserve`` (reserved slots, ``NEW_ITEMS_SLOTS``: the best
        added items by score take them, the artifact's items the rest) and lowered to ``max_slots``
        (``NEW_ITEMS_MAX_SLOTS``), never more than the added items that may be shown. The list is
        ordered by score. ``vector`` None ranks by training popularity (added items have none: they
        come last, in the order they were first added). ``user``: the artifact's user index when
        ``vector`` is that user's exported h_u (then the artifact's index alone is searched and the
        user's row of ``shown_rows`` merged in, where the row decides the list: _known_top_k).
        """
        exclude = np.asarray(exclude, dtype=np.int64)
        # (one max first: a known user's exclude list is their training items, none of them added)
        hides_new = bool(exclude.size) and int(exclude.max()) >= self.n_base
        new_exclude = exclude[exclude >= self.n_base] - self.n_base if hides_new else _EMPTY
        allowed = self.new_available
        if new_exclude.size:
            allowed = allowed.copy()
            allowed[new_exclude] = False
        n_allowed = self.n_new_available if not new_exclude.size else int(allowed.sum())
        floor = min(self.min_slots if reserve else 0, n_allowed, k)
        if user is not None and self.shown_rows is not None and vector is not None and n_allowed:
            base_exclude = exclude[exclude < self.n_base] if hides_new else exclude
            found = self._known_top_k(user, vector, k, base_exclude, new_exclude, allowed, floor)
            if found is not None:
                return found
            self.table_misses += 1
        if self.space is not None and vector is not None and n_allowed:
            # one search over artifact + added items (exact: the same inner products, one ranking)
            labels, scores = self.rec.top_k(
                vector, k, exclude, self.unavailable_mask, self.n_unavailable, self.space
            )
            is_new = labels >= self.n_base
            n_new = int(is_new.sum())
            if n_new >= floor and (self.max_slots is None or n_new <= self.max_slots):
                return labels, scores
            if n_new < floor and (self.max_slots is None or floor <= self.max_slots):
                # Too few added items won by score (the common case for a calibrated content path
                # with reserved slots). The list's artifact items are the best k - n_new of the
                # artifact's, more than the k - floor that stay: only the side index is searched,
                # for the best ``floor`` added items, not the artifact's index a second time.
                best, new_scores = self._best_new(vector, floor, allowed, new_exclude)
                return self._reserve(labels[~is_new], scores[~is_new], best, new_scores, k, floor)
        base_exclude = exclude[exclude < self.n_base] if self.new_ids and exclude.size else exclude
        mask = self.unavailable_base_mask if self.n_unavailable_base else None
        labels, scores = self.rec.top_k(vector, k, base_exclude, mask, self.n_unavailable_base)
        take = min(k, n_allowed)
        if self.max_slots is not None:
            take = min(take, self.max_slots)
        if take <= 0:
            return labels, scores
        if vector is None:  # popularity: added items have none; the first available ones, score 0
            best = np.flatnonzero(allowed)[:take]
            new_scores = np.zeros(best.size, dtype=np.float32)
        else:
            best, new_scores = self._best_new(vector, take, allowed, new_exclude)
        if not best.size:
            return labels, scores
        all_labels = np.concatenate((labels, best + self.n_base))
        all_scores = np.concatenate((scores.astype(np.float32), new_scores))
        order = np.argsort(-all_scores, kind="stable")[:k]  # artifact items first among equal scores
        n_new = int((order >= labels.size).sum())
        if n_new < min(floor, best.size):
            return self._reserve(labels, scores, best, new_scores, k, floor)
        return all_labels[order], all_scores[order]

    def _known_top_k(
        self,
        user: int,
        vector: np.ndarray,
        k: int,
        base_exclude: np.ndarray,
        new_exclude: np.ndarray,
        allowed: np.ndarray,
        floor: int,
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """top_k for an artifact user with a table row: the artifact's own index searched as
        without added items, and the row's shown entries merged in; None where the row cannot
        decide the list exactly (then the combined search answers).

        Exact when the row holds every added item, or else when no added item outside it (each
        scores at most ``bound``) could change the list: the blend's k-th score is at least the
        bound, and the row holds as many shown items as the list is to have."""
        table = self.shown_rows
        assert table is not None
        cand, cand_scores = table.labels[user], table.scores[user]
        n = int(table.n_shown[user])
        if new_exclude.size:  # the request hides added items itself (rare for a known user)
            keep = allowed[np.maximum(cand[:n] - self.n_base, 0)]
            cand, cand_scores = cand[:n][keep], cand_scores[:n][keep]
            n = cand.size
        mask = self.unavailable_base_mask if self.n_unavailable_base else None
        labels, scores = self.rec.top_k(vector, k, base_exclude, mask, self.n_unavailable_base)
        nb, m = labels.size, min(n, k)
        top = cand_scores[:m]
        if nb == k:
            # Both lists are best first: the row's j-th entry is in the blend's top k iff it beats
            # the artifact item it would push out, the (k-1-j)-th (artifact items first among equal
            # scores); those entries are a prefix of the row.
            n_blend = int(np.count_nonzero(top > scores[k - m :][::-1]))
        else:
            order = np.argsort(-np.concatenate((scores, top)), kind="stable")[:k]
            n_blend = int(np.count_nonzero(order >= nb))
        bound = float(table.bound[user])
        if bound > -np.inf:
            if nb + m < k:
                return None  # the list is short: added items outside the row would join it
            kth = min(
                float(scores[k - 1 - n_blend]) if n_blend < k else np.inf,
                float(top[n_blend - 1]) if n_blend else np.inf,
            )
            if kth < bound:
                return None  # an added item outside the row may belong in the blend
        take = max(n_blend, floor)
        if self.max_slots is not None:
            take = min(take, self.max_slots)
        if take > m:
            if bound > -np.inf:
                return None  # the reserved slots need added items beyond the row
            take = m
        if take == 0:
            return labels, scores
        keep_base = min(nb, k - take)
        out_scores = np.concatenate((scores[:keep_base], top[:take]))
        order = np.argsort(-out_scores, kind="stable")  # artifact items first among equal scores
        return np.concatenate((labels[:keep_base], cand[:take]))[order], out_scores[order]

    def _reserve(
        self,
        labels: np.ndarray,
        scores: np.ndarray,
        best: np.ndarray,
        new_scores: np.ndarray,
        k: int,
        floor: int,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Reserved slots: the best ``floor`` added items (side-index rows ``best``, best first) and
        the best artifact items (``labels``, best first) around them, ``k`` at most, ordered by
        score (artifact items first among equal scores)."""
        floor = min(floor, best.size)
        keep_base = min(labels.size, k - floor)
        all_labels = np.concatenate((labels[:keep_base], best[:floor] + self.n_base))
        all_scores = np.concatenate((scores[:keep_base].astype(np.float32), new_scores[:floor]))
        order = np.argsort(-all_scores, kind="stable")
        return all_labels[order], all_scores[order]

    def _best_new(
        self,
        vector: np.ndarray,
        take: int,
        allowed: np.ndarray,
        new_exclude: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The best ``take`` added items that may be shown (rows of the side index) and their scores,
        over-fetched from the side index and filtered (like Recommender.top_k). (A known user's
        table row answers in _known_top_k, before any path that comes here.)"""
        fetch = min(len(self.new_ids), take + self.unavailable_new.size + new_exclude.size)
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(1, -1)
        found_scores, found = self._side_index.search(query, fetch)
        found, found_scores = found[0], found_scores[0]
        keep = (found >= 0) & allowed[np.maximum(found, 0)]
        return found[keep][:take], found_scores[keep][:take]

    def similar(self, index: int, k: int, exclude: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Item-to-item neighbours by inner product of the model's item vectors h_i (no reserved
        slots: the added items' share of a user's list is no question for an item's neighbours)."""
        return self.top_k(self.item_vector(index), k, np.concatenate((exclude, [index])), reserve=False)


# ------------------------------------------------------------------------------------ validation


def validate_batch(req: ItemsRequest, view: CatalogueView, settings: Settings) -> list[ItemChange]:
    """The batch as changes, or one RequestValidationError naming every bad item and field."""
    errors: list[dict[str, Any]] = []
    limit = settings.items_max_batch
    if len(req.items) > limit:
        raise RequestValidationError(
            [limit_exceeded("items", f"<{len(req.items)} items>", limit, f"items length ({len(req.items)})")]
        )
    content = view.content
    seen: set[str] = set()
    changes: list[ItemChange] = []
    well_formed: list[tuple[int, str, dict[str, np.ndarray]]] = []  # (position, id, features)
    for n, item in enumerate(req.items):
        where: tuple[Any, ...] = ("body", "items", n)
        item_id = item.item_id
        errors_before = len(errors)

        def bad(
            field: tuple[Any, ...],
            kind: str,
            msg: str,
            value: Any,
            item_id: str = item_id,
            where: tuple[Any, ...] = where,
        ) -> None:
            errors.append(
                {"type": kind, "loc": where + field, "msg": f"item {item_id!r}: {msg}", "input": value}
            )

        if item_id in seen:
            bad(("item_id",), "duplicate_item", "appears more than once in the batch", item_id)
        seen.add(item_id)
        known = bool(view.lookup_items([item_id])[0].size)
        if item.features is None:
            if not known:
                bad(("features",), "missing", "a new item needs features for every modality", None)
            changes.append(ItemChange(item_id, item.available, None))
            continue
        if content is None:
            bad(
                ("features",),
                "no_content_path",
                f"the serving model {view.version} was exported without a content path, so it cannot "
                "take item features (availability changes of its own items still work)",
                None,
            )
            continue
        features: dict[str, np.ndarray] = {}
        for name, values in item.features.items():
            if name not in content.modalities:
                bad(
                    ("features", name),
                    "unknown_modality",
                    f"unknown modality {name!r}; this model's modalities: {list(content.modalities)}",
                    name,
                )
                continue
            with np.errstate(over="ignore"):  # a finite JSON number beyond float32 becomes inf
                arr = np.asarray(values, dtype=np.float32)
            expected = content.modalities[name]
            if arr.shape != (expected,):
                bad(
                    ("features", name),
                    "wrong_dimension",
                    f"modality {name!r} has {arr.shape[0]} values, expected {expected}",
                    f"<{arr.shape[0]} values>",
                )
            elif not np.isfinite(arr).all():
                # float32 overflow turns a huge finite JSON number into inf too: also refused
                bad(
                    ("features", name),
                    "finite_number",
                    f"modality {name!r} holds NaN or inf (at positions "
                    f"{np.flatnonzero(~np.isfinite(arr))[:5].tolist()})",
                    None,
                )
            features[name] = arr
        missing = [m for m in content.modalities if m not in item.features]
        if missing:
            bad(
                ("features",),
                "missing",
                f"missing modalities {missing}; every one of {list(content.modalities)} is needed",
                None,
            )
        changes.append(ItemChange(item_id, item.available, features))
        if len(errors) == errors_before:
            well_formed.append((n, item_id, features))
    if content is not None and well_formed:
        # Finite features can still overflow the content path (float32 products of values near
        # 3e38): such an item would get a non-finite h_i, which ranks nowhere and breaks searches.
        with np.errstate(all="ignore"):
            h, fbar = _project(content, [f for _, _, f in well_formed])
        finite = np.isfinite(h).all(axis=1)
        for rows in fbar.values():
            finite &= np.isfinite(rows).all(axis=1)
        for (n, item_id, _), ok in zip(well_formed, finite.tolist(), strict=True):
            if not ok:
                errors.append({
                    "type": "finite_number",
                    "loc": ("body", "items", n, "features"),
                    "msg": f"item {item_id!r}: its features overflow the content path (the item "
                    "vector would not be finite); they are too large in magnitude",
                    "input": None,
                })  # fmt: skip
    if errors:
        raise RequestValidationError(errors)
    return changes


# ------------------------------------------------------------------------------------ the owner


class Catalogue:
    """Owns the overlay: the merged records, the log position, the current view; applies batches."""

    def __init__(
        self, settings: Settings, manager: ModelManager, metrics: Metrics, item_log: ItemLog
    ) -> None:
        self.settings = settings
        self.manager = manager
        self.metrics = metrics
        self.log = item_log
        self._records: dict[str, ItemRecord] = {}  # replaced (never mutated) on every batch
        self._position = "0-0"  # of the last batch applied
        self._features_position: str | None = None  # of the last batch that added or re-featured items
        self._view: CatalogueView | None = None
        self._content: tuple[str, ContentPath | None] | None = None  # (model version, its content path)
        self._lock = asyncio.Lock()
        self._poll_task: asyncio.Task[None] | None = None
        self._sync_failing = False
        manager.prepare_hooks.append(self._prepare)

    # ---------------------------------------------------------------- views

    def _content_path(self, rec: Recommender) -> ContentPath | None:
        cached = self._content
        if cached is not None and cached[0] == rec.version:
            return cached[1]
        try:
            content = load_content_path(rec.artifact)
        except ArtifactError as exc:
            log.error(
                "content path refused: items cannot be added",
                extra={"version": rec.version, "error": str(exc)},
            )
            content = None
        self._content = (rec.version, content)
        return content

    def _build(
        self, rec: Recommender, records: Mapping[str, ItemRecord], features_position: str | None
    ) -> CatalogueView:
        return CatalogueView.build(
            rec,
            self._content_path(rec),
            records,
            features_position,
            self.settings.new_items_max_slots,
            min_slots=self.settings.new_items_slots,
            exact_max=self.settings.added_items_exact_max,
            refine=self.settings.added_items_refine,
        )

    def _prepare(self, rec: Recommender) -> Callable[[], None]:
        """Model manager hook, in its loading thread: the overlay on the new model, swapped with it."""
        records, position = self._records, self._features_position
        try:
            view = self._build(rec, records, position)
        except Exception:  # never refuse a model for the overlay: require() retries the build
            log.exception("could not build the item overlay on the new model", extra={"version": rec.version})
            return lambda: None

        def commit() -> None:
            if self._records is records:  # else a batch landed meanwhile: require() rebuilds
                self._view = view

        return commit

    def require(self) -> CatalogueView:
        """The view for the serving model (ModelNotReadyError while there is none)."""
        rec = self.manager.require()
        view = self._view
        if view is None or view.rec is not rec or view.records is not self._records:
            # a model swap raced a batch: rebuild here (rare; normally prebuilt off the event loop)
            view = self._view = self._build(rec, self._records, self._features_position)
        return view

    @property
    def current(self) -> CatalogueView | None:
        return self.require() if self.manager.current is not None else None

    # ---------------------------------------------------------------- applying the log

    async def start(self) -> None:
        """Replay the log (a replica started later serves every batch so far), then poll it."""
        try:
            n = await self.sync()
            if n:
                log.info("replayed catalogue changes", extra={"batches": n, "items": len(self._records)})
        except Exception as exc:
            log.warning(
                "could not replay the item log; retrying in the background", extra={"error": repr(exc)}
            )
        self._poll_task = asyncio.create_task(self._poll(), name="items-poll")

    async def stop(self) -> None:
        if self._poll_task is not None:
            self._poll_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poll_task
            self._poll_task = None
        await self.log.close()

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.items_poll_interval_s)
            try:
                await self.sync()
                if self._sync_failing:
                    log.info("item log readable again")
                    self._sync_failing = False
            except Exception as exc:  # never let the poller die; keep serving what we have
                self.metrics.redis_errors.labels("items_sync").inc()
                if not self._sync_failing:
                    log.warning(
                        "item log unreadable; serving the catalogue as it is", extra={"error": repr(exc)}
                    )
                    self._sync_failing = True

    async def sync(self) -> int:
        """Apply every batch of the log after our position; how many were applied."""
        async with self._lock:
            entries = await self.log.read_after(self._position)
            if entries:
                await self._apply(entries)
            return len(entries)

    async def _apply(self, entries: list[tuple[str, list[ItemChange]]]) -> None:
        records = dict(self._records)
        changed: list[str] = []
        features_position = self._features_position
        for position, changes in entries:
            for change in changes:
                prev = records.get(change.item_id)
                features = prev.features if prev is not None else None
                if change.features is not None and not _same_features(features, change.features):
                    features = change.features
                    features_position = position
                # else the previous features object stays: the view sees no new features (no
                # re-projection, the same indexes and per-user table) and cached vectors stay valid
                records[change.item_id] = ItemRecord(change.available, features, position)
                changed.append(change.item_id)
        rec = self.manager.current
        view = self._view
        new_view: CatalogueView | None = None
        if rec is not None:
            if view is not None and view.rec is rec and view.records is self._records:
                new_view = await asyncio.to_thread(view.apply, changed, records, features_position)
            else:
                new_view = await asyncio.to_thread(self._build, rec, records, features_position)
        # one step, no await in between: records, position and view change together
        self._records = records
        self._position = entries[-1][0]
        self._features_position = features_position
        if new_view is not None and self.manager.current is new_view.rec:
            self._view = new_view

    async def put(self, req: ItemsRequest) -> dict[str, Any]:
        """Validate a batch, append it to the log, apply it here. All or nothing."""
        started = time.perf_counter()
        view = self.require()
        changes = validate_batch(req, view, self.settings)
        position = await self.log.append(changes)  # StoreUnavailableError: nothing applied anywhere
        try:
            await self.sync()
        except Exception as exc:
            log.warning("item log read-back failed", extra={"position": position, "error": repr(exc)})
            raise StoreUnavailableError(
                f"the batch was recorded at log position {position} but this replica could not read "
                "the log back; every replica applies it once Redis answers"
            ) from exc
        view = self.require()
        added = sum(1 for c in changes if c.item_id in view.new_row and c.features is not None)
        log.info(
            "items applied",
            extra={
                "items": len(changes),
                "position": position,
                "ms": round(1000 * (time.perf_counter() - started), 1),
            },
        )
        return {
            "applied": len(changes),
            "position": position,
            "model_version": view.version,
            "items_added_total": len(view.new_ids),
            "added_or_refeatured": added,
        }

    # ---------------------------------------------------------------- retraining

    def retrain_items(self) -> dict[str, Any] | None:
        """Every item the overlay holds, for the retrain job spec (JSON-able); None if none.

        ``item_ids``, ``available`` and ``has_features`` are per item in first-PUT order;
        ``features[m]`` is the (n_with_features, D_m) float32 matrix of the raw features of the items
        whose ``has_features`` is true, in that order, as base64 of its little-endian bytes.
        """
        records = self._records
        if not records:
            return None
        ids = list(records)
        # Features given under an earlier model whose modalities or widths differ from the serving
        # one's cannot stack with the rest: such items go without features (the job says so by
        # name if it needs them) instead of failing every retrain from here on.
        view = self._view
        content = view.content if view is not None else None
        has = [
            records[i].features is not None and (content is None or _fits(content, records[i].features))  # type: ignore[arg-type]
            for i in ids
        ]
        if content is None:  # no content path to check against: the first item's shapes decide
            first = next((records[i].features for i, h in zip(ids, has, strict=True) if h), None)
            shapes = {m: np.shape(v) for m, v in first.items()} if first is not None else {}
            has = [
                h and {m: np.shape(v) for m, v in records[i].features.items()} == shapes  # type: ignore[union-attr]
                for i, h in zip(ids, has, strict=True)
            ]
        dropped = [i for i, h in zip(ids, has, strict=True) if records[i].features is not None and not h]
        if dropped:
            log.warning(
                "items whose features do not fit the serving model go to the retrain without them",
                extra={"items": dropped[:20], "n": len(dropped)},
            )
        features: dict[str, Any] = {}
        rows = [records[i].features for i, h in zip(ids, has, strict=True) if h]
        if rows:
            for m in rows[0]:  # type: ignore[union-attr]
                matrix = np.stack([np.asarray(r[m], dtype="<f4") for r in rows])  # type: ignore[index]
                features[m] = {
                    "dtype": "float32",
                    "shape": list(matrix.shape),
                    "base64": base64.b64encode(matrix.tobytes()).decode(),
                }
        return {
            "item_ids": ids,
            "available": [records[i].available for i in ids],
            "has_features": has,
            "features": features,
        }
