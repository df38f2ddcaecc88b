"""Health: ``/healthz`` and ``/readyz`` over a tiny asyncio HTTP server.

Host and port come from the caller (``HEALTH_HOST``/``HEALTH_PORT`` through
:meth:`HealthServer.from_env` or the deployment config). Every component is asked
concurrently with its own timeout, so one hung component makes the answer 503, never no
answer; a request is bounded in line length, header lines and time.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from typing import Protocol

DEFAULT_COMPONENT_TIMEOUT_S = 2.0
MAX_LINE_BYTES = 8 * 1024
MAX_HEADER_LINES = 64
REQUEST_TIMEOUT_S = 5.0
HEALTH_PATHS = ("/healthz", "/readyz")  # liveness, readiness
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    408: "Request Timeout",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}


class HealthCheckable(Protocol):
    """Anything with async ``is_ready`` and ``is_healthy``."""

    async def is_ready(self) -> bool: ...
    async def is_healthy(self) -> bool: ...


async def _ask(component: HealthCheckable, ready: bool, timeout_s: float) -> bool | str:
    try:
        check = component.is_ready() if ready else component.is_healthy()
        return bool(await asyncio.wait_for(check, timeout_s))
    except TimeoutError:
        return "timeout"
    except Exception:
        return False


async def probe(
    components: Sequence[HealthCheckable],
    ready: bool,
    timeout_s: float = DEFAULT_COMPONENT_TIMEOUT_S,
) -> tuple[bool, dict[str, bool | str]]:
    """Ask every component at once, each within ``timeout_s``; one that raises counts as not
    ok, one that does not answer in time as ``"timeout"`` (not ok)."""
    labels = [f"{i}:{getattr(c, 'name', type(c).__name__)}" for i, c in enumerate(components)]
    answers = await asyncio.gather(*(_ask(c, ready, timeout_s) for c in components))
    results = dict(zip(labels, answers, strict=True))
    return all(v is True for v in results.values()), results


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class HealthServer:
    """Serves ``GET /healthz`` and ``GET /readyz``: 200 when all components are ok, else 503."""

    def __init__(
        self,
        components: Sequence[HealthCheckable],
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        component_timeout_s: float = DEFAULT_COMPONENT_TIMEOUT_S,
    ) -> None:
        if component_timeout_s <= 0:
            raise ValueError(f"component_timeout_s must be > 0, got {component_timeout_s!r}")
        self.components = list(components)
        self.host = host
        self.port = port
        self.component_timeout_s = component_timeout_s
        self._server: asyncio.Server | None = None

    @classmethod
    def from_env(
        cls, components: Sequence[HealthCheckable], env: Mapping[str, str] | None = None
    ) -> HealthServer:
        """Host from ``HEALTH_HOST`` (default 127.0.0.1; 0.0.0.0 for probes from outside a
        container), port from ``HEALTH_PORT`` (default 0: a free one), component timeout from
        ``HEALTH_COMPONENT_TIMEOUT_S``."""
        env = os.environ if env is None else env
        port_text = env.get("HEALTH_PORT") or "0"
        try:
            port = int(port_text)
            if not 0 <= port <= 65535:
                raise ValueError
        except ValueError:
            raise ValueError(f"HEALTH_PORT must be a port number, got {port_text!r}") from None
        timeout_text = env.get("HEALTH_COMPONENT_TIMEOUT_S") or str(DEFAULT_COMPONENT_TIMEOUT_S)
        try:
            timeout = float(timeout_text)
        except ValueError:
            raise ValueError(
                f"HEALTH_COMPONENT_TIMEOUT_S must be a number of seconds, got {timeout_text!r}"
            ) from None
        return cls(
            components,
            host=env.get("HEALTH_HOST") or "127.0.0.1",
            port=port,
            component_timeout_s=timeout,
        )

    async def start(self) -> None:
        """Listen; ``port`` is updated when 0 asked for a free one."""
        self._server = await asyncio.start_server(
            self._handle, self.host, self.port, limit=MAX_LINE_BYTES
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def destroy(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    @staticmethod
    async def _read_request(reader: asyncio.StreamReader) -> str:
        """The request line, once the headers (bounded in number and length) are read."""
        try:
            request = await reader.readline()
            for _ in range(MAX_HEADER_LINES + 1):
                if await reader.readline() in (b"\r\n", b"\n", b""):
                    return request.decode("latin-1")
        except (ValueError, asyncio.LimitOverrunError):
            raise _BadRequest(431, f"a request line longer than {MAX_LINE_BYTES} bytes") from None
        raise _BadRequest(431, f"more than {MAX_HEADER_LINES} header lines")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                request = await asyncio.wait_for(self._read_request(reader), REQUEST_TIMEOUT_S)
                parts = request.split()
                path = parts[1] if len(parts) >= 2 else ""
                if parts[:1] != ["GET"] or path not in HEALTH_PATHS:
                    status, body = 404, {"error": f"unknown path {path[:200]!r}"}
                else:
                    ok, details = await probe(
                        self.components, path == HEALTH_PATHS[1], self.component_timeout_s
                    )
                    status, body = (200 if ok else 503), {"ok": ok, "components": details}
            except _BadRequest as exc:
                status, body = exc.status, {"error": str(exc)}
            except TimeoutError:
                status, body = 408, {"error": f"no complete request within {REQUEST_TIMEOUT_S}s"}
            data = json.dumps(body).encode()
            writer.write(
                f"HTTP/1.1 {status} {_REASONS[status]}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
                + data
            )
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
