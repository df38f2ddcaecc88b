"""State store over a Dapr sidecar's HTTP state API (``/v1.0/state/<store>``).

Keys are ``<prefix>:<name>``. Each key holds a small record ``{"v": <the value's JSON
text, or null when removed>, "exp": <expiry, ms since the epoch, or null>, "n": <a
nonce, fresh on every write>}``; the value travels as text inside it, so the sidecar
(which re-encodes JSON through Go's float64) never touches its numbers.

Every write is a read of the key's etag, then a save naming that etag with Dapr's
``first-write`` concurrency: the component checks and writes in one script, so a writer
that lost a race is refused and reads again. A key that does not exist yet is created by
a save without an etag, which the component refuses once another first-write created it.
On that,

- ``set_if_absent`` and ``create_versioned`` write only when the record is missing,
  removed or expired; ``ttl`` is checked on the record's ``exp`` (millisecond precision;
  the writers' clocks must agree), and Dapr's ``ttlInSeconds`` removes the record
  ``gc_margin_s`` after it expired;
- ``compare_and_set``: a version is the record's nonce: ``replace_if``/``remove_if`` read
  the record, compare the nonce and save with the etag they read, so a stale holder is
  refused even after the key was removed and re-created (the component's etag, a
  counter, would restart at 1 then);
- ``remove`` writes a removed record (a tombstone, collected after ``gc_margin_s``),
  never a delete, so a stale holder's save can never re-create the key.

``atomic_effects`` is declared unsupported: the Redis component runs a transaction's
operations in MULTI, which does not undo the writes before a refused one. Writers that
bypass this store leave records it does not read (a clear error names the key).
"""

from __future__ import annotations

import math
import time
import uuid
from dataclasses import replace
from typing import Any

from reference_services.adapters.dapr.sidecar import DaprSettings, DaprUnavailableError
from reference_services.runtime.errors import UnhandledError
from reference_services.runtime.spi.capabilities import YES, StoreCapabilities, unsupported
from reference_services.runtime.spi.store_base import (
    StoreBase,
    Versioned,
    dump_value,
    load_value,
)

__all__ = ["DaprStateStore", "DaprUnavailableError"]

_FIRST_WRITE = {"concurrency": "first-write"}
_ATTEMPTS = 20


def _now_ms() -> int:
    return int(time.time() * 1000)


def _nonce() -> str:
    return uuid.uuid4().hex


def _live(record: dict[str, Any] | None) -> bool:
    if not record or record.get("v") is None:
        return False
    exp = record.get("exp")
    return exp is None or exp > _now_ms()


class DaprStateStore(StoreBase):
    """State store on a Dapr sidecar (all operations enabled by default)."""

    kind = "state_store"
    name = "dapr"
    capabilities = StoreCapabilities(
        durable=YES,
        compare_and_set=YES,
        atomic_effects=unsupported(
            "Dapr's Redis component runs a transaction in MULTI: a refused operation does "
            "not undo the ones before it"
        ),
    )

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "purista",
        store: str | None = None,
        initial: dict[str, Any] | None = None,
        durable: bool | None = None,
        gc_margin_s: float = 3600.0,
        timeout_s: float = 5.0,
        health_timeout_s: float = 1.0,
        **switches: Any,
    ) -> None:
        """``url``: the sidecar (``http://127.0.0.1:3500[?store=NAME]``); ``store``: the state
        store component (default ``statestore``); ``durable``: override the declaration
        (values are as durable as the component's backing store); ``gc_margin_s``: how long
        expired and removed records stay before Dapr's ttl collects them; ``initial``
        values are created at ``start()`` unless present; ``switches`` as StoreBase."""
        super().__init__(**switches)
        if gc_margin_s < 60:
            raise ValueError(f"gc_margin_s must be >= 60 (a stale writer's window), got "
                             f"{gc_margin_s!r}")
        self.settings = DaprSettings.resolve(url, store, timeout_s)
        self.prefix = prefix
        self.gc_margin_s = gc_margin_s
        self.health_timeout_s = health_timeout_s
        self._initial = {k: dump_value(k, v) for k, v in (initial or {}).items()}
        self._client: Any = None
        self._closed = False
        if durable is False:
            self.capabilities = replace(
                type(self).capabilities, durable=unsupported("declared not durable")
            )

    def __repr__(self) -> str:
        return (f"<DaprStateStore {self.settings.base_url} store={self.settings.store!r} "
                f"prefix={self.prefix!r}>")

    def key(self, name: str) -> str:
        """The Dapr key holding ``name``."""
        return f"{self.prefix}:{name}"

    # -- life cycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Check the sidecar answers and has the state store; create ``initial`` values."""
        self._closed = False
        if self._client is None:
            self._client = self.settings.client()
        meta = await self._request("GET", f"{self.settings.base_url}/v1.0/metadata", "start")
        stores = [c.get("name") for c in meta.json().get("components", [])
                  if str(c.get("type", "")).startswith("state.")]
        if self.settings.store not in stores:
            raise UnhandledError(
                f"dapr sidecar {self.settings.base_url} has no state store "
                f"{self.settings.store!r} (it has: {', '.join(map(str, stores)) or 'none'})"
            )
        for name, raw in self._initial.items():
            await self._set_if_absent(name, raw, None)
        await super().start()

    async def destroy(self) -> None:
        """Close the HTTP client."""
        self._closed = True
        await super().destroy()
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    async def _answers(self) -> bool:
        if self._client is None:
            return False
        try:
            resp = await self._client.get(
                f"{self.settings.base_url}/v1.0/healthz/outbound", timeout=self.health_timeout_s
            )
        except Exception:
            return False
        return resp.status_code < 300

    async def is_ready(self) -> bool:
        return self.started and await self._answers()

    async def is_healthy(self) -> bool:
        return not self._closed and await self._answers()

    # -- HTTP ----------------------------------------------------------------------------
    async def _request(self, method: str, url: str, what: str, **kwargs: Any) -> Any:
        import httpx

        if self._client is None:
            self._client = self.settings.client()
        try:
            resp = await self._client.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise DaprUnavailableError(
                f"{self.kind} {self.name!r}: {what}: {type(exc).__name__}"
            ) from None
        if resp.status_code >= 500 and not _save_refused(resp):
            raise DaprUnavailableError(
                f"{self.kind} {self.name!r}: {what}: sidecar answered {resp.status_code} "
                f"{_error_code(resp)}"
            )
        return resp

    def _record(self, name: str, data: Any) -> dict[str, Any] | None:
        if data is None:
            return None
        if not isinstance(data, dict) or "n" not in data or "v" not in data:
            raise UnhandledError(f"{self.kind} value {name!r} was not written by this store")
        return data

    async def _read(self, name: str) -> tuple[str | None, dict[str, Any] | None]:
        """The key's etag and record (``None, None`` when the key does not exist)."""
        resp = await self._request("GET", self.settings.state_url(self.key(name)),
                                   f"get {name!r}")
        if resp.status_code == 204 or not resp.content:
            return None, None
        if resp.status_code != 200:
            raise UnhandledError(f"{self.kind} get {name!r}: sidecar answered "
                                 f"{resp.status_code} {_error_code(resp)}")
        return resp.headers.get("etag"), self._record(name, resp.json())

    async def _write(self, name: str, etag: str | None, value: str | None,
                     ttl_s: float | None, what: str) -> str | None:
        """Save a record (``value`` None: a tombstone) naming ``etag`` (None: create);
        its nonce, or None when the component refused (someone else wrote first)."""
        nonce = _nonce()
        exp = _now_ms() + max(1, math.ceil(ttl_s * 1000)) if ttl_s else None
        if value is None:
            gc = str(math.ceil(self.gc_margin_s))
        elif ttl_s:
            gc = str(math.ceil(ttl_s + self.gc_margin_s))
        else:
            gc = "-1"  # no expiry (clears one a previous record had)
        item: dict[str, Any] = {
            "key": self.key(name),
            "value": {"v": value, "exp": exp, "n": nonce},
            "options": _FIRST_WRITE,
            "metadata": {"ttlInSeconds": gc},
        }
        if etag is not None:
            item["etag"] = etag
        resp = await self._request("POST", self.settings.state_url(), what, json=[item])
        if resp.status_code in (200, 201, 204):
            return nonce
        if resp.status_code == 409 or _save_refused(resp):
            return None
        raise UnhandledError(
            f"{self.kind} {self.name!r}: {what}: sidecar answered {resp.status_code} "
            f"{_error_code(resp)}"
        )

    # -- hooks ---------------------------------------------------------------------------
    async def _get(self, names: list[str]) -> dict[str, Any]:
        if not names:
            return {}
        keys = list(dict.fromkeys(self.key(n) for n in names))
        resp = await self._request("POST", self.settings.state_url(bulk=True), "get",
                                   json={"keys": keys, "parallelism": 10})
        if resp.status_code != 200:
            raise UnhandledError(f"{self.kind} get: sidecar answered {resp.status_code} "
                                 f"{_error_code(resp)}")
        found = {item.get("key"): item.get("data") for item in resp.json()}
        out: dict[str, Any] = {}
        for name in names:
            record = self._record(name, found.get(self.key(name)))
            out[name] = self._value(name, record) if _live(record) else None
        return out

    def _value(self, name: str, record: dict[str, Any] | None) -> Any:
        assert record is not None
        try:
            return load_value(record["v"])
        except (TypeError, ValueError) as exc:
            raise UnhandledError(f"{self.kind} value {name!r} is not JSON: {exc}") from None

    async def _set(self, name: str, raw_json: str) -> None:
        for _ in range(_ATTEMPTS):
            etag, _record = await self._read(name)
            if await self._write(name, etag, raw_json, None, f"set {name!r}"):
                return
        raise UnhandledError(f"{self.kind} set {name!r}: {_ATTEMPTS} conflicting writers")

    async def _remove(self, name: str) -> None:
        for _ in range(_ATTEMPTS):
            etag, record = await self._read(name)
            if etag is None or record is None or record.get("v") is None:
                return
            if await self._write(name, etag, None, None, f"remove {name!r}"):
                return
        raise UnhandledError(f"{self.kind} remove {name!r}: {_ATTEMPTS} conflicting writers")

    async def _create_versioned(self, name: str, raw_json: str, ttl_s: float | None) -> str | None:
        for _ in range(_ATTEMPTS):
            etag, record = await self._read(name)
            if _live(record):
                return None
            nonce = await self._write(name, etag, raw_json, ttl_s, f"create {name!r}")
            if nonce is not None:
                return nonce
        raise UnhandledError(f"{self.kind} create {name!r}: {_ATTEMPTS} conflicting writers")

    async def _set_if_absent(self, name: str, raw_json: str, ttl_s: float | None) -> bool:
        return await self._create_versioned(name, raw_json, ttl_s) is not None

    async def _get_versioned(self, name: str) -> Versioned | None:
        _etag, record = await self._read(name)
        if not _live(record):
            return None
        assert record is not None
        return Versioned(self._value(name, record), str(record["n"]))

    async def _replace_if(
        self, name: str, version: str, raw_json: str, ttl_s: float | None, also: dict[str, str]
    ) -> str | None:
        etag, record = await self._read(name)
        if not _live(record) or record is None or record.get("n") != version:
            return None
        return await self._write(name, etag, raw_json, ttl_s, f"replace_if {name!r}")

    async def _remove_if(self, name: str, version: str) -> bool:
        etag, record = await self._read(name)
        if not _live(record) or record is None or record.get("n") != version:
            return False
        return await self._write(name, etag, None, None, f"remove_if {name!r}") is not None


def _error_code(resp: Any) -> str:
    try:
        return str(resp.json().get("errorCode", ""))
    except Exception:
        return ""


def _save_refused(resp: Any) -> bool:
    """Dapr answers 500 ERR_STATE_SAVE when the component's script refused the write
    (no etag on a key marked first-write): a refusal, not an outage."""
    if resp.status_code != 500 or _error_code(resp) != "ERR_STATE_SAVE":
        return False
    try:
        message = str(resp.json().get("message", ""))
    except Exception:
        return False
    return "failed to set key" in message and "user_script" in message
