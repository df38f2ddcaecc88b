"""Health: ``/healthz`` and ``/readyz`` over a tiny asyncio HTTP server."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Protocol


class HealthCheckable(Protocol):
    """Anything with async ``is_ready`` and ``is_healthy``."""

    async def is_ready(self) -> bool: ...
    async def is_healthy(self) -> bool: ...


async def probe(components: Sequence[HealthCheckable], ready: bool) -> tuple[bool, dict[str, bool]]:
    """Ask every component; a component that raises counts as not ok."""
    results: dict[str, bool] = {}
    for index, component in enumerate(components):
        label = f"{index}:{getattr(component, 'name', type(component).__name__)}"
        try:
            results[label] = bool(await (component.is_ready() if ready else component.is_healthy()))
        except Exception:
            results[label] = False
    return all(results.values()), results


class HealthServer:
    """Serves ``GET /healthz`` and ``GET /readyz``: 200 when all components are ok, else 503."""

    def __init__(
        self, components: Sequence[HealthCheckable], host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.components = list(components)
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Listen; ``port`` is updated when 0 asked for a free one."""
        self._server = await asyncio.start_server(self._handle, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def destroy(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readline(), 5)
            while (await asyncio.wait_for(reader.readline(), 5)) not in (b"\r\n", b"\n", b""):
                pass
            parts = request.decode("latin-1").split()
            path = parts[1] if len(parts) >= 2 else ""
            if parts[:1] != ["GET"] or path not in ("/healthz", "/readyz"):
                status, body = 404, {"error": f"unknown path {path!r}"}
            else:
                ok, details = await probe(self.components, ready=path == "/readyz")
                status, body = (200 if ok else 503), {"ok": ok, "components": details}
            data = json.dumps(body).encode()
            reason = {200: "OK", 404: "Not Found", 503: "Service Unavailable"}[status]
            writer.write(
                f"HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except (TimeoutError, ConnectionError):
            pass
        finally:
            writer.close()
