"""More unavailable items than the over-fetch cap (review fix): they are a precomputed mask applied
to the index candidates, not exclude entries, so answers stay on the FAISS fast path and are right."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import svc_artifacts
from fastapi.testclient import TestClient

from artifact import contract

TOKEN = "availability-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
N_ITEMS, N_UNAVAILABLE, CAP = 3000, 2500, 2048


def test_more_unavailable_items_than_the_cap_stay_on_the_fast_path_and_are_exact(
    make_client: Callable[..., TestClient], store_root: Path
) -> None:
    path = svc_artifacts.write(store_root, n_items=N_ITEMS, seed=5)
    client = make_client(admin_token=TOKEN, overfetch_cap=CAP)
    art = contract.load_artifact(path)
    a = art.arrays
    rng = np.random.default_rng(6)
    gone = np.sort(rng.choice(N_ITEMS, size=N_UNAVAILABLE, replace=False))
    for chunk in np.array_split(gone, 3):  # PUT /items takes at most 1000 per batch
        body = {"items": [{"item_id": a.item_ids[i], "available": False} for i in chunk]}
        r = client.put("/items", json=body, headers=AUTH)
        assert r.status_code == 200, r.text
    unavailable = np.zeros(N_ITEMS, dtype=bool)
    unavailable[gone] = True
    rec = client.app.state.mmssl.runtime.manager.current  # type: ignore[attr-defined]
    before = rec.exact_searches

    k = 10
    for u, user in enumerate(a.user_ids[:30]):
        got = client.post("/recommend", json={"user_id": user, "k": k}).json()
        assert got["path"] == "known"
        ids = [it["item_id"] for it in got["items"]]
        # independent reference: h_u . h_i over the available items the user has not seen
        scores = a.item_embeddings.astype(np.float64) @ a.user_embeddings[u].astype(np.float64)
        scores[unavailable] = -np.inf
        scores[art.user_items(u)] = -np.inf
        expected = [a.item_ids[i] for i in np.argsort(-scores, kind="stable")[:k]]
        assert ids == expected, user
    # popularity path (unknown user, no items): the most popular available items
    got = client.post("/recommend", json={"user_id": "nobody", "k": k}).json()
    assert got["path"] == "popularity"
    order = np.argsort(-a.item_popularity, kind="stable")
    assert [it["item_id"] for it in got["items"]] == [a.item_ids[i] for i in order[~unavailable[order]][:k]]
    # item-to-item neighbours: never an unavailable one, still k
    item = a.item_ids[int(np.flatnonzero(~unavailable)[0])]
    sim = client.post(f"/items/{item}/similar", json={"k": k}).json()["items"]
    assert len(sim) == k and not any(unavailable[a.item_ids.index(it["item_id"])] for it in sim)
    assert rec.exact_searches == before  # every answer came from the index search


def test_recommender_mask_equals_brute_force_for_any_share_unavailable(tmp_path: Path) -> None:
    from service.index import IndexConfig, build_index
    from service.recommender import Recommender

    art = contract.load_artifact(svc_artifacts.write(tmp_path, n_items=600, seed=7))
    emb = art.arrays.item_embeddings.astype(np.float64)
    rec = Recommender(
        art, build_index(art.arrays.item_embeddings, IndexConfig(kind="flat")), overfetch_cap=64
    )
    rng = np.random.default_rng(8)
    for trial in range(40):
        mask = rng.random(600) < rng.choice([0.0, 0.2, 0.9, 0.99])
        exclude = rng.choice(600, size=int(rng.integers(0, 20)), replace=False)
        k = int(rng.integers(1, 30))
        query = None if trial % 4 == 0 else rng.normal(size=rec.dim).astype(np.float32)
        labels, _ = rec.top_k(query, k, exclude, mask)
        scores = art.arrays.item_popularity.astype(np.float64) if query is None else emb @ query
        scores[mask] = -np.inf
        scores[exclude] = -np.inf
        n_left = int(np.isfinite(scores).sum())
        assert labels.tolist() == np.argsort(-scores, kind="stable")[: min(k, n_left)].tolist(), trial
