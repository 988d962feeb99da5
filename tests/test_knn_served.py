"""A model trained with the frozen item kNN graph, exported with its ``knn-calibrated`` content path
and served as deployed (uvicorn, real HTTP): an item added through ``PUT /items`` gets its h_i from
its features through the graph (``ContentPath.item_vectors``, checked against loops and PyTorch in
``tests/test_item_graph.py``), ``/recommend`` and ``/items/{id}/similar`` rank it by those inner
products (brute-force numpy over the exported vectors here), and once unavailable it is gone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from artifact import contract
from artifact.content import load_content_path
from benchmarks.serve.procs import ApiServer, api_env
from tests.conftest import FAST_OVERRIDES
from training.config import load_config
from training.data import load_dataset
from training.export import export_checkpoint
from training.trainer import BEST, train

TOKEN = "knn-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module")
def knn_server(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Any:
    dataset = load_dataset(tiny_data)
    # the full model with the graph: its content path also carries the Eq. 2 projections
    cfg = load_config(None, [*FAST_OVERRIDES, "epochs=2", "item_graph_k=4"])
    tmp = tmp_path_factory.mktemp("knn-served")
    train(dataset, cfg, tmp / "run", progress_bar=False)
    root = tmp / "artifacts"
    path = export_checkpoint(tmp / "run" / BEST, dataset, root, content="knn-calibrated")
    contract.set_current(root, path.name)
    art = contract.load_artifact(path)
    env = api_env(root, None, ADMIN_TOKEN=TOKEN, NEW_ITEMS_SLOTS="0", MAX_K="1000")
    server = ApiServer(env, tmp / "api.log")  # started by its constructor
    try:
        server.wait_ready(timeout=120)
        yield server, dataset, art
    finally:
        server.stop()


def _scores(art: contract.Artifact, h_new: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Inner products of ``query`` with every exported item and then the added one (float64)."""
    vectors = np.vstack([art.arrays.item_embeddings, h_new[None, :]]).astype(np.float64)
    return vectors @ query.astype(np.float64)


def test_an_added_item_is_ranked_by_its_knn_vector_and_leaves_when_unavailable(knn_server: Any) -> None:
    server, dataset, art = knn_server
    cp = load_content_path(art)
    assert cp is not None and cp.knn is not None and art.manifest.content["kind"] == "knn-calibrated"
    ids = list(art.arrays.item_ids)
    n = len(ids)
    # features of a new item: a warm item's, perturbed, so its neighbours are that item's
    rng = np.random.default_rng(3)
    warm = int(np.flatnonzero(dataset.train.item_counts(dataset.n_items) > 0)[0])
    feats = {
        m: (f[warm] + 0.05 * f.std() * rng.standard_normal(f.shape[1])).astype(np.float32)
        for m, f in dataset.features.items()
    }
    h_new = cp.item_vectors({m: v[None, :] for m, v in feats.items()})[0]
    body = {"items": [{"item_id": "new-knn", "features": {m: v.tolist() for m, v in feats.items()}}]}
    with httpx.Client(base_url=server.url, timeout=30) as client:
        put = client.put("/items", json=body, headers=AUTH)
        assert put.status_code == 200, put.text
        assert client.get("/items/new-knn").json()["available"] is True

        # /recommend: the whole catalogue, in the order of brute-force inner products
        user = 0
        seen = set(dataset.train.items_of(user).tolist())
        r = client.post("/recommend", json={"user_id": art.arrays.user_ids[user], "k": n + 1})
        assert r.status_code == 200, r.text
        got = r.json()["items"]
        s = _scores(art, h_new, art.arrays.user_embeddings[user])
        order = [i for i in np.argsort(-s, kind="stable") if i >= n or i not in seen]
        want = [ids[i] if i < n else "new-knn" for i in order]
        assert [it["item_id"] for it in got] == want
        served = {it["item_id"]: it["score"] for it in got}
        assert served["new-knn"] == pytest.approx(float(s[n]), rel=1e-4, abs=1e-5)

        # /items/{id}/similar: neighbours of the new item by h_new . h_j, itself excluded
        r = client.post("/items/new-knn/similar", json={"k": 10})
        assert r.status_code == 200, r.text
        s = _scores(art, h_new, h_new)[:n]
        want = [ids[i] for i in np.argsort(-s, kind="stable")[:10]]
        assert [it["item_id"] for it in r.json()["items"]] == want
        # and an exported item finds the new one among its neighbours where its score says so
        s = _scores(art, h_new, art.arrays.item_embeddings[warm])
        s[warm] = -np.inf
        r = client.post(f"/items/{ids[warm]}/similar", json={"k": 10})
        want = [ids[i] if i < n else "new-knn" for i in np.argsort(-s, kind="stable")[:10]]
        assert [it["item_id"] for it in r.json()["items"]] == want

        # unavailable: never returned, by either endpoint
        off = client.put("/items", json={"items": [{"item_id": "new-knn", "available": False}]}, headers=AUTH)
        assert off.status_code == 200, off.text
        r = client.post("/recommend", json={"user_id": art.arrays.user_ids[user], "k": n + 1})
        assert "new-knn" not in [it["item_id"] for it in r.json()["items"]]
        r = client.post(f"/items/{ids[warm]}/similar", json={"k": n})
        assert "new-knn" not in [it["item_id"] for it in r.json()["items"]]
