"""Request and response bodies. Strict: wrong types and unknown fields are 422s, nothing is coerced.

Limits that come from settings (MAX_K, MAX_ITEMS_PER_REQUEST) are checked by the routes, which
answer with the same 422 format.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

UserId = Annotated[str, Field(min_length=1, max_length=256, description="External user id, as in the data.")]
ItemId = Annotated[str, Field(min_length=1, max_length=256)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("user_id", check_fields=False)
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("user_id must not be blank")
        return value


class RecommendRequest(_Strict):
    user_id: UserId
    k: int | None = Field(
        default=None, ge=1, description="Number of items; default DEFAULT_K, at most MAX_K."
    )
    exclude_seen: bool = Field(default=True, description="Never return training items or fresh interactions.")
    exclude_items: list[ItemId] = Field(default_factory=list, description="Item ids never to return.")
    interactions: list[ItemId] = Field(
        default_factory=list,
        description="Item ids the user just interacted with, used for this request (not recorded).",
    )


class ScoredItem(BaseModel):
    item_id: str
    score: float


class RecommendResponse(BaseModel):
    recommendation_id: str
    model_version: str
    user_id: str
    path: Literal["known", "fresh", "fold_in", "popularity"]
    cache_hit: bool
    items: list[ScoredItem]


class InteractionsRequest(_Strict):
    user_id: UserId
    items: list[ItemId] = Field(min_length=1)
    timestamps: list[Annotated[float, Field(ge=0, allow_inf_nan=False)]] | None = Field(
        default=None, description="Unix seconds, one per item; default: the time of the request."
    )
    request_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9_-]+$",
        description="Makes the write idempotent: a request id seen in the last 24 h is not applied "
        "again. Re-send with the same id after a 503 or a lost answer. Default: a new id.",
    )

    @model_validator(mode="after")
    def _same_length(self) -> InteractionsRequest:
        if self.timestamps is not None and len(self.timestamps) != len(self.items):
            raise ValueError(
                f"timestamps has {len(self.timestamps)} entries but items has {len(self.items)}: "
                "give one timestamp per item or none"
            )
        return self


class InteractionsResponse(BaseModel):
    user_id: str
    request_id: str = Field(description="The request id the write was recorded under.")
    recorded: int
    fresh_count: int = Field(description="Fresh interactions now kept for the user (bounded).")
    model_version: str


class RetrainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    force: bool = Field(default=False, description="Promote even if validation Recall@20 got worse.")
    overrides: dict[str, Any] = Field(
        default_factory=dict, description="Trainer config overrides for this run (on top of settings)."
    )


class RetrainAccepted(BaseModel):
    job_id: str
    state: str
    mode: Literal["rq", "subprocess"]
    extra_interactions: int = Field(description="Fresh interactions included in the training data.")


class RetrainStatus(BaseModel):
    job_id: str
    state: Literal["queued", "running", "finished", "failed"]
    progress: dict[str, Any] | None = None
    promoted: bool | None = None
    reason: str | None = None
    model_version: str | None = None
    metrics: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    serving_version: str | None = None


class ErrorBody(BaseModel):
    """Body of every error response except 422 (which lists each problem of the request)."""

    detail: str


class ConflictBody(ErrorBody):
    running_job_id: str | None = Field(description="The retrain job that holds the one-at-a-time lock.")


class ReadinessBody(BaseModel):
    status: Literal["ready", "not ready"]
    store: str
    model_version: str | None = None
    detail: str | None = None
    last_load_error: str | None = None


# ------------------------------------------------------------------------------------ items


class ItemPut(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    item_id: ItemId
    # NaN/inf and dimensions are checked by service.catalogue.validate_batch, which names the item
    features: dict[str, list[float]] | None = Field(
        default=None,
        description="Raw features per modality (every modality of the model, each its raw dimension). "
        "Required for a new item; omitted = keep the item's features (e.g. to change availability).",
    )
    available: bool = Field(default=True, description="False: never returned by any endpoint.")


class ItemsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    items: list[ItemPut] = Field(
        min_length=1, description="One batch, applied all or nothing; at most ITEMS_MAX_BATCH."
    )


class ItemsResponse(BaseModel):
    applied: int
    position: str = Field(description="Position of the batch in the shared item log.")
    model_version: str
    items_added_total: int = Field(description="Items added through the API that this model serves.")
    added_or_refeatured: int


class ItemInfo(BaseModel):
    item_id: str
    model_version: str
    source: Literal["model", "added"]
    available: bool
    training_interactions: int
    features: dict[str, int] | None = Field(description="Modality -> dimension of features given by PUT.")
    last_change: str | None = Field(description="Item-log position of the last PUT of this item.")


class SimilarRequest(_Strict):
    k: int | None = Field(
        default=None, ge=1, description="Number of items; default DEFAULT_K, at most MAX_K."
    )
    exclude_items: list[ItemId] = Field(default_factory=list, description="Item ids never to return.")


class SimilarResponse(BaseModel):
    item_id: str
    model_version: str
    items: list[ScoredItem]
