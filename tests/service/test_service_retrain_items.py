"""Items added through PUT /items carried into a retrain with the real trainer (issue 11), end to end
in subprocess mode: after the swap the new model serves them from its own rows, availability kept."""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from test_service_retrain import AUTH, TINY_TRAINER, TOKEN, _poll_job, _wait_version

from artifact import contract

HAS_TORCH = importlib.util.find_spec("torch") is not None


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TORCH, reason="the real trainer needs torch")
def test_added_items_are_trained_and_served_from_the_new_models_rows(
    make_client: Callable[..., TestClient], store_root: Path, tmp_path: Path
) -> None:
    from training.synthetic import write_synthetic

    data_dir = write_synthetic(tmp_path / "data", n_users=80, n_items=60, seed=3)
    client = make_client(
        admin_token=TOKEN,
        retrain_data_dir=data_dir,
        retrain_overrides=TINY_TRAINER,
        retrain_job_func="training.jobs.retrain_job",
        retrain_tolerance=0.05,
    )

    def run(body: dict[str, Any]) -> dict[str, Any]:
        r = client.post("/retrain", json=body, headers=AUTH)
        assert r.status_code == 202, r.text
        status = _poll_job(lambda p: client.get(p, headers=AUTH), r.json()["job_id"], timeout=300)
        assert status["state"] == "finished", status
        return status

    first = run({})
    _wait_version(client.get, first["model_version"])
    rng = np.random.default_rng(0)
    dims = {"image": 32, "audio": 16}  # training.synthetic's default modalities
    items = [
        {
            "item_id": item_id,
            "available": available,
            "features": {m: rng.normal(size=d).tolist() for m, d in dims.items()},
        }
        for item_id, available in (("new-a", True), ("new-b", False))
    ]
    r = client.put("/items", json={"items": items}, headers=AUTH)
    assert r.status_code == 200, r.text
    assert client.get("/items/new-a").json()["source"] == "added"
    fan = "3"
    assert client.post("/interactions", json={"user_id": fan, "items": ["new-a"]}).status_code == 200

    second = run({"force": True})
    assert second["result"]["items"]["added"] == 2
    _wait_version(client.get, second["model_version"])
    art = contract.load_artifact(store_root / second["model_version"])
    a = art.arrays
    index = {item: i for i, item in enumerate(a.item_ids)}
    assert index["new-a"] == 60 and index["new-b"] == 61

    info = client.get("/items/new-a").json()
    assert info["source"] == "model" and info["available"] is True and info["training_interactions"] == 1
    gone = client.get("/items/new-b").json()
    assert gone["source"] == "model" and gone["available"] is False  # the overlay still hides it
    assert art.user_items(a.user_ids.index(fan)).tolist().count(index["new-a"]) == 1

    # scored from the new model's own rows: a known user's score is h_u . h_i of the artifact
    seen_new_a = False
    for u, user in enumerate(a.user_ids[:40]):
        got = client.post("/recommend", json={"user_id": user, "k": 30}).json()
        assert got["model_version"] == second["model_version"]
        ids = [it["item_id"] for it in got["items"]]
        assert "new-b" not in ids
        if got["path"] == "known" and "new-a" in ids:
            seen_new_a = True
            score = next(it["score"] for it in got["items"] if it["item_id"] == "new-a")
            expected = float(a.user_embeddings[u] @ a.item_embeddings[index["new-a"]])
            assert score == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert seen_new_a, "new-a reached no known user's top 30 (60 items + 2): nothing checked"
    similar = client.post("/items/new-a/similar", json={"k": 5}).json()
    ids = [it["item_id"] for it in similar["items"]]
    # neighbours by inner product of the new model's item vectors, new-a's own row included
    raw = a.item_embeddings.astype(np.float64) @ a.item_embeddings[index["new-a"]].astype(np.float64)
    expected_ids = [a.item_ids[i] for i in np.argsort(-raw) if a.item_ids[i] not in ("new-a", "new-b")][:5]
    assert ids == expected_ids
