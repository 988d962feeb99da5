"""Offline trainer: dataset validation, graphs, the training loop, evaluation and export."""

from training import allocator as _allocator

# before anything here imports torch: PyTorch reads THP_MEM_ALLOC_ENABLE once (training.allocator)
_allocator.request_huge_pages()
