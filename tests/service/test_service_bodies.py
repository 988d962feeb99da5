"""Request bodies that are not strict JSON: every route answers 4xx with a serialisable body, never 5xx.

Schemathesis only sends strict JSON; these send what ``json.loads`` accepts and JSON does not (NaN,
Infinity, 1e400, lone surrogate escapes), duplicate keys, deep nesting, other encodings, other
content types, and a body that trickles in.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import subprocess_env
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from benchmarks.serve.procs import ApiServer

ADMIN = "body-test-token"
AUTH = {"Authorization": f"Bearer {ADMIN}"}


@pytest.fixture
def app_client(
    artifact_path: Path, make_settings: Callable[..., Any], tmp_path: Path
) -> Iterator[TestClient]:
    from service.app import create_app

    (tmp_path / "data").mkdir()
    s = make_settings(admin_token=ADMIN, retrain_data_dir=tmp_path / "data")
    with TestClient(create_app(s), raise_server_exceptions=False) as client:
        yield client


def _post(
    client: TestClient, path: str, body: bytes, content_type: str | None = "application/json"
) -> httpx.Response:
    headers = dict(AUTH)
    if content_type is not None:
        headers["content-type"] = content_type
    return client.post(path, content=body, headers=headers)


def _body_routes(client: TestClient) -> list[str]:
    """Every POST/PUT/PATCH route of the app (routes added later are covered too)."""
    out = []
    for route in client.app.routes:  # type: ignore[attr-defined]
        methods = getattr(route, "methods", set()) or set()
        if methods & {"POST", "PUT", "PATCH"}:
            out.append(route.path.replace("{", "").replace("}", ""))
    return sorted(out)


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (b'{"user_id": "3", "k": NaN}', ["body", "k"]),
        (b'{"user_id": "3", "k": Infinity}', ["body", "k"]),
        (b'{"user_id": "3", "k": -Infinity}', ["body", "k"]),
        (b'{"user_id": "3", "k": 1e400}', ["body", "k"]),
        (b'{"user_id": "\\ud800"}', ["body", "user_id"]),
        (b'{"user_id": "u1", "exclude_items": ["i1", "\\udfff"]}', ["body", "exclude_items", 1]),
        (b'{"user_id": "u1", "user_id": "u2"}', ["body", "user_id"]),
    ],
)
def test_recommend_non_strict_json_is_422_naming_the_field(
    app_client: TestClient, body: bytes, loc: list[Any]
) -> None:
    r = _post(app_client, "/recommend", body)
    assert r.status_code == 422, r.text
    entries = r.json()["detail"]
    assert [e["loc"] for e in entries] == [loc], entries
    orjson.dumps(entries)  # it came back as JSON: serialisable by construction


def test_interactions_infinite_timestamp_is_422(app_client: TestClient) -> None:
    r = _post(app_client, "/interactions", b'{"user_id":"3","items":["i1"],"timestamps":[Infinity]}')
    assert r.status_code == 422
    assert r.json()["detail"][0]["loc"] == ["body", "timestamps", 0]
    assert "finite" in r.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{bad", "not valid JSON"),
        ('{"user_id": "é"}'.encode("latin-1"), "not UTF-8"),
        ('{"user_id": "u1"}'.encode("utf-16"), "not UTF-8"),
        (b"[" * 100 + b"]" * 100, "nested more than 64"),
        (b"[" * 100_000 + b"]" * 100_000, "nested more than 64"),
        (b'{"user_id": "u1", "k": 1' + b"0" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_invalid_json_is_400_as_documented(app_client: TestClient, body: bytes, needle: str) -> None:
    r = _post(app_client, "/recommend", body)
    assert r.status_code == 400, r.text
    assert needle in r.json()["detail"]
    schema = app_client.get("/openapi.json").json()
    assert "400" in schema["paths"]["/recommend"]["post"]["responses"]


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/octet-stream"])
def test_non_json_content_type_with_undecodable_bytes_is_422(
    app_client: TestClient, content_type: str | None
) -> None:
    r = _post(app_client, "/recommend", b'{"user_id": "\xff\xfe"}', content_type=content_type)
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body"]


def test_huge_integer_echoed_in_a_422_is_serialisable(app_client: TestClient) -> None:
    r = _post(app_client, "/recommend", b'{"user_id": "u1", "k": 123456789012345678901234567890}')
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["loc"] == ["body", "k"]


# ---------------------------------------------------------------------------------- property test

_finite_or_not = st.one_of(
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-1e400", "1e-400"]).map(lambda s: ("raw", s)),
)
_strings = st.one_of(
    st.text(max_size=8),
    st.sampled_from(["\\ud800", "\\udfff", "\\ud83d", "a\\u0000b", "\\uFFFF"]).map(lambda s: ("rawstr", s)),
)


def _dump(value: Any) -> str:
    """JSON text the way a lax client writes it: raw tokens for NaN & co, raw escapes in strings."""
    if isinstance(value, tuple) and value[0] == "raw":
        return str(value[1])
    if isinstance(value, tuple) and value[0] == "rawstr":
        return f'"{value[1]}"'
    if isinstance(value, float):
        return json.dumps(value)  # writes NaN / Infinity as json.dumps does
    if isinstance(value, dict):
        return "{" + ",".join(f"{json.dumps(k)}:{_dump(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_dump(v) for v in value) + "]"
    return json.dumps(value)


_leaf = st.one_of(st.none(), st.booleans(), _finite_or_not, _strings)
_value = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_field = st.sampled_from(
    ["user_id", "k", "items", "timestamps", "exclude_items", "interactions", "force", "overrides", "x"]
)


@st.composite
def _bodies(draw: st.DrawFn) -> bytes:
    fields = draw(st.lists(st.tuples(_field, _value), max_size=5))  # repeated names: duplicate keys
    text = "{" + ",".join(f'"{k}":{_dump(v)}' for k, v in fields) + "}"
    if draw(st.booleans()):
        text = draw(st.sampled_from(["[", '{"a":'])) * draw(st.integers(0, 200)) + text
    encoding = draw(st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "latin-1", "utf-8-sig"]))
    return text.encode(encoding, "surrogatepass" if encoding.startswith("utf") else "replace")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    body=_bodies(),
    content_type=st.sampled_from(["application/json", "application/json; charset=utf-8", None, "text/plain"]),
)
def test_no_body_gets_a_5xx_on_any_route(
    app_client: TestClient, body: bytes, content_type: str | None
) -> None:
    for path in _body_routes(app_client):
        r = _post(app_client, path, body, content_type)
        assert r.status_code < 500, (path, body, r.status_code, r.text)
        if r.status_code >= 400:
            assert isinstance(r.json()["detail"], str | list), r.text  # a JSON body, in one shape


# ---------------------------------------------------------------------------------- read timeout


def test_a_body_that_trickles_in_gets_408(tmp_path: Path, artifact_path: Path, store_root: Path) -> None:
    env = subprocess_env(
        ARTIFACT_ROOT=str(store_root), REDIS_URL="", BODY_READ_TIMEOUT_S="1", FAISS_USE_GPU="false",
        LOG_LEVEL="WARNING",
    )  # fmt: skip
    api = ApiServer(env, tmp_path / "api.log", workers=1)
    try:
        api.wait_ready()
        host, port = api.url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.sendall(
                b"POST /recommend HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100\r\n\r\n{"
            )
            started = time.monotonic()
            stop = threading.Event()

            def trickle() -> None:  # a byte now and then, never the whole body
                while not stop.wait(0.3):
                    try:
                        sock.sendall(b" ")
                    except OSError:
                        return

            t = threading.Thread(target=trickle, daemon=True)
            t.start()
            reply = sock.recv(4096)
            elapsed = time.monotonic() - started
            # headers and body may come in separate segments: read up to the declared length
            head, _, body = reply.partition(b"\r\n\r\n")
            length = int(
                next(
                    v
                    for k, v in (h.split(b": ", 1) for h in head.split(b"\r\n")[1:])
                    if k.lower() == b"content-length"
                )
            )
            while len(body) < length:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                body += chunk
            reply = head + b"\r\n\r\n" + body
            stop.set()
        assert reply.startswith(b"HTTP/1.1 408"), reply
        assert b"BODY_READ_TIMEOUT_S=1s" in reply
        assert 0.9 < elapsed < 10
    finally:
        api.stop()
