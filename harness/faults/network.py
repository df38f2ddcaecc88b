"""Network faults through a real toxiproxy-server.

A small typed client of Toxiproxy's HTTP API (stdlib urllib, per-server base URL,
request timeouts). toxiproxy-python keeps host and port as process-global class
attributes and has no timeouts, so it cannot serve several servers safely.
Every blocking method has an ``a``-prefixed async twin run in a thread.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import threading
import urllib.error
import urllib.request
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from harness.errors import HarnessError
from harness.services.base import ServiceHandle

Stream = Literal["downstream", "upstream"]
_counter = itertools.count(1)
_counter_lock = threading.Lock()


class ToxiproxyError(HarnessError):
    """The Toxiproxy API refused a request or could not be reached."""

    def __init__(self, status: int | None, message: str) -> None:
        self.status = status
        super().__init__(f"toxiproxy: {status or 'unreachable'}: {message}")


def _with_port(url: str, host: str, port: int) -> str:
    parts = urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{host}:{port}" if userinfo else f"{host}:{port}"
    return urlunsplit(parts._replace(netloc=netloc))


class Toxiproxy:
    """Client of one toxiproxy-server, given its handle or its http:// URL."""

    def __init__(self, target: ServiceHandle | str, timeout: float = 5.0) -> None:
        self.base_url = (target.url if isinstance(target, ServiceHandle) else target).rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """One API call; returns the decoded JSON (or text) answer."""
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                raw = resp.read().decode()
        except urllib.error.HTTPError as exc:
            raise ToxiproxyError(exc.code, exc.read().decode(errors="replace").strip()) from None
        except OSError as exc:
            raise ToxiproxyError(None, f"{self.base_url}: {exc}") from None
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return raw

    def version(self) -> str:
        """Server version (GET /version)."""
        answer = self.request("GET", "/version")
        return answer.get("version", str(answer)) if isinstance(answer, dict) else str(answer)

    def proxies(self) -> dict[str, Proxy]:
        """Every proxy on the server by name."""
        return {n: Proxy(self, d) for n, d in (self.request("GET", "/proxies") or {}).items()}

    def create_proxy(self, name: str, upstream: str, listen: str = "127.0.0.1:0",
                     enabled: bool = True, url: str | None = None) -> Proxy:
        """Create a proxy; listen on 127.0.0.1:0 picks a free port."""
        body = {"name": name, "upstream": upstream, "listen": listen, "enabled": enabled}
        return Proxy(self, self.request("POST", "/proxies", body), url)

    def proxied(self, service: ServiceHandle | str, name: str | None = None) -> Proxy:
        """A proxy on a free port in front of a service handle (or a host:port upstream)."""
        if name is None:
            base = service.name if isinstance(service, ServiceHandle) else "proxy"
            with _counter_lock:
                name = f"{base}_{next(_counter)}_{id(self) % 10000}"
        if isinstance(service, ServiceHandle):
            return self.create_proxy(name, service.address, url=service.url)
        return self.create_proxy(name, service)

    def get_proxy(self, name: str) -> Proxy:
        """An existing proxy by name."""
        return Proxy(self, self.request("GET", f"/proxies/{name}"))

    def reset(self) -> None:
        """Enable every proxy and remove every toxic (POST /reset)."""
        self.request("POST", "/reset")

    async def aproxied(self, service: ServiceHandle | str, name: str | None = None) -> Proxy:
        """Async proxied()."""
        return await asyncio.to_thread(self.proxied, service, name)

    async def areset(self) -> None:
        """Async reset()."""
        await asyncio.to_thread(self.reset)


class Proxy:
    """One Toxiproxy proxy: where clients connect and the faults to apply to it."""

    def __init__(self, server: Toxiproxy, data: dict[str, Any], url: str | None = None) -> None:
        self.server = server
        self.name: str = data["name"]
        self.upstream: str = data["upstream"]
        self.listen: str = data["listen"]
        self.enabled: bool = data.get("enabled", True)
        host, _, port = self.listen.rpartition(":")
        self.host = "127.0.0.1" if host in ("", "0.0.0.0", "[::]") else host
        self.port = int(port)
        self._service_url = url

    @property
    def url(self) -> str:
        """The service URL (scheme, credentials, path) with the proxy's host and port."""
        base = self._service_url or f"tcp://{self.upstream}"
        return _with_port(base, self.host, self.port)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    # -- plain operations ---------------------------------------------------------------------
    def add_toxic(self, type: str, attributes: dict[str, Any] | None = None,
                  stream: Stream = "downstream", toxicity: float = 1.0,
                  name: str | None = None) -> str:
        """Add a toxic; returns its name."""
        if name is None:
            with _counter_lock:
                name = f"{type}_{stream}_{next(_counter)}"
        body = {"name": name, "type": type, "stream": stream, "toxicity": toxicity,
                "attributes": attributes or {}}
        self.server.request("POST", f"/proxies/{self.name}/toxics", body)
        return name

    def remove_toxic(self, name: str) -> None:
        """Remove a toxic by name."""
        self.server.request("DELETE", f"/proxies/{self.name}/toxics/{name}")

    def toxics(self) -> list[dict[str, Any]]:
        """The toxics currently on this proxy."""
        return list(self.server.request("GET", f"/proxies/{self.name}/toxics") or [])

    def _set_enabled(self, enabled: bool) -> None:
        body = {"upstream": self.upstream, "listen": self.listen, "enabled": enabled}
        self.server.request("POST", f"/proxies/{self.name}", body)
        self.enabled = enabled

    def disable(self) -> None:
        """Close its connections and refuse new ones."""
        self._set_enabled(False)

    def enable(self) -> None:
        """Listen again (same port)."""
        self._set_enabled(True)

    def reset(self) -> None:
        """Remove every toxic and enable the proxy."""
        for toxic in self.toxics():
            self.remove_toxic(toxic["name"])
        if not self.enabled:
            self.enable()

    def delete(self) -> None:
        """Delete the proxy (ignores a proxy already gone)."""
        try:
            self.server.request("DELETE", f"/proxies/{self.name}")
        except ToxiproxyError as exc:
            if exc.status != 404:
                raise

    async def aadd_toxic(self, type: str, attributes: dict[str, Any] | None = None,
                         stream: Stream = "downstream", toxicity: float = 1.0,
                         name: str | None = None) -> str:
        return await asyncio.to_thread(self.add_toxic, type, attributes, stream, toxicity, name)

    async def aremove_toxic(self, name: str) -> None:
        await asyncio.to_thread(self.remove_toxic, name)

    async def adisable(self) -> None:
        await asyncio.to_thread(self.disable)

    async def aenable(self) -> None:
        await asyncio.to_thread(self.enable)

    async def areset(self) -> None:
        await asyncio.to_thread(self.reset)

    async def adelete(self) -> None:
        await asyncio.to_thread(self.delete)

    # -- fault context managers (sync `with` and async `async with`) ---------------------------
    def toxic(self, type: str, attributes: dict[str, Any], stream: Stream = "downstream",
              toxicity: float = 1.0) -> ToxicContext:
        """A context manager adding a toxic on entry and removing it on exit."""
        return ToxicContext(self, type, attributes, stream, toxicity)

    def latency(self, ms: int, jitter: int = 0, stream: Stream = "downstream",
                toxicity: float = 1.0) -> ToxicContext:
        """Delay data by ms (+- jitter) milliseconds."""
        return self.toxic("latency", {"latency": ms, "jitter": jitter}, stream, toxicity)

    def bandwidth(self, rate_kbps: int, stream: Stream = "downstream",
                  toxicity: float = 1.0) -> ToxicContext:
        """Limit throughput to rate_kbps KB/s."""
        return self.toxic("bandwidth", {"rate": rate_kbps}, stream, toxicity)

    def black_hole(self, stream: Stream = "downstream", toxicity: float = 1.0) -> ToxicContext:
        """Swallow all data, keep connections open, until removed (timeout toxic 0)."""
        return self.toxic("timeout", {"timeout": 0}, stream, toxicity)

    def timeout(self, ms: int, stream: Stream = "downstream",
                toxicity: float = 1.0) -> ToxicContext:
        """Swallow data and close the connection after ms milliseconds."""
        return self.toxic("timeout", {"timeout": ms}, stream, toxicity)

    def reset_peer(self, timeout: int = 0, stream: Stream = "downstream",
                   toxicity: float = 1.0) -> ToxicContext:
        """Reset connections (TCP RST) after timeout milliseconds."""
        return self.toxic("reset_peer", {"timeout": timeout}, stream, toxicity)

    def slow_close(self, delay: int, stream: Stream = "downstream",
                   toxicity: float = 1.0) -> ToxicContext:
        """Delay the close of connections by delay milliseconds."""
        return self.toxic("slow_close", {"delay": delay}, stream, toxicity)

    def slicer(self, average_size: int, size_variation: int = 0, delay_us: int = 0,
               stream: Stream = "downstream", toxicity: float = 1.0) -> ToxicContext:
        """Cut data into small packets, delay_us microseconds apart."""
        attrs = {"average_size": average_size, "size_variation": size_variation,
                 "delay": delay_us}
        return self.toxic("slicer", attrs, stream, toxicity)

    def limit_data(self, bytes: int, stream: Stream = "downstream",
                   toxicity: float = 1.0) -> ToxicContext:
        """Close connections after bytes bytes have passed."""
        return self.toxic("limit_data", {"bytes": bytes}, stream, toxicity)

    def down(self) -> DownContext:
        """Disable the proxy inside the block: connections dropped and refused."""
        return DownContext(self)

    def __repr__(self) -> str:
        return f"<Proxy {self.name} {self.listen} -> {self.upstream}>"


class ToxicContext:
    """Adds a toxic on enter, removes it on exit; also usable with add()/remove()."""

    def __init__(self, proxy: Proxy, type: str, attributes: dict[str, Any],
                 stream: Stream, toxicity: float) -> None:
        self.proxy = proxy
        self.type = type
        self.attributes = attributes
        self.stream: Stream = stream
        self.toxicity = toxicity
        self.name: str | None = None

    def add(self) -> ToxicContext:
        self.name = self.proxy.add_toxic(self.type, self.attributes, self.stream, self.toxicity)
        return self

    def remove(self) -> None:
        if self.name is not None:
            try:
                self.proxy.remove_toxic(self.name)
            except ToxiproxyError as exc:
                if exc.status != 404:
                    raise
            self.name = None

    def __enter__(self) -> ToxicContext:
        return self.add()

    def __exit__(self, et: type[BaseException] | None, ev: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.remove()

    async def __aenter__(self) -> ToxicContext:
        return await asyncio.to_thread(self.add)

    async def __aexit__(self, et: type[BaseException] | None, ev: BaseException | None,
                        tb: TracebackType | None) -> None:
        await asyncio.to_thread(self.remove)


class DownContext:
    """Disables a proxy on enter and enables it on exit."""

    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def __enter__(self) -> Proxy:
        self.proxy.disable()
        return self.proxy

    def __exit__(self, *exc: object) -> None:
        self.proxy.enable()

    async def __aenter__(self) -> Proxy:
        await asyncio.to_thread(self.proxy.disable)
        return self.proxy

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.proxy.enable)


def proxied(service: ServiceHandle, toxiproxy: Toxiproxy | ServiceHandle | str,
            name: str | None = None) -> Proxy:
    """A proxy in front of service on the given Toxiproxy server."""
    server = toxiproxy if isinstance(toxiproxy, Toxiproxy) else Toxiproxy(toxiproxy)
    return server.proxied(service, name)
