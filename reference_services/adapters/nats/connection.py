"""The one way this package connects to NATS, its timings, and its 503 error."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client

from reference_services.adapters.nats import headers
from reference_services.runtime.errors import StatusCode, UnhandledError
from reference_services.runtime.redact import redact_text, redact_url

log = logging.getLogger(__name__)


class NatsUnavailableError(UnhandledError):
    """The NATS server could not be reached in time (503)."""

    default_status = StatusCode.SERVICE_UNAVAILABLE


@dataclass(frozen=True)
class NatsTimings:
    """Connection timings: how fast a dead connection is noticed and retried.

    The first connect tries ``connect_attempts`` times (``None``: until
    ``start_timeout_s``), always within ``start_timeout_s``; once connected the
    client reconnects ``max_reconnect_attempts`` times (-1: forever).
    """

    connect_timeout_s: float = 2.0
    start_timeout_s: float = 10.0
    ping_interval_s: float = 5.0
    max_outstanding_pings: int = 2
    reconnect_wait_s: float = 0.5
    op_timeout_s: float = 5.0
    connect_attempts: int | None = None
    max_reconnect_attempts: int = -1

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


async def connect_nats(url: str, name: str, timings: NatsTimings, **options: Any) -> Client:
    """Connect as :class:`NatsTimings` says; a failed first connect is a NatsUnavailableError.

    ``options`` go to ``nats.connect`` (callbacks, ``reconnect_to_server_handler``).
    nats-py's ``max_reconnect_attempts=-1`` also makes the *first* connect loop
    forever, hence the outer deadline, and the reconnect limit is only set once
    connected.
    """

    async def _quiet_error(exc: Exception) -> None:
        log.debug("nats %s: %s", name, exc)

    options.setdefault("error_cb", _quiet_error)
    first = -1 if timings.connect_attempts is None else max(timings.connect_attempts - 1, 1)
    try:
        nc = await asyncio.wait_for(
            nats.connect(
                servers=[url],
                name=name,
                allow_reconnect=True,
                max_reconnect_attempts=first,
                connect_timeout=timings.connect_timeout_s,  # type: ignore[arg-type]
                reconnect_time_wait=timings.reconnect_wait_s,
                ping_interval=timings.ping_interval_s,
                max_outstanding_pings=timings.max_outstanding_pings,
                **options,
            ),
            timings.start_timeout_s,
        )
    except (nats.errors.Error, TimeoutError, OSError) as exc:
        raise NatsUnavailableError(
            f"cannot connect to NATS at {redact_url(url)}: {redact_text(repr(exc))}"
        ) from None
    nc.options["max_reconnect_attempts"] = timings.max_reconnect_attempts
    headers.install(nc)  # memoised header blocks, byte for byte what nats-py sends
    return nc

