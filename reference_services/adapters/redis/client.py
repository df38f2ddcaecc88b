"""Shared Redis plumbing for the Redis queue bridge and the Redis stores.

One place decides how a client is built (URL from the argument or ``REDIS_URL``,
timeouts, bounded retries with backoff on connection errors), how a lost
connection surfaces (:class:`RedisUnavailableError`, a 503) and whether the
server's persistence makes "durable" a true claim.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from reference_services.runtime.errors import StatusCode, UnhandledError
from reference_services.runtime.spi.capabilities import YES, Support, unsupported

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
T = TypeVar("T")


class RedisUnavailableError(UnhandledError):
    """Redis could not be reached within the configured retries (503, retryable)."""

    default_status = StatusCode.SERVICE_UNAVAILABLE


@dataclass(frozen=True)
class RedisSettings:
    """Connection settings: timeouts in seconds, bounded retries with backoff."""

    url: str = field(repr=False)  # may hold a password
    socket_timeout_s: float | None = 5.0
    connect_timeout_s: float = 2.0
    retry_attempts: int = 3
    retry_backoff_base_s: float = 0.05
    retry_backoff_cap_s: float = 1.0
    health_timeout_s: float = 1.0

    @classmethod
    def resolve(cls, url: str | None, **overrides: Any) -> RedisSettings:
        """Settings for ``url``, falling back to ``REDIS_URL`` then localhost; ``overrides``
        are fields, taken as given (``socket_timeout_s=None`` is no timeout)."""
        chosen = url or os.environ.get("REDIS_URL") or DEFAULT_REDIS_URL
        return cls(url=chosen, **overrides)

    def client(self) -> aioredis.Redis:
        """A new client (connections are made lazily, per command, and remade after loss)."""
        retry = Retry(
            ExponentialBackoff(cap=self.retry_backoff_cap_s, base=self.retry_backoff_base_s),
            self.retry_attempts,
            supported_errors=(RedisConnectionError, RedisTimeoutError, ConnectionError, OSError),
        )
        return aioredis.Redis.from_url(
            self.url,
            decode_responses=True,
            # bytes written by someone else may not be UTF-8: keep them decodable so that
            # one bad value is rejected on its own (see strict_text) instead of failing a batch
            encoding_errors="surrogateescape",
            socket_timeout=self.socket_timeout_s,
            socket_connect_timeout=self.connect_timeout_s,
            retry=retry,
            retry_on_error=[RedisConnectionError, RedisTimeoutError],
            health_check_interval=0,
        )


def strict_text(value: str) -> str:
    """``value`` if it is valid UTF-8 text, else ValueError (undecodable bytes from Redis)."""
    value.encode("utf-8")  # UnicodeEncodeError (a ValueError) on escaped surrogates
    return value


def lenient_text(value: str) -> str:
    """``value`` with undecodable bytes replaced, for inspection and reports."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


async def guarded(awaitable: Awaitable[T], what: str) -> T:
    """Await a Redis call; connection loss becomes :class:`RedisUnavailableError`."""
    try:
        return await awaitable
    except (RedisConnectionError, RedisTimeoutError, ConnectionError, OSError) as exc:
        raise RedisUnavailableError(f"redis unavailable during {what}: {exc}") from exc
    except RedisError as exc:
        raise UnhandledError(f"redis error during {what}: {exc}") from exc


async def ping(client: aioredis.Redis, timeout_s: float) -> bool:
    """True if Redis answers PING within ``timeout_s`` (one attempt, no retries)."""
    import asyncio

    try:
        return bool(await asyncio.wait_for(client.ping(), timeout_s))
    except Exception:
        return False


async def durability(client: aioredis.Redis) -> Support:
    """Whether the server persists every write before answering (AOF + fsync always)."""
    try:
        cfg: dict[str, str] = await client.config_get("append*")
    except Exception as exc:
        return unsupported(f"cannot read the Redis persistence settings ({exc})")
    if cfg.get("appendonly") != "yes":
        return unsupported("Redis runs without appendonly: a restart loses recent writes")
    if cfg.get("appendfsync") != "always":
        return unsupported(
            f"Redis appendfsync is {cfg.get('appendfsync')!r}: a crash may lose the last second"
        )
    return YES
