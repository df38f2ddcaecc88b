"""Helpers shared by the adapter integration tests: adapter factories, waits with deadlines,
test addresses and messages."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Literal

import pytest

from reference_services.adapters.nats.connection import NatsTimings
from reference_services.runtime.definitions import Subscription
from reference_services.runtime.errors import PuristaError
from reference_services.runtime.messages import (
    Address,
    Command,
    CommandPayload,
    CustomMessage,
    SenderAddress,
    success_response,
)
from reference_services.testing import wait_until

CALLER = SenderAddress(
    service_name="caller", service_version="1", service_target="t", instance_id="c" * 32
)
USER = Address(service_name="user", service_version="1.0.0", service_target="get.user")
# NATS queue and KV timings short enough that an outage is noticed in about a second
NATS_FAST = NatsTimings(
    connect_timeout_s=1.0,
    start_timeout_s=5.0,
    ping_interval_s=1.0,
    max_outstanding_pings=2,
    reconnect_wait_s=0.2,
    op_timeout_s=2.0,
)


async def wait_for(condition: Callable[[], bool], within: float = 10.0, what: str = "it") -> None:
    """Poll ``condition`` until it holds; fail after ``within`` seconds."""
    await wait_until(condition, within, what, interval_s=0.01)


async def wait_async(
    condition: Callable[[], Awaitable[bool]], within: float = 10.0, what: str = "it"
) -> None:
    """Like :func:`wait_for` for an async condition."""
    await wait_until(condition, within, what, interval_s=0.05)


async def eventually(
    check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0, what: str = "condition"
) -> None:
    """:func:`wait_async` with the ``timeout_s`` keyword the Redis tests use."""
    await wait_async(check, timeout_s, what)


async def is_not(value: Awaitable[bool]) -> bool:
    """Negate an awaitable boolean (for waits on ``not await bridge.is_ready()``)."""
    return not await value


class Adapters:
    """Starts adapters of ``cls`` on ``url`` with ``defaults`` (each call's options win) and
    destroys every one it made on exit, in creation order.

    A fixture yields ``made.bridge`` (``make(url=None, **options)``) or ``made.store``
    (``make(store_cls=cls, url=None, **options)``) from ``async with Adapters(...) as made``.
    ``quiet`` ignores errors of ``destroy`` (for tests that kill the broker under it).
    """

    def __init__(self, cls: type, url: str | None, *, quiet: bool = False, **defaults: Any) -> None:
        self.cls, self.url, self.quiet, self.defaults = cls, url, quiet, defaults
        self.made: list[Any] = []

    async def bridge(self, url: str | None = None, **kw: Any) -> Any:
        """A started adapter of the class on ``url`` (default: the one given)."""
        return await self.store(self.cls, url, **kw)

    async def store(self, store_cls: type | None = None, url: str | None = None, **kw: Any) -> Any:
        """A started ``store_cls`` (default: the class given) on ``url``."""
        adapter = (store_cls or self.cls)(url or self.url, **{**self.defaults, **kw})
        self.made.append(adapter)  # destroyed even if its start fails
        await adapter.start()
        return adapter

    async def __aenter__(self) -> Adapters:
        return self

    async def __aexit__(self, *exc: object) -> None:
        for adapter in self.made:
            if self.quiet:
                with contextlib.suppress(Exception):
                    await adapter.destroy()
            else:
                await adapter.destroy()


def adapters_fixture(
    cls: type,
    service: str,
    *,
    yields: Literal["bridge", "store"] = "bridge",
    quiet: bool = False,
    **defaults: Any,
) -> Any:
    """A test-scoped fixture: :class:`Adapters` of ``cls`` on the session's ``harness_<service>``
    under the test's ``namespace`` prefix, yielding ``made.bridge`` or ``made.store``.

    Assign it to the fixture's name in the test module: ``make_store = adapters_fixture(...)``.
    """

    @pytest.fixture
    async def fixture(
        request: pytest.FixtureRequest, namespace: str
    ) -> AsyncIterator[Callable[..., Awaitable[Any]]]:
        url = request.getfixturevalue(f"harness_{service}").url
        async with Adapters(cls, url, quiet=quiet, prefix=namespace, **defaults) as made:
            yield getattr(made, yields)

    return fixture


async def nacked_into_dead_letter(bridge: Any, payload: Any, delay_ms: int = 0) -> str:
    """Enqueue ``payload`` on queue ``q`` with 3 attempts and nack each lease ("boom N"):
    two retries, then the dead letter with the last reason. Returns the job id."""
    job_id: str = await bridge.enqueue("q", payload, max_attempts=3)
    outcomes = []
    for attempt in (1, 2, 3):
        (job,) = await bridge.lease_next("q", wait_ms=3000)
        assert (job.id, job.attempt) == (job_id, attempt)
        outcomes.append(await bridge.nack(job, f"boom {attempt}", delay_ms=delay_ms))
    assert outcomes == ["retry", "retry", "dead_letter"]
    assert await bridge.lease_next("q") == []
    (dead,) = await bridge.peek_dead_letter("q")
    assert (dead.id, dead.attempts, dead.reason, dead.payload) == (job_id, 3, "boom 3", payload)
    return job_id


async def expect_values_survive_a_kill(
    store: Any, broker: Any, values: int, fails_within_s: float, down_s: float = 10.0
) -> None:
    """Write ``values`` keys, SIGKILL ``broker``: the store turns not ready and not healthy,
    and a read fails with 503 within ``fails_within_s``; start the broker again: the store
    turns ready and healthy, and every value is back."""
    for i in range(values):
        await store.set(f"k{i}", {"i": i})
    await asyncio.to_thread(broker.kill)

    async def down() -> bool:
        return not await store.is_ready() and not await store.is_healthy()

    await wait_async(down, down_s, "not ready and not healthy while the broker is down")
    started = time.monotonic()
    try:
        await store.get("k1")
    except PuristaError as exc:
        took = time.monotonic() - started
        assert exc.status == 503 and took < fails_within_s, (exc.status, took)
    else:
        raise AssertionError("a read while the broker is down succeeded")
    await asyncio.to_thread(broker.start)

    async def up() -> bool:
        return await store.is_ready() and await store.is_healthy()

    await wait_async(up, 20, "ready and healthy after the restart")
    got = await store.get(*(f"k{i}" for i in range(values)))
    assert got == {f"k{i}": {"i": i} for i in range(values)}


def event(name: str, payload: Any = None, **kw: Any) -> CustomMessage:
    """A custom message from the test caller."""
    return CustomMessage(sender=CALLER, event_name=name, payload=payload, **kw)


def subscription(service: str, event_name: str | None = None, **kw: Any) -> Subscription:
    """A subscription of ``service`` (PURISTA defaults: durable, shared, manual ack)."""
    return Subscription(
        subscriber=Address(service_name=service, service_version="1", service_target="on"),
        event_name=event_name,
        **kw,
    )


def command(receiver: Address = USER, payload: Any = None, **kw: Any) -> Command:
    """A command from the test caller."""
    return Command(sender=CALLER, receiver=receiver, payload=CommandPayload(payload=payload), **kw)


async def echo_servers(
    make_bridge: Callable[..., Awaitable[Any]], n: int
) -> tuple[list[Any], list[tuple[str, Command]]]:
    """``n`` new bridges serving ``USER`` with :func:`echo_handler`, and what they served."""
    servers = [await make_bridge() for _ in range(n)]
    served: list[tuple[str, Command]] = []
    for server in servers:
        await server.register_command(USER, echo_handler(served, server))
    return servers, served


def collect(into: list[Any]) -> Callable[[Any], Awaitable[None]]:
    """A subscription handler that appends each message's payload to ``into``."""

    async def handler(message: Any) -> None:
        into.append(message.payload)

    return handler


def echo_handler(served: list[tuple[str, Command]], bridge: Any) -> Any:
    """A command handler that records ``(bridge.instance_id, command)`` and echoes the payload."""

    async def handler(cmd: Command) -> Any:
        served.append((bridge.instance_id, cmd))
        return success_response(cmd, {"echo": cmd.payload.payload})

    return handler
