"""Request handling of the item routes: GET /items/{id}, similar items. PUT is Catalogue.put."""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi.exceptions import RequestValidationError

from service.catalogue import Catalogue
from service.errors import ItemNotFoundError, limit_exceeded, unknown_items
from service.schemas import SimilarRequest
from service.settings import Settings


class Items:
    def __init__(self, settings: Settings, catalogue: Catalogue) -> None:
        self.settings = settings
        self.catalogue = catalogue

    def get(self, item_id: str) -> dict[str, Any]:
        info = self.catalogue.require().describe(item_id)
        if info is None:
            raise ItemNotFoundError(f"no item {item_id!r} in the serving catalogue")
        return info

    def similar(self, item_id: str, req: SimilarRequest) -> dict[str, Any]:
        view = self.catalogue.require()
        k = self.settings.default_k if req.k is None else req.k
        found, _ = view.lookup_items([item_id])
        if not found.size:
            raise ItemNotFoundError(f"no item {item_id!r} in the serving catalogue")
        errors = []
        if k > self.settings.max_k:
            errors.append(limit_exceeded("k", k, self.settings.max_k, "k"))
        limit = self.settings.max_items_per_request
        exclude = np.zeros(0, dtype=np.int64)
        if len(req.exclude_items) > limit:
            n = len(req.exclude_items)
            errors.append(
                limit_exceeded("exclude_items", f"<{n} items>", limit, f"exclude_items length ({n})")
            )
        else:
            exclude, missing = view.lookup_items(req.exclude_items)
            if missing:
                errors.append(unknown_items("exclude_items", missing))
        if errors:
            raise RequestValidationError(errors)
        labels, scores = view.similar(int(found[0]), k, exclude)
        return {
            "item_id": item_id,
            "model_version": view.version,
            "items": [
                {"item_id": i, "score": s}
                for i, s in zip(view.item_ids(labels), scores.tolist(), strict=True)
            ],
        }
