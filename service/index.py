"""FAISS inner-product indexes over the item vectors h_i.

Kinds: ``flat`` (exact), ``ivf`` and ``hnsw`` (approximate; ``INDEX_TYPE``), and ``pq``, which the
service builds itself over many items added through ``PUT /items`` (``service.catalogue``): a 4-bit
product quantizer with one sub-quantizer per dimension (FAISS fast scan: 16 learnt levels per
coordinate, d / 2 bytes a vector, an eighth of float32) shortlists ``pq_refine`` x k candidates, and
those are re-ranked by their exact inner products over the float vectors. The scores it returns are
exact; which items reach the shortlist is approximate (the served lists' recall@20 against a flat
index is ``in_process.recall_at_20_vs_exact_index`` of ``benchmarks.serve.items``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

log = logging.getLogger(__name__)

# GPU flat/IVF search returns at most this many neighbours per query (FAISS limit).
GPU_MAX_K = 2048
# Fewest vectors a pq index is trained on (16 levels per coordinate; FAISS asks for 39 points each).
PQ_MIN_ITEMS = 1024
# Its training: a 1-D k-means of 16 levels per coordinate, on at most 64 points per level (FAISS
# samples them, seeded) for 10 iterations. With FAISS's defaults (256 points per level, 25
# iterations) the training was most of the PUT /items batch that first builds a pq index, the one
# batch over 2 s to both replicas; with these it is not, and the shortlist's recall is unchanged
# (benchmarks.serve.items: propagation, in_process.recall_at_20_vs_exact_index).
PQ_TRAIN_POINTS_PER_LEVEL = 64
PQ_TRAIN_ITERATIONS = 10


@dataclass(frozen=True)
class IndexConfig:
    kind: str = "flat"  # flat | ivf | hnsw
    ivf_nlist: int = 0  # 0 = about 4 * sqrt(n)
    ivf_nprobe: int = 16
    hnsw_m: int = 32
    hnsw_ef_construction: int = 200
    hnsw_ef_search: int = 128
    pq_refine: int = 8  # kind pq: candidates re-ranked exactly per result asked for (k_factor)
    use_gpu: bool = True
    threads: int = 0  # OpenMP threads of the building thread's FAISS calls (FAISS_THREADS); 0: as set


class ItemIndex:
    """One built index plus how to query it. ``search`` takes one query vector."""

    def __init__(
        self,
        index: Any,
        kind: str,
        exact: bool,
        config: IndexConfig,
        gpu_resources: Any = None,
        trained_on: int | None = None,
    ) -> None:
        self.index = index
        self._gpu_resources = gpu_resources  # must outlive a GPU index
        self.kind = kind
        self.exact = exact  # results equal brute-force inner products
        self.on_gpu = gpu_resources is not None
        self.ntotal = int(index.ntotal)
        self.trained_on = self.ntotal if trained_on is None else trained_on  # vectors its quantizer saw
        self.max_k = min(self.ntotal, GPU_MAX_K) if self.on_gpu else self.ntotal
        self._config = config

    @property
    def config(self) -> IndexConfig:
        """How it was built (to build another the same way)."""
        return self._config

    def search(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """query (d,) float32 -> (scores (k',), item indices (k',)); k' <= k, missing entries dropped."""
        k = min(k, self.max_k)
        q = query.reshape(1, -1)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(  # type: ignore[attr-defined]  # stub lacks it
                efSearch=max(self._config.hnsw_ef_search, k)
            )
            scores, labels = self.index.search(q, k, params=params)
        else:
            scores, labels = self.index.search(q, k)
        scores, labels = scores[0], labels[0]
        if labels.size and labels[-1] < 0:  # approximate indexes pad with -1
            keep = labels >= 0
            scores, labels = scores[keep], labels[keep]
        return scores, labels

    def describe(self) -> dict[str, Any]:
        return {"type": self.kind, "exact": self.exact, "gpu": self.on_gpu, "ntotal": self.ntotal}


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def build_index(item_embeddings: np.ndarray, config: IndexConfig, like: ItemIndex | None = None) -> ItemIndex:
    """Build the index over h_i (n_items, d); float32 contiguous copies are made as FAISS needs.

    ``like``: a ``pq`` index over earlier vectors of the same space (the previous view's). Its
    trained quantizer is reused, not trained again (0.35 s for 16,710 vectors of d = 64), while the
    vectors number at most twice those it was trained on.
    """
    xb = np.ascontiguousarray(item_embeddings, dtype=np.float32)
    n, d = xb.shape
    kind = config.kind
    if config.threads:
        # OpenMP's thread count is per thread: FAISS in a worker thread (asyncio.to_thread, the model
        # loader) otherwise used every core, and two replicas' pq trainings spinning on 2 cores made
        # a 1,000-item PUT take 12 s instead of 0.3 (benchmarks.serve.items). Searches made later
        # from this thread keep the setting too.
        faiss.omp_set_num_threads(config.threads)
    trained_on = n
    index: Any
    if kind == "flat":
        index = faiss.IndexFlatIP(d)
    elif kind == "ivf":
        nlist = config.ivf_nlist or max(1, int(4 * math.sqrt(n)))
        nlist = max(1, min(nlist, n // 39 or 1))  # FAISS wants ~39 training points per list
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        index.train(xb)
        index.nprobe = min(config.ivf_nprobe, nlist)
    elif kind == "hnsw":
        index = faiss.IndexHNSWFlat(d, config.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = config.hnsw_ef_construction
        index.hnsw.efSearch = config.hnsw_ef_search
    elif kind == "pq":
        if n < PQ_MIN_ITEMS:
            raise ValueError(f"a pq index needs at least {PQ_MIN_ITEMS} vectors to train on, got {n}")
        if config.pq_refine < 1:
            raise ValueError(f"pq_refine must be at least 1, got {config.pq_refine}")
        if like is not None and like.kind == "pq" and like.index.d == d and 2 * like.trained_on >= n:
            coarse = faiss.clone_index(faiss.downcast_index(like.index.base_index))
            coarse.reset()  # keeps the training, drops the codes
            trained_on = like.trained_on
        else:
            coarse = faiss.IndexPQFastScan(d, d, 4, faiss.METRIC_INNER_PRODUCT)
            coarse.pq.cp.max_points_per_centroid = PQ_TRAIN_POINTS_PER_LEVEL
            coarse.pq.cp.niter = PQ_TRAIN_ITERATIONS
            coarse.train(xb)
        index = faiss.IndexRefineFlat(coarse)
        index.k_factor = float(config.pq_refine)
    else:
        raise ValueError(f"INDEX_TYPE {kind!r} is not one of flat, ivf, hnsw")
    res = None
    on_cpu_only = kind in ("hnsw", "pq")
    if config.use_gpu and not on_cpu_only and gpu_available():
        res = faiss.StandardGpuResources()
        index = faiss.index_cpu_to_gpu(res, 0, index)
    elif config.use_gpu and on_cpu_only and gpu_available():
        log.info("this index kind has no FAISS GPU implementation; it stays on CPU", extra={"index": kind})
    index.add(xb)
    log.info("built FAISS index", extra={"index": kind, "n_items": n, "dim": d, "gpu": res is not None})
    return ItemIndex(
        index, kind, exact=kind == "flat", config=config, gpu_resources=res, trained_on=trained_on
    )
