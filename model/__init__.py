"""MMSSL in pure PyTorch: config, graphs, model, losses."""

from model.config import MMSSLConfig
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
