"""State store over a Dapr sidecar's HTTP state API (``/v1.0/state/<store>``).

Keys are ``<prefix>:<name>``; a value travels as a JSON *string* holding the value's JSON
text, so the sidecar (which would re-encode a JSON value through Go's float64) never
touches its numbers. Every write uses Dapr's ``first-write`` concurrency, which marks the
key; on such a key a save without an etag fails, so

- ``set_if_absent`` is one save without an etag (atomic in the component: the Redis
  component checks and writes in one script); ``ttl`` is Dapr's ``ttlInSeconds``
  (whole seconds, rounded up);
- ``set`` reads the key's etag and saves with it (again on a conflict): last write wins,
  the ttl is cleared (``ttlInSeconds: -1``);
- ``remove`` deletes without an etag.

Writers that bypass this store (plain last-write saves) leave unmarked keys that a later
``set_if_absent`` would overwrite. ``compare_and_set`` is declared unsupported: Dapr's
Redis component accepts a save naming an etag when the key is missing (an expired claim
would be re-created, not refused), and restarts a key's etag at 1 after it is deleted or
expires, so an old version can match a new value.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from reference_services.adapters.dapr.sidecar import DaprSettings, DaprUnavailableError
from reference_services.runtime.errors import UnhandledError
from reference_services.runtime.spi.capabilities import YES, StoreCapabilities, unsupported
from reference_services.runtime.spi.store_base import StoreBase, dump_value, load_value

__all__ = ["DaprStateStore", "DaprUnavailableError"]

_FIRST_WRITE = {"concurrency": "first-write"}
_SET_ATTEMPTS = 20


def ttl_seconds(ttl_s: float | None) -> str:
    """Dapr's ``ttlInSeconds``: whole seconds rounded up (``-1``: no expiry)."""
    return str(max(1, math.ceil(ttl_s))) if ttl_s else "-1"


class DaprStateStore(StoreBase):
    """State store on a Dapr sidecar (all operations enabled by default)."""

    kind = "state_store"
    name = "dapr"
    capabilities = StoreCapabilities(
        durable=YES,
        compare_and_set=unsupported(
            "Dapr's state.redis accepts a save naming an etag when the key is missing (an "
            "expired claim is re-created, not refused) and restarts etags at 1 after a "
            "delete or expiry (an old version can match a new value)"
        ),
        atomic_effects=unsupported("needs compare_and_set"),
    )

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "purista",
        store: str | None = None,
        initial: dict[str, Any] | None = None,
        durable: bool | None = None,
        timeout_s: float = 5.0,
        health_timeout_s: float = 1.0,
        **switches: Any,
    ) -> None:
        """``url``: the sidecar (``http://127.0.0.1:3500[?store=NAME]``); ``store``: the state
        store component (default ``statestore``); ``durable``: override the declaration
        (values are as durable as the component's backing store); ``initial`` values are
        created at ``start()`` unless present; ``switches`` as :class:`StoreBase`."""
        super().__init__(**switches)
        self.settings = DaprSettings.resolve(url, store, timeout_s)
        self.prefix = prefix
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

    async def _save(self, item: dict[str, Any], what: str) -> bool:
        """One save; False when the component refused it (etag mismatch, or no etag on a
        marked key)."""
        resp = await self._request("POST", self.settings.state_url(), what, json=[item])
        if resp.status_code in (200, 201, 204):
            return True
        if resp.status_code == 409 or _save_refused(resp):
            return False
        raise UnhandledError(
            f"{self.kind} {self.name!r}: {what}: sidecar answered {resp.status_code} "
            f"{_error_code(resp)}"
        )

    async def _etag(self, name: str) -> str | None:
        resp = await self._request("GET", self.settings.state_url(self.key(name)),
                                   f"get {name!r}")
        if resp.status_code == 204:
            return None
        if resp.status_code != 200:
            raise UnhandledError(f"{self.kind} get {name!r}: sidecar answered "
                                 f"{resp.status_code} {_error_code(resp)}")
        return resp.headers.get("etag")

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
            data = found.get(self.key(name))
            if data is None:
                out[name] = None
                continue
            if not isinstance(data, str):
                raise UnhandledError(f"{self.kind} value {name!r} was not written by this store")
            try:
                out[name] = load_value(data)
            except ValueError as exc:
                raise UnhandledError(f"{self.kind} value {name!r} is not JSON: {exc}") from None
        return out

    async def _set(self, name: str, raw_json: str) -> None:
        for _ in range(_SET_ATTEMPTS):
            item: dict[str, Any] = {
                "key": self.key(name), "value": raw_json, "options": _FIRST_WRITE,
                "metadata": {"ttlInSeconds": "-1"},
            }
            etag = await self._etag(name)
            if etag is not None:
                item["etag"] = etag
            if await self._save(item, f"set {name!r}"):
                return
        raise UnhandledError(
            f"{self.kind} set {name!r}: {_SET_ATTEMPTS} conflicting writers in a row"
        )

    async def _remove(self, name: str) -> None:
        resp = await self._request("DELETE", self.settings.state_url(self.key(name)),
                                   f"remove {name!r}")
        if resp.status_code not in (200, 204):
            raise UnhandledError(f"{self.kind} remove {name!r}: sidecar answered "
                                 f"{resp.status_code} {_error_code(resp)}")

    async def _set_if_absent(self, name: str, raw_json: str, ttl_s: float | None) -> bool:
        item = {"key": self.key(name), "value": raw_json, "options": _FIRST_WRITE,
                "metadata": {"ttlInSeconds": ttl_seconds(ttl_s)}}
        return await self._save(item, f"set_if_absent {name!r}")


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
