"""Request handling between the routes and the Recommender: ids, limits, cache, fresh interactions."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np
from fastapi.exceptions import RequestValidationError

from service.catalogue import Catalogue, CatalogueView
from service.errors import limit_exceeded, unknown_items
from service.metrics import Metrics
from service.schemas import InteractionsRequest, RecommendRequest
from service.settings import Settings
from service.store import Store

_NO_ITEMS = np.zeros(0, dtype=np.int64)


class Serving:
    # ``manager`` is the Catalogue: the serving model with the items added through PUT /items
    def __init__(self, settings: Settings, manager: Catalogue, store: Store, metrics: Metrics) -> None:
        self.settings = settings
        self.manager = manager
        self.store = store
        self.metrics = metrics

    def _check(
        self, rec: CatalogueView, item_fields: dict[str, list[str]], k: int | None = None
    ) -> list[np.ndarray]:
        """Limits and item ids of a request -> item indices per field; one 422 listing every problem."""
        errors = []
        if k is not None and k > self.settings.max_k:
            errors.append(limit_exceeded("k", k, self.settings.max_k, "k"))
        limit = self.settings.max_items_per_request
        resolved = []
        for field, ids in item_fields.items():
            if len(ids) > limit:
                errors.append(
                    limit_exceeded(field, f"<{len(ids)} items>", limit, f"{field} length ({len(ids)})")
                )
                resolved.append(_NO_ITEMS)
                continue
            indices, missing = rec.lookup_items(ids)
            resolved.append(indices)
            if missing:
                errors.append(unknown_items(field, missing))
        if errors:
            raise RequestValidationError(errors)
        return resolved

    async def recommend(self, req: RecommendRequest) -> dict[str, Any]:
        k = self.settings.default_k if req.k is None else req.k
        rec = self.manager.require()  # this request runs on this model, whatever swaps meanwhile
        excluded, interactions = self._check(
            rec, {"exclude_items": req.exclude_items, "interactions": req.interactions}, k
        )
        state = await self.store.get_user_state(rec.cache_version, req.user_id)
        # Stored items a newer catalogue no longer has cannot enter the vector: skip them.
        stored = rec.lookup_items(state.fresh_items)[0]
        fresh = np.concatenate((stored, interactions)) if interactions.size else stored
        plan = rec.plan(req.user_id, fresh)

        vector: np.ndarray | None = None
        cache_hit = False
        if plan.path != "popularity":
            # The cached vector reflects stored state only; request interactions bypass it.
            cacheable = not req.interactions
            cached = state.cached_vector
            if cacheable and cached is not None and cached.shape == (rec.dim,):
                vector, cache_hit = cached, True
                self.metrics.cache_hits.inc()
            else:
                vector = rec.user_vector(plan)
                if cacheable:
                    self.metrics.cache_misses.inc()
                    assert vector is not None
                    await self.store.set_user_vector(
                        rec.cache_version, req.user_id, state.fingerprint, vector
                    )

        exclude = excluded
        if req.exclude_seen and (plan.train_items.size or fresh.size):
            exclude = np.concatenate((excluded, plan.train_items, fresh))
        known = plan.user_index if plan.path == "known" else None  # vector is the exported h_u
        labels, scores = rec.top_k(vector, k, exclude, user=known)
        item_ids = rec.item_ids(labels)
        return {
            "recommendation_id": uuid.uuid4().hex,
            "model_version": rec.version,
            "user_id": req.user_id,
            "path": plan.path,
            "cache_hit": cache_hit,
            "items": [{"item_id": i, "score": sc} for i, sc in zip(item_ids, scores.tolist(), strict=True)],
        }

    async def record_interactions(self, req: InteractionsRequest) -> dict[str, Any]:
        rec = self.manager.require()
        self._check(rec, {"items": req.items})
        timestamps = req.timestamps if req.timestamps is not None else [time.time()] * len(req.items)
        request_id = req.request_id or uuid.uuid4().hex
        kept = await self.store.add_interactions(req.user_id, req.items, timestamps, request_id)
        return {
            "user_id": req.user_id,
            "request_id": request_id,
            "recorded": len(req.items),
            "fresh_count": kept,
            "model_version": rec.version,
        }
