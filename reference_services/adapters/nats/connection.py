"""NATS connection and naming helpers shared by the NATS queue bridge and NATS-KV stores."""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reference_services.runtime.errors import StatusCode, UnhandledError
from reference_services.runtime.redact import redact_text, redact_url

log = logging.getLogger(__name__)

_SAFE = re.compile(r"^[A-Za-z0-9-]+$")


class NatsUnavailableError(UnhandledError):
    """The NATS server could not be reached in time (503)."""

    default_status = StatusCode.SERVICE_UNAVAILABLE


def token(name: str) -> str:
    """A subject-, stream- and KV-key-safe token for ``name``, injective.

    Names of letters, digits and ``-`` stay as they are; anything else becomes
    ``_`` + lowercase base32 (a plain name never starts with ``_``).
    """
    if _SAFE.match(name):
        return name
    return "_" + base64.b32encode(name.encode()).decode().rstrip("=").lower()


def untoken(tok: str) -> str:
    """Inverse of :func:`token`."""
    if not tok.startswith("_"):
        return tok
    body = tok[1:].upper()
    return base64.b32decode(body + "=" * (-len(body) % 8)).decode()


@dataclass(frozen=True)
class NatsTimings:
    """Connection timings: how fast a dead connection is noticed and retried."""

    connect_timeout_s: float = 2.0
    start_timeout_s: float = 10.0
    ping_interval_s: float = 5.0
    max_outstanding_pings: int = 2
    reconnect_wait_s: float = 0.5
    op_timeout_s: float = 5.0

    @classmethod
    def of(cls, value: NatsTimings | Mapping[str, Any] | None) -> NatsTimings:
        """``value`` as timings: given, from a JSON-style mapping, or the defaults."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        return cls(**value)


def resolve_url(url: str | None) -> str:
    """``url``, else ``NATS_URL``, else the local default."""
    return url or os.environ.get("NATS_URL") or "nats://127.0.0.1:4222"


async def connect_nats(url: str, name: str, timings: NatsTimings, **callbacks: Any) -> Any:
    """Connect with endless reconnects, but bound the *first* connect by ``start_timeout_s``.

    nats-py's ``max_reconnect_attempts=-1`` also makes the first connect loop
    forever, hence the outer deadline.
    """
    import nats

    async def _quiet_error(exc: Exception) -> None:
        log.debug("nats %s: %s", name, exc)

    callbacks.setdefault("error_cb", _quiet_error)
    try:
        return await asyncio.wait_for(
            nats.connect(
                servers=[url],
                name=name,
                allow_reconnect=True,
                max_reconnect_attempts=-1,
                connect_timeout=timings.connect_timeout_s,  # type: ignore[arg-type]
                reconnect_time_wait=timings.reconnect_wait_s,
                ping_interval=timings.ping_interval_s,
                max_outstanding_pings=timings.max_outstanding_pings,
                **callbacks,
            ),
            timings.start_timeout_s,
        )
    except (TimeoutError, OSError) as exc:
        raise NatsUnavailableError(
            f"cannot connect to NATS at {redact_url(url)}: {redact_text(repr(exc))}"
        ) from None
