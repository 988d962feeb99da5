"""HTTP API in embedded mode (no Redis): paths, exclusions, validation, operations, hot swap."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import svc_artifacts
from conftest import REPO_ROOT
from fastapi.testclient import TestClient

from artifact import contract
from artifact.contract import ArtifactError
from service.logging import JsonFormatter


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


def _eq12(artifact: contract.Artifact, user: int, items: np.ndarray) -> np.ndarray:
    """Independent numpy: h_u = e_hat_u + omega * sum_m normalize(sum_{i in items} fbar_i^m / sqrt(n))."""
    a = artifact.arrays
    side = sum(
        _normalize(f[items].astype(np.float64).sum(0) / np.sqrt(len(items)))
        for f in a.modality_features.values()
    )
    return a.user_id_side[user].astype(np.float64) + artifact.manifest.omega * side


def _ids(response: dict[str, Any]) -> list[str]:
    return [it["item_id"] for it in response["items"]]


def _idx(ids: list[str]) -> list[int]:
    return [int(i[1:]) for i in ids]


def _wait(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


# ------------------------------------------------------------------------------------- paths


def test_known_user_uses_exported_vector_then_cache(client: TestClient, artifact_path: Path) -> None:
    artifact = contract.load_artifact(artifact_path)
    first = client.post("/recommend", json={"user_id": "u7", "k": 10}).json()
    assert first["path"] == "known" and first["cache_hit"] is False
    assert first["user_id"] == "u7"
    assert first["model_version"] == artifact.version
    assert len(first["items"]) == 10 and len(first["recommendation_id"]) == 32
    h_u = artifact.arrays.user_embeddings[7]
    expected = np.array([artifact.arrays.item_embeddings[i] @ h_u for i in _idx(_ids(first))])
    np.testing.assert_allclose([it["score"] for it in first["items"]], expected, rtol=1e-5, atol=1e-5)
    assert expected.tolist() == sorted(expected.tolist(), reverse=True)
    second = client.post("/recommend", json={"user_id": "u7", "k": 10}).json()
    assert second["cache_hit"] is True and second["path"] == "known"
    assert _ids(second) == _ids(first)
    assert second["recommendation_id"] != first["recommendation_id"]


def test_seen_items_never_returned(client: TestClient, artifact_path: Path) -> None:
    artifact = contract.load_artifact(artifact_path)
    n_items = artifact.manifest.n_items
    for u in range(artifact.manifest.n_users):
        train = set(artifact.user_items(u).tolist())
        got = _idx(_ids(client.post("/recommend", json={"user_id": f"u{u}", "k": 100}).json()))
        assert not train & set(got), f"user u{u} got training items"
        assert len(got) == min(100, n_items - len(train))
    # exclude_seen false: asking for the whole catalogue brings the training items back
    train = set(artifact.user_items(3).tolist())
    body = {"user_id": "u3", "k": 100, "exclude_seen": False}
    everything = client.post("/recommend", json=body).json()
    assert train & set(_idx(_ids(everything)))


def test_exclude_items(client: TestClient) -> None:
    top = _ids(client.post("/recommend", json={"user_id": "u2", "k": 5}).json())
    got = _ids(client.post("/recommend", json={"user_id": "u2", "k": 5, "exclude_items": top[:3]}).json())
    assert not set(top[:3]) & set(got)
    assert got[:2] == top[3:5]


def test_recorded_interactions_switch_to_fresh_path(client: TestClient, artifact_path: Path) -> None:
    artifact = contract.load_artifact(artifact_path)
    train = artifact.user_items(4)
    fresh = np.setdiff1d(np.arange(artifact.manifest.n_items), train)[[1, 5, 8]]
    fresh_ids = [f"i{i}" for i in fresh]
    before = client.post("/recommend", json={"user_id": "u4", "k": 100}).json()
    assert before["path"] == "known"

    r = client.post("/interactions", json={"user_id": "u4", "items": fresh_ids})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body.pop("request_id")) == 32  # generated when the client sends none
    assert body == {"user_id": "u4", "recorded": 3, "fresh_count": 3, "model_version": artifact.version}

    after = client.post("/recommend", json={"user_id": "u4", "k": 100}).json()
    assert after["path"] == "fresh" and after["cache_hit"] is False
    got = _idx(_ids(after))
    assert not set(got) & (set(train.tolist()) | set(fresh.tolist()))  # fresh items are seen items too
    vector = _eq12(artifact, 4, np.union1d(train, fresh))
    expected = artifact.arrays.item_embeddings[got].astype(np.float64) @ vector
    np.testing.assert_allclose([it["score"] for it in after["items"]], expected, rtol=1e-4, atol=1e-4)
    # the vector changed: the ranking differs from the exported h_u's
    assert _ids(after) != [i for i in _ids(before) if int(i[1:]) not in set(fresh.tolist())]
    again = client.post("/recommend", json={"user_id": "u4", "k": 100}).json()
    assert again["path"] == "fresh" and again["cache_hit"] is True and _ids(again) == _ids(after)


def test_request_interactions_are_used_but_not_recorded(client: TestClient, artifact_path: Path) -> None:
    artifact = contract.load_artifact(artifact_path)
    train = artifact.user_items(6)
    extra = int(np.setdiff1d(np.arange(artifact.manifest.n_items), train)[0])
    body = {"user_id": "u6", "k": 10, "interactions": [f"i{extra}"]}
    with_fresh = client.post("/recommend", json=body).json()
    assert with_fresh["path"] == "fresh" and f"i{extra}" not in _ids(with_fresh)
    vector = _eq12(artifact, 6, np.union1d(train, [extra]))
    got = _idx(_ids(with_fresh))
    expected = artifact.arrays.item_embeddings[got].astype(np.float64) @ vector
    np.testing.assert_allclose([it["score"] for it in with_fresh["items"]], expected, rtol=1e-4, atol=1e-4)
    assert client.post("/recommend", json={"user_id": "u6"}).json()["path"] == "known"


def _scores_match(response: dict[str, Any], artifact: contract.Artifact, vector: np.ndarray) -> None:
    got = _idx(_ids(response))
    expected = artifact.arrays.item_embeddings[got].astype(np.float64) @ vector
    np.testing.assert_allclose([it["score"] for it in response["items"]], expected, rtol=1e-4, atol=1e-4)


def test_request_interactions_never_read_or_write_the_cached_vector(
    client: TestClient, artifact_path: Path
) -> None:
    """The cache holds the vector of the stored state; a request's own interactions bypass it both ways."""
    artifact = contract.load_artifact(artifact_path)
    train = artifact.user_items(7)
    outside = np.setdiff1d(np.arange(artifact.manifest.n_items), train)
    stored, extra = int(outside[0]), int(outside[5])
    exported = artifact.arrays.user_embeddings[7].astype(np.float64)
    plain = {"user_id": "u7", "k": 8, "exclude_seen": False}

    first = client.post("/recommend", json=plain).json()  # caches the exported h_u
    assert (first["path"], first["cache_hit"]) == ("known", False)
    with_request = client.post("/recommend", json={**plain, "interactions": [f"i{extra}"]}).json()
    assert (with_request["path"], with_request["cache_hit"]) == ("fresh", False)  # not the cached h_u
    _scores_match(with_request, artifact, _eq12(artifact, 7, np.union1d(train, [extra])))
    again = client.post("/recommend", json=plain).json()
    assert (again["path"], again["cache_hit"]) == ("known", True)
    _scores_match(again, artifact, exported)  # the request's vector was not written into the cache

    # the same with stored fresh items: the cache then holds the stored-state vector
    assert client.post("/interactions", json={"user_id": "u7", "items": [f"i{stored}"]}).status_code == 200
    stored_vector = _eq12(artifact, 7, np.union1d(train, [stored]))
    miss = client.post("/recommend", json=plain).json()
    assert (miss["path"], miss["cache_hit"]) == ("fresh", False)
    _scores_match(miss, artifact, stored_vector)
    both = client.post("/recommend", json={**plain, "interactions": [f"i{extra}"]}).json()
    assert (both["path"], both["cache_hit"]) == ("fresh", False)
    _scores_match(both, artifact, _eq12(artifact, 7, np.union1d(train, [stored, extra])))
    hit = client.post("/recommend", json=plain).json()
    assert (hit["path"], hit["cache_hit"]) == ("fresh", True)
    _scores_match(hit, artifact, stored_vector)


def test_unknown_user_fold_in_and_popularity(client: TestClient, artifact_path: Path) -> None:
    artifact = contract.load_artifact(artifact_path)
    a, m = artifact.arrays, artifact.manifest
    popular = client.post("/recommend", json={"user_id": "new-user", "k": 5}).json()
    assert popular["path"] == "popularity" and popular["cache_hit"] is False
    order = np.argsort(-a.item_popularity, kind="stable")[:5]
    assert _ids(popular) == [f"i{i}" for i in order]
    assert [it["score"] for it in popular["items"]] == a.item_popularity[order].astype(float).tolist()

    items = np.array([3, 17, 40])
    client.post("/interactions", json={"user_id": "new-user", "items": [f"i{i}" for i in items]})
    folded = client.post("/recommend", json={"user_id": "new-user", "k": 5}).json()
    assert folded["path"] == "fold_in"
    assert not {3, 17, 40} & set(_idx(_ids(folded)))
    layers = a.item_layer_embeddings.astype(np.float64)
    id_side = sum(layers[layer, items].sum(0) for layer in range(m.n_layers)) / np.sqrt(3) / (m.n_layers + 1)
    side = sum(
        _normalize(f[items].astype(np.float64).sum(0) / np.sqrt(3)) for f in a.modality_features.values()
    )
    vector = id_side + m.omega * side
    got = _idx(_ids(folded))
    expected = a.item_embeddings[got].astype(np.float64) @ vector
    np.testing.assert_allclose([it["score"] for it in folded["items"]], expected, rtol=1e-4, atol=1e-4)
    ranking = [i for i in np.argsort(-(a.item_embeddings.astype(np.float64) @ vector)) if i not in items]
    assert got == ranking[:5]


def test_user_without_training_items_is_known(client: TestClient) -> None:
    response = client.post("/recommend", json={"user_id": "u0", "k": 3}).json()
    assert response["path"] == "known" and len(response["items"]) == 3


def test_fresh_interactions_are_bounded(make_client: Callable[..., TestClient], artifact_path: Path) -> None:
    client = make_client(fresh_max_per_user=4)
    r = client.post("/interactions", json={"user_id": "u9", "items": [f"i{i}" for i in range(6)]})
    assert r.json()["fresh_count"] == 4


# ------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("body", "field", "needle"),
    [
        ({"user_id": 12}, "user_id", "valid string"),
        ({"user_id": ""}, "user_id", "at least 1 character"),
        ({"user_id": "   "}, "user_id", "blank"),
        ({"user_id": "x" * 257}, "user_id", "at most 256"),
        ({}, "user_id", "Field required"),
        ({"user_id": "u1", "k": "5"}, "k", "valid integer"),
        ({"user_id": "u1", "k": 2.5}, "k", "valid integer"),
        ({"user_id": "u1", "k": 0}, "k", "greater than or equal to 1"),
        ({"user_id": "u1", "k": 101}, "k", "at most 100"),
        ({"user_id": "u1", "exclude_seen": "yes"}, "exclude_seen", "valid boolean"),
        ({"user_id": "u1", "interactions": "i1"}, "interactions", "valid list"),
        ({"user_id": "u1", "interactions": [1, 2]}, "interactions", "valid string"),
        ({"user_id": "u1", "surprise": 1}, "surprise", "Extra inputs are not permitted"),
        (
            {"user_id": "u1", "interactions": [f"i{i % 100}" for i in range(1001)]},
            "interactions",
            "at most 1000",
        ),
        ({"user_id": "u1", "exclude_items": ["i1"] * 1001}, "exclude_items", "at most 1000"),
    ],
)
def test_recommend_rejects_bad_bodies(
    client: TestClient, body: dict[str, Any], field: str, needle: str
) -> None:
    r = client.post("/recommend", json=body)
    assert r.status_code == 422, r.text
    errors = r.json()["detail"]
    assert any(e["loc"][-1] == field or field in map(str, e["loc"]) for e in errors), errors
    assert any(needle in e["msg"] for e in errors), errors


def test_unknown_items_are_listed(client: TestClient) -> None:
    body = {"user_id": "u1", "interactions": ["i1", "nope", "i2", "zzz"], "exclude_items": ["gone"]}
    r = client.post("/recommend", json=body)
    assert r.status_code == 422
    errors = {tuple(e["loc"]): e for e in r.json()["detail"]}
    assert errors[("body", "interactions")]["input"] == ["nope", "zzz"]
    assert "nope" in errors[("body", "interactions")]["msg"]
    assert errors[("body", "exclude_items")]["input"] == ["gone"]
    r = client.post("/recommend", json={"user_id": "u1", "k": 500, "interactions": ["nope"]})
    assert {e["loc"][-1] for e in r.json()["detail"]} == {"k", "interactions"}  # every problem at once
    r = client.post("/interactions", json={"user_id": "u1", "items": ["i1", "missing"]})
    assert r.status_code == 422 and r.json()["detail"][0]["input"] == ["missing"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"user_id": "u1", "items": []}, "at least 1 item"),
        ({"user_id": "u1", "items": ["i1"], "timestamps": [1.0, 2.0]}, "one timestamp per item"),
        ({"user_id": "u1", "items": ["i1"], "timestamps": ["now"]}, "valid number"),
        ({"user_id": "u1", "items": ["i1"], "timestamps": [-5]}, "greater than or equal to 0"),
        ({"user_id": "u1", "items": [f"i{i % 100}" for i in range(1001)]}, "at most 1000"),
        ({"user_id": "", "items": ["i1"]}, "at least 1 character"),
    ],
)
def test_interactions_rejects_bad_bodies(client: TestClient, body: dict[str, Any], needle: str) -> None:
    r = client.post("/interactions", json=body)
    assert r.status_code == 422, r.text
    assert any(needle in e["msg"] for e in r.json()["detail"]), r.json()


def test_interactions_with_timestamps(client: TestClient) -> None:
    r = client.post(
        "/interactions", json={"user_id": "u1", "items": ["i1", "i2"], "timestamps": [1700000000, 1.5]}
    )
    assert r.status_code == 200 and r.json()["recorded"] == 2


def test_request_limits_are_inclusive_and_every_field_is_reported(
    make_client: Callable[..., TestClient], artifact_path: Path
) -> None:
    """MAX_K and MAX_ITEMS_PER_REQUEST: a request at the limit passes; one past it gets a 422 per field."""
    client = make_client(max_k=5, default_k=5, max_items_per_request=3)
    at_limit = {
        "user_id": "u1",
        "k": 5,
        "exclude_items": ["i1", "i2", "i3"],
        "interactions": ["i4", "i5", "i6"],
    }
    ok = client.post("/recommend", json=at_limit)
    assert ok.status_code == 200, ok.text
    assert ok.json()["user_id"] == "u1" and len(ok.json()["items"]) == 5

    over = {
        "user_id": "u1",
        "k": 6,
        "exclude_items": ["i1"] * 4,
        "interactions": ["i2", "i3", "i4", "i5", "i6"],
    }
    r = client.post("/recommend", json=over)
    assert r.status_code == 422
    errors = {e["loc"][-1]: e for e in r.json()["detail"]}
    # the first long list does not stop the check: every field is reported
    assert set(errors) == {"k", "exclude_items", "interactions"}
    assert (errors["k"]["input"], errors["k"]["msg"]) == (6, "k must be at most 5")
    assert errors["exclude_items"]["input"] == "<4 items>"
    assert errors["exclude_items"]["msg"] == "exclude_items length (4) must be at most 3"
    assert errors["interactions"]["input"] == "<5 items>"
    assert errors["interactions"]["msg"] == "interactions length (5) must be at most 3"
    assert errors["interactions"]["ctx"] == {"limit": 3}
    # a long list and an unknown id in the next field: both reported
    r = client.post(
        "/recommend", json={"user_id": "u1", "exclude_items": ["i1"] * 4, "interactions": ["nope"]}
    )
    assert {e["loc"][-1]: e["input"] for e in r.json()["detail"]} == {
        "exclude_items": "<4 items>",
        "interactions": ["nope"],
    }


def test_client_timestamps_are_the_ones_stored(
    make_client: Callable[..., TestClient], artifact_path: Path, redis_settings: dict[str, Any]
) -> None:
    """The timestamps a client sends reach the store as sent (not replaced by the server's clock)."""
    import orjson
    import redis

    client = make_client(**redis_settings)
    body = {"user_id": "u1", "items": ["i1", "i2"], "timestamps": [1700000000.0, 1.5]}
    assert client.post("/interactions", json=body).status_code == 200
    conn = redis.Redis.from_url(redis_settings["redis_url"])
    try:
        stored = [orjson.loads(r) for r in conn.lrange(f"{redis_settings['redis_prefix']}:fresh:u1", 0, -1)]
    finally:
        conn.close()
    assert stored == [["i1", 1700000000.0], ["i2", 1.5]]
    # without timestamps the server's clock is used: one value per item, within this test's run
    t0 = time.time()
    assert client.post("/interactions", json={"user_id": "u2", "items": ["i3", "i4"]}).status_code == 200
    conn = redis.Redis.from_url(redis_settings["redis_url"])
    try:
        clock = [orjson.loads(r) for r in conn.lrange(f"{redis_settings['redis_prefix']}:fresh:u2", 0, -1)]
    finally:
        conn.close()
    assert [item for item, _ in clock] == ["i3", "i4"]
    assert all(t0 <= ts <= time.time() for _, ts in clock)


def test_a_resent_request_id_is_applied_once(client: TestClient) -> None:
    """POST /interactions passes the client's request_id to the store: a re-send is a no-op."""
    first = client.post("/interactions", json={"user_id": "u1", "items": ["i1"], "request_id": "r-1"}).json()
    assert (first["request_id"], first["recorded"], first["fresh_count"]) == ("r-1", 1, 1)
    again = client.post("/interactions", json={"user_id": "u1", "items": ["i2"], "request_id": "r-1"}).json()
    assert (again["request_id"], again["recorded"], again["fresh_count"]) == ("r-1", 1, 1)
    other = client.post("/interactions", json={"user_id": "u1", "items": ["i2"], "request_id": "r-2"}).json()
    assert other["fresh_count"] == 2


def test_unknown_interaction_items_are_reported_under_items(client: TestClient) -> None:
    r = client.post("/interactions", json={"user_id": "u1", "items": ["i1", "missing", "i2", "gone"]})
    assert r.status_code == 422
    (error,) = r.json()["detail"]
    assert error["loc"] == ["body", "items"] and error["input"] == ["missing", "gone"]
    assert error["type"] == "unknown_item"


def test_body_size_limit(make_client: Callable[..., TestClient], artifact_path: Path) -> None:
    client = make_client(max_body_bytes=2048)
    big = {"user_id": "u1", "exclude_items": ["i1"] * 600}
    r = client.post("/recommend", json=big)
    assert r.status_code == 413 and "MAX_BODY_BYTES=2048" in r.json()["detail"]

    def chunks() -> Any:  # no Content-Length: the streamed bytes are counted
        yield b'{"user_id": "u1", "exclude_items": ['
        for _ in range(600):
            yield b'"i1",'
        yield b'"i1"]}'

    r = client.post("/recommend", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert client.post("/recommend", json={"user_id": "u1"}).status_code == 200


# ------------------------------------------------------------------------------------- operations


def test_health_ready_model_metrics(client: TestClient, artifact_path: Path) -> None:
    version = contract.load_artifact(artifact_path).version
    assert client.get("/healthz").json() == {"status": "alive"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == version
    assert ready.json()["store"] == "embedded"
    model = client.get("/model").json()
    assert model["model_version"] == version and model["n_items"] == 120
    assert model["index"] == {"type": "flat", "exact": True, "gpu": False, "ntotal": 120}
    client.post("/recommend", json={"user_id": "u1"})
    client.post("/recommend", json={"user_id": "u1"})
    client.post("/recommend", json={"user_id": "stranger"})
    client.post("/recommend", json={"user_id": 5})
    text = client.get("/metrics").text
    assert 'mmssl_http_requests_total{method="POST",route="/recommend",status="200"} 3.0' in text
    assert 'mmssl_http_requests_total{method="POST",route="/recommend",status="422"} 1.0' in text
    assert 'mmssl_recommend_seconds_count{path="known"} 2.0' in text
    assert 'mmssl_recommend_seconds_count{path="popularity"} 1.0' in text
    assert "mmssl_cache_hits_total 1.0" in text and "mmssl_cache_misses_total 1.0" in text
    assert f'mmssl_model_info{{version="{version}"}} 1.0' in text


def test_not_ready_until_a_model_is_promoted(
    make_client: Callable[..., TestClient], store_root: Path
) -> None:
    client = make_client()
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["status"] == "not ready"
    r = client.post("/recommend", json={"user_id": "u1"})
    assert r.status_code == 503 and "no model is loaded" in r.json()["detail"]
    assert client.get("/healthz").status_code == 200
    svc_artifacts.write(store_root, seed=1)
    _wait(lambda: client.get("/readyz").status_code == 200)
    assert client.post("/recommend", json={"user_id": "u1"}).status_code == 200


def test_hot_swap_scopes_cache_by_version(client: TestClient, store_root: Path, artifact_path: Path) -> None:
    old = contract.load_artifact(artifact_path).version
    assert client.post("/recommend", json={"user_id": "u1"}).json()["model_version"] == old
    assert client.post("/recommend", json={"user_id": "u1"}).json()["cache_hit"] is True
    new_path = svc_artifacts.write(store_root, seed=5)
    new = new_path.name
    _wait(lambda: client.get("/model").json()["model_version"] == new)
    r = client.post("/recommend", json={"user_id": "u1"}).json()
    assert r["model_version"] == new and r["cache_hit"] is False  # never the old model's vector
    artifact = contract.load_artifact(new_path)
    h_u = artifact.arrays.user_embeddings[1]
    expected = artifact.arrays.item_embeddings[_idx(_ids(r))] @ h_u
    np.testing.assert_allclose([it["score"] for it in r["items"]], expected, rtol=1e-5, atol=1e-5)
    assert "mmssl_model_swaps_total 2.0" in client.get("/metrics").text


def test_tampered_artifact_refused_old_model_keeps_serving(
    client: TestClient, store_root: Path, artifact_path: Path
) -> None:
    old = artifact_path.name
    bad = svc_artifacts.write(store_root, seed=9, set_current=False)
    target = svc_artifacts.tamper(bad)
    svc_artifacts.point_current(store_root, bad.name)
    _wait(lambda: client.get("/model").json()["last_load_error"] is not None)
    model = client.get("/model").json()
    assert model["model_version"] == old
    shown = f"ARTIFACT_ROOT/{target.relative_to(store_root)}"  # the public answer shows no absolute path
    assert shown in model["last_load_error"] and "sha256 mismatch" in model["last_load_error"]
    for _ in range(3):
        r = client.post("/recommend", json={"user_id": "u2"})
        assert r.status_code == 200 and r.json()["model_version"] == old
    assert "mmssl_model_load_failures_total 1.0" in client.get("/metrics").text
    # a good promotion afterwards is picked up
    good = svc_artifacts.write(store_root, seed=10)
    _wait(lambda: client.get("/model").json()["model_version"] == good.name)


def test_refuses_to_start_on_a_tampered_artifact(make_settings: Callable[..., Any], store_root: Path) -> None:
    from service.app import create_app

    path = svc_artifacts.write(store_root, seed=2)
    target = svc_artifacts.tamper(path, contract.USER_EMB)
    with pytest.raises(ArtifactError) as err, TestClient(create_app(make_settings())):
        pass
    assert str(target) in str(err.value) and "refusing to start" in str(err.value)


def test_shape_or_dtype_mismatch_is_refused(make_settings: Callable[..., Any], store_root: Path) -> None:
    """A file replaced by a consistent-looking array of another dtype: the manifest check names it."""
    from service.app import create_app

    path = svc_artifacts.write(store_root, seed=2)
    target = path / contract.ITEM_POPULARITY
    target.chmod(0o644)
    np.save(target, np.load(target).astype(np.int32))
    with pytest.raises(ArtifactError) as err, TestClient(create_app(make_settings())):
        pass
    assert str(target) in str(err.value)


# ------------------------------------------------------------------------------------- admin


def test_retrain_403_without_configured_token(client: TestClient) -> None:
    r = client.post("/retrain", headers={"Authorization": "Bearer anything"})
    assert r.status_code == 403 and "ADMIN_TOKEN is not set" in r.json()["detail"]
    assert client.get("/retrain/abc").status_code == 403


def test_retrain_401_on_missing_or_wrong_token(
    make_client: Callable[..., TestClient], artifact_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("DEBUG")
    client = make_client(admin_token="s3cret-token", log_level="DEBUG")
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic s3cret-token"}):
        r = client.post("/retrain", headers=headers)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "s3cret-token" not in r.text
        assert client.get("/retrain/abc", headers=headers).status_code == 401
    ok = {"Authorization": "Bearer s3cret-token"}
    r = client.post("/retrain", headers=ok)
    assert r.status_code == 503 and "RETRAIN_DATA_DIR" in r.json()["detail"]  # authorised, not configured
    assert client.get("/retrain/0123abcd", headers=ok).status_code == 404
    formatter = JsonFormatter()
    logged = "\n".join(formatter.format(record) for record in caplog.records)
    assert "starting" in logged and "**********" in logged  # the settings were logged, masked
    assert "s3cret-token" not in logged


def test_admin_cli_list_promote_rollback(store_root: Path) -> None:
    first = svc_artifacts.write(store_root, seed=1, version="20240101T000000Z-aaaa").name
    second = svc_artifacts.write(store_root, seed=2, version="20240102T000000Z-bbbb").name

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "service.admin", *args, "--root", str(store_root)],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
        )

    listing = cli("list")
    assert listing.returncode == 0 and f"* {second}" in listing.stdout and first in listing.stdout
    assert cli("rollback").returncode == 0 and contract.read_current(store_root) == first
    assert cli("promote", "--to", second).returncode == 0 and contract.read_current(store_root) == second
    svc_artifacts.tamper(store_root / first)
    refused = cli("rollback", "--to", first)
    assert refused.returncode == 1 and "sha256 mismatch" in refused.stderr
    assert contract.read_current(store_root) == second


def test_artifacts_and_current_are_readable_by_other_users(store_root: Path, artifact_path: Path) -> None:
    """Replicas and the worker may run as different users on a shared volume."""
    assert artifact_path.stat().st_mode & 0o755 == 0o755
    assert (artifact_path / contract.MANIFEST).stat().st_mode & 0o444 == 0o444
    assert (store_root / contract.CURRENT).stat().st_mode & 0o644 == 0o644


def test_service_never_imports_torch() -> None:
    code = (
        "import service.app, service.store, service.retrain, service.worker, service.admin, "
        "service.jobrunner, sys; assert 'torch' not in sys.modules, 'torch imported'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT)
    assert r.returncode == 0, r.stderr


def test_settings_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, store_root: Path, artifact_path: Path
) -> None:
    from service.app import create_app
    from service.settings import get_settings

    monkeypatch.setenv("ARTIFACT_ROOT", str(store_root))
    monkeypatch.setenv("MAX_K", "7")
    monkeypatch.setenv("DEFAULT_K", "3")
    monkeypatch.setenv("RETRAIN_OVERRIDES", '{"epochs": 2, "embed_dim": 16}')
    monkeypatch.setenv("ADMIN_TOKEN", "")  # empty = unset
    monkeypatch.delenv("REDIS_URL", raising=False)
    get_settings.cache_clear()
    try:
        settings = get_settings()
        assert settings.retrain_overrides == {"epochs": 2, "embed_dim": 16} and settings.admin_token is None
        with TestClient(create_app()) as client:  # no settings given: read at start-up
            assert len(client.post("/recommend", json={"user_id": "u1"}).json()["items"]) == 3
            r = client.post("/recommend", json={"user_id": "u1", "k": 8})
            assert r.status_code == 422 and "k must be at most 7" in r.text
        monkeypatch.setenv("DEFAULT_K", "9")
        get_settings.cache_clear()
        with pytest.raises(ValueError, match="DEFAULT_K"):
            get_settings()
    finally:
        get_settings.cache_clear()
