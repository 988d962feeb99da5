"""Bring your own data: read the field's common formats into one in-memory log, then filter, split and
write a dataset folder that :func:`training.data.load_dataset` reads.

One small reader per format (:mod:`.mmrec`, :mod:`.recbole`, :mod:`.tabular` for CSV/Parquet), each
returning an :class:`~training.importers.log.InteractionLog`; :mod:`.build` does what is common
(rating threshold, duplicates, k-core, split, summary, atomic write). The reverse direction,
``export-format mmrec``, is :func:`training.importers.mmrec.export_mmrec`.
"""

from training.importers.build import SPLITS, Prepared, prepare, write_dataset
from training.importers.log import InteractionLog

__all__ = ["SPLITS", "InteractionLog", "Prepared", "prepare", "write_dataset"]
