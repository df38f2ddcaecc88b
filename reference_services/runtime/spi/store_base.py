"""Shared behaviour of stores: operation switches, JSON values, secret cache."""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from reference_services.runtime.errors import HandledError, StatusCode
from reference_services.runtime.spi.capabilities import StoreCapabilities

StoreKind = Literal["state_store", "config_store", "secret_store"]

# PURISTA defaults: state stores allow everything; config and secret stores are get-only.
_DEFAULT_ENABLED: dict[str, tuple[bool, bool, bool]] = {
    "state_store": (True, True, True),
    "config_store": (True, False, False),
    "secret_store": (True, False, False),
}


class StoreOperationDisabled(HandledError):
    """A store operation was called that its configuration disables (401)."""

    default_status = StatusCode.UNAUTHORIZED


class StoreValueError(HandledError):
    """A value that cannot be stored as JSON (400)."""

    default_status = StatusCode.BAD_REQUEST


def dump_value(name: str, value: Any) -> str:
    """Serialise a store value to JSON text, or raise a 400 naming the key."""
    try:
        return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StoreValueError(f"value for {name!r} is not JSON: {exc}") from None


def load_value(raw: str | bytes | None) -> Any:
    """Parse a stored JSON value (``None`` stays ``None``)."""
    if raw is None:
        return None
    return json.loads(raw)


class StoreCapabilityMissing(HandledError):
    """An operation needs a capability the store does not declare (501)."""

    default_status = StatusCode.NOT_IMPLEMENTED


@dataclass(frozen=True)
class Versioned:
    """A value and the opaque version a later ``replace_if``/``remove_if`` must name."""

    value: Any
    version: str


class StoreBase(ABC):
    """Base for stores: checks switches, names and values, then calls the ``_`` hooks."""

    kind: ClassVar[StoreKind] = "state_store"
    name: str = "base"
    capabilities: StoreCapabilities = StoreCapabilities()

    def __init__(
        self,
        *,
        enable_get: bool | None = None,
        enable_set: bool | None = None,
        enable_remove: bool | None = None,
        cache_ttl_s: float | None = None,
    ) -> None:
        dget, dset, dremove = _DEFAULT_ENABLED[self.kind]
        self.enable_get = dget if enable_get is None else enable_get
        self.enable_set = dset if enable_set is None else enable_set
        self.enable_remove = dremove if enable_remove is None else enable_remove
        self.cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[float, Any]] = {}
        self._started = False

    @property
    def started(self) -> bool:
        """Whether ``start`` ran and ``destroy`` has not."""
        return self._started

    def _check(self, op: str, enabled: bool) -> None:
        if not enabled:
            raise StoreOperationDisabled(f"{op} is disabled on {self.kind} {self.name!r}")

    @staticmethod
    def _check_name(name: Any) -> None:
        if not isinstance(name, str) or not name:
            raise StoreValueError(f"store key must be a non-empty string, got {name!r}")

    async def get(self, *names: str) -> dict[str, Any]:
        """Values by name; a missing name maps to ``None``."""
        self._check("get", self.enable_get)
        for n in names:
            self._check_name(n)
        if not self.cache_ttl_s:
            return await self._get(list(names))
        now = time.monotonic()
        out: dict[str, Any] = {}
        missing = []
        for n in names:
            hit = self._cache.get(n)
            if hit is not None and hit[0] > now:
                out[n] = hit[1]
            else:
                missing.append(n)
        if missing:
            fresh = await self._get(missing)
            for n, v in fresh.items():
                self._cache[n] = (now + self.cache_ttl_s, v)
            out.update(fresh)
        return {n: out[n] for n in names}

    async def set(self, name: str, value: Any) -> None:
        """Store a JSON value under ``name``."""
        self._check("set", self.enable_set)
        self._check_name(name)
        await self._set(name, dump_value(name, value))
        self._cache.pop(name, None)

    async def remove(self, name: str) -> None:
        """Remove ``name``; removing a missing key is not an error."""
        self._check("remove", self.enable_remove)
        self._check_name(name)
        await self._remove(name)
        self._cache.pop(name, None)

    async def set_if_absent(self, name: str, value: Any, ttl_s: float | None = None) -> bool:
        """Create ``name`` only if it does not exist (or expired); True if created."""
        self._check("set", self.enable_set)
        self._check_name(name)
        created = await self._set_if_absent(name, dump_value(name, value), ttl_s)
        if created:
            self._cache.pop(name, None)
        return created

    # --- versioned (fenced) operations: capability ``compare_and_set``

    def _need(self, capability: str) -> None:
        if not self.capabilities.supports(capability):
            raise StoreCapabilityMissing(f"{self.kind} {self.name!r} does not support {capability}")

    async def get_versioned(self, name: str) -> Versioned | None:
        """The live value of ``name`` and its version, or ``None`` (missing or expired)."""
        self._check("get", self.enable_get)
        self._check_name(name)
        self._need("compare_and_set")
        return await self._get_versioned(name)

    async def create_versioned(
        self, name: str, value: Any, ttl_s: float | None = None
    ) -> str | None:
        """Create ``name`` if absent (or expired); its version, or ``None`` if it exists."""
        self._check("set", self.enable_set)
        self._check_name(name)
        self._need("compare_and_set")
        version = await self._create_versioned(name, dump_value(name, value), ttl_s)
        self._cache.pop(name, None)
        return version

    async def replace_if(
        self,
        name: str,
        version: str,
        value: Any,
        ttl_s: float | None = None,
        *,
        also: Mapping[str, Any] | None = None,
    ) -> str | None:
        """Write ``value`` only if ``name`` still has ``version`` (and has not expired).

        Returns the new version, or ``None`` when someone else wrote or the value
        expired: nothing was written then. ``also`` are further keys written in the
        same unit (capability ``atomic_effects``): all or nothing.
        """
        self._check("set", self.enable_set)
        self._check_name(name)
        self._need("compare_and_set")
        extra: dict[str, str] = {}
        if also:
            self._need("atomic_effects")
            for key, item in also.items():
                self._check_name(key)
                if key == name:
                    raise StoreValueError(f"atomic write names the record {name!r} itself")
                extra[key] = dump_value(key, item)
        raw = dump_value(name, value)
        new = await self._replace_if(name, version, raw, ttl_s, extra)
        for key in (name, *extra):
            self._cache.pop(key, None)
        return new

    async def remove_if(self, name: str, version: str) -> bool:
        """Remove ``name`` only if it still has ``version``; True if removed."""
        self._check("remove", self.enable_remove)
        self._check_name(name)
        self._need("compare_and_set")
        removed = await self._remove_if(name, version)
        self._cache.pop(name, None)
        return removed

    def clear_cache(self) -> None:
        """Drop cached values (secret stores)."""
        self._cache.clear()

    async def start(self) -> None:
        """Connect to the backing service."""
        self._started = True

    async def destroy(self) -> None:
        """Release the connection."""
        self._started = False

    async def is_ready(self) -> bool:
        return self._started

    async def is_healthy(self) -> bool:
        return self._started

    @abstractmethod
    async def _get(self, names: list[str]) -> dict[str, Any]:
        """Return ``{name: value or None}`` for all ``names`` (values parsed from JSON)."""

    @abstractmethod
    async def _set(self, name: str, raw_json: str) -> None: ...

    @abstractmethod
    async def _remove(self, name: str) -> None: ...

    async def _set_if_absent(self, name: str, raw_json: str, ttl_s: float | None) -> bool:
        raise NotImplementedError(f"{type(self).__name__} has no atomic set_if_absent")

    async def _get_versioned(self, name: str) -> Versioned | None:
        raise NotImplementedError(f"{type(self).__name__} has no versioned reads")

    async def _create_versioned(self, name: str, raw_json: str, ttl_s: float | None) -> str | None:
        raise NotImplementedError(f"{type(self).__name__} has no versioned create")

    async def _replace_if(
        self, name: str, version: str, raw_json: str, ttl_s: float | None, also: dict[str, str]
    ) -> str | None:
        raise NotImplementedError(f"{type(self).__name__} has no compare-and-set")

    async def _remove_if(self, name: str, version: str) -> bool:
        raise NotImplementedError(f"{type(self).__name__} has no compare-and-remove")
