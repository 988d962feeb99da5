"""MMSSL in pure PyTorch: config, graphs, model, losses.

The names below are imported on first use (PEP 562), so ``model.config`` (a dataclass, no torch)
can be read without importing torch: the training CLI validates its input before paying for it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from model.config import MMSSLConfig

if TYPE_CHECKING:
    from model.graph import (
        InteractionGraph,
        ItemGraph,
        ModalityViews,
        build_interaction_graph,
        build_item_graph,
        build_modality_views,
        views_from_topk,
    )
    from model.mmssl import MMSSL, MMSSLOutput

_LAZY = {
    "InteractionGraph": "model.graph",
    "ItemGraph": "model.graph",
    "ModalityViews": "model.graph",
    "build_interaction_graph": "model.graph",
    "build_item_graph": "model.graph",
    "build_modality_views": "model.graph",
    "views_from_topk": "model.graph",
    "MMSSL": "model.mmssl",
    "MMSSLOutput": "model.mmssl",
}

__all__ = [
    "MMSSL",
    "InteractionGraph",
    "ItemGraph",
    "MMSSLConfig",
    "MMSSLOutput",
    "ModalityViews",
    "build_interaction_graph",
    "build_item_graph",
    "build_modality_views",
    "views_from_topk",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'model' has no attribute {name!r}")
