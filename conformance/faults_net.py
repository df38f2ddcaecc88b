"""Network faults for the faults suite: one Toxiproxy proxy between an adapter and its broker.

Uses ``harness.faults.network`` when the harness provides it; until then this
small client talks to a real ``toxiproxy-server`` over its HTTP API (blocking
calls run in a thread). Every fault is an async context manager: the fault is
active inside the block and removed on exit, even when the block raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import urllib.error
import urllib.request
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

HTTP_TIMEOUT_S = 5.0


class ToxiproxyError(Exception):
    """The Toxiproxy API refused a request."""


@dataclass
class ToxiproxyClient:
    """A blocking client of one toxiproxy-server (``api`` = ``http://host:port``)."""

    api: str

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One API call; the decoded JSON answer (None for an empty one)."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.api.rstrip("/") + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=HTTP_TIMEOUT_S) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            raise ToxiproxyError(f"{method} {path}: {exc.code} {exc.read()[:200]!r}") from exc
        return json.loads(raw) if raw.strip() else None


def swap_netloc(url: str, host: str, port: int) -> str:
    """``url`` with its host and port replaced (user info, path and query kept)."""
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class Proxy:
    """A proxy in front of ``upstream_url``; clients connect to :attr:`url`."""

    def __init__(self, client: ToxiproxyClient, upstream_url: str, name: str | None = None):
        self.client = client
        self.upstream_url = upstream_url
        self.name = name or f"cf-{uuid.uuid4().hex[:12]}"
        parts = urlsplit(upstream_url)
        self.upstream = f"{parts.hostname}:{parts.port}"
        self.listen = ""

    @property
    def url(self) -> str:
        """The broker URL through the proxy."""
        host, _, port = self.listen.rpartition(":")
        return swap_netloc(self.upstream_url, host, int(port))

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        return await asyncio.to_thread(self.client.request, method, path, body)

    async def create(self) -> Proxy:
        """Create the proxy on a free port."""
        answer = await self._call(
            "POST",
            "/proxies",
            {
                "name": self.name,
                "listen": "127.0.0.1:0",
                "upstream": self.upstream,
                "enabled": True,
            },
        )
        self.listen = str(answer["listen"])
        return self

    async def delete(self) -> None:
        """Remove the proxy (closes every connection through it)."""
        with contextlib.suppress(ToxiproxyError, OSError):
            await self._call("DELETE", f"/proxies/{self.name}")

    async def set_enabled(self, enabled: bool) -> None:
        """Enable or disable (refuse and drop connections) the proxy, on the same port."""
        await self._call(
            "POST",
            f"/proxies/{self.name}",
            {"enabled": enabled, "listen": self.listen, "upstream": self.upstream},
        )

    @contextlib.asynccontextmanager
    async def toxic(
        self, kind: str, stream: str = "downstream", toxicity: float = 1.0, **attributes: Any
    ) -> AsyncIterator[None]:
        """Add a toxic for the duration of the block."""
        name = f"{kind}_{stream}_{uuid.uuid4().hex[:6]}"
        await self._call(
            "POST",
            f"/proxies/{self.name}/toxics",
            {
                "name": name,
                "type": kind,
                "stream": stream,
                "toxicity": toxicity,
                "attributes": attributes,
            },
        )
        try:
            yield
        finally:
            with contextlib.suppress(ToxiproxyError, OSError):
                await self._call("DELETE", f"/proxies/{self.name}/toxics/{name}")

    @contextlib.asynccontextmanager
    async def down(self) -> AsyncIterator[None]:
        """The broker is unreachable (connections dropped and refused) inside the block."""
        await self.set_enabled(False)
        try:
            yield
        finally:
            await self.set_enabled(True)


@contextlib.asynccontextmanager
async def proxied(api: str, upstream_url: str) -> AsyncIterator[Proxy]:
    """A fresh proxy to ``upstream_url`` on the toxiproxy-server at ``api``."""
    proxy = await Proxy(ToxiproxyClient(api), upstream_url).create()
    try:
        yield proxy
    finally:
        await proxy.delete()
