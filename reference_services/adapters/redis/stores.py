"""Redis state, config and secret stores.

Keys are ``<prefix>:<kind>:<name>`` (e.g. ``purista:state_store:user-1``), values
JSON text. ``set_if_absent`` is ``SET NX PX`` in a small script: atomic, with a
server-side ttl, and safe to retry after a lost reply.
Operation switches (401 when disabled) and the secret cache come from
:class:`StoreBase`. Durability is declared from the server's persistence
settings at ``start()`` (AOF with ``appendfsync always``), never assumed.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any, ClassVar

from reference_services.adapters.redis.client import (
    RedisSettings,
    RedisUnavailableError,
    durability,
    guarded,
    ping,
    strict_text,
)
from reference_services.runtime.errors import UnhandledError
from reference_services.runtime.ids import new_id
from reference_services.runtime.spi.capabilities import YES, StoreCapabilities
from reference_services.runtime.spi.store_base import StoreBase, StoreKind, dump_value, load_value

__all__ = ["RedisConfigStore", "RedisSecretStore", "RedisStateStore", "RedisUnavailableError"]

log = logging.getLogger("reference_services.store.redis")

# SET NX PX, plus a short-lived marker naming the call, so that the client's retry of a
# create whose reply was lost answers "created" instead of "someone else has it".
_CREATE = """
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
local ok
if tonumber(ARGV[2]) > 0 then
  ok = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
else
  ok = redis.call('SET', KEYS[1], ARGV[1], 'NX')
end
if not ok then return 0 end
redis.call('SET', KEYS[2], '1', 'PX', 120000)
return 1
"""


class _RedisStore(StoreBase):
    """Shared implementation; subclasses only set ``kind`` (and capabilities)."""

    name = "redis"
    capabilities: StoreCapabilities = StoreCapabilities()
    kind: ClassVar[StoreKind]

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "purista",
        initial: dict[str, Any] | None = None,
        socket_timeout_s: float | None = 5.0,
        connect_timeout_s: float = 2.0,
        retry_attempts: int = 3,
        retry_backoff_base_s: float = 0.05,
        retry_backoff_cap_s: float = 1.0,
        health_timeout_s: float = 1.0,
        **switches: Any,
    ) -> None:
        """``initial`` values are written at ``start()`` unless the key exists (SET NX);
        ``switches`` are StoreBase's ``enable_get/set/remove`` and ``cache_ttl_s``."""
        super().__init__(**switches)
        self.settings = RedisSettings.resolve(
            url,
            socket_timeout_s=socket_timeout_s,
            connect_timeout_s=connect_timeout_s,
            retry_attempts=retry_attempts,
            retry_backoff_base_s=retry_backoff_base_s,
            retry_backoff_cap_s=retry_backoff_cap_s,
            health_timeout_s=health_timeout_s,
        )
        self.prefix = prefix
        self._initial = {k: dump_value(k, v) for k, v in (initial or {}).items()}
        self._client = self.settings.client()
        self._create = self._client.register_script(_CREATE)
        self._closed = False

    @classmethod
    def from_env(cls, **kwargs: Any) -> _RedisStore:
        """A store configured from ``REDIS_URL`` (and ``PURISTA_PREFIX`` if set)."""
        import os

        kwargs.setdefault("prefix", os.environ.get("PURISTA_PREFIX", "purista"))
        return cls(None, **kwargs)

    def key(self, name: str) -> str:
        """The Redis key holding ``name``."""
        return f"{self.prefix}:{self.kind}:{name}"

    async def start(self) -> None:
        """Check Redis answers, read its persistence settings, write ``initial`` values."""
        self._closed = False
        await guarded(self._client.ping(), f"{self.kind} start")
        await guarded(self._client.script_load(_CREATE), f"{self.kind} script load")
        durable = await durability(self._client)
        if not durable:
            log.warning("redis %s: durable unsupported: %s", self.kind, durable.reason)
        self.capabilities = replace(type(self).capabilities, durable=durable)
        for name, raw in self._initial.items():
            await guarded(self._client.set(self.key(name), raw, nx=True), f"seed {name!r}")
        await super().start()

    async def destroy(self) -> None:
        """Close the connection pool."""
        self._closed = True
        await super().destroy()
        await self._client.aclose()

    async def is_ready(self) -> bool:
        return self.started and await ping(self._client, self.settings.health_timeout_s)

    async def is_healthy(self) -> bool:
        return not self._closed and await ping(self._client, self.settings.health_timeout_s)

    async def _get(self, names: list[str]) -> dict[str, Any]:
        if not names:
            return {}
        raws = await guarded(self._client.mget([self.key(n) for n in names]), "get")
        out: dict[str, Any] = {}
        for name, raw in zip(names, raws, strict=True):
            try:
                out[name] = load_value(None if raw is None else strict_text(raw))
            except ValueError as exc:
                raise UnhandledError(f"{self.kind} value {name!r} is not JSON: {exc}") from None
        return out

    async def _set(self, name: str, raw_json: str) -> None:
        await guarded(self._client.set(self.key(name), raw_json), f"set {name!r}")

    async def _remove(self, name: str) -> None:
        await guarded(self._client.delete(self.key(name)), f"remove {name!r}")

    async def _set_if_absent(self, name: str, raw_json: str, ttl_s: float | None) -> bool:
        px = max(int(ttl_s * 1000), 1) if ttl_s else 0
        key = self.key(name)
        created = await guarded(
            self._create(keys=[key, f"{self.prefix}:nx-call:{new_id()}"], args=[raw_json, px]),
            f"set_if_absent {name!r}",
        )
        return bool(created)


class RedisStateStore(_RedisStore):
    """State store on Redis (all operations enabled by default)."""

    kind = "state_store"


class RedisConfigStore(_RedisStore):
    """Config store on Redis (get-only by default)."""

    kind = "config_store"


class RedisSecretStore(_RedisStore):
    """Secret store on Redis (get-only by default; optional read cache, ``cache_ttl_s``)."""

    kind = "secret_store"
    capabilities = StoreCapabilities(cache=YES)
