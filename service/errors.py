"""Domain errors and the one place that maps them to HTTP responses."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response


class ServiceError(Exception):
    """Base class: ``status_code`` and a message that says what went wrong and what was expected."""

    status_code = 500

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        return {"detail": self.message}

    def headers(self) -> dict[str, str] | None:
        return None


class ModelNotReadyError(ServiceError):
    status_code = 503


class StoreUnavailableError(ServiceError):
    status_code = 503


class RetrainNotConfiguredError(ServiceError):
    status_code = 503


class RetrainDisabledError(ServiceError):
    status_code = 403


class UnauthorizedError(ServiceError):
    status_code = 401

    def headers(self) -> dict[str, str] | None:
        return {"WWW-Authenticate": "Bearer"}


class JobNotFoundError(ServiceError):
    status_code = 404


class ItemNotFoundError(ServiceError):
    status_code = 404


class RetrainConflictError(ServiceError):
    status_code = 409

    def __init__(self, message: str, running_job_id: str | None) -> None:
        super().__init__(message)
        self.running_job_id = running_job_id

    def body(self) -> dict[str, Any]:
        return {"detail": self.message, "running_job_id": self.running_job_id}


# Entries in FastAPI's validation format, so that every 422 has one shape; a route collects all
# of them and raises ``RequestValidationError(entries)`` once.


def unknown_items(field: str, ids: Sequence[str]) -> dict[str, Any]:
    return {
        "type": "unknown_item",
        "loc": ("body", field),
        "msg": f"unknown item ids (not in the serving model's catalogue): {list(ids)}",
        "input": list(ids),
    }


def limit_exceeded(field: str, value: Any, limit: int, what: str) -> dict[str, Any]:
    return {
        "type": "limit_exceeded",
        "loc": ("body", field),
        "msg": f"{what} must be at most {limit}",
        "input": value,
        "ctx": {"limit": limit},
    }


async def _service_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers())


_INT64 = 2**63


def serialisable(value: Any) -> Any:
    """``value`` made safe for orjson, whatever a request put in it: non-finite floats, integers
    beyond 64 bits, strings with lone surrogates and bytes become strings; tuples become lists."""
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return value.encode("utf-8", "backslashreplace").decode()
        return value
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return value if -_INT64 <= value < _INT64 else str(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else repr(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "backslashreplace")
    if isinstance(value, dict):
        return {str(serialisable(k)): serialisable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [serialisable(v) for v in value]
    return serialisable(str(value))


async def _validation_error_handler(request: Request, exc: Exception) -> Response:
    """FastAPI's 422 body (``{"detail": [entries]}``), but always serialisable: its default handler
    echoes each entry's ``input`` and fails (a 500) on what it cannot encode."""
    assert isinstance(exc, RequestValidationError)
    entries = []
    for error in exc.errors():
        entry = {k: v for k, v in error.items() if k != "url"}
        ctx = entry.get("ctx")
        if isinstance(ctx, dict):  # pydantic puts the raised exception object itself in ctx["error"]
            entry["ctx"] = {k: (str(v) if isinstance(v, Exception) else v) for k, v in ctx.items()}
        entries.append(serialisable(entry))
    return Response(orjson.dumps({"detail": entries}), status_code=422, media_type="application/json")


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_error_handler)
