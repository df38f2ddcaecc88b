"""In-memory state, config and secret stores."""

from __future__ import annotations

import time
from typing import Any

from reference_services.runtime.spi.capabilities import YES, StoreCapabilities, unsupported
from reference_services.runtime.spi.store_base import StoreBase, dump_value, load_value


class MemoryKV:
    """A dict with per-key expiry, shareable by several store objects."""

    def __init__(self) -> None:
        self.data: dict[str, tuple[str, float | None]] = {}

    def get(self, name: str) -> str | None:
        hit = self.data.get(name)
        if hit is None:
            return None
        raw, expires = hit
        if expires is not None and expires <= time.monotonic():
            del self.data[name]
            return None
        return raw


_MEMORY_CAPS = StoreCapabilities(durable=unsupported("values live in process memory"))


class _MemoryStore(StoreBase):
    name = "memory"
    capabilities = _MEMORY_CAPS

    def __init__(
        self, kv: MemoryKV | None = None, *, initial: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.kv = kv or MemoryKV()
        for key, value in (initial or {}).items():
            self.kv.data[key] = (dump_value(key, value), None)

    async def _get(self, names: list[str]) -> dict[str, Any]:
        return {n: load_value(self.kv.get(n)) for n in names}

    async def _set(self, name: str, raw_json: str) -> None:
        self.kv.data[name] = (raw_json, None)

    async def _remove(self, name: str) -> None:
        self.kv.data.pop(name, None)

    async def _set_if_absent(self, name: str, raw_json: str, ttl_s: float | None) -> bool:
        if self.kv.get(name) is not None:
            return False
        expires = time.monotonic() + ttl_s if ttl_s else None
        self.kv.data[name] = (raw_json, expires)
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
    )
