"""Item ids holding "/" are addressable in GET /items/{id} and POST /items/{id}/similar (review fix),
raw or percent-encoded, in process and through a real uvicorn server."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
import svc_artifacts
from fastapi.testclient import TestClient

from artifact import contract
from benchmarks.serve.procs import ApiServer, api_env

SLASHED = ["a/b", "x/similar", "/lead", "deep/er/path"]


def _write(store_root: Path) -> Path:
    return svc_artifacts.write(store_root, item_ids=SLASHED + [f"i{i}" for i in range(56)], seed=9)


def _similar_reference(path: Path, item: str, k: int) -> list[str]:
    a = contract.load_artifact(path).arrays
    i = a.item_ids.index(item)
    scores = a.item_embeddings.astype(np.float64) @ a.item_embeddings[i].astype(np.float64)
    scores[i] = -np.inf
    return [a.item_ids[j] for j in np.argsort(-scores, kind="stable")[:k]]


def _check(get: Callable[[str], httpx.Response], post: Callable[[str], httpx.Response], path: Path) -> None:
    for item in SLASHED:
        for shown in (item, item.replace("/", "%2F")):
            r = get(f"/items/{shown}")
            assert r.status_code == 200, (shown, r.text)
            assert r.json()["item_id"] == item and r.json()["source"] == "model"
            r = post(f"/items/{shown}/similar")
            assert r.status_code == 200, (shown, r.text)
            got = [it["item_id"] for it in r.json()["items"]]
            assert got == _similar_reference(path, item, 5), shown
    assert get("/items/a/b/c").status_code == 404  # no such item: not a routing error
    assert post("/items/a/b/c/similar").status_code == 404


def test_slashed_item_ids_in_process(make_client: Callable[..., TestClient], store_root: Path) -> None:
    path = _write(store_root)
    client = make_client()
    _check(client.get, lambda p: client.post(p, json={"k": 5}), path)


def test_slashed_item_ids_through_uvicorn(tmp_path: Path, store_root: Path) -> None:
    path = _write(store_root)
    server = ApiServer(api_env(store_root, None), tmp_path / "api.log")
    try:
        server.wait_ready()
        with httpx.Client(base_url=server.url, timeout=5) as http:
            _check(http.get, lambda p: http.post(p, json={"k": 5}), path)
    finally:
        server.stop()


def test_metrics_label_the_item_routes_by_their_template(
    make_client: Callable[..., TestClient], store_root: Path
) -> None:
    _write(store_root)
    client = make_client()
    assert client.get("/items/a%2Fb").status_code == 200
    text = client.get("/metrics").text
    assert 'route="/items/{item_id}",status="200"' in text and ":path" not in text


def test_a_wrong_method_names_the_documented_one_in_allow(
    make_client: Callable[..., TestClient], store_root: Path
) -> None:
    """Both routes match ".../similar" by path; the 405 comes from the similar route (POST), and a
    plain item path advertises GET (schemathesis ST205 checks the Allow header against the spec)."""
    _write(store_root)
    client = make_client()
    for method in ("OPTIONS", "DELETE", "PATCH"):
        r = client.request(method, "/items/i3/similar")
        assert r.status_code == 405 and r.headers["allow"] == "POST", (method, r.headers)
        r = client.request(method, "/items/i3")
        assert r.status_code == 405 and r.headers["allow"] == "GET", (method, r.headers)
    assert client.get("/items/x/similar").json()["item_id"] == "x/similar"  # GET still reads the item
