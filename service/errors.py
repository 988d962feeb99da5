"""Domain errors and the one place that maps them to HTTP responses."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse


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


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error_handler)
