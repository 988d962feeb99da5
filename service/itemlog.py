"""The shared log of catalogue changes (``PUT /items`` batches): a Redis stream, or a list in process.

One log entry is one whole batch, written by one ``XADD`` (atomic: a replica reads all of a batch or
none of it). Every replica reads the log in order from its own position and applies each batch to its
overlay (``service.catalogue``); a replica that starts later replays the log from the beginning. The
stream lives as long as Redis keeps it (with the compose stack's append-only file: across restarts).

Entry fields: ``meta`` = JSON ``{"items": [[item_id, available, has_features], ...], "dims": {m: D_m}}``
and, for each modality ``m``, ``f:<m>`` = the float32 bytes of the ``(n_with_features, D_m)`` raw
features of the items whose ``has_features`` is true, in batch order.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from service.errors import StoreUnavailableError

log = logging.getLogger(__name__)

_READ_CHUNK = 64  # log entries per XRANGE call


@dataclass(frozen=True)
class ItemChange:
    """One entry of a PUT /items batch, validated."""

    item_id: str
    available: bool
    features: Mapping[str, np.ndarray] | None  # modality -> (D_m,) float32 raw features; None = keep


def encode_batch(changes: list[ItemChange]) -> dict[str, bytes]:
    with_features = [c for c in changes if c.features is not None]
    dims: dict[str, int] = {}
    fields: dict[str, bytes] = {}
    if with_features:
        first = with_features[0].features
        assert first is not None
        for name in first:
            rows = np.stack([np.asarray(c.features[name], dtype=np.float32) for c in with_features])  # type: ignore[index]
            dims[name] = int(rows.shape[1])
            fields[f"f:{name}"] = np.ascontiguousarray(rows).tobytes()
    meta = {"items": [[c.item_id, c.available, c.features is not None] for c in changes], "dims": dims}
    return {"meta": orjson.dumps(meta), **fields}


def decode_batch(fields: Mapping[Any, Any]) -> list[ItemChange]:
    """The inverse of ``encode_batch`` (field names as bytes, as redis-py returns them, or str)."""

    def get(name: str) -> bytes:
        value = fields.get(name.encode())
        if value is None:
            value = fields[name]
        return bytes(value)

    meta = orjson.loads(get("meta"))
    dims: dict[str, int] = meta["dims"]
    n_feat = sum(1 for _, _, has in meta["items"] if has)
    matrices = {
        name: np.frombuffer(get(f"f:{name}"), dtype=np.float32).reshape(n_feat, dim)
        for name, dim in dims.items()
    }
    out: list[ItemChange] = []
    row = 0
    for item_id, available, has in meta["items"]:
        features = None
        if has:
            features = {name: m[row] for name, m in matrices.items()}
            row += 1
        out.append(ItemChange(str(item_id), bool(available), features))
    return out


class ItemLog(ABC):
    kind: str

    @abstractmethod
    async def append(self, changes: list[ItemChange]) -> str:
        """Append one batch; its log position. StoreUnavailableError if it could not be written."""

    @abstractmethod
    async def read_after(self, position: str) -> list[tuple[str, list[ItemChange]]]:
        """Every batch after ``position`` ("0-0" = from the start), in order."""

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass


class EmbeddedItemLog(ItemLog):
    """No REDIS_URL: the log lives in this process (lost on restart, like the embedded store)."""

    kind = "embedded"

    def __init__(self) -> None:
        self._entries: list[tuple[str, list[ItemChange]]] = []

    async def append(self, changes: list[ItemChange]) -> str:
        position = f"{len(self._entries) + 1}-0"
        self._entries.append((position, list(changes)))
        return position

    async def read_after(self, position: str) -> list[tuple[str, list[ItemChange]]]:
        start = int(position.split("-")[0])
        return self._entries[start:]


class RedisItemLog(ItemLog):
    """Key ``{prefix}:items:log``: a Redis stream, one entry per batch, never trimmed by the service."""

    kind = "redis"

    def __init__(self, client: Redis, prefix: str) -> None:
        self.client = client
        self.key = f"{prefix}:items:log"

    @classmethod
    def from_url(cls, url: str, prefix: str, timeout_s: float) -> RedisItemLog:
        # Its own pool: a batch of raw features can be megabytes, more than the cache's short
        # socket timeout allows for.
        client = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        return cls(client, prefix)

    async def append(self, changes: list[ItemChange]) -> str:
        try:
            position = await self.client.xadd(self.key, encode_batch(changes))  # type: ignore[arg-type]
        except (TimeoutError, RedisError, OSError) as exc:
            log.warning("item log append failed", extra={"error": repr(exc)})  # the address stays in the log
            raise StoreUnavailableError(
                "cannot apply the items: Redis is unavailable; nothing was applied"
            ) from exc
        return position.decode() if isinstance(position, bytes) else str(position)

    async def read_after(self, position: str) -> list[tuple[str, list[ItemChange]]]:
        out: list[tuple[str, list[ItemChange]]] = []
        while True:
            entries = await self.client.xrange(self.key, min=f"({position}", max="+", count=_READ_CHUNK)
            if not entries:
                return out
            for raw_id, fields in entries:
                position = raw_id.decode() if isinstance(raw_id, bytes) else str(raw_id)
                out.append((position, decode_batch(fields or {})))
            if len(entries) < _READ_CHUNK:
                return out

    async def close(self) -> None:
        await self.client.aclose()
