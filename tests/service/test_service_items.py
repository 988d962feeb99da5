"""Items through the API (embedded mode): PUT /items, GET /items/{id}, similar items, availability.

Every expectation is recomputed here with plain numpy from the arrays planted in the artifact
(``svc_artifacts.write_with_content``): the content mapper for h_i, the projection for fbar^m, Eq. 2
and Eq. 12 for user vectors, brute-force inner products for rankings.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import svc_artifacts
from fastapi.testclient import TestClient

from artifact import contract

TOKEN = "items-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DIMS = svc_artifacts.RAW_DIMS


def _normalize(x: np.ndarray) -> np.ndarray:
    return x / max(float(np.linalg.norm(x)), 1e-12)


def _ids(response: dict[str, Any]) -> list[str]:
    return [it["item_id"] for it in response["items"]]


def _features(rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {m: rng.normal(size=size).astype(np.float32) for m, size in DIMS.items()}


def _body(item_id: str, features: dict[str, np.ndarray] | None, available: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {"item_id": item_id, "available": available}
    if features is not None:
        out["features"] = {m: v.tolist() for m, v in features.items()}
    return out


def _h(features: dict[str, np.ndarray], planted: dict[str, np.ndarray]) -> np.ndarray:
    return svc_artifacts.map_content({m: v[None, :] for m, v in features.items()}, planted)[0]


def _taste_features(target: np.ndarray, planted: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Raw features whose mapped h_i is ``target`` (least squares through the planted mapper)."""
    mapper = planted["mapper"]
    z, *_ = np.linalg.lstsq(mapper[:-1].T.astype(np.float64), target - mapper[-1], rcond=None)
    out, start = {}, 0
    for m, size in DIMS.items():
        stats = planted[f"mapper_input_{m}"]
        out[m] = (z[start : start + size] * stats[1] + stats[0]).astype(np.float32)
        start += size
    return out


@pytest.fixture
def content_artifact(store_root: Path) -> tuple[contract.Artifact, dict[str, np.ndarray]]:
    path, planted = svc_artifacts.write_with_content(store_root, seed=0)
    return contract.load_artifact(path), planted


@pytest.fixture
def admin(make_client: Callable[..., TestClient], content_artifact: Any) -> TestClient:
    return make_client(admin_token=TOKEN, items_max_batch=50)


def _put(client: TestClient, items: list[dict[str, Any]]) -> Any:
    return client.put("/items", json={"items": items}, headers=AUTH)


# ------------------------------------------------------------------------------------- adding


def test_new_item_gets_content_vector_and_is_recommended_by_score(
    admin: TestClient, content_artifact: Any
) -> None:
    artifact, planted = content_artifact
    a = artifact.arrays
    h_u = a.user_embeddings[5].astype(np.float64)
    liked = _taste_features(
        3.0 * h_u / np.linalg.norm(h_u) * np.linalg.norm(a.item_embeddings, axis=1).max(), planted
    )
    disliked = _taste_features(-h_u, planted)
    r = _put(admin, [_body("new-liked", liked), _body("new-disliked", disliked)])
    assert r.status_code == 200, r.text
    assert r.json()["applied"] == 2 and r.json()["items_added_total"] == 2

    info = admin.get("/items/new-liked").json()
    assert info["source"] == "added" and info["available"] is True
    assert info["features"] == DIMS and info["training_interactions"] == 0

    got = admin.post("/recommend", json={"user_id": "u5", "k": 5}).json()
    assert got["items"][0]["item_id"] == "new-liked"  # planted: the user's taste, scored highest
    assert "new-disliked" not in _ids(got)
    assert got["items"][0]["score"] == pytest.approx(float(_h(liked, planted) @ h_u), rel=1e-4)
    # the whole list is the brute-force top 5 over the artifact's items and the added ones
    train = set(artifact.user_items(5).tolist())
    pool = {
        a.item_ids[i]: float(a.item_embeddings[i] @ h_u) for i in range(len(a.item_ids)) if i not in train
    }
    pool["new-liked"] = float(_h(liked, planted) @ h_u)
    pool["new-disliked"] = float(_h(disliked, planted) @ h_u)
    assert _ids(got) == sorted(pool, key=lambda i: -pool[i])[:5]


def test_fresh_interaction_with_new_item_uses_its_projected_features(
    admin: TestClient, content_artifact: Any
) -> None:
    artifact, planted = content_artifact
    a = artifact.arrays
    feats = _features(np.random.default_rng(3))
    assert _put(admin, [_body("fresh-new", feats)]).status_code == 200
    r = admin.post("/interactions", json={"user_id": "u2", "items": ["fresh-new"]})
    assert r.status_code == 200, r.text
    got = admin.post("/recommend", json={"user_id": "u2", "k": 10}).json()
    assert got["path"] == "fresh" and "fresh-new" not in _ids(got)  # seen: excluded

    # Eq. 2 over training items + the new one, its fbar^m from the planted projection; Eq. 12
    train = artifact.user_items(2)
    side = np.zeros(artifact.manifest.dim)
    for m in DIMS:
        new_row = svc_artifacts.project(feats[m][None, :], planted[f"input_{m}"], planted[f"projection_{m}"])
        rows = np.concatenate((a.modality_features[m][train], new_row)).astype(np.float64)
        side += _normalize(rows.sum(0) / np.sqrt(len(rows)))
    vector = a.user_id_side[2] + artifact.manifest.omega * side
    index = {it: i for i, it in enumerate(a.item_ids)}
    expected = [float(a.item_embeddings[index[i]] @ vector) for i in _ids(got)]
    np.testing.assert_allclose([it["score"] for it in got["items"]], expected, rtol=1e-4, atol=1e-4)

    # an unknown user whose only item is the new one: fold-in, modality side from its features only
    fold = admin.post(
        "/recommend", json={"user_id": "stranger", "interactions": ["fresh-new"], "k": 3}
    ).json()
    assert fold["path"] == "fold_in"
    side = sum(
        _normalize(
            svc_artifacts.project(feats[m][None, :], planted[f"input_{m}"], planted[f"projection_{m}"])[0]
        ).astype(np.float64)
        for m in DIMS
    )
    vector = artifact.manifest.omega * side  # the new item has no graph embedding: zero ID side
    top = [float(a.item_embeddings[index[i]] @ vector) for i in _ids(fold)]
    np.testing.assert_allclose([it["score"] for it in fold["items"]], top, rtol=1e-4, atol=1e-4)


def test_similar_items_match_brute_force(admin: TestClient, content_artifact: Any) -> None:
    artifact, planted = content_artifact
    a = artifact.arrays
    rng = np.random.default_rng(7)
    added = {f"sim-{j}": _features(rng) for j in range(6)}
    assert _put(admin, [_body(i, f) for i, f in added.items()]).status_code == 200
    vectors = {it: a.item_embeddings[i].astype(np.float64) for i, it in enumerate(a.item_ids)}
    vectors |= {i: _h(f, planted).astype(np.float64) for i, f in added.items()}

    def expected(query: str, k: int, exclude: set[str]) -> list[str]:
        pool = {i: float(v @ vectors[query]) for i, v in vectors.items() if i != query and i not in exclude}
        return sorted(pool, key=lambda i: -pool[i])[:k]

    for query in ("sim-0", "i3"):
        r = admin.post(f"/items/{query}/similar", json={"k": 8}).json()
        assert _ids(r) == expected(query, 8, set()), query
        np.testing.assert_allclose(
            [it["score"] for it in r["items"]], [vectors[i] @ vectors[query] for i in _ids(r)], rtol=1e-4
        )
    first = _ids(admin.post("/items/sim-0/similar", json={"k": 3}).json())
    r = admin.post("/items/sim-0/similar", json={"k": 3, "exclude_items": first[:2]}).json()
    assert _ids(r) == expected("sim-0", 3, set(first[:2]))
    assert admin.post("/items/nope/similar", json={}).status_code == 404
    bad = admin.post("/items/sim-0/similar", json={"k": 3, "exclude_items": ["nope"]})
    assert bad.status_code == 422 and "nope" in bad.text
    assert admin.get("/items/nope").status_code == 404


def test_new_items_max_slots_bounds_them_in_a_list(
    make_client: Callable[..., TestClient], content_artifact: Any
) -> None:
    artifact, planted = content_artifact
    h_u = artifact.arrays.user_embeddings[5].astype(np.float64)
    scale = 3.0 * np.linalg.norm(artifact.arrays.item_embeddings, axis=1).max() / np.linalg.norm(h_u)
    items = [_body(f"slot-{j}", _taste_features((scale + j) * h_u, planted)) for j in range(4)]
    for slots, expected in ((None, 4), (1, 1), (0, 0)):
        client = make_client(admin_token=TOKEN, new_items_max_slots=slots, new_items_slots=0)
        assert _put(client, items).status_code == 200
        got = _ids(client.post("/recommend", json={"user_id": "u5", "k": 6}).json())
        assert sum(i.startswith("slot-") for i in got) == expected, (slots, got)
        assert len(got) == 6


def test_new_items_slots_reserve_a_place_for_the_best_added_items(
    make_client: Callable[..., TestClient], content_artifact: Any
) -> None:
    """Added items that score below every model item still fill the reserved slots (the best of
    them by score), the rest of the list is the model's top by score, all in score order."""
    artifact, planted = content_artifact
    a = artifact.arrays
    h_u = a.user_embeddings[5].astype(np.float64)
    feats = {f"low-{j}": _taste_features(-(1.0 + j) * h_u, planted) for j in range(3)}
    train = set(artifact.user_items(5).tolist())
    model = {
        a.item_ids[i]: float(a.item_embeddings[i] @ h_u) for i in range(len(a.item_ids)) if i not in train
    }
    added = {i: float(_h(f, planted) @ h_u) for i, f in feats.items()}
    assert max(added.values()) < min(model.values())  # by score alone they never reach a list
    best_added = sorted(added, key=lambda i: -added[i])
    for slots, k in ((0, 6), (1, 6), (2, 6), (5, 6), (2, 1)):
        client = make_client(admin_token=TOKEN, new_items_slots=slots)
        assert _put(client, [_body(i, f) for i, f in feats.items()]).status_code == 200
        view = client.app.state.mmssl.runtime.catalogue.require()  # type: ignore[attr-defined]
        counting = svc_artifacts.CountingSearch(view._side_index)
        view.__dict__["_side_index"] = counting
        combined = svc_artifacts.CountingSearch(view.space.index.index)
        view.space.index.index = combined
        got = client.post("/recommend", json={"user_id": "u5", "k": k}).json()
        # a known user's list is the model's index searched, merged with their row of the view's
        # per-user table: neither the added items' index nor the combined one is searched
        assert counting.calls == combined.calls == 0 and view.user_table is not None
        n = min(slots, len(feats), k)
        pool = {i: model[i] for i in sorted(model, key=lambda i: -model[i])[: k - n]}
        pool |= {i: added[i] for i in best_added[:n]}
        assert _ids(got) == sorted(pool, key=lambda i: -pool[i]), (slots, k)
        np.testing.assert_allclose(
            [it["score"] for it in got["items"]], sorted(pool.values())[::-1], rtol=1e-4
        )
        # the popularity path too: added items have no popularity, the first added ones fill the slots
        pop = _ids(client.post("/recommend", json={"user_id": "nobody", "k": k}).json())
        assert [i for i in pop if i.startswith("low-")] == list(feats)[:n]
        # similar items are neighbours by score only: no reserved slots there
        sim = _ids(client.post(f"/items/{a.item_ids[0]}/similar", json={"k": 3}).json())
        vec = a.item_embeddings.astype(np.float64)
        sims = {a.item_ids[i]: float(vec[i] @ vec[0]) for i in range(1, len(a.item_ids))}
        sims |= {i: float(_h(f, planted) @ vec[0]) for i, f in feats.items()}
        assert sim == sorted(sims, key=lambda i: -sims[i])[:3]


def test_new_items_slots_setting_is_read_and_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    from service.settings import Settings

    assert Settings().new_items_slots == 1  # the shipped default
    monkeypatch.setenv("NEW_ITEMS_SLOTS", "3")
    assert Settings().new_items_slots == 3
    monkeypatch.setenv("NEW_ITEMS_MAX_SLOTS", "2")
    with pytest.raises(ValueError, match=r"NEW_ITEMS_SLOTS \(3\) is larger than NEW_ITEMS_MAX_SLOTS \(2\)"):
        Settings()
    monkeypatch.setenv("NEW_ITEMS_SLOTS", "-1")
    with pytest.raises(ValueError, match="new_items_slots"):
        Settings()


# ------------------------------------------------------------------------------------- availability


def test_unavailable_items_never_come_back(admin: TestClient, content_artifact: Any) -> None:
    artifact, planted = content_artifact
    a = artifact.arrays
    n_users = artifact.manifest.n_users
    rng = np.random.default_rng(11)
    assert _put(admin, [_body(f"av-{j}", _features(rng)) for j in range(5)]).status_code == 200
    # the most popular items and those the users are recommended first, plus two added ones
    popular = admin.post("/recommend", json={"user_id": "nobody", "k": 5}).json()
    assert popular["path"] == "popularity"
    tops = {
        _ids(admin.post("/recommend", json={"user_id": f"u{u}", "k": 3}).json())[0] for u in range(n_users)
    }
    gone = (tops | set(_ids(popular)) | {"av-0", "av-3"}) - {"av-1"}
    r = _put(admin, [{"item_id": i, "available": False} for i in sorted(gone)])
    assert r.status_code == 200, r.text
    assert admin.get("/items/av-0").json()["available"] is False
    assert admin.get(f"/items/{a.item_ids[0]}").json()["available"] is (a.item_ids[0] not in gone)

    def returned() -> set[str]:
        out: set[str] = set()
        for u in range(n_users):
            out |= set(_ids(admin.post("/recommend", json={"user_id": f"u{u}", "k": 100}).json()))
        out |= set(_ids(admin.post("/recommend", json={"user_id": "nobody", "k": 100}).json()))
        out |= set(
            _ids(
                admin.post(
                    "/recommend", json={"user_id": "x", "interactions": ["i1", "av-1"], "k": 100}
                ).json()
            )
        )
        for query in ("i1", "av-1", "av-0"):
            out |= set(_ids(admin.post(f"/items/{query}/similar", json={"k": 100}).json()))
        return out

    seen = returned()
    assert not seen & gone, sorted(seen & gone)
    assert {"av-1", "av-2", "av-4"} <= seen
    # available again: they come back
    assert _put(admin, [{"item_id": i, "available": True} for i in sorted(gone)]).status_code == 200
    assert gone <= returned()


# ------------------------------------------------------------------------------------- bad batches


def _raw_put(client: TestClient, text: str) -> Any:
    return client.put("/items", content=text, headers={**AUTH, "Content-Type": "application/json"})


def _good(item_id: str = "good-1") -> dict[str, Any]:
    return _body(item_id, _features(np.random.default_rng(5)))


BAD_ENTRIES: list[tuple[str, Callable[[], dict[str, Any]], str]] = [
    (
        "unknown modality",
        lambda: {**_good("bad"), "features": {**_good()["features"], "smell": [1.0]}},
        "smell",
    ),
    (
        "wrong dimension",
        lambda: {**_good("bad"), "features": {**_good()["features"], "image": [0.5] * 9}},
        "image",
    ),
    ("missing modality", lambda: {"item_id": "bad", "features": {"image": [0.0] * DIMS["image"]}}, "audio"),
    ("new item without features", lambda: {"item_id": "bad", "available": True}, "features"),
    ("id too long", lambda: _good("x" * 257), "item_id"),
    (
        "float32 overflow",
        lambda: {**_good("bad"), "features": {**_good()["features"], "audio": [1e39] * 7}},
        "audio",
    ),
]


@pytest.mark.parametrize(("case", "entry", "field"), BAD_ENTRIES, ids=[c[0] for c in BAD_ENTRIES])
def test_a_batch_with_one_bad_item_changes_nothing(
    admin: TestClient, case: str, entry: Callable[[], dict[str, Any]], field: str
) -> None:
    bad = entry()
    r = _put(admin, [_good("good-1"), bad, _good("good-2")])
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert len(detail) >= 1
    assert any(d["loc"][:3] == ["body", "items", 1] and field in json.dumps(d) for d in detail), detail
    if case != "id too long":
        assert any("'bad'" in d["msg"] for d in detail), detail  # names the item
    for item_id in ("good-1", "good-2", "bad"):
        assert admin.get(f"/items/{item_id}").status_code == 404
    assert not any(
        i.startswith("good") for i in _ids(admin.post("/recommend", json={"user_id": "u1", "k": 100}).json())
    )


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_features_are_refused_naming_item_and_field(admin: TestClient, token: str) -> None:
    good = _good("good-1")
    audio = ", ".join(["0.5"] * 6 + [token])
    image = json.dumps(good["features"]["image"])
    text = (
        '{"items": ['
        + json.dumps(good)
        + ', {"item_id": "nan-item", "features": {"image": '
        + image
        + ', "audio": ['
        + audio
        + "]}}]}"
    )
    r = _raw_put(admin, text)
    assert r.status_code in (400, 422), r.text  # a parser that refuses NaN in JSON outright is fine too
    if r.status_code == 422:
        assert "nan-item" in r.text and "audio" in r.text
    assert admin.get("/items/good-1").status_code == 404


def test_features_that_overflow_the_content_path_are_refused(admin: TestClient) -> None:
    """Finite float32 features near 3e38 overflow the content path's products: the item would get
    a non-finite vector. One 422 naming the item, and nothing of the batch applied."""
    good = _good("good-2")
    huge = {m: [3.0e38] * len(v) for m, v in good["features"].items()}
    r = _put(admin, [good, {"item_id": "huge-item", "features": huge}])
    assert r.status_code == 422, r.text
    assert "huge-item" in r.text and "overflow" in r.text and "good-2" not in r.text
    assert admin.get("/items/good-2").status_code == 404
    assert admin.get("/items/huge-item").status_code == 404


def test_features_sent_again_unchanged_leave_the_view_its_vectors_table_and_cache_scope(
    admin: TestClient,
) -> None:
    """A PUT that repeats an added item's features value for value changes nothing that depends
    on them: no re-projection, the same index and per-user table, the same cache scope. Other
    values do, and availability alone never does."""
    rng = np.random.default_rng(4)
    feats = {f"same-{j}": _features(rng) for j in range(3)}
    assert _put(admin, [_body(i, f) for i, f in feats.items()]).status_code == 200
    catalogue = admin.app.state.mmssl.runtime.catalogue  # type: ignore[attr-defined]
    first = catalogue.require()
    again = [_body(i, {m: v.copy() for m, v in f.items()}) for i, f in feats.items()]
    again[1]["available"] = False
    assert _put(admin, again).status_code == 200
    second = catalogue.require()
    assert second is not first and second.records["same-0"].features is first.records["same-0"].features
    assert second.space is first.space and second.user_table is first.user_table
    assert second.cache_version == first.cache_version and not second.is_available(second.n_base + 1)
    other = dict(feats["same-2"]) | {m: feats["same-2"][m] + 1.0 for m in list(DIMS)[:1]}
    assert _put(admin, [_body("same-2", other)]).status_code == 200
    third = catalogue.require()
    assert third.space is not second.space and third.cache_version != second.cache_version
    assert not np.array_equal(third.new_vectors[2], second.new_vectors[2])


def test_empty_batch_duplicates_and_batch_limit(admin: TestClient) -> None:
    r = _put(admin, [])
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "items"]
    r = _put(admin, [_good("dup"), _good("dup")])
    assert r.status_code == 422 and "more than once" in r.text
    assert admin.get("/items/dup").status_code == 404
    r = _put(admin, [_good(f"many-{j}") for j in range(51)])  # items_max_batch=50 in the fixture
    assert r.status_code == 422 and "at most 50" in r.text
    assert admin.get("/items/many-0").status_code == 404
    assert _put(admin, [_good(f"many-{j}") for j in range(50)]).status_code == 200


def test_put_items_needs_the_admin_token(
    make_client: Callable[..., TestClient], content_artifact: Any
) -> None:
    no_token = make_client()
    assert no_token.put("/items", json={"items": [_good()]}).status_code == 403
    client = make_client(admin_token=TOKEN)
    assert client.put("/items", json={"items": [_good()]}).status_code == 401
    wrong = {"Authorization": "Bearer wrong"}
    assert client.put("/items", json={"items": [_good()]}, headers=wrong).status_code == 401
    assert client.get("/items/good-1").status_code == 404


def test_model_without_content_path_refuses_features_but_takes_availability(
    make_client: Callable[..., TestClient], artifact_path: Path
) -> None:
    client = make_client(admin_token=TOKEN)
    r = _put(client, [_good("new")])
    assert r.status_code == 422 and "content path" in r.text
    assert _put(client, [{"item_id": "i4", "available": False}]).status_code == 200
    assert client.get("/items/i4").json() | {"last_change": None} == {
        "item_id": "i4",
        "model_version": artifact_path.name,
        "source": "model",
        "available": False,
        "training_interactions": int(contract.load_artifact(artifact_path).arrays.item_popularity[4]),
        "features": None,
        "last_change": None,
    }
    everything = set(_ids(client.post("/recommend", json={"user_id": "nobody", "k": 100}).json()))
    assert "i4" not in everything and len(everything) == 100


# ------------------------------------------------------------------------------------- concurrency, swaps


def test_searches_during_updates_all_succeed_and_never_see_half_a_batch(
    admin: TestClient, content_artifact: Any
) -> None:
    """Each batch plants 5 items above everything for u5, each batch above the one before: every
    answer's top 5 is exactly one whole batch (or no added item before the first)."""
    artifact, planted = content_artifact
    h_u = artifact.arrays.user_embeddings[5].astype(np.float64)
    base = 3.0 * np.linalg.norm(artifact.arrays.item_embeddings, axis=1).max() / np.linalg.norm(h_u)
    batches = [
        [_body(f"b{b}-{j}", _taste_features((base * (1 + b) + 0.01 * j) * h_u, planted)) for j in range(5)]
        for b in range(12)
    ]
    stop = threading.Event()
    failures: list[str] = []
    answers: list[list[str]] = []

    def hammer() -> None:
        while not stop.is_set():
            for body in ({"user_id": "u5", "k": 5}, {"user_id": "nobody", "k": 5}):
                r = admin.post("/recommend", json=body)
                if r.status_code != 200:
                    failures.append(r.text)
                elif body["user_id"] == "u5":
                    answers.append(_ids(r.json()))
            r = admin.post("/items/i1/similar", json={"k": 5})
            if r.status_code != 200:
                failures.append(r.text)

    threads = [threading.Thread(target=hammer) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for batch in batches:
            assert _put(admin, batch).status_code == 200
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures, failures[:3]
    assert len(answers) > 10
    for ids in answers:
        added = [i for i in ids if i.startswith("b")]
        if added:
            assert len(added) == 5 and len({i.split("-")[0] for i in added}) == 1, ids
    final = _ids(admin.post("/recommend", json={"user_id": "u5", "k": 5}).json())
    assert sorted(final) == [f"b11-{j}" for j in range(5)]


def test_overlay_reapplied_on_a_new_model(admin: TestClient, content_artifact: Any, store_root: Path) -> None:
    artifact, planted = content_artifact
    rng = np.random.default_rng(21)
    keep = _features(rng)
    later = _features(rng)
    assert _put(admin, [_body("stays-new", keep), _body("gets-trained", later)]).status_code == 200
    assert _put(admin, [{"item_id": "i9", "available": False}]).status_code == 200
    # a retrained model that contains "gets-trained" (as its last item) but not "stays-new"
    ids = [f"i{i}" for i in range(artifact.manifest.n_items - 1)] + ["gets-trained"]
    path, planted2 = svc_artifacts.write_with_content(store_root, seed=3, item_ids=ids)
    new = contract.load_artifact(path)
    deadline = time.monotonic() + 10
    while admin.get("/model").json()["model_version"] != new.version:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    info = admin.get("/items/stays-new").json()
    assert info["source"] == "added" and info["model_version"] == new.version
    assert admin.get("/items/gets-trained").json()["source"] == "model"
    assert admin.get("/items/i9").json()["available"] is False
    # the added item's vector now comes from the new model's content path
    h_new = _h(keep, planted2)
    r = admin.post("/items/stays-new/similar", json={"k": 1}).json()
    top = r["items"][0]["item_id"]
    index = {it: i for i, it in enumerate(new.arrays.item_ids)}
    assert r["items"][0]["score"] == pytest.approx(
        float(new.arrays.item_embeddings[index[top]] @ h_new), rel=1e-4
    )
    assert "i9" not in _ids(admin.post("/recommend", json={"user_id": "nobody", "k": 100}).json())


def test_retrain_job_spec_carries_the_added_items(
    make_client: Callable[..., TestClient],
    content_artifact: Any,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from conftest import HERE

    monkeypatch.setenv("PYTHONPATH", str(HERE))
    client = make_client(admin_token=TOKEN, retrain_data_dir=tmp_path)
    rng = np.random.default_rng(2)
    feats = [_features(rng) for _ in range(3)]
    assert _put(client, [_body(f"rt-{j}", f) for j, f in enumerate(feats)]).status_code == 200
    assert (
        _put(
            client, [{"item_id": "rt-1", "available": False}, {"item_id": "i2", "available": False}]
        ).status_code
        == 200
    )
    r = client.post("/retrain", json={"overrides": {"sleep": 0.0}}, headers=AUTH)
    assert r.status_code == 202, r.text
    spec = json.loads(
        (
            Path(client.app.state.mmssl.runtime.settings.jobs_dir) / r.json()["job_id"] / "spec.json"
        ).read_text()
    )
    items = spec["extra_items"]
    assert items["item_ids"] == ["rt-0", "rt-1", "rt-2", "i2"]
    assert items["available"] == [True, False, True, False]
    assert items["has_features"] == [True, True, True, False]
    import base64

    for m, size in DIMS.items():
        entry = items["features"][m]
        assert entry["shape"] == [3, size] and entry["dtype"] == "float32"
        matrix = np.frombuffer(base64.b64decode(entry["base64"]), dtype="<f4").reshape(3, size)
        np.testing.assert_array_equal(matrix, np.stack([f[m] for f in feats]))
    deadline = time.monotonic() + 30
    while client.get(f"/retrain/{r.json()['job_id']}", headers=AUTH).json()["state"] not in (
        "finished",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def test_view_top_k_equals_brute_force_with_unavailable_and_excluded(content_artifact: Any) -> None:
    """CatalogueView.top_k (FAISS over the artifact + the side index, merged) against numpy."""
    from artifact.content import load_content_path
    from service.catalogue import CatalogueView, ItemRecord
    from service.index import IndexConfig, build_index
    from service.recommender import Recommender

    artifact, planted = content_artifact
    rec = Recommender(artifact, build_index(artifact.arrays.item_embeddings, IndexConfig(use_gpu=False)))
    rng = np.random.default_rng(9)
    records = {f"n{j}": ItemRecord(bool(rng.random() > 0.4), _features(rng), "1-0") for j in range(60)}
    records |= {f"i{i}": ItemRecord(False, None, "1-0") for i in rng.choice(120, 30, replace=False)}
    view = CatalogueView.build(rec, load_content_path(artifact), records, "1-0", None)
    vectors = np.concatenate([artifact.arrays.item_embeddings, view.new_vectors]).astype(np.float64)
    available = np.concatenate([view.base_available, view.new_available])
    assert (~available).sum() > 40 and len(view.new_ids) == 60
    for trial in range(40):
        q = rng.normal(size=artifact.manifest.dim).astype(np.float32)
        exclude = rng.choice(view.n_items, size=int(rng.integers(0, 30)), replace=False)
        k = int(rng.integers(1, 60))
        labels, scores = view.top_k(q if trial % 5 else None, k, exclude)
        ok = available.copy()
        ok[exclude] = False
        if trial % 5:
            s = vectors @ q
        else:  # popularity: training counts, added items 0 after every artifact item
            s = np.concatenate([artifact.arrays.item_popularity, np.zeros(60)]).astype(np.float64)
        s[~ok] = -np.inf
        expected = np.sort(s[np.isfinite(s)])[::-1][:k]
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-4)
        assert ok[labels].all() and len(set(labels.tolist())) == len(labels)


def test_retrain_spec_leaves_out_features_the_serving_model_cannot_take(
    make_client: Callable[..., TestClient],
    content_artifact: Any,
    store_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Items PUT under a model with other feature widths must not make every later retrain a 500."""
    from conftest import HERE

    monkeypatch.setenv("PYTHONPATH", str(HERE))
    client = make_client(admin_token=TOKEN, retrain_data_dir=tmp_path)
    rng = np.random.default_rng(4)
    assert _put(client, [_body("old-width", _features(rng))]).status_code == 200
    wider = {m: d + 2 for m, d in DIMS.items()}
    monkeypatch.setattr(svc_artifacts, "RAW_DIMS", wider)  # a model trained on re-encoded features
    path, _ = svc_artifacts.write_with_content(store_root, seed=5)
    deadline = time.monotonic() + 10
    while client.get("/model").json()["model_version"] != path.name:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    new = {m: rng.normal(size=d).astype(np.float32) for m, d in wider.items()}
    assert _put(client, [_body("new-width", new)]).status_code == 200
    r = client.post("/retrain", json={"overrides": {"sleep": 0.0}}, headers=AUTH)
    assert r.status_code == 202, r.text
    spec = json.loads(
        (
            Path(client.app.state.mmssl.runtime.settings.jobs_dir) / r.json()["job_id"] / "spec.json"
        ).read_text()
    )
    items = spec["extra_items"]
    assert items["item_ids"] == ["old-width", "new-width"]
    assert items["has_features"] == [False, True]
    assert {m: e["shape"] for m, e in items["features"].items()} == {m: [1, d] for m, d in wider.items()}


def test_beyond_added_items_exact_max_the_service_still_ranks_added_items_exactly_scored(
    make_client: Callable[..., TestClient], content_artifact: Any
) -> None:
    """ADDED_ITEMS_EXACT_MAX reaches the catalogue: past it, the served index is the pq shortlist;
    an added item made to match a user's taste tops that user's list and its own neighbours, with
    its exact score, and an unavailable one never comes back."""
    artifact, planted = content_artifact
    client = make_client(admin_token=TOKEN, items_max_batch=1000, added_items_exact_max=50)
    rng = np.random.default_rng(5)
    h_u = artifact.arrays.user_embeddings[5].astype(np.float64)
    scale = 3.0 * np.linalg.norm(artifact.arrays.item_embeddings, axis=1).max() / np.linalg.norm(h_u)
    taste = _taste_features(scale * h_u, planted)
    items = [_body(f"bulk-{j}", _features(rng)) for j in range(998)]
    items += [_body("taste", taste), _body("hidden", _taste_features(2 * scale * h_u, planted), False)]
    assert _put(client, items).status_code == 200
    view = client.app.state.mmssl.runtime.catalogue.require()  # type: ignore[attr-defined]
    assert view.space is not None and view.space.index.kind == "pq"
    body = client.post("/recommend", json={"user_id": "u5", "k": 10}).json()
    assert _ids(body)[0] == "taste" and "hidden" not in _ids(body)
    np.testing.assert_allclose(body["items"][0]["score"], _h(taste, planted) @ h_u, rtol=1e-4)
    similar = client.post("/items/taste/similar", json={"k": 5}).json()
    assert "taste" not in _ids(similar) and "hidden" not in _ids(similar) and len(_ids(similar)) == 5
