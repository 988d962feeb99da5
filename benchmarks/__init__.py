"""Benchmarks of training, serving and data import.

Importing ``training`` first applies its process settings (``training.allocator.request_huge_pages``)
to the benchmarks' own processes and their children, which import torch later: they then measure
the trainer as ``python -m training`` runs it.
"""

import training  # noqa: F401
