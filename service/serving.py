"""Request handling between the routes and the Recommender: ids, limits, cache, fresh interactions."""

from __future__ import annotations

import time
import uuid
from typing import Any

import numpy as np

from service.errors import limit_error, unknown_items_error
from service.metrics import Metrics
from service.model_manager import ModelManager
from service.recommender import Recommender
from service.schemas import InteractionsRequest, RecommendRequest
from service.settings import Settings
from service.store import Store


class Serving:
    def __init__(self, settings: Settings, manager: ModelManager, store: Store, metrics: Metrics) -> None:
        self.settings = settings
        self.manager = manager
        self.store = store
        self.metrics = metrics

    def _check_list(self, field: str, values: list[str]) -> None:
        limit = self.settings.max_items_per_request
        if len(values) > limit:
            raise limit_error(field, f"<{len(values)} items>", limit, f"{field} length ({len(values)})")

    @staticmethod
    def _resolve(rec: Recommender, fields: dict[str, list[str]]) -> list[np.ndarray]:
        """Item ids of each field -> indices; one 422 listing every unknown id of every field."""
        resolved, unknown = [], {}
        for field, ids in fields.items():
            indices, missing = rec.lookup_items(ids)
            resolved.append(indices)
            if missing:
                unknown[field] = missing
        if unknown:
            raise unknown_items_error(unknown)
        return resolved

    async def recommend(self, req: RecommendRequest) -> dict[str, Any]:
        s = self.settings
        k = s.default_k if req.k is None else req.k
        if k > s.max_k:
            raise limit_error("k", k, s.max_k, "k")
        self._check_list("exclude_items", req.exclude_items)
        self._check_list("interactions", req.interactions)
        rec = self.manager.require()  # this request runs on this model, whatever swaps meanwhile
        excluded, interactions = self._resolve(
            rec, {"exclude_items": req.exclude_items, "interactions": req.interactions}
        )
        state = await self.store.get_user_state(rec.version, req.user_id)
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
                    await self.store.set_user_vector(rec.version, req.user_id, state.fingerprint, vector)

        exclude = excluded
        if req.exclude_seen and (plan.train_items.size or fresh.size):
            exclude = np.concatenate((excluded, plan.train_items, fresh))
        labels, scores = rec.top_k(vector, k, exclude)
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
        self._check_list("items", req.items)
        rec = self.manager.require()
        self._resolve(rec, {"items": req.items})
        timestamps = req.timestamps if req.timestamps is not None else [time.time()] * len(req.items)
        kept = await self.store.add_interactions(req.user_id, req.items, timestamps)
        return {
            "user_id": req.user_id,
            "recorded": len(req.items),
            "fresh_count": kept,
            "model_version": rec.version,
        }
