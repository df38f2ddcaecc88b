"""In-process workloads for the faults suite, recorded in a ``harness.history.History``.

An event-bridge workload: a *server* instance holding a durable shared
subscription and two commands, three concurrent producers emitting events and
two invokers calling a command with a ttl. A queue-bridge workload: three
concurrent producers enqueueing jobs (with idempotency keys, retried with the
same key after an error) and two workers leasing and acking them. Every
consumer runs its side effect through the idempotency helper, so the history
records deliveries (duplicates allowed where delivery is at-least-once) and
effects (which must happen once).

Instances are built through the adapter's own factory; ``url`` decides where
they connect (the broker itself, or a Toxiproxy proxy in front of it).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any

from conformance.kit import (
    CommandConfig,
    FailureHandling,
    addr,
    command,
    event,
    responder,
    subscription,
)
from conformance.kit.under_test import AdapterUnderTest
from harness.history import History
from reference_services.adapters.memory.stores import DefaultStateStore
from reference_services.runtime.errors import PuristaError
from reference_services.runtime.idempotency import Idempotency
from reference_services.runtime.messages import Command

log = logging.getLogger("conformance.faults")

EVENT = "fault.work"
QUEUE = "faultjobs"
PROBE_QUEUE = "faultprobe"
INVOKE_TTL_S = 2.0
INVOKE_MARGIN_S = 1.0
EMIT_TIMEOUT_S = 8.0
OP_TIMEOUT_S = 5.0
PRODUCER_INTERVAL_S = 0.03
INVOKER_INTERVAL_S = 0.1
LEASE_TTL_MS = 3000
ENQUEUE_RETRY_S = 6.0
ALLOWED_FAILURE_STATUS = (503, 504)


def send_work(bridge: Any, kind: str, msg_id: str) -> Awaitable[Any]:
    """Send work item ``msg_id`` (the histories count it): a ``fault.work`` event on an event
    bridge, else a ``faultjobs`` job keyed by ``msg_id`` with room for many retries."""
    if kind == "event_bridge":
        return bridge.emit_message(event(bridge, EVENT, {"id": msg_id}))
    return bridge.enqueue(
        QUEUE, {"id": msg_id}, idempotency_key=msg_id, max_attempts=50, lease_ttl_ms=LEASE_TTL_MS
    )


@dataclass
class Invocation:
    """One command invocation: its outcome and how long it took."""

    status: int | None  # None = success
    seconds: float
    hung: bool = False


@dataclass
class Stats:
    """What the workload saw besides the history."""

    invocations: list[Invocation] = field(default_factory=list)
    emit_errors: dict[str, int] = field(default_factory=dict)
    max_emit_s: float = 0.0

    def emit_error(self, exc: BaseException) -> None:
        """Count a failed emit/enqueue by error type."""
        key = f"{type(exc).__name__}:{getattr(exc, 'status', '')}".rstrip(":")
        self.emit_errors[key] = self.emit_errors.get(key, 0) + 1

    def invocation_problems(self) -> list[str]:
        """Invocations that hung past ttl + margin or failed with a status other than 503/504."""
        out = []
        hung = [i for i in self.invocations if i.hung or i.seconds > INVOKE_TTL_S + INVOKE_MARGIN_S]
        if hung:
            worst = max(i.seconds for i in hung)
            out.append(
                f"{len(hung)} invocation(s) exceeded ttl {INVOKE_TTL_S}s + "
                f"{INVOKE_MARGIN_S}s (worst {worst:.2f}s)"
            )
        bad = [
            i
            for i in self.invocations
            if i.status is not None and i.status not in ALLOWED_FAILURE_STATUS and not i.hung
        ]
        if bad:
            statuses = sorted({str(i.status) for i in bad})
            out.append(
                f"{len(bad)} invocation(s) failed with status {', '.join(statuses)} "
                "(only 503/504 allowed during an outage)"
            )
        return out

    def invocation_metrics(self) -> dict[str, Any]:
        """Counts by outcome and the slowest invocation."""
        by: dict[str, int] = {}
        for i in self.invocations:
            key = "hung" if i.hung else ("ok" if i.status is None else str(i.status))
            by[key] = by.get(key, 0) + 1
        worst = max((i.seconds for i in self.invocations), default=0.0)
        return {"count": len(self.invocations), "outcomes": by, "max_s": round(worst, 3)}


def adapter_options(aut: AdapterUnderTest) -> dict[str, Any]:
    """Short heartbeat/ping/reconnect timings, so a dead connection is noticed in seconds.

    They come from the adapter's descriptor (``fault_options``), or from a factory's
    ``fault_options`` attribute.
    """
    return dict(aut.spec.fault_options)


async def new_instance(aut: AdapterUnderTest, url: str | None, **options: Any) -> Any:
    """A started instance connecting to ``url`` (None: the adapter's own service URL)."""
    saved = aut.ctx
    if url is not None:
        aut.ctx = replace(saved, url_lookup=lambda _service: url)
    try:
        obj = aut.build(**{**adapter_options(aut), **options})
    finally:
        aut.ctx = saved
    await asyncio.wait_for(obj.start(), 30)
    return obj


class Workload:
    """Common machinery: the history, the producer tasks, settling."""

    def __init__(self, aut: AdapterUnderTest, direct_url: str | None, fault_url: str | None):
        self.aut = aut
        self.direct_url = direct_url
        self.fault_url = fault_url
        self.history = History()
        self.stats = Stats()
        self.idem = Idempotency(DefaultStateStore(), claim_ttl_s=10.0, wait_s=15.0, poll_s=0.02)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def effect(self, msg_id: str, consumer: str) -> None:
        """The side effect of one message, through the idempotency helper."""

        async def do() -> str:
            self.history.effect(msg_id, consumer=consumer)
            return consumer

        await self.idem.run_once(msg_id, do)

    def spawn(self, coro: Awaitable[None]) -> None:
        """Run a workload task until :meth:`stop`."""
        self._tasks.append(asyncio.ensure_future(coro))

    @property
    def stopping(self) -> bool:
        """Whether producers should stop."""
        return self._stop.is_set()

    async def pace(self, seconds: float) -> None:
        """The pause between two operations of one producer (ends early on stop)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    async def produce(self, label: str, bridge: Any) -> None:
        """Send work items ``<label>-0``, ``<label>-1``, ... through ``bridge`` until stopped,
        recording each one's outcome and the longest send."""
        n = 0
        while not self.stopping:
            msg_id = f"{label}-{n}"
            n += 1
            started = time.monotonic()
            outcome = await self.send_one(bridge, msg_id)
            self.history.sent(msg_id, outcome)  # type: ignore[arg-type]
            self.stats.max_emit_s = max(self.stats.max_emit_s, time.monotonic() - started)
            await self.pace(PRODUCER_INTERVAL_S)

    async def send_one(self, bridge: Any, msg_id: str) -> str:
        """Send work item ``msg_id``: ``"ok"``, or ``"unknown"`` when it may be lost."""
        raise NotImplementedError

    async def stop_producers(self) -> None:
        """Stop producing and wait for the producer tasks to end."""
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()

    def all_delivered(self) -> bool:
        """Every send with outcome ok was delivered (and its effect ran)."""
        sent_ok = {e.msg_id for e in self.history.events if e.kind == "sent" and e.outcome == "ok"}
        effects = {e.msg_id for e in self.history.events if e.kind == "effect"}
        return sent_ok <= effects

    def progress(self) -> int:
        """Deliveries so far (for quiet-period waits)."""
        return sum(1 for e in self.history.events if e.kind in ("delivered", "effect"))

    async def close(self) -> None:
        """Stop whatever still runs (instances are destroyed by the adapter under test)."""
        await self.stop_producers()


class EventWorkload(Workload):
    """Events and commands through an event bridge."""

    async def setup(self) -> None:
        """Build the server (behind the fault), two direct producers and a direct client."""
        self.server = await new_instance(self.aut, self.fault_url)
        self.proxied_producer = await new_instance(self.aut, self.fault_url)
        self.producers = [await new_instance(self.aut, self.direct_url) for _ in range(2)]
        self.client = self.producers[0]
        sub = subscription(
            "faultsink",
            event_name=EVENT,
            durable=True,
            shared=True,
            failure=FailureHandling(max_attempts=50, retry_delay_ms=100),
        )

        async def on_event(msg: Any) -> None:
            msg_id = str(msg.payload["id"])
            self.history.delivered(msg_id, consumer="server")
            await self.effect(msg_id, "server")
            self.history.acknowledged(msg_id)

        async def echo(cmd: Command) -> Any:
            return cmd.payload

        # durable commands where the adapter declares them: a command sent while the server
        # is cut off then waits for it (or times out with 504) instead of being unroutable
        config = CommandConfig(durable=self.aut.supports("durable_commands"))
        await self.server.register_subscription(sub, on_event)
        await self.server.register_command(
            addr("faultwork", target="echo"), responder(echo), config
        )
        await self.server.register_command(
            addr("faultwork", target="probe"), responder(echo), config
        )

    async def probe(self) -> bool:
        """One round trip through the server instance (the one behind the fault)."""
        cmd = command(self.client, addr("faultwork", target="probe"), {"probe": True})
        try:
            await asyncio.wait_for(self.client.invoke(cmd, 1.0), 3.0)
        except (PuristaError, TimeoutError, Exception):
            return False
        return True

    def start(self) -> None:
        """Start three producers (one behind the fault) and two invokers."""
        for i, bridge in enumerate([self.proxied_producer, *self.producers]):
            self.spawn(self.produce(f"p{i}", bridge))
        self.spawn(self._invoke("i0", self.client))
        self.spawn(self._invoke("i1", self.proxied_producer))

    async def send_one(self, bridge: Any, msg_id: str) -> str:
        """One emit: unknown if it failed or timed out."""
        try:
            await asyncio.wait_for(send_work(bridge, "event_bridge", msg_id), EMIT_TIMEOUT_S)
        except Exception as exc:
            self.stats.emit_error(exc)
            return "unknown"
        return "ok"

    async def _invoke(self, label: str, bridge: Any) -> None:
        n = 0
        while not self.stopping:
            n += 1
            cmd = command(bridge, addr("faultwork", target="echo"), {"n": n, "by": label})
            started = time.monotonic()
            status: int | None = None
            hung = False
            try:
                await asyncio.wait_for(
                    bridge.invoke(cmd, INVOKE_TTL_S), INVOKE_TTL_S + INVOKE_MARGIN_S + 2.0
                )
            except PuristaError as exc:
                status = exc.status
            except TimeoutError:
                hung = True
            except Exception as exc:
                status = -1
                log.info("invoke raised a non-PURISTA error: %r", exc)
            self.stats.invocations.append(Invocation(status, time.monotonic() - started, hung))
            await self.pace(INVOKER_INTERVAL_S)


class QueueWorkload(Workload):
    """Jobs through a queue bridge: producers, workers, idempotent effects."""

    async def setup(self) -> None:
        """Two workers and one producer behind the fault, two direct producers."""
        self.workers = [await new_instance(self.aut, self.fault_url) for _ in range(2)]
        self.proxied_producer = await new_instance(self.aut, self.fault_url)
        self.producers = [await new_instance(self.aut, self.direct_url) for _ in range(2)]
        self._work_stop = asyncio.Event()
        self._workers: list[asyncio.Task[None]] = []

    async def probe(self) -> bool:
        """Enqueue, lease and ack one job through a worker behind the fault."""
        w = self.workers[0]
        try:
            await asyncio.wait_for(w.enqueue(PROBE_QUEUE, {"probe": True}), 2.0)
            jobs = await asyncio.wait_for(w.lease_next(PROBE_QUEUE, 10, 0), 2.0)
            for job in jobs:
                await asyncio.wait_for(w.ack(job), 2.0)
            return bool(jobs)
        except Exception:
            return False

    def start(self) -> None:
        """Start three producers and two workers."""
        for i, bridge in enumerate([self.proxied_producer, *self.producers]):
            self.spawn(self.produce(f"p{i}", bridge))
        for i, bridge in enumerate(self.workers):
            self._workers.append(asyncio.ensure_future(self._work(f"w{i}", bridge)))

    async def send_one(self, bridge: Any, msg_id: str) -> str:
        """Enqueue, retried (same idempotency key) for up to ENQUEUE_RETRY_S."""
        deadline = time.monotonic() + ENQUEUE_RETRY_S
        while True:
            try:
                await asyncio.wait_for(send_work(bridge, "queue_bridge", msg_id), OP_TIMEOUT_S)
                return "ok"
            except Exception as exc:
                self.stats.emit_error(exc)
                if time.monotonic() >= deadline:
                    return "unknown"
                await self.pace(0.1)

    async def _work(self, label: str, bridge: Any) -> None:
        while not self._work_stop.is_set():
            try:
                jobs = await asyncio.wait_for(
                    bridge.lease_next(QUEUE, 4, 200, worker_id=label), OP_TIMEOUT_S
                )
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.05)  # back off after a failed lease (broker trouble)
                continue
            for job in jobs:
                msg_id = str(job.payload["id"])
                self.history.delivered(msg_id, consumer=label, attempt=job.attempt)
                try:
                    await self.effect(msg_id, label)
                    await asyncio.wait_for(bridge.ack(job), OP_TIMEOUT_S)
                    self.history.acknowledged(msg_id)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the lease expires and the job comes back
                    log.info("worker %s: job %s not acked: %r", label, msg_id, exc)

    async def close(self) -> None:
        """Stop producers and workers."""
        await super().close()
        self._work_stop.set()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()


def make_workload(
    aut: AdapterUnderTest, direct_url: str | None, fault_url: str | None
) -> EventWorkload | QueueWorkload:
    """The workload for the adapter's kind."""
    if aut.kind == "event_bridge":
        return EventWorkload(aut, direct_url, fault_url)
    if aut.kind == "queue_bridge":
        return QueueWorkload(aut, direct_url, fault_url)
    raise ValueError(f"no fault workload for {aut.kind}")


ProbeFn = Callable[[], Awaitable[bool]]
