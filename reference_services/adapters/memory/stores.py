"""In-memory state, config and secret stores."""

from __future__ import annotations

import itertools
import time
from typing import Any

from reference_services.runtime.spi.capabilities import YES, StoreCapabilities, unsupported
from reference_services.runtime.spi.store_base import StoreBase, Versioned, dump_value, load_value


class MemoryKV:
    """A dict with per-key expiry, shareable by several store objects.

    Every write gets a fresh version (a process-wide counter), so a
    compare-and-set names exactly one write.
    """

    def __init__(self) -> None:
        self.data: dict[str, tuple[str, float | None]] = {}
        self.versions: dict[str, str] = {}
        self._counter = itertools.count(1)

    def put(self, name: str, raw: str, ttl_s: float | None = None) -> str:
        """Write ``raw`` (expiring after ``ttl_s`` if given); the new version."""
        expires = time.monotonic() + ttl_s if ttl_s else None
        self.data[name] = (raw, expires)
        version = str(next(self._counter))
        self.versions[name] = version
        return version

    def version(self, name: str) -> str | None:
        """The version of the live value of ``name``."""
        if self.get(name) is None:
            return None
        return self.versions.setdefault(name, str(next(self._counter)))

    def get(self, name: str) -> str | None:
        hit = self.data.get(name)
        if hit is None:
            return None
        raw, expires = hit
        if expires is not None and expires <= time.monotonic():
            del self.data[name]
            return None
        return raw


_MEMORY_CAPS = StoreCapabilities(
    durable=unsupported("values live in process memory"),
    compare_and_set=YES,
    atomic_effects=YES,
)


class _MemoryStore(StoreBase):
    name = "memory"
    capabilities = _MEMORY_CAPS

    def __init__(
        self, kv: MemoryKV | None = None, *, initial: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.kv = kv or MemoryKV()
        for key, value in (initial or {}).items():
            self.kv.put(key, dump_value(key, value))

    async def _get(self, names: list[str]) -> dict[str, Any]:
        return {n: load_value(self.kv.get(n)) for n in names}

    async def _set(self, name: str, raw_json: str) -> None:
        self.kv.put(name, raw_json)

    async def _remove(self, name: str) -> None:
        self.kv.data.pop(name, None)
        self.kv.versions.pop(name, None)

    async def _set_if_absent(self, name: str, raw_json: str, ttl_s: float | None) -> bool:
        return await self._create_versioned(name, raw_json, ttl_s) is not None

    # No await between the check and the write: atomic on the event loop.
    async def _get_versioned(self, name: str) -> Versioned | None:
        raw = self.kv.get(name)
        if raw is None:
            return None
        return Versioned(load_value(raw), self.kv.version(name) or "")

    async def _create_versioned(self, name: str, raw_json: str, ttl_s: float | None) -> str | None:
        if self.kv.get(name) is not None:
            return None
        return self.kv.put(name, raw_json, ttl_s)

    async def _replace_if(
        self, name: str, version: str, raw_json: str, ttl_s: float | None, also: dict[str, str]
    ) -> str | None:
        if self.kv.version(name) != version:
            return None
        for key, raw in also.items():
            self.kv.put(key, raw)
        return self.kv.put(name, raw_json, ttl_s)

    async def _remove_if(self, name: str, version: str) -> bool:
        if self.kv.version(name) != version:
            return False
        await self._remove(name)
        return True


class DefaultStateStore(_MemoryStore):
    """In-memory state store (all operations enabled by default)."""

    kind = "state_store"


class DefaultConfigStore(_MemoryStore):
    """In-memory config store (get-only by default)."""

    kind = "config_store"


class DefaultSecretStore(_MemoryStore):
    """In-memory secret store (get-only by default; optional read cache with a TTL)."""

    kind = "secret_store"
    capabilities = StoreCapabilities(
        durable=unsupported("values live in process memory"),
        cache=YES,
        compare_and_set=YES,
        atomic_effects=YES,
    )
