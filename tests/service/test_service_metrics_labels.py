"""Requests rejected by the body middleware (strict JSON 400/422, 413) are counted under the route
they were sent to, not "unmatched" (review fix); truly unknown paths still are."""

from __future__ import annotations

from fastapi.testclient import TestClient

JSON = {"content-type": "application/json"}


def _count(client: TestClient, method: str, route: str, status: int) -> float:
    line = f'mmssl_http_requests_total{{method="{method}",route="{route}",status="{status}"}} '
    for row in client.get("/metrics").text.splitlines():
        if row.startswith(line):
            return float(row[len(line) :])
    return 0.0


def test_body_rejections_are_labelled_with_their_route(client: TestClient) -> None:
    assert client.post("/recommend", content=b'{"user_id": "u1", "k": NaN}', headers=JSON).status_code == 422
    assert (
        client.post("/recommend", content=b'{"user_id": "u1", "user_id": "u2"}', headers=JSON).status_code
        == 422
    )
    assert client.post("/interactions", content=b'{"user_id": ', headers=JSON).status_code == 400
    r = client.post("/items/i3/similar", content=b'{"k": Infinity}', headers=JSON)
    assert r.status_code == 422
    big = b'{"user_id": "' + b"x" * 2_000_000 + b'"}'
    assert client.post("/recommend", content=big, headers=JSON).status_code == 413
    assert client.post("/no/such/route", content=b"{}", headers=JSON).status_code == 404

    assert _count(client, "POST", "/recommend", 422) == 2
    assert _count(client, "POST", "/interactions", 400) == 1
    assert _count(client, "POST", "/items/{item_id}/similar", 422) == 1
    assert _count(client, "POST", "/recommend", 413) == 1
    assert _count(client, "POST", "unmatched", 404) == 1
    assert _count(client, "POST", "unmatched", 422) == 0 and _count(client, "POST", "unmatched", 400) == 0
