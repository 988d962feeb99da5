"""Holds the serving Recommender and swaps in the version the store's CURRENT file names.

Loading (checksums, shapes, dtypes) and the index build run in a worker thread, beside the model that
keeps serving; the swap is one reference assignment. A request reads ``manager.current`` once and
uses that object to the end, so requests in flight finish on the old model. Every replica polls
CURRENT, so a promotion by the retrain worker (or ``python -m service.admin promote``) reaches all
of them; a broken artifact is refused, logged and counted, and the old model keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import faiss

from artifact import contract
from artifact.contract import ArtifactError
from service.errors import ModelNotReadyError
from service.index import IndexConfig, build_index
from service.metrics import Metrics
from service.recommender import Recommender
from service.settings import Settings

log = logging.getLogger(__name__)


def index_config(settings: Settings) -> IndexConfig:
    return IndexConfig(
        kind=settings.index_type,
        ivf_nlist=settings.ivf_nlist,
        ivf_nprobe=settings.ivf_nprobe,
        hnsw_m=settings.hnsw_m,
        hnsw_ef_construction=settings.hnsw_ef_construction,
        hnsw_ef_search=settings.hnsw_ef_search,
        use_gpu=settings.faiss_use_gpu,
        threads=settings.faiss_threads,
    )


def load_recommender(path: Path, settings: Settings) -> Recommender:
    """Verify and load one artifact directory and build its index (blocking; raises ArtifactError)."""
    artifact = contract.load_artifact(path)
    index = build_index(artifact.arrays.item_embeddings, index_config(settings))
    return Recommender(artifact, index, overfetch_cap=settings.overfetch_cap)


class ModelManager:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.root = settings.artifact_root
        self._current: Recommender | None = None
        self._lock = asyncio.Lock()
        self._poll_task: asyncio.Task[None] | None = None
        self._check_task: asyncio.Task[bool] | None = None
        self._refused: str | None = None  # version whose load failed; not retried until CURRENT moves
        self._bad_current: bytes | None = None  # unreadable CURRENT content, logged once
        self.last_error: str | None = None  # public: paths under ARTIFACT_ROOT shown relative to it
        # Run in the loading thread on a new Recommender before it is swapped in; each returns a
        # commit run in the same step as the swap (the catalogue overlay is rebuilt on it this way).
        self.prepare_hooks: list[Callable[[Recommender], Callable[[], None]]] = []
        faiss.omp_set_num_threads(settings.faiss_threads)

    @property
    def current(self) -> Recommender | None:
        return self._current

    def public(self, message: str) -> str:
        """``message`` with the artifact store's file-system location replaced by ARTIFACT_ROOT (the
        full paths go to the log only)."""
        for prefix in {str(self.root.resolve()), str(self.root)}:
            message = message.replace(prefix + os.sep, "ARTIFACT_ROOT/")
        return message

    def require(self) -> Recommender:
        rec = self._current
        if rec is None:
            raise ModelNotReadyError(
                "no model is loaded yet: ARTIFACT_ROOT/CURRENT names no loadable version"
                + (f" (last error: {self.last_error})" if self.last_error else "")
            )
        return rec

    def _read_current(self) -> str | None:
        """CURRENT's version, or None; an unreadable CURRENT is logged once per content, not per poll."""
        path = self.root / contract.CURRENT
        try:
            version = contract.read_current(self.root)
            if version is not None:
                contract.check_version_name(version)
        except (OSError, UnicodeDecodeError, ArtifactError) as exc:
            try:
                raw = path.read_bytes()[:200]
            except OSError:
                raw = b""
            if raw != self._bad_current:
                self._bad_current = raw
                self.last_error = self.public(f"unreadable CURRENT: {exc}")
                self.metrics.model_load_failures.inc()
                log.error(
                    "unreadable CURRENT; keeping the serving model",
                    extra={"path": str(path), "error": repr(exc)},
                )
            return None
        self._bad_current = None
        return version

    async def start(self) -> None:
        """Load the version CURRENT names; raise ArtifactError if it is broken (refuse to start).

        With no CURRENT yet the service starts unready and picks the first promotion up by polling.
        """
        version = self._read_current()
        if version is None:
            log.warning(
                "no CURRENT in the artifact store; not ready until one is promoted",
                extra={"artifact_root": str(self.root)},
            )
        else:
            await self._load(version, raise_errors=True)
        self._poll_task = asyncio.create_task(self._poll(), name="model-poll")

    async def stop(self) -> None:
        for task in (self._poll_task, self._check_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._poll_task = self._check_task = None

    async def check(self) -> bool:
        """Swap in the version CURRENT names if it differs from the serving one. True if swapped."""
        version = self._read_current()
        rec = self._current
        if version is None or (rec is not None and rec.version == version) or version == self._refused:
            return False
        return await self._load(version, raise_errors=False)

    def check_soon(self) -> None:
        """Run ``check`` in the background (a request that learns of a promotion need not wait)."""
        if self._check_task is None or self._check_task.done():
            self._check_task = asyncio.create_task(self.check(), name="model-check")

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.settings.model_poll_interval_s)
            try:
                await self.check()
            except Exception:  # never let the poller die
                log.exception("model poll failed")

    async def _load(self, version: str, raise_errors: bool) -> bool:
        async with self._lock:
            if self._current is not None and self._current.version == version:
                return False
            path = self.root / version
            started = time.perf_counter()
            try:
                contract.check_version_name(version)
                rec = await asyncio.to_thread(load_recommender, path, self.settings)
                if rec.version != version:  # else every poll would see "CURRENT moved" and reload
                    raise ArtifactError(
                        f"{path}: folder name {version!r} and the manifest's model_version "
                        f"{rec.version!r} disagree"
                    )
                commits = await asyncio.to_thread(lambda: [hook(rec) for hook in self.prepare_hooks])
            except (ArtifactError, OSError, ValueError, RuntimeError) as exc:
                self._refused = version
                self.last_error = self.public(str(exc))
                self.metrics.model_load_failures.inc()
                serving = self._current.version if self._current else None
                log.error(
                    "refused model version",
                    extra={"version": version, "error": str(exc), "still_serving": serving},
                )
                if raise_errors:
                    raise ArtifactError(f"refusing to start: {exc}") from exc
                return False
            old = self._current
            self._current = rec  # the atomic swap
            for commit in commits:
                commit()
            self._refused = None
            self.last_error = None
            self.metrics.set_model(rec.version, rec.loaded_at)
            self.metrics.model_swaps.inc()
            log.info(
                "model swapped in",
                extra={
                    "version": rec.version,
                    "previous": old.version if old else None,
                    "index": rec.index.describe(),
                    "load_s": round(time.perf_counter() - started, 3),
                },
            )
            return True

    def summary(self) -> dict[str, Any]:
        rec = self.require()
        m = rec.artifact.manifest
        return {
            "model_version": m.model_version,
            "parent_version": m.parent_version,
            "created_at": m.created_at,
            "dataset_fingerprint": m.dataset_fingerprint,
            "n_users": m.n_users,
            "n_items": m.n_items,
            "dim": m.dim,
            "n_layers": m.n_layers,
            "omega": m.omega,
            "graph_norm": m.graph_norm,
            "modalities": m.modalities,
            "metrics": m.metrics,
            "index": rec.index.describe(),
            "loaded_at": rec.loaded_at,
            "artifact_path": self.public(str(rec.artifact.path) + os.sep).rstrip("/"),
            "last_load_error": self.last_error,
        }
