"""State, config and secret stores on NATS JetStream key-value buckets (report name ``nats-kv``).

One bucket per prefix and kind (``<prefix>_state_store``, ...), file storage,
history 1. Store names that are not valid KV keys are encoded (see
``subjects.kv_key``). Values are JSON text, readable with ``nats kv get``.

``set_if_absent`` is ``kv.create`` (atomic). nats-server 2.9 has no per-key
TTL, so a value written with a ttl is stored as an envelope
``{"__purista_expiring__": {"expires_at_ms": ..., "value": ...}}``: readers treat
it as absent once expired, and ``set_if_absent`` takes an expired key over with
a revision-checked ``update`` (exactly one contender wins). Expired keys are not
reclaimed until taken over or removed; expiry uses the writers' and readers'
wall clocks.

Versioned operations use the entry revision (``update(..., last=revision)``).
NATS 2.9 has no multi-key transaction, so ``replace_if(..., also=...)`` commits
a redo record: the one revision-checked write of ``name`` carries the extra
writes (``{"__purista_redo__": {"value": ..., "writes": {...}}}``); they are then
applied and the record rewritten plain. A writer killed in between leaves the
redo record, and the next ``get_versioned`` of ``name`` applies it (the writes
are absolute values, so applying twice is harmless). Until then a direct reader
of an extra key sees its old value; a stale writer's commit fails its revision
check and nothing of it is applied.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

from reference_services.adapters.nats.connection import (
    NatsTimings,
    NatsUnavailableError,
    connect_nats,
    resolve_url,
)
from reference_services.adapters.nats.subjects import kv_key, name_token
from reference_services.runtime.errors import PuristaError
from reference_services.runtime.spi.capabilities import YES, StoreCapabilities, unsupported
from reference_services.runtime.spi.store_base import StoreBase, Versioned, dump_value

log = logging.getLogger(__name__)

ENVELOPE = "__purista_expiring__"
REDO = "__purista_redo__"
_CAPS = StoreCapabilities(
    durable=YES,
    set_if_absent=YES,
    ttl=YES,
    cache=unsupported("reads always go to the bucket"),
    compare_and_set=YES,
    atomic_effects=YES,
)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _unwrap(raw: bytes | None) -> tuple[bool, Any]:
    """``(present, value)`` of a stored value; an expired envelope is absent."""
    if raw is None:
        return False, None
    value = json.loads(raw)
    if isinstance(value, dict) and len(value) == 1 and ENVELOPE in value:
        inner = value[ENVELOPE]
        if not isinstance(inner, dict) or inner.get("expires_at_ms", 0) <= _now_ms():
            return False, None
        return True, inner.get("value")
    return True, value


def _redo(value: Any) -> tuple[Any, dict[str, Any] | None]:
    """``(value, writes)`` of a redo record; ``(value, None)`` for a plain value."""
    if isinstance(value, dict) and len(value) == 1 and REDO in value:
        inner = value[REDO]
        if isinstance(inner, dict) and isinstance(inner.get("writes"), dict):
            return inner.get("value"), inner["writes"]
    return value, None


def _encode(value: Any, ttl_s: float | None) -> bytes:
    if ttl_s:
        value = {ENVELOPE: {"expires_at_ms": _now_ms() + int(ttl_s * 1000), "value": value}}
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _expires_in_s(raw: bytes) -> float | None:
    value = json.loads(raw)
    if isinstance(value, dict) and len(value) == 1 and ENVELOPE in value:
        return max((value[ENVELOPE].get("expires_at_ms", 0) - _now_ms()) / 1000, 0.001)
    return None


class _NatsKVStore(StoreBase):
    name = "nats-kv"
    capabilities = _CAPS

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "purista",
        bucket: str | None = None,
        initial: dict[str, Any] | None = None,
        timings: NatsTimings | Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.url = resolve_url(url)
        self.prefix = prefix
        self.bucket = bucket or f"{name_token(prefix)}_{self.kind}"
        self.timings = NatsTimings.of(timings)
        self._initial = dict(initial or {})
        self._nc: Any = None
        self._kv: Any = None

    @classmethod
    def from_env(cls, **kwargs: Any) -> Any:
        """A store for ``NATS_URL`` (and ``PURISTA_PREFIX`` when set)."""
        import os

        kwargs.setdefault("prefix", os.environ.get("PURISTA_PREFIX", "purista"))
        return cls(None, **kwargs)

    async def start(self) -> None:
        """Connect and create the bucket (kept if it exists); write ``initial`` values."""
        self._nc = await connect_nats(self.url, f"purista-{self.kind}", self.timings)
        async with self._op():
            await self._create_bucket()
            for name, value in self._initial.items():
                await self._kv.put(kv_key(name), dump_value(name, value).encode())
        await super().start()

    async def _create_bucket(self) -> None:
        from nats.js.api import KeyValueConfig, StorageType

        js = self._nc.jetstream(timeout=self.timings.op_timeout_s)
        self._kv = await js.create_key_value(
            KeyValueConfig(bucket=self.bucket, history=1, storage=StorageType.FILE)
        )

    async def _write(self, operation: Any) -> Any:
        """Run a write; if the server lost the bucket (new store, operator), create it again."""
        import nats.js.errors

        try:
            return await operation()
        except nats.js.errors.NoStreamResponseError:
            log.warning("nats-kv: bucket %s is missing, creating it again", self.bucket)
            await self._create_bucket()
            return await operation()

    async def destroy(self) -> None:
        """Close the connection."""
        await super().destroy()
        if self._nc is not None:
            with contextlib.suppress(Exception):
                await self._nc.close()
        self._nc = None

    async def is_ready(self) -> bool:
        return self.started and self._nc is not None and self._nc.is_connected

    async def is_healthy(self) -> bool:
        return await self.is_ready()

    @contextlib.asynccontextmanager
    async def _op(self) -> AsyncIterator[None]:
        import nats.errors

        if self._nc is None:
            raise NatsUnavailableError(f"{self.kind} {self.name!r} is not started")
        try:
            yield
        except PuristaError:
            raise
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise NatsUnavailableError(f"NATS KV operation failed: {exc!r}") from exc

    async def _entry(self, name: str) -> Any:
        import nats.js.errors

        try:
            return await self._kv.get(kv_key(name))
        except nats.js.errors.KeyNotFoundError:
            return None

    async def _get(self, names: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        async with self._op():
            for n in names:
                entry = await self._entry(n)
                try:
                    out[n] = _redo(_unwrap(entry.value if entry is not None else None)[1])[0]
                except ValueError:
                    log.warning("nats-kv %s: %r is not JSON; treated as missing", self.bucket, n)
                    out[n] = None
        return out

    async def _set(self, name: str, raw_json: str) -> None:
        async with self._op():
            await self._write(lambda: self._kv.put(kv_key(name), raw_json.encode()))

    async def _remove(self, name: str) -> None:
        async with self._op():
            await self._write(lambda: self._kv.delete(kv_key(name)))

    async def _set_if_absent(self, name: str, raw_json: str, ttl_s: float | None) -> bool:
        import nats.js.errors

        data = raw_json.encode()
        if ttl_s:
            expires = _now_ms() + int(ttl_s * 1000)
            envelope = {ENVELOPE: {"expires_at_ms": expires, "value": json.loads(raw_json)}}
            data = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
        key = kv_key(name)
        async with self._op():
            for _ in range(5):
                try:
                    await self._write(lambda: self._kv.create(key, data))
                    return True
                except nats.js.errors.KeyWrongLastSequenceError:
                    pass
                entry = await self._entry(name)
                if entry is None:
                    continue  # removed meanwhile: try to create again
                try:
                    present, _ = _unwrap(entry.value)
                except ValueError:
                    present = True
                if present:
                    return False
                try:  # expired: take it over, if nobody else did first
                    await self._kv.update(key, data, last=entry.revision)
                    return True
                except nats.js.errors.KeyWrongLastSequenceError:
                    return False
        return False

    # --- versioned operations (revision-checked)

    async def _get_versioned(self, name: str) -> Versioned | None:
        import nats.js.errors

        async with self._op():
            entry = await self._entry(name)
            if entry is None:
                return None
            try:
                present, value = _unwrap(entry.value)
            except ValueError:
                log.warning("nats-kv %s: %r is not JSON; treated as missing", self.bucket, name)
                return None
            if not present:
                return None
            plain, writes = _redo(value)
            if writes is None:
                return Versioned(plain, str(entry.revision))
            for key, item in writes.items():  # a committed redo record: roll it forward
                await self._write(lambda k=key, v=item: self._kv.put(kv_key(k), _encode(v, None)))
            try:
                rev = await self._kv.update(
                    kv_key(name), _encode(plain, _expires_in_s(entry.value)), last=entry.revision
                )
            except nats.js.errors.KeyWrongLastSequenceError:
                return await self._get_versioned(name)
            return Versioned(plain, str(rev))

    async def _create_versioned(self, name: str, raw_json: str, ttl_s: float | None) -> str | None:
        import nats.js.errors

        data = _encode(json.loads(raw_json), ttl_s)
        key = kv_key(name)
        async with self._op():
            for _ in range(5):
                try:
                    return str(await self._write(lambda: self._kv.create(key, data)))
                except nats.js.errors.KeyWrongLastSequenceError:
                    pass
                entry = await self._entry(name)
                if entry is None:
                    continue
                try:
                    present, _ = _unwrap(entry.value)
                except ValueError:
                    present = True
                if present:
                    return None
                try:
                    return str(await self._kv.update(key, data, last=entry.revision))
                except nats.js.errors.KeyWrongLastSequenceError:
                    return None
        return None

    async def _live_revision(self, name: str, version: str) -> int | None:
        """The entry's revision if it is ``version`` and has not expired."""
        entry = await self._entry(name)
        if entry is None or str(entry.revision) != version:
            return None
        try:
            present, _ = _unwrap(entry.value)
        except ValueError:
            return None
        return int(entry.revision) if present else None

    async def _replace_if(
        self, name: str, version: str, raw_json: str, ttl_s: float | None, also: dict[str, str]
    ) -> str | None:
        import nats.js.errors

        value = json.loads(raw_json)
        key = kv_key(name)
        async with self._op():
            last = await self._live_revision(name, version)
            if last is None:
                return None
            if not also:
                try:
                    return str(await self._kv.update(key, _encode(value, ttl_s), last=last))
                except nats.js.errors.KeyWrongLastSequenceError:
                    return None
            writes = {k: json.loads(v) for k, v in also.items()}
            record = {REDO: {"value": value, "writes": writes}}
            try:
                committed = await self._kv.update(key, _encode(record, ttl_s), last=last)
            except nats.js.errors.KeyWrongLastSequenceError:
                return None
            for k, raw in also.items():
                await self._write(lambda k=k, raw=raw: self._kv.put(kv_key(k), raw.encode()))
            try:
                return str(await self._kv.update(key, _encode(value, ttl_s), last=committed))
            except nats.js.errors.KeyWrongLastSequenceError:
                return str(committed)  # someone rolled it forward already

    async def _remove_if(self, name: str, version: str) -> bool:
        import nats.js.errors

        async with self._op():
            last = await self._live_revision(name, version)
            if last is None:
                return False
            try:
                await self._kv.delete(kv_key(name), last=last)
            except nats.js.errors.KeyWrongLastSequenceError:
                return False
            return True


class NatsKVStateStore(_NatsKVStore):
    """State store on a NATS KV bucket (all operations enabled by default)."""

    kind = "state_store"


class NatsKVConfigStore(_NatsKVStore):
    """Config store on a NATS KV bucket (get-only by default)."""

    kind = "config_store"


class NatsKVSecretStore(_NatsKVStore):
    """Secret store on a NATS KV bucket (get-only by default; optional read cache with a TTL)."""

    kind = "secret_store"
    capabilities = StoreCapabilities(
        durable=YES, set_if_absent=YES, ttl=YES, cache=YES, compare_and_set=YES, atomic_effects=YES
    )
