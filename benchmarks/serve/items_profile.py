"""Where top-K time goes with 10,000 added items, in process, and what HNSW over them would give.

    python -m benchmarks.serve.items_profile

Prints: build time of the view; per-query ms of CatalogueView.top_k without and with the added items,
the side index alone and the model's index alone (two rounds); HNSW (M 16/32, efSearch 32/64/128)
over the added h_i: per-query ms and recall@20 against the exact IndexFlatIP; a cProfile of top_k.
"""

import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from artifact import contract
from artifact.content import load_content_path
from benchmarks.serve.items import RAW_DIMS, write_artifact_with_content
from service.catalogue import CatalogueView, ItemRecord
from service.model_manager import load_recommender
from service.settings import Settings

faiss.omp_set_num_threads(1)
root = Path(tempfile.mkdtemp(prefix="items-speed-"))
write_artifact_with_content(root)
settings = Settings(_env_file=None, artifact_root=root, faiss_use_gpu=False)
rec = load_recommender(root / str(contract.read_current(root)), settings)
rng = np.random.default_rng(0)
records = {
    f"new-{j}": ItemRecord(
        True, {m: rng.normal(size=d).astype(np.float32) for m, d in RAW_DIMS.items()}, "1-0"
    )
    for j in range(10000)
}
cp = load_content_path(rec.artifact)
plain = CatalogueView.build(rec, cp, {}, None, None)
t = time.perf_counter()
w = CatalogueView.build(rec, cp, records, "1-0", None)
print("build", time.perf_counter() - t)
n = 2000
users = rng.integers(0, rec.artifact.manifest.n_users, size=n)
qs = [
    (np.ascontiguousarray(rec.artifact.arrays.user_embeddings[u]), rec.artifact.user_items(int(u)))
    for u in users
]


def ms(fn):
    t = time.perf_counter()
    for q, s in qs:
        fn(q, s)
    return 1e3 * (time.perf_counter() - t) / n


for _r in range(2):
    print(
        "without",
        ms(lambda q, s: plain.top_k(q, 20, s)),
        "with",
        ms(lambda q, s: w.top_k(q, 20, s)),
        "side",
        ms(lambda q, s: w._side_index.search(q.reshape(1, -1), 20)),
        "base",
        ms(lambda q, s: rec.index.search(q, 20 + s.size)),
    )
# hnsw
for M in (16, 32):
    h = faiss.IndexHNSWFlat(64, M, faiss.METRIC_INNER_PRODUCT)
    h.hnsw.efConstruction = 100
    t = time.perf_counter()
    h.add(np.ascontiguousarray(w.new_vectors))
    print("hnsw build M", M, time.perf_counter() - t)
    for ef in (32, 64, 128):
        p = faiss.SearchParametersHNSW(efSearch=ef)
        t1 = ms(lambda q, s, h=h, p=p: h.search(q.reshape(1, -1), 20, params=p))
        X = np.stack([q for q, _ in qs])
        _, ex = w._side_index.search(X, 20)
        _, ap = h.search(X, 20, params=p)
        rec20 = np.mean([len(set(a) & set(b)) / 20 for a, b in zip(ex, ap, strict=False)])
        print(" ef", ef, "ms", round(t1, 4), "recall@20", round(rec20, 4))
cProfile.run("for q,s in qs: w.top_k(q,20,s)", str(root / "p.out"))
pstats.Stats(str(root / "p.out")).sort_stats("tottime").print_stats(12)
