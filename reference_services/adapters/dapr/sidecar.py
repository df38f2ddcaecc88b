"""The one connection module of the Dapr adapters: the sidecar's URL and an HTTP client."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from reference_services.runtime.errors import UnhandledError

DEFAULT_STORE = "statestore"


class DaprUnavailableError(UnhandledError):
    """The sidecar did not answer, or answered with a server error."""


@dataclass(frozen=True)
class DaprSettings:
    """Where the sidecar listens and which state store component to use."""

    base_url: str
    store: str
    timeout_s: float = 5.0

    @classmethod
    def resolve(cls, url: str | None, store: str | None = None,
                timeout_s: float = 5.0) -> DaprSettings:
        """From ``http://host:port[?store=NAME]`` (else ``DAPR_URL``, else Dapr's default
        ``http://127.0.0.1:3500``); ``store`` overrides the query."""
        import os

        url = url or os.environ.get("DAPR_URL") or "http://127.0.0.1:3500"
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"DAPR_URL must be http(s)://host:port[?store=NAME], got scheme {parts.scheme!r}"
            )
        if parts.username or parts.password:
            raise ValueError("DAPR_URL must not carry credentials (use DAPR_API_TOKEN)")
        name = store or (parse_qs(parts.query).get("store") or [DEFAULT_STORE])[0]
        return cls(f"{parts.scheme}://{parts.netloc}", name, timeout_s)

    def state_url(self, key: str | None = None, *, bulk: bool = False) -> str:
        """``/v1.0/state/<store>[/<key>|/bulk]`` (the key percent-encoded)."""
        path = f"{self.base_url}/v1.0/state/{quote(self.store, safe='')}"
        if bulk:
            return path + "/bulk"
        return path if key is None else f"{path}/{quote(key, safe='')}"

    def client(self) -> Any:
        """An httpx AsyncClient (with ``DAPR_API_TOKEN`` when set)."""
        import os

        import httpx

        headers = {}
        token = os.environ.get("DAPR_API_TOKEN")
        if token:
            headers["dapr-api-token"] = token
        return httpx.AsyncClient(timeout=self.timeout_s, headers=headers)
