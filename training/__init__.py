"""Offline trainer: dataset validation, graphs, the training loop, evaluation and export."""
