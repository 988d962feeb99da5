"""Every setting of the service, read from the environment (or a ``.env`` file) in one place.

Tests build ``Settings(...)`` directly and pass it to ``create_app``; production code reaches the one
instance through the cached ``get_settings()``.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The real trainer's retrain job (training/jobs.py), named so the API never imports it.
TRAINER_JOB_FUNC = "training.jobs.retrain_job"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # Artifacts
    artifact_root: Path = Field(
        default=Path("artifacts"), description="Artifact store: one directory per model version plus CURRENT."
    )
    model_poll_interval_s: float = Field(
        default=5.0, gt=0, description="How often every replica re-reads CURRENT to pick up a promotion."
    )

    # FAISS
    index_type: Literal["flat", "ivf", "hnsw"] = Field(
        default="flat",
        description="flat = exact IndexFlatIP; ivf / hnsw = approximate, for large catalogues.",
    )
    ivf_nlist: int = Field(default=0, ge=0, description="IVF lists; 0 = about 4 * sqrt(n_items).")
    ivf_nprobe: int = Field(default=16, ge=1, description="IVF lists probed per query.")
    hnsw_m: int = Field(default=32, ge=4, description="HNSW graph degree.")
    hnsw_ef_construction: int = Field(default=200, ge=8, description="HNSW build-time beam width.")
    hnsw_ef_search: int = Field(
        default=128, ge=8, description="HNSW query beam width (raised to k if smaller)."
    )
    faiss_use_gpu: bool = Field(
        default=True, description="Put flat/IVF indexes on GPU 0 when the installed FAISS sees a GPU."
    )
    faiss_threads: int = Field(
        default=1,
        ge=1,
        description="OpenMP threads per FAISS call (single-query searches gain nothing from more).",
    )
    overfetch_cap: int = Field(
        default=2048,
        ge=1,
        description="Most candidates fetched from the index per request; beyond it exact numpy scoring.",
    )

    # Request limits
    default_k: int = Field(default=20, ge=1, description="k when a request gives none.")
    max_k: int = Field(default=100, ge=1, description="Largest k a request may ask for.")
    max_items_per_request: int = Field(
        default=1000, ge=1, description="Longest item list in a request (interactions, exclude_items, items)."
    )
    max_body_bytes: int = Field(default=1_048_576, ge=1024, description="Larger request bodies get 413.")
    body_read_timeout_s: float = Field(
        default=30.0,
        gt=0,
        description="A request body not fully received this long after its headers gets 408.",
    )

    # Redis: cache and fresh-interaction store
    redis_url: str | None = Field(
        default=None, description="redis://host:port/db. Unset = embedded in-process cache and store."
    )
    redis_prefix: str = Field(default="mmssl", min_length=1, description="Prefix of every Redis key.")
    redis_timeout_s: float = Field(default=0.25, gt=0, description="Socket timeout of one Redis call.")
    redis_retry_s: float = Field(
        default=1.0,
        ge=0,
        description="After a Redis error, serve from the artifact alone this long, then retry.",
    )
    cache_ttl_s: int = Field(default=3600, ge=1, description="Time to live of a cached user vector.")
    cache_max_entries: int = Field(default=100_000, ge=1, description="Embedded cache only: LRU size bound.")
    fresh_max_users: int = Field(
        default=100_000,
        ge=1,
        description="Embedded store only: users with fresh interactions kept (never evicted; beyond it 503).",
    )
    fresh_max_per_user: int = Field(
        default=500, ge=1, description="Fresh interactions kept per user (oldest dropped beyond it)."
    )
    fresh_ttl_s: int = Field(
        default=30 * 86400,
        ge=1,
        description="Fresh interactions of a user expire this long after the last one.",
    )

    interactions_token: SecretStr | None = Field(
        default=None,
        description="Bearer token POST /interactions requires (the admin token works too). Unset = open.",
    )

    # Retraining
    admin_token: SecretStr | None = Field(
        default=None,
        description="Bearer token of POST/GET /retrain and PUT /items. Unset = both disabled (403).",
    )
    retrain_data_dir: Path | None = Field(
        default=None,
        description="Dataset folder the retrain job trains on (train.json, val.json, *_feat.npy).",
    )
    retrain_config: str | None = Field(default=None, description="Trainer config file passed to the job.")
    retrain_overrides: dict[str, Any] = Field(
        default_factory=dict, description="JSON object of trainer config overrides for every job."
    )
    retrain_tolerance: float = Field(
        default=0.005, ge=0, description="Promote when val Recall@20 >= serving's minus this."
    )
    retrain_job_func: str = Field(
        default=TRAINER_JOB_FUNC, description="Dotted name of the job function the worker runs."
    )
    retrain_queue: str = Field(default="mmssl-retrain", min_length=1, description="RQ queue name.")
    retrain_timeout_s: int = Field(default=6 * 3600, ge=10, description="A job running longer is killed.")
    retrain_heartbeat_s: float = Field(
        default=20.0,
        gt=0,
        description="A running job refreshes its lock this often (TTL 3x): a dead job frees it that soon.",
    )
    worker_heartbeat_s: int = Field(
        default=10, ge=1, description="RQ worker: seconds between the heartbeats of a running job."
    )
    worker_heartbeat_grace_s: int = Field(
        default=60, ge=1, description="RQ worker: a job whose heartbeat is this much overdue is abandoned."
    )
    retrain_jobs_dir: Path | None = Field(
        default=None, description="Spec/status/log files of jobs; default ARTIFACT_ROOT/.jobs."
    )

    # Items added through PUT /items (service.catalogue)
    items_max_batch: int = Field(default=1000, ge=1, description="Most items in one PUT /items batch.")
    items_poll_interval_s: float = Field(
        default=0.5, gt=0, description="How often every replica reads the shared item log for new batches."
    )
    items_redis_timeout_s: float = Field(
        default=5.0, gt=0, description="Socket timeout of one item-log call (batches carry raw features)."
    )
    new_items_slots: int = Field(
        default=1,
        ge=0,
        description=(
            "Slots of every result list reserved for items added through the API: the best of them by "
            "score fill these, the model's items the rest; 0 = blended by score alone."
        ),
    )
    new_items_max_slots: int | None = Field(
        default=None,
        ge=0,
        description="Most items added through the API in one result list; unset = no bound.",
    )

    added_items_exact_max: int = Field(
        default=2000,
        ge=0,
        description=(
            "Most items added through the API that are searched exactly (flat index); beyond it, the "
            "model's and the added items are searched through a 4-bit PQ shortlist re-ranked by "
            "exact inner products (service.index, kind pq)."
        ),
    )
    added_items_refine: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Beyond ADDED_ITEMS_EXACT_MAX: candidates re-ranked exactly per result asked for.",
    )

    log_level: str = Field(default="INFO", description="Root log level.")

    @field_validator("redis_url")
    @classmethod
    def _blank_is_none(cls, value: str | None) -> str | None:
        return value or None

    @field_validator("new_items_max_slots", mode="before")
    @classmethod
    def _blank_slots_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.default_k > self.max_k:
            raise ValueError(f"DEFAULT_K ({self.default_k}) is larger than MAX_K ({self.max_k})")
        if self.new_items_max_slots is not None and self.new_items_slots > self.new_items_max_slots:
            raise ValueError(
                f"NEW_ITEMS_SLOTS ({self.new_items_slots}) is larger than NEW_ITEMS_MAX_SLOTS "
                f"({self.new_items_max_slots}): the reserved slots cannot exceed the bound"
            )
        if self.admin_token is not None and not self.admin_token.get_secret_value():
            self.admin_token = None
        if self.interactions_token is not None and not self.interactions_token.get_secret_value():
            self.interactions_token = None
        return self

    @property
    def jobs_dir(self) -> Path:
        return self.retrain_jobs_dir or self.artifact_root / ".jobs"


@lru_cache
def get_settings() -> Settings:
    return Settings()
