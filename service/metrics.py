"""Prometheus metrics, kept in one registry per app so that several apps (tests) never collide."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter(
            "mmssl_http_requests",
            "HTTP requests by route and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "mmssl_http_request_seconds",
            "HTTP request latency by route",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.recommend_latency = Histogram(
            "mmssl_recommend_seconds",
            "POST /recommend latency by the path that produced the user vector",
            ["path"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.cache_hits = Counter("mmssl_cache_hits", "User-vector cache hits", registry=r)
        self.cache_misses = Counter("mmssl_cache_misses", "User-vector cache misses", registry=r)
        self.redis_errors = Counter(
            "mmssl_redis_errors", "Redis calls that failed (the service failed open)", ["op"], registry=r
        )
        self.model_info = Gauge(
            "mmssl_model_info", "1 for the model version being served", ["version"], registry=r
        )
        self.model_loaded_at = Gauge(
            "mmssl_model_loaded_timestamp_seconds", "When the serving model was swapped in", registry=r
        )
        self.model_swaps = Counter("mmssl_model_swaps", "Models swapped in", registry=r)
        self.model_load_failures = Counter(
            "mmssl_model_load_failures", "Artifacts refused at load (checksum, shape, dtype...)", registry=r
        )
        self.retrain_jobs = Counter("mmssl_retrain_jobs_submitted", "Retrain jobs submitted", registry=r)
        self._version: str | None = None

    def set_model(self, version: str, loaded_at: float) -> None:
        if self._version is not None:
            self.model_info.remove(self._version)
        self.model_info.labels(version).set(1)
        self.model_loaded_at.set(loaded_at)
        self._version = version

    def render(self) -> bytes:
        return generate_latest(self.registry)
