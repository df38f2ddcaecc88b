"""Redis state, config and secret stores.

Keys are ``<prefix>:<kind>:<name>`` (e.g. ``purista:state_store:user-1``), values
JSON text. ``set_if_absent`` is ``SET NX PX`` in a small script: atomic, with a
server-side ttl, and safe to retry after a lost reply.
Versioned operations (``compare_and_set``): a value's version is the SHA-1 of its
stored text, checked and written in one Lua script; ``replace_if(..., also=...)``
writes the extra keys in the same script (``atomic_effects``; one Redis node, or
keys in one hash slot). A retried ``replace_if`` whose first reply was lost finds
its own value in place and answers its version again.
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
from reference_services.runtime.spi.store_base import (
    StoreBase,
    StoreKind,
    Versioned,
    dump_value,
    load_value,
)

__all__ = ["RedisConfigStore", "RedisSecretStore", "RedisStateStore", "RedisUnavailableError"]

log = logging.getLogger("reference_services.store.redis")

# SET KEYS[1] to ARGV[1] if absent, expiring after ARGV[2] ms (0: never); false if present
_SET_NX = """
local function set_nx()
  if tonumber(ARGV[2]) > 0 then
    return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2])
  end
  return redis.call('SET', KEYS[1], ARGV[1], 'NX')
end
"""

# SET NX PX, plus a short-lived marker naming the call, so that the client's retry of a
# create whose reply was lost answers "created" instead of "someone else has it".
_CREATE = _SET_NX + """
if redis.call('EXISTS', KEYS[2]) == 1 then return 1 end
if not set_nx() then return 0 end
redis.call('SET', KEYS[2], '1', 'PX', 120000)
return 1
"""


_GETV = """
local v = redis.call('GET', KEYS[1])
if not v then return false end
return {v, redis.sha1hex(v)}
"""

_CREATEV = _SET_NX + """
local done = redis.call('GET', KEYS[2])
if done then return done end
if not set_nx() then return false end
local sha = redis.sha1hex(ARGV[1])
redis.call('SET', KEYS[2], sha, 'PX', 120000)
return sha
"""

_REPLACE_IF = """
local v = redis.call('GET', KEYS[1])
local new = redis.sha1hex(ARGV[2])
if not v then return false end
local cur = redis.sha1hex(v)
if cur == new then return new end
if cur ~= ARGV[1] then return false end
for i = 2, #KEYS do redis.call('SET', KEYS[i], ARGV[i + 2]) end
if tonumber(ARGV[3]) > 0 then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
else
  redis.call('SET', KEYS[1], ARGV[2])
end
return new
"""

_REMOVE_IF = """
local v = redis.call('GET', KEYS[1])
if not v or redis.sha1hex(v) ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

_SCRIPTS = (_CREATE, _GETV, _CREATEV, _REPLACE_IF, _REMOVE_IF)


def _px(ttl_s: float | None) -> int:
    return max(int(ttl_s * 1000), 1) if ttl_s else 0


class _RedisStore(StoreBase):
    """Shared implementation; subclasses only set ``kind`` (and capabilities)."""

    name = "redis"
    capabilities: StoreCapabilities = StoreCapabilities(compare_and_set=YES, atomic_effects=YES)
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
        self._getv = self._client.register_script(_GETV)
        self._createv = self._client.register_script(_CREATEV)
        self._replace_if_script = self._client.register_script(_REPLACE_IF)
        self._remove_if_script = self._client.register_script(_REMOVE_IF)
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
        for script in _SCRIPTS:
            await guarded(self._client.script_load(script), f"{self.kind} script load")
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
        key = self.key(name)
        created = await guarded(
            self._create(
                keys=[key, f"{self.prefix}:nx-call:{new_id()}"], args=[raw_json, _px(ttl_s)]
            ),
            f"set_if_absent {name!r}",
        )
        return bool(created)

    async def _get_versioned(self, name: str) -> Versioned | None:
        hit = await guarded(self._getv(keys=[self.key(name)]), f"get_versioned {name!r}")
        if not hit:
            return None
        raw, sha = hit
        try:
            value = load_value(strict_text(raw))
        except ValueError as exc:
            raise UnhandledError(f"{self.kind} value {name!r} is not JSON: {exc}") from None
        return Versioned(value, strict_text(sha))

    async def _create_versioned(self, name: str, raw_json: str, ttl_s: float | None) -> str | None:
        keys = [self.key(name), f"{self.prefix}:nx-call:{new_id()}"]
        sha = await guarded(
            self._createv(keys=keys, args=[raw_json, _px(ttl_s)]), f"create_versioned {name!r}"
        )
        return strict_text(sha) if sha else None

    async def _replace_if(
        self, name: str, version: str, raw_json: str, ttl_s: float | None, also: dict[str, str]
    ) -> str | None:
        keys = [self.key(name), *(self.key(k) for k in also)]
        args = [version, raw_json, _px(ttl_s), *also.values()]
        sha = await guarded(self._replace_if_script(keys=keys, args=args), f"replace_if {name!r}")
        return strict_text(sha) if sha else None

    async def _remove_if(self, name: str, version: str) -> bool:
        removed = await guarded(
            self._remove_if_script(keys=[self.key(name)], args=[version]), f"remove_if {name!r}"
        )
        return bool(removed)


class RedisStateStore(_RedisStore):
    """State store on Redis (all operations enabled by default)."""

    kind = "state_store"


class RedisConfigStore(_RedisStore):
    """Config store on Redis (get-only by default)."""

    kind = "config_store"


class RedisSecretStore(_RedisStore):
    """Secret store on Redis (get-only by default; optional read cache, ``cache_ttl_s``)."""

    kind = "secret_store"
    capabilities = StoreCapabilities(cache=YES, compare_and_set=YES, atomic_effects=YES)
