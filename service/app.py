"""FastAPI app: ``uvicorn service.app:app``. Routes are thin; resources are built in the lifespan."""

from __future__ import annotations

import asyncio
import gc
import hmac
import logging
import os
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import orjson
from fastapi import Depends, FastAPI, HTTPException, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.body import StrictJsonMiddleware
from service.catalogue import Catalogue
from service.errors import (
    ModelNotReadyError,
    RetrainDisabledError,
    UnauthorizedError,
    install_error_handlers,
)
from service.itemlog import EmbeddedItemLog, ItemLog, RedisItemLog
from service.items import Items
from service.logging import configure_logging, redact_url
from service.metrics import Metrics
from service.model_manager import ModelManager
from service.retrain import Retrainer
from service.schemas import (
    ConflictBody,
    ErrorBody,
    InteractionsRequest,
    InteractionsResponse,
    ItemInfo,
    ItemsRequest,
    ItemsResponse,
    ReadinessBody,
    RecommendRequest,
    RecommendResponse,
    RetrainAccepted,
    RetrainRequest,
    RetrainStatus,
    SimilarRequest,
    SimilarResponse,
)
from service.serving import Serving
from service.settings import Settings, get_settings
from service.store import EmbeddedStore, FailOpenStore, RedisStore, Store

log = logging.getLogger(__name__)


def _json(content: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(content), status_code=status_code, media_type="application/json")


@dataclass
class Runtime:
    """Everything the routes use, built by the lifespan."""

    settings: Settings
    metrics: Metrics
    store: Store
    manager: ModelManager
    retrainer: Retrainer
    serving: Serving
    catalogue: Catalogue
    items: Items


def _is_uvicorn(argv: list[bytes]) -> bool:
    """Whether a command line runs uvicorn: the ``uvicorn`` script or ``python -m uvicorn``."""
    if argv and Path(argv[0].decode(errors="replace")).name == "uvicorn":
        return True
    return any(a == b"-m" and b == b"uvicorn" for a, b in zip(argv, argv[1:], strict=False))


def _server_worker_count() -> int:
    """How many worker processes the server runs: uvicorn's ``--workers N`` (or WEB_CONCURRENCY,
    which uvicorn reads in its place) when this process is a worker spawned by uvicorn's
    multiprocess supervisor, else 1. Any other multiprocessing child (a test, a benchmark, a tool
    that builds the app in a pool) counts 1 whatever WEB_CONCURRENCY says."""
    import multiprocessing

    if multiprocessing.parent_process() is None:
        return 1
    try:
        argv = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return 1
    if not _is_uvicorn(argv):
        return 1
    for i, arg in enumerate(argv):
        value = argv[i + 1] if arg == b"--workers" and i + 1 < len(argv) else None
        if arg.startswith(b"--workers="):
            value = arg.split(b"=", 1)[1]
        if value is not None and value.isdigit():
            return int(value)
    concurrency = os.environ.get("WEB_CONCURRENCY", "")
    return int(concurrency) if concurrency.isdigit() else 1


class EmbeddedStoreMultiWorkerError(RuntimeError):
    pass


def build_store(settings: Settings, metrics: Metrics) -> Store:
    if settings.redis_url is None:
        workers = _server_worker_count()
        if workers > 1:
            # each worker would hold its own store: interactions recorded by one invisible to the
            # others, two retrains at once (one deleting the other's run folder)
            raise EmbeddedStoreMultiWorkerError(
                f"REDIS_URL is not set but the server runs {workers} worker processes: the embedded "
                "store and retrain lock are per process and would split. Set REDIS_URL, or run one worker."
            )
        return EmbeddedStore(
            settings.cache_ttl_s,
            settings.fresh_max_per_user,
            settings.fresh_ttl_s,
            settings.cache_max_entries,
            settings.fresh_max_users,
        )
    redis_store = RedisStore.from_url(
        settings.redis_url,
        prefix=settings.redis_prefix,
        timeout_s=settings.redis_timeout_s,
        cache_ttl_s=settings.cache_ttl_s,
        fresh_max=settings.fresh_max_per_user,
        fresh_ttl_s=settings.fresh_ttl_s,
    )
    return FailOpenStore(redis_store, metrics, retry_s=settings.redis_retry_s)


def build_item_log(settings: Settings) -> ItemLog:
    if settings.redis_url is None:
        return EmbeddedItemLog()
    return RedisItemLog.from_url(settings.redis_url, settings.redis_prefix, settings.items_redis_timeout_s)


class _AppState:
    def __init__(self, settings: Settings | None) -> None:
        self.settings_override = settings
        self.metrics = Metrics()
        self.runtime: Runtime | None = None


# Dependencies are ``async def``: FastAPI runs a plain ``def`` dependency in its thread pool, a
# thread hand-off on every request (a quarter of a warm request's CPU time, measured with py-spy).
async def runtime(request: Request) -> Runtime:
    rt: Runtime | None = request.app.state.mmssl.runtime
    if rt is None:
        raise ModelNotReadyError("the service is starting or stopping")
    return rt


RuntimeDep = Annotated[Runtime, Depends(runtime)]


# Declares the bearer scheme in the OpenAPI schema; the token itself is checked below (auto_error off,
# so that a missing token gets the same 401 as a wrong one).
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <ADMIN_TOKEN>")


async def require_admin(
    rt: RuntimeDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> None:
    token = rt.settings.admin_token
    if token is None:
        raise RetrainDisabledError(
            "admin routes (retrain, PUT /items) are disabled: ADMIN_TOKEN is not set on this server"
        )
    given = credentials.credentials.strip().encode() if credentials is not None else b""
    # constant time: the comparison must not reveal how much of a guessed token was right
    if not hmac.compare_digest(given, token.get_secret_value().encode()):
        raise UnauthorizedError("missing or wrong admin token: send 'Authorization: Bearer <ADMIN_TOKEN>'")


async def require_writer(request: Request, rt: RuntimeDep) -> None:
    """POST /interactions feeds the next retrain (its items join the training data and leave the
    validation split), so who may write can be restricted: with INTERACTIONS_TOKEN set, writes need
    it (or the admin token); unset, anyone who can reach the service may write."""
    token = rt.settings.interactions_token
    if token is None:
        return
    # read by hand, not through the bearer scheme: the OpenAPI schema must not mark the route as
    # always needing a token (it does not, unless INTERACTIONS_TOKEN is set)
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    given = value.strip().encode() if scheme.lower() == "bearer" else b""
    ok = hmac.compare_digest(given, token.get_secret_value().encode())
    admin = rt.settings.admin_token
    if admin is not None:
        ok = hmac.compare_digest(given, admin.get_secret_value().encode()) or ok
    if not ok:
        raise UnauthorizedError(
            "missing or wrong interactions token: send 'Authorization: Bearer <INTERACTIONS_TOKEN>'"
        )


# Every status a route can answer is in the OpenAPI schema (422 is added by FastAPI).
def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    what = {
        400: "The body is not valid UTF-8 JSON.",
        408: "The body did not arrive within BODY_READ_TIMEOUT_S.",
        401: "Missing or wrong token (ADMIN_TOKEN; INTERACTIONS_TOKEN for /interactions when set).",
        403: "Retraining is disabled (no ADMIN_TOKEN on this server).",
        404: "No such retrain job, or no such item.",
        409: "A retrain job is already running.",
        413: "The body is larger than MAX_BODY_BYTES.",
        503: "No model loaded yet, the service is starting or stopping, or Redis is unavailable.",
    }
    return {c: {"model": ConflictBody if c == 409 else ErrorBody, "description": what[c]} for c in codes}


_BODY_ERRORS = _errors(400, 408, 413, 503)
_METRICS_OK: dict[int | str, dict[str, Any]] = {
    200: {"content": {CONTENT_TYPE_LATEST: {}}, "description": "Prometheus text format."}
}
_ADMIN_ERRORS = _errors(401, 403, 503)


# ------------------------------------------------------------------------------------ middleware


_DEFAULT_BODY_LIMIT: int = Settings.model_fields["max_body_bytes"].default


class _BodyTooLarge(HTTPException):
    """An HTTPException so that FastAPI's body parsing passes it on as a 413 (not a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, detail=_too_large(limit))


def _too_large(limit: int) -> str:
    return f"request body larger than MAX_BODY_BYTES={limit}"


class BodyLimitMiddleware:
    """413 for bodies over MAX_BODY_BYTES: by Content-Length up front, and by counting streamed bytes
    (chunked uploads have no Content-Length)."""

    def __init__(self, app: ASGIApp, state: _AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rt = self.state.runtime
        limit = rt.settings.max_body_bytes if rt else _DEFAULT_BODY_LIMIT
        for name, value in scope["headers"]:
            if name == b"content-length":
                if not value.isdigit() or int(value) > limit:
                    await self._reject(scope, send, limit)
                    return
                break
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise _BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            await self._reject(scope, send, limit)

    @staticmethod
    async def _reject(scope: Scope, send: Send, limit: int) -> None:
        body = orjson.dumps({"detail": _too_large(limit)})
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _route_label(scope: Scope) -> str:
    """The route template of a request, for metric labels; "unmatched" if no route takes it.

    A request answered by a middleware before routing (a strict-JSON 400/422, a 408, a 413) has no
    ``scope["route"]``: match it against the app's routes here, so it is counted under the route it
    was sent to (only those answers pay for the lookup).
    """
    route = scope.get("route")
    if route is None:
        app = scope.get("app")
        for candidate in getattr(getattr(app, "router", None), "routes", ()):
            match, _ = candidate.matches(scope)
            if match == Match.FULL:
                route = candidate
                break
    # path_format: the template without converters ("/items/{item_id}", not "{item_id:path}")
    return getattr(route, "path_format", None) or getattr(route, "path", None) or "unmatched"


class MetricsMiddleware:
    """Request count and latency per route template (not per raw path: ids would explode labels)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            label = _route_label(scope)
            method = scope["method"]
            self.metrics.requests.labels(label, method, str(status)).inc()
            self.metrics.latency.labels(label, method).observe(time.perf_counter() - started)


# ------------------------------------------------------------------------------------ app


SHUTDOWN_STEP_S = 3.0  # longest wait for one step of the lifespan's shutdown


async def _stop_step(name: str, step: Coroutine[Any, Any, None], timeout_s: float) -> None:
    """Run one shutdown step for at most ``timeout_s``; past it, cancel it without waiting for the
    cancellation (``asyncio.wait_for`` would wait) and go on, with a warning naming the step."""
    task = asyncio.ensure_future(step)
    done, _ = await asyncio.wait({task}, timeout=timeout_s)
    if not done:
        task.cancel()
        log.warning(
            "shutdown step did not finish in time; going on", extra={"step": name, "timeout_s": timeout_s}
        )
        return
    if not task.cancelled() and task.exception() is not None:
        log.error("shutdown step failed", extra={"step": name, "error": repr(task.exception())})


def create_app(settings: Settings | None = None) -> FastAPI:
    """``settings`` None: read them with ``get_settings()`` at start-up (not at import)."""
    state = _AppState(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        s = state.settings_override or get_settings()
        configure_logging(s.log_level)
        log.info(
            "starting",
            extra={"settings": {**s.model_dump(mode="json"), "redis_url": redact_url(s.redis_url)}},
        )
        metrics = state.metrics
        store = build_store(s, metrics)
        manager = ModelManager(s, metrics)
        catalogue = Catalogue(s, manager, metrics, build_item_log(s))
        try:
            await manager.start()
            await catalogue.start()  # replays the item log
        except BaseException:
            await catalogue.stop()
            await store.close()
            raise
        retrainer = Retrainer(s, store, manager, metrics, catalogue)
        serving = Serving(s, catalogue, store, metrics)
        state.runtime = Runtime(
            s, metrics, store, manager, retrainer, serving, catalogue, Items(s, catalogue)
        )
        # What exists now (modules, FastAPI's and pydantic's objects, the model) lives as long as the
        # process: take it out of the cyclic GC's walks. A full collection over those ~100k objects
        # stalled every request of the worker for 50-80 ms every few thousand requests (5-7 ms after).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            state.runtime = None
            # each step bounded: a step that never finishes must not keep the process from exiting
            # (uvicorn waits for the lifespan without a limit; the orchestrator would SIGKILL it)
            await _stop_step("retrainer", retrainer.close(), 15.0)  # it gives a job 10 s to end
            await _stop_step("catalogue", catalogue.stop(), SHUTDOWN_STEP_S)
            await _stop_step("model manager", manager.stop(), SHUTDOWN_STEP_S)
            await _stop_step("store", store.close(), SHUTDOWN_STEP_S)
            log.info("stopped")

    app = FastAPI(title="MMSSL recommendation service", version="1.0", lifespan=lifespan)
    app.state.mmssl = state
    install_error_handlers(app)

    def read_timeout() -> float | None:
        rt = state.runtime
        return rt.settings.body_read_timeout_s if rt else None

    # innermost: it reads the body through the size limit below it, and every route is behind it
    app.add_middleware(StrictJsonMiddleware, read_timeout_s=read_timeout)
    app.add_middleware(BodyLimitMiddleware, state=state)
    app.add_middleware(MetricsMiddleware, metrics=state.metrics)

    @app.post("/recommend", response_model=RecommendResponse, responses=_BODY_ERRORS)
    async def recommend(body: RecommendRequest, rt: RuntimeDep) -> Response:
        started = time.perf_counter()
        result = await rt.serving.recommend(body)
        rt.metrics.recommend_latency.labels(result["path"]).observe(time.perf_counter() - started)
        return _json(result)

    @app.post(
        "/interactions",
        response_model=InteractionsResponse,
        dependencies=[Depends(require_writer)],
        responses=_BODY_ERRORS | _errors(401),
    )
    async def interactions(body: InteractionsRequest, rt: RuntimeDep) -> Response:
        return _json(await rt.serving.record_interactions(body))

    @app.post(
        "/retrain",
        status_code=202,
        response_model=RetrainAccepted,
        dependencies=[Depends(require_admin)],
        responses=_BODY_ERRORS | _ADMIN_ERRORS | _errors(409),
    )
    async def retrain(rt: RuntimeDep, body: RetrainRequest | None = None) -> Response:
        body = body or RetrainRequest()
        return _json(await rt.retrainer.submit(body.force, body.overrides), status_code=202)

    @app.get(
        "/retrain/{job_id}",
        response_model=RetrainStatus,
        dependencies=[Depends(require_admin)],
        responses=_ADMIN_ERRORS | _errors(404),
    )
    async def retrain_status(job_id: str, rt: RuntimeDep) -> Response:
        return _json(await rt.retrainer.status(job_id))

    @app.put(
        "/items",
        response_model=ItemsResponse,
        dependencies=[Depends(require_admin)],
        responses=_BODY_ERRORS | _ADMIN_ERRORS,
    )
    async def put_items(body: ItemsRequest, rt: RuntimeDep) -> Response:
        return _json(await rt.catalogue.put(body))

    # ``:path``: item ids may hold "/" (a raw one or %2F, which the server decodes before routing);
    # the similar route's "/similar" suffix is matched after the greedy id, so "a/b/similar" is
    # item "a/b" (and GET of ".../similar" is item ".../similar": that route is POST only). The
    # similar route comes first: of two routes matching a path but not its method, the first one
    # answers the 405, and its Allow header must say POST for ".../similar" (schemathesis ST205).
    @app.post(
        "/items/{item_id:path}/similar", response_model=SimilarResponse, responses=_BODY_ERRORS | _errors(404)
    )
    async def similar_items(item_id: str, rt: RuntimeDep, body: SimilarRequest | None = None) -> Response:
        return _json(rt.items.similar(item_id, body or SimilarRequest()))

    @app.get("/items/{item_id:path}", response_model=ItemInfo, responses=_errors(404, 503))
    async def get_item(item_id: str, rt: RuntimeDep) -> Response:
        return _json(rt.items.get(item_id))

    @app.get("/healthz")
    async def healthz() -> Response:
        return _json({"status": "alive"})

    @app.get("/readyz", response_model=ReadinessBody, responses={503: {"model": ReadinessBody}})
    async def readyz(rt: RuntimeDep) -> Response:
        rec = rt.manager.current
        body: dict[str, Any] = {"store": rt.store.kind}
        if rec is None:
            body |= {
                "status": "not ready",
                "detail": "no model loaded yet",
                "last_load_error": rt.manager.last_error,
            }
            return _json(body, status_code=503)
        return _json(body | {"status": "ready", "model_version": rec.version})

    @app.get("/model", responses=_errors(503))
    async def model(rt: RuntimeDep) -> Response:
        return _json(rt.manager.summary())

    @app.get(
        "/metrics",
        response_class=Response,
        responses=_METRICS_OK | _errors(503),
    )
    async def metrics_route(rt: RuntimeDep) -> Response:
        return Response(rt.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return app


app = create_app()
