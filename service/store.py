"""User-vector cache and fresh-interaction store: Redis, or embedded in the process.

Both implementations keep

* cached user vectors, scoped by model version (a new model never reads an old model's vector),
  with a TTL, dropped when the user records fresh interactions. Each cached value also carries a
  fingerprint of the user's fresh list it was computed from, so a vector computed concurrently with a
  new interaction is never served after it;
* fresh interactions per user (oldest dropped beyond a bound, expiring after a quiet period), which
  the next ``/recommend`` uses at once and the next retrain includes.

``FailOpenStore`` wraps the Redis store: a failed read or cache write is logged, counted, and
answered as a cache miss with no fresh items, so requests are served from the artifact alone; Redis is
retried after ``retry_s`` and the connection pool reconnects by itself. Recording interactions does
not fail open (that would lose them): it raises ``StoreUnavailableError``.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import orjson
from redis.asyncio import Redis
from redis.asyncio.retry import Retry  # not redis.retry's: the async client silently skips its retries
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from service.errors import StoreUnavailableError
from service.metrics import Metrics

log = logging.getLogger(__name__)

_FP_LEN = 8  # bytes of fresh-list fingerprint in front of a cached vector
REQUEST_ID_TTL_S = 24 * 3600  # how long a write's request id is remembered (re-sends are no-ops)


def _user_request(user_id: str, request_id: str) -> str:
    """The dedup key of one user's request id (hashed: user ids may hold any character)."""
    return f"{hashlib.sha1(user_id.encode('utf-8', 'backslashreplace')).hexdigest()[:16]}:{request_id}"


_MAX_SEEN = 1_000_000  # embedded store: most request ids remembered

# One command, so that it is applied whole or not at all and redis-py may re-send it after a dropped
# connection (it does not re-send a MULTI/EXEC transaction, and a stale pooled connection after a
# Redis restart failed the first write on it); the request-id key makes a re-send a no-op.
# KEYS: fresh list, fresh-users set, vector hash, request-id key.
# ARGV: fresh_max, fresh_ttl_s, user_id, request_id_ttl_s, entries...
_ADD_INTERACTIONS = """
if redis.call('set', KEYS[4], '1', 'NX', 'EX', ARGV[4]) == false then
  return redis.call('llen', KEYS[1])
end
redis.call('rpush', KEYS[1], unpack(ARGV, 5))
redis.call('ltrim', KEYS[1], -tonumber(ARGV[1]), -1)
redis.call('expire', KEYS[1], ARGV[2])
redis.call('sadd', KEYS[2], ARGV[3])
redis.call('del', KEYS[3])
return redis.call('llen', KEYS[1])
"""
_NO_FRESH_FP = b"\0" * _FP_LEN


@dataclass(frozen=True)
class UserState:
    cached_vector: np.ndarray | None  # (d,) float32, valid for the version asked for and fresh list
    fresh_items: list[str]  # oldest first
    fingerprint: bytes  # identifies ``fresh_items``; pass back to ``set_user_vector``


EMPTY_STATE = UserState(None, [], _NO_FRESH_FP)


def _unpack_vector(value: bytes | None, fingerprint: bytes) -> np.ndarray | None:
    if value is None or len(value) <= _FP_LEN or value[:_FP_LEN] != fingerprint:
        return None
    return np.frombuffer(value, dtype=np.float32, offset=_FP_LEN)


class Store(ABC):
    kind: str

    @abstractmethod
    async def get_user_state(self, version: str, user_id: str) -> UserState:
        """Cached vector (for ``version``) and fresh items of one user, in one round trip."""

    @abstractmethod
    async def set_user_vector(
        self, version: str, user_id: str, fingerprint: bytes, vector: np.ndarray
    ) -> None:
        """Cache ``vector`` for ``version``, valid while the user's fresh list has ``fingerprint``."""

    @abstractmethod
    async def add_interactions(
        self, user_id: str, items: Sequence[str], timestamps: Sequence[float], request_id: str | None = None
    ) -> int:
        """Record fresh interactions, drop the user's cached vectors; returns how many are kept.

        A ``request_id`` seen in the last ``REQUEST_ID_TTL_S`` is not applied again (the write is
        idempotent): a client that got no answer, or a 503, re-sends it safely."""

    @abstractmethod
    async def fresh_snapshot(self) -> dict[str, list[str]]:
        """Every user's fresh items (oldest first, duplicates removed), for a retrain."""

    async def healthy(self) -> bool:
        return True

    async def close(self) -> None:  # noqa: B027 - optional hook
        pass


# --------------------------------------------------------------------------------------- embedded


@dataclass
class _EmbeddedFresh:
    items: deque[tuple[str, float]]
    generation: int
    expires_at: float


class EmbeddedStore(Store):
    """In-process store for a single process (no REDIS_URL): lost on restart.

    Cached vectors are an LRU bounded by ``max_entries`` users; fresh interactions are bounded
    separately by ``max_fresh_users`` and never evicted to make room: an acknowledged write stays
    until it expires, and a write for a new user when the bound is reached is refused (503)."""

    kind = "embedded"

    def __init__(
        self,
        cache_ttl_s: int,
        fresh_max: int,
        fresh_ttl_s: int,
        max_entries: int,
        max_fresh_users: int = 100_000,
    ) -> None:
        self.cache_ttl_s = cache_ttl_s
        self.fresh_max = fresh_max
        self.fresh_ttl_s = fresh_ttl_s
        self.max_entries = max_entries
        self.max_fresh_users = max_fresh_users
        self._fresh: dict[str, _EmbeddedFresh] = {}
        self._vectors: OrderedDict[str, dict[str, tuple[float, bytes, np.ndarray]]] = OrderedDict()  # LRU
        self._generation = 0  # one counter for all users: a fingerprint is never reused
        self._seen: OrderedDict[str, float] = OrderedDict()  # (user, request id) key -> expiry, oldest first

    def _fresh_of(self, user_id: str) -> _EmbeddedFresh | None:
        fresh = self._fresh.get(user_id)
        if fresh is not None and fresh.expires_at < time.monotonic():
            del self._fresh[user_id]
            return None
        return fresh

    def _fingerprint(self, user_id: str) -> bytes:
        fresh = self._fresh_of(user_id)
        return fresh.generation.to_bytes(_FP_LEN, "little") if fresh is not None else _NO_FRESH_FP

    async def get_user_state(self, version: str, user_id: str) -> UserState:
        fp = self._fingerprint(user_id)
        fresh = self._fresh.get(user_id)
        items = [item for item, _ in fresh.items] if fresh is not None else []
        vector = None
        vectors = self._vectors.get(user_id)
        if vectors is not None:
            self._vectors.move_to_end(user_id)
            entry = vectors.get(version)
            if entry is not None:
                expires_at, entry_fp, entry_vector = entry
                if expires_at >= time.monotonic() and entry_fp == fp:
                    vector = entry_vector
                else:
                    del vectors[version]
        if vector is None and not items:
            return EMPTY_STATE
        return UserState(vector, items, fp)

    async def set_user_vector(
        self, version: str, user_id: str, fingerprint: bytes, vector: np.ndarray
    ) -> None:
        if fingerprint != self._fingerprint(user_id):
            return
        vectors = self._vectors.setdefault(user_id, {})
        self._vectors.move_to_end(user_id)
        vectors[version] = (time.monotonic() + self.cache_ttl_s, fingerprint, vector.copy())
        while len(self._vectors) > self.max_entries:
            self._vectors.popitem(last=False)

    async def add_interactions(
        self, user_id: str, items: Sequence[str], timestamps: Sequence[float], request_id: str | None = None
    ) -> int:
        now = time.monotonic()
        while self._seen and next(iter(self._seen.values())) < now:
            self._seen.popitem(last=False)
        seen_key = _user_request(user_id, request_id) if request_id is not None else None
        if seen_key is not None and seen_key in self._seen:
            fresh = self._fresh_of(user_id)
            return len(fresh.items) if fresh is not None else 0
        fresh = self._fresh_of(user_id)
        if fresh is None:
            if len(self._fresh) >= self.max_fresh_users:
                now = time.monotonic()
                for gone in [u for u, f in self._fresh.items() if f.expires_at < now]:
                    del self._fresh[gone]
            if len(self._fresh) >= self.max_fresh_users:
                raise StoreUnavailableError(
                    f"cannot record interactions: the embedded store holds fresh interactions of "
                    f"FRESH_MAX_USERS={self.max_fresh_users} users (set REDIS_URL for more); "
                    "nothing was recorded"
                )
            fresh = self._fresh[user_id] = _EmbeddedFresh(deque(maxlen=self.fresh_max), 0, 0.0)
        fresh.items.extend(zip(items, timestamps, strict=True))
        self._generation += 1
        fresh.generation = self._generation
        fresh.expires_at = time.monotonic() + self.fresh_ttl_s
        self._vectors.pop(user_id, None)
        if seen_key is not None:
            self._seen[seen_key] = now + REQUEST_ID_TTL_S
            while len(self._seen) > _MAX_SEEN:
                self._seen.popitem(last=False)
        return len(fresh.items)

    async def fresh_snapshot(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for user_id in list(self._fresh):
            fresh = self._fresh_of(user_id)
            if fresh is not None and fresh.items:
                out[user_id] = list(dict.fromkeys(item for item, _ in fresh.items))
        return out


# --------------------------------------------------------------------------------------- Redis


class RedisStore(Store):
    """Keys: ``{prefix}:vec:{user}`` hash version -> fingerprint + float32 bytes (TTL);
    ``{prefix}:fresh:{user}`` list of JSON [item_id, timestamp] (bounded, TTL);
    ``{prefix}:fresh_users`` set of users with fresh interactions (for the retrain snapshot)."""

    kind = "redis"

    def __init__(
        self, client: Redis, prefix: str, cache_ttl_s: int, fresh_max: int, fresh_ttl_s: int
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.cache_ttl_s = cache_ttl_s
        self.fresh_max = fresh_max
        self.fresh_ttl_s = fresh_ttl_s
        self._users_key = f"{prefix}:fresh_users"
        self._add_script = client.register_script(_ADD_INTERACTIONS)

    @classmethod
    def from_url(
        cls, url: str, prefix: str, timeout_s: float, cache_ttl_s: int, fresh_max: int, fresh_ttl_s: int
    ) -> RedisStore:
        client = Redis.from_url(
            url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            # one immediate retry replaces a pooled connection that died with a Redis restart (safe for
            # writes too: add_interactions is one idempotent script call)
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        return cls(client, prefix, cache_ttl_s, fresh_max, fresh_ttl_s)

    def _vec_key(self, user_id: str) -> str:
        return f"{self.prefix}:vec:{user_id}"

    def _fresh_key(self, user_id: str) -> str:
        return f"{self.prefix}:fresh:{user_id}"

    @staticmethod
    def _fingerprint(raw: list[bytes]) -> bytes:
        if not raw:
            return _NO_FRESH_FP
        return hashlib.blake2b(b"\n".join(raw), digest_size=_FP_LEN).digest()

    async def get_user_state(self, version: str, user_id: str) -> UserState:
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hget(self._vec_key(user_id), version)
            pipe.lrange(self._fresh_key(user_id), 0, -1)
            value, raw = await pipe.execute()
        if value is None and not raw:
            return EMPTY_STATE
        fp = self._fingerprint(raw)
        return UserState(_unpack_vector(value, fp), [orjson.loads(r)[0] for r in raw], fp)

    async def set_user_vector(
        self, version: str, user_id: str, fingerprint: bytes, vector: np.ndarray
    ) -> None:
        key = self._vec_key(user_id)
        payload = fingerprint + np.ascontiguousarray(vector, dtype=np.float32).tobytes()
        async with self.client.pipeline(transaction=False) as pipe:
            pipe.hset(key, version, payload)
            pipe.expire(key, self.cache_ttl_s)
            await pipe.execute()

    async def add_interactions(
        self, user_id: str, items: Sequence[str], timestamps: Sequence[float], request_id: str | None = None
    ) -> int:
        key = self._fresh_key(user_id)
        entries = [orjson.dumps([item, ts]) for item, ts in zip(items, timestamps, strict=True)]
        # per user: two users' clients may number their requests alike
        request_key = f"{self.prefix}:req:{_user_request(user_id, request_id or uuid.uuid4().hex)}"
        kept = await self._add_script(
            keys=[key, self._users_key, self._vec_key(user_id), request_key],
            args=[self.fresh_max, self.fresh_ttl_s, user_id, REQUEST_ID_TTL_S, *entries],
        )
        return int(kept)

    async def fresh_snapshot(self) -> dict[str, list[str]]:
        members = await self.client.smembers(self._users_key)
        users = sorted(m.decode() if isinstance(m, bytes) else m for m in members)
        out: dict[str, list[str]] = {}
        gone: list[str] = []
        for start in range(0, len(users), 1000):
            chunk = users[start : start + 1000]
            async with self.client.pipeline(transaction=False) as pipe:
                for user_id in chunk:
                    pipe.lrange(self._fresh_key(user_id), 0, -1)
                lists = await pipe.execute()
            for user_id, raw in zip(chunk, lists, strict=True):
                if raw:
                    out[user_id] = list(dict.fromkeys(orjson.loads(r)[0] for r in raw))
                else:
                    gone.append(user_id)  # expired
        if gone:
            await self.client.srem(self._users_key, *gone)
        return out

    async def healthy(self) -> bool:
        try:
            return bool(await self.client.ping())
        except (RedisError, OSError):
            return False

    async def close(self) -> None:
        await self.client.aclose()


class FailOpenStore(Store):
    """Redis store whose read/cache failures degrade to "no cache, no fresh items"."""

    def __init__(self, inner: RedisStore, metrics: Metrics, retry_s: float) -> None:
        self.inner = inner
        self.kind = inner.kind
        self.metrics = metrics
        self.retry_s = retry_s
        self._down_until = 0.0  # monotonic time before which reads skip Redis

    def _failed(self, op: str, exc: BaseException) -> None:
        self.metrics.redis_errors.labels(op).inc()
        if self._down_until == 0.0:
            log.warning("Redis failed; serving from the artifact alone", extra={"op": op, "error": repr(exc)})
        self._down_until = time.monotonic() + self.retry_s

    def _recovered(self) -> None:
        if self._down_until:
            log.info("Redis is back")
            self._down_until = 0.0

    def _skip(self) -> bool:
        if self._down_until and time.monotonic() < self._down_until:
            self.metrics.redis_errors.labels("skipped").inc()
            return True
        return False

    async def get_user_state(self, version: str, user_id: str) -> UserState:
        if self._skip():
            return EMPTY_STATE
        try:
            state = await self.inner.get_user_state(version, user_id)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed("get_user_state", exc)
            return EMPTY_STATE
        self._recovered()
        return state

    async def set_user_vector(
        self, version: str, user_id: str, fingerprint: bytes, vector: np.ndarray
    ) -> None:
        if self._skip():
            return
        try:
            await self.inner.set_user_vector(version, user_id, fingerprint, vector)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed("set_user_vector", exc)

    async def add_interactions(
        self, user_id: str, items: Sequence[str], timestamps: Sequence[float], request_id: str | None = None
    ) -> int:
        try:
            kept = await self.inner.add_interactions(user_id, items, timestamps, request_id)
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed("add_interactions", exc)
            log.warning("cannot record interactions", extra={"error": repr(exc)})
            # Refused, reset or timed out: a write that reached a frozen Redis is applied when it
            # resumes, so the outcome is unknown here; the request id makes a re-send safe.
            raise StoreUnavailableError(
                "cannot record interactions: Redis is unavailable or did not answer in time; they may or "
                "may not be recorded: re-send the request with the same request_id (applied at most once)"
            ) from exc
        self._recovered()
        return kept

    async def fresh_snapshot(self) -> dict[str, list[str]]:
        try:
            return await self.inner.fresh_snapshot()
        except (TimeoutError, RedisError, OSError) as exc:
            self._failed("fresh_snapshot", exc)
            raise StoreUnavailableError(
                "cannot read the fresh interactions for the retrain: Redis is unavailable"
            ) from exc

    async def healthy(self) -> bool:
        return await self.inner.healthy()

    async def close(self) -> None:
        await self.inner.close()
