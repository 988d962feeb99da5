"""The request-body layer every route goes through: a read timeout, then strict JSON.

FastAPI parses JSON bodies with ``json.loads``, which accepts what JSON does not: ``NaN``,
``Infinity``, ``-Infinity``, numbers beyond float range (``1e400`` becomes ``inf``) and lone surrogate
escapes (``"\\ud800"``, a ``str`` that cannot be encoded). Pydantic then echoes such values in a 422
that cannot be serialised, and the client gets a 500. This middleware reads the body once (within
BODY_READ_TIMEOUT_S), and for a JSON content type answers

* 400 when the body is not UTF-8 JSON at all (as the OpenAPI schema says), and
* 422, in FastAPI's validation format with ``loc`` naming the field, for a non-finite number, a
  lone surrogate or a duplicate object key (last-one-wins would hide the first value),

before any route sees it; the body it passes on is the bytes it read, unchanged. It is installed
on the app, not on a route, so routes added later inherit it. ``errors.serialisable`` keeps every
422 body serialisable for whatever else a route may echo (bytes of a non-JSON body, huge integers).
"""

from __future__ import annotations

import asyncio
import email.message
import json
import math
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_DEFAULT_READ_TIMEOUT_S = 30.0
MAX_DEPTH = 64  # nesting levels of arrays and objects; no request body of this API needs more than 3


class BadJson(ValueError):
    """The body is not strict JSON: ``errors`` are 422 entries, or ``errors`` is None for a 400."""

    def __init__(self, message: str, errors: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors


def _duplicate_checked(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(key)
        out[key] = value
    return out


class _Duplicate(Exception):
    def __init__(self, key: str) -> None:
        self.key = key


def _is_json_content_type(value: str | None) -> bool:
    """The content types FastAPI parses as JSON (application/json and application/*+json)."""
    if not value:
        return False
    message = email.message.Message()
    message["content-type"] = value
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def _bad_values(value: Any, loc: tuple[str | int, ...], out: list[dict[str, Any]], entry: str = "") -> None:
    """Walk a parsed body; one 422 entry per non-finite number or invalid string (keys included).

    ``entry`` names the list entry being walked by its ``item_id`` (PUT /items batches), so that the
    message names the item as well as the field."""
    if len(loc) > MAX_DEPTH:
        raise BadJson(f"the body is nested more than {MAX_DEPTH} levels deep")
    if isinstance(value, float):
        if not math.isfinite(value):
            out.append(
                {
                    "type": "finite_number",
                    "loc": loc,
                    "msg": f"{entry}numbers must be finite: NaN, Infinity and numbers beyond float "
                    "range (such as 1e400) are not JSON numbers",
                    "input": repr(value),
                }
            )
    elif isinstance(value, str):
        if not _encodable(value):
            out.append(_bad_string(loc, value, entry))
    elif isinstance(value, dict):
        for key, item in value.items():
            if not _encodable(key):
                out.append(_bad_string((*loc, key.encode("utf-8", "backslashreplace").decode()), key, entry))
                continue
            _bad_values(item, (*loc, key), out, entry)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            item_id = item.get("item_id") if isinstance(item, dict) else None
            named = f"item {item_id!r}: " if isinstance(item_id, str) and _encodable(item_id) else entry
            _bad_values(item, (*loc, i), out, named)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _bad_string(loc: tuple[str | int, ...], value: str, entry: str = "") -> dict[str, Any]:
    return {
        "type": "string_unicode",
        "loc": loc,
        "msg": f"{entry}strings must be valid Unicode: a lone surrogate escape (such as \\ud800) is not",
        "input": value.encode("utf-8", "backslashreplace").decode(),
    }


def check_json(body: bytes) -> None:
    """Raise ``BadJson`` unless ``body`` is strict JSON (what RFC 8259 allows, and no duplicate keys)."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadJson(f"the body is not valid JSON: not UTF-8 at byte {exc.start}") from None
    try:
        parsed = json.loads(text, object_pairs_hook=_duplicate_checked)
    except _Duplicate as dup:
        key = dup.key.encode("utf-8", "backslashreplace").decode()
        raise BadJson(
            "duplicate key",
            [{"type": "duplicate_key", "loc": ("body", key), "msg": f"duplicate key {key!r}", "input": key}],
        ) from None
    except json.JSONDecodeError as exc:
        raise BadJson(
            f"the body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    except RecursionError:
        raise BadJson(f"the body is nested more than {MAX_DEPTH} levels deep") from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise BadJson(f"the body is not valid JSON: {exc}") from None
    errors: list[dict[str, Any]] = []
    _bad_values(parsed, ("body",), errors)
    if errors:
        raise BadJson("invalid values", errors)


class StrictJsonMiddleware:
    """Reads the whole body within the read timeout, rejects non-strict JSON, replays the body.

    ``read_timeout_s`` is a callable so that the setting is read when a request comes (the settings
    are built in the lifespan, after the middleware).
    """

    def __init__(self, app: ASGIApp, read_timeout_s: Any = None) -> None:
        self.app = app
        self.read_timeout_s = read_timeout_s

    def _timeout(self) -> float:
        value = self.read_timeout_s() if callable(self.read_timeout_s) else self.read_timeout_s
        return float(value) if value else _DEFAULT_READ_TIMEOUT_S

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS", "DELETE"):
            await self.app(scope, receive, send)
            return
        timeout = self._timeout()
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(timeout):
                while True:
                    message = await receive()
                    if message["type"] != "http.request":  # the client went away
                        await self.app(scope, _replay(b"", receive, message), send)
                        return
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await _send_json(
                send,
                408,
                {"detail": f"the request body did not arrive within BODY_READ_TIMEOUT_S={timeout:g}s"},
            )
            return
        body = b"".join(chunks)
        content_type = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"content-type"), None)
        if body and _is_json_content_type(content_type):
            try:
                check_json(body)
            except BadJson as bad:
                if bad.errors is None:
                    await _send_json(send, 400, {"detail": bad.message})
                else:
                    await _send_json(send, 422, {"detail": bad.errors})
                return
        await self.app(scope, _replay(body, receive, None), send)


def _replay(body: bytes, receive: Receive, pending: Message | None) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent, pending
        if not sent:
            sent = True
            if pending is not None:
                return pending
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_json(send: Send, status: int, content: Any) -> None:
    from service.errors import serialisable

    payload = orjson.dumps(serialisable(content))
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(payload)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": payload})
