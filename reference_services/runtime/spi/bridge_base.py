"""The machinery every event bridge reuses.

A transport subclasses :class:`EventBridgeBase` and implements the ``_``
hooks (connect, publish, bind/unbind, send command/response). The base owns
what must behave the same everywhere: the pending-invocation registry,
command execution and its safety net, subscription outcomes (ack, retry,
dead letter), emitEventName chaining, drain on destroy, info messages,
malformed-message rejection and telemetry.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import sys
import types
from abc import ABC, abstractmethod
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Coroutine, Generator
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any, ClassVar, Literal

from opentelemetry.trace import SpanKind

from reference_services.runtime import telemetry
from reference_services.runtime.codec import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MessageDecodeError,
    MessageEncodeError,
    decode,
    encode,
    to_wire,
)
from reference_services.runtime.definitions import (
    CommandConfig,
    CommandHandler,
    Subscription,
    SubscriptionHandler,
)
from reference_services.runtime.errors import (
    HandledError,
    PuristaError,
    StatusCode,
    UnhandledError,
    as_purista_error,
    error_from_response,
)
from reference_services.runtime.ids import new_id, now_ms
from reference_services.runtime.messages import (
    Address,
    AnyMessage,
    Command,
    CommandErrorResponse,
    CommandResponse,
    CommandSuccessResponse,
    CustomMessage,
    InfoMessage,
    MessageType,
    SenderAddress,
    error_response,
)
from reference_services.runtime.purista_names import NameCollisionError, snake_case
from reference_services.runtime.spi.capabilities import EventBridgeCapabilities
from reference_services.runtime.spi.inflight import InflightTracker
from reference_services.runtime.spi.log_throttle import LogThrottle
from reference_services.runtime.spi.matcher import matches
from reference_services.runtime.spi.pending import PendingInvocations

DEAD_LETTER_REASON_HEADER = "x-purista-dead-letter-reason"
RETRY_ATTEMPT_HEADER = "x-purista-retry-attempt"
#: how much of an undecodable delivery its dead letter keeps
RAW_LIMIT = 64 * 1024
#: how long a destroy whose drain was cut short (cancelled) still takes to reject and close
CLOSE_AFTER_CUT_S = 1.0
#: info messages (diagnostics) are best effort: a bounded number in flight, each given up
#: after a short while, so that an outage never turns them into a backlog
MAX_INFO_IN_FLIGHT = 64
INFO_PUBLISH_TIMEOUT_S = 2.0
#: how many handled message ids each subscription remembers to drop duplicates
DEDUPE_WINDOW = 10_000


class Disposition(StrEnum):
    """What the transport must do with a delivered message."""

    ACK = "ack"
    RETRY = "retry"
    DEAD_LETTER = "dead_letter"


@dataclass(frozen=True)
class DeliveryOutcome:
    """The verdict on one delivery: ack, retry after ``delay_s``, or dead-lettered."""

    disposition: Disposition
    delay_s: float = 0.0
    reason: str = ""


@dataclass
class RegisteredCommand:
    """A command registered on this bridge."""

    address: Address
    handler: CommandHandler
    config: CommandConfig


@dataclass
class RegisteredSubscription:
    """A subscription registered on this bridge."""

    subscription: Subscription
    handler: SubscriptionHandler

    def matches(self, message: AnyMessage) -> bool:
        """Whether ``message`` is for this subscription."""
        return matches(self.subscription, message)


#: asyncio runs a task's first step at its creation (``eager_start``) from Python 3.12
_EAGER_TASKS = sys.version_info >= (3, 12)


async def _continue(coro: Coroutine[Any, Any, Any], waiting: Any) -> Any:
    """Finish ``coro``, whose first step already ran and suspended on ``waiting``."""
    return await _resume(coro, waiting)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, Any], waiting: Any) -> Generator[Any, Any, Any]:
    """Hand what ``coro`` waits on to the task running this, and pass back to ``coro`` what
    the task sends or throws (its cancellation), until ``coro`` returns."""
    while True:
        try:
            sent = yield waiting
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:  # thrown in by the task (its cancellation): forwarded
            try:
                waiting = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                waiting = coro.send(sent)
            except StopIteration as stop:
                return stop.value


def _expire_waiter(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class BridgeNotRunningError(UnhandledError):
    """The bridge is not started, or is shutting down (503)."""

    default_status = StatusCode.SERVICE_UNAVAILABLE


class BridgeCore:
    """The adapter SPI of an event bridge: what a transport calls, as ``self.core``.

    It owns the registrations, the pending invocations, the one in-flight tracker that
    ``destroy`` drains, and background tasks, and runs commands and subscription
    deliveries with the semantics every transport shares. A service author never needs
    it: the bridge's own public methods are the service API.
    """

    def __init__(self, bridge: EventBridgeBase) -> None:
        self._bridge = bridge
        self.pending = PendingInvocations(on_timeout=self.invoke_timed_out)
        self.inflight = InflightTracker()
        # handlers running now (what ``bridge.inflight`` reports); ``inflight`` also counts
        # tracked transport work around them (a spawned delivery, a response being sent)
        self.handlers = InflightTracker()
        self._commands: dict[tuple[str, str, str], RegisteredCommand] = {}
        self._subscriptions: dict[tuple[str, str, str], RegisteredSubscription] = {}
        self._background: set[asyncio.Task[Any]] = set()
        #: the per-message lines of bad input (malformed, misrouted, expired): throttled
        self.bad_input_log = LogThrottle(bridge.log)
        self._abandoned_sends: set[asyncio.Future[Any]] = set()
        #: messages being sent now, by id(), with their bytes: the size check in ``invoke``
        #: and ``emit_message`` encodes once and the transport's ``encode`` reuses it
        self._encoded: dict[int, tuple[AnyMessage, bytes]] = {}
        self._free_slots: int | None = None
        self._slot_waiters: deque[asyncio.Future[None]] = deque()
        self._gone_waiters = 0
        #: per subscription: ids handled lately (acked or dead-lettered), and running now
        self._handled: dict[tuple[str, str, str], OrderedDict[str, None]] = {}
        self._handling: set[tuple[tuple[str, str, str], str]] = set()
        self.duplicates_dropped = 0
        #: invocations that timed out waiting for a send slot (never sent)
        self.unsent_timeouts = 0
        #: commands refused because their body names another function than their route
        self.route_rejections = 0
        #: commands not started because their deadline (``expires_at``) had passed
        self.expired_commands = 0
        #: deliveries nobody could decode, dead-lettered with their raw bytes
        self.quarantined_messages = 0
        #: info messages being published now (at most MAX_INFO_IN_FLIGHT), and those given
        #: up (buffer full or not published within INFO_PUBLISH_TIMEOUT_S)
        self.info_in_flight = 0
        self.info_dropped = 0
        # read-only for transports; the bridge's start and destroy set them
        self.started = False
        self.accepting = False
        self.destroyed = False

    def command(self, key: tuple[str, str, str]) -> RegisteredCommand | None:
        """The command registered under ``key`` (an address key), if any."""
        return self._commands.get(key)

    def subscription(self, key: tuple[str, str, str]) -> RegisteredSubscription | None:
        """The subscription registered under ``key`` (an address key), if any."""
        return self._subscriptions.get(key)

    def track(self) -> AbstractContextManager[None]:
        """Count the block as in-flight work: ``destroy`` waits for it (once, up to
        ``drain_timeout_s``)."""
        return self.inflight.track()

    def spawn_tracked(self, coro: Any, name: str | None = None) -> asyncio.Task[Any]:
        """:meth:`spawn` a task counted as in flight from now until it ends."""
        tracker = self.inflight.track()
        tracker.__enter__()
        task = self.spawn(coro, name=name)
        task.add_done_callback(lambda _t: tracker.__exit__(None, None, None))
        return task

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait until no tracked work runs; False if ``timeout_s`` passed first."""
        return await self.inflight.wait_idle(timeout_s)

    def cancel_background(self) -> None:
        """Cancel every background task without waiting (see :meth:`stop_background`)."""
        for task in list(self._background):
            task.cancel()

    async def stop_background(self, timeout_s: float = 2.0) -> bool:
        """Cancel every background task and wait (up to ``timeout_s``) until they ended, so
        their clean-up ran before the connection closes; False if some did not end."""
        tasks = [t for t in self._background if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        if not tasks:
            return True
        _done, pending = await asyncio.wait(tasks, timeout=timeout_s)
        if pending:
            self._bridge.log.warning(
                "%d background task(s) did not end within %.1fs of being cancelled",
                len(pending),
                timeout_s,
            )
        return not pending

    def decode_or_reject(
        self, raw: bytes | bytearray | memoryview | str, source: str
    ) -> AnyMessage | None:
        """Decode wire bytes; log and count a malformed message and return None."""
        try:
            return decode(raw, max_bytes=self._bridge.max_message_bytes)
        except MessageDecodeError as exc:
            self._count_malformed(source, exc)
            return None

    def _count_malformed(self, source: str, exc: MessageDecodeError) -> None:
        self._bridge.rejected_messages += 1
        self.bad_input_log.log(
            logging.WARNING, "malformed", "rejected malformed message from %s: %s", source, exc
        )

    async def decode_for_subscription(
        self,
        reg: RegisteredSubscription,
        raw: bytes | bytearray | memoryview | str,
        source: str,
    ) -> AnyMessage | None:
        """Decode a delivery for ``reg``; a malformed one is counted, logged and quarantined
        (:meth:`quarantine_raw`), and None is returned: the transport settles it for good."""
        try:
            return decode(raw, max_bytes=self._bridge.max_message_bytes)
        except MessageDecodeError as exc:
            self._count_malformed(source, exc)
            await self.quarantine_raw(reg, raw, f"malformed message: {exc}")
            return None

    async def quarantine_raw(
        self, reg: RegisteredSubscription, raw: bytes | bytearray | memoryview | str, reason: str
    ) -> None:
        """Dead-letter bytes nobody can decode, at once: emitted to ``dead_letter_target`` (if
        set) with the reason and the raw bytes (up to :data:`RAW_LIMIT`), and reported as an
        infoSubscriptionError; never dropped silently, never retried."""
        sub = reg.subscription
        self.quarantined_messages += 1
        data = raw.encode("utf-8", "replace") if isinstance(raw, str) else bytes(raw)
        if sub.failure.dead_letter_target:
            letter = CustomMessage(
                sender=self.sender(sub.subscriber),
                event_name=sub.failure.dead_letter_target,
                payload={
                    "reason": reason,
                    "attempts": 0,
                    "raw": data[:RAW_LIMIT].decode("utf-8", "replace"),
                    "rawBytes": len(data),
                },
            )
            try:
                await self._bridge._publish_dead_letter(letter, reason)
            except Exception:
                self._bridge.log.exception("could not emit the dead letter of malformed bytes")
        self.emit_info_soon(
            MessageType.INFO_SUBSCRIPTION_ERROR,
            {
                "subscription": str(sub.subscriber),
                "reason": reason,
                "attempts": 0,
                "handled": False,
                "deadLettered": True,
            },
        )

    def route_mismatch(
        self, command: Command, route: tuple[str, str, str] | None
    ) -> CommandErrorResponse | None:
        """A 400 response when ``command`` disagrees with the route it arrived on, else None.

        ``route`` is the address key of the queue, subject or topic the transport received
        the command on; None means "pinned to this instance" (a per-instance route), where
        the body must name this instance. The body never chooses what runs: a broker ACL on
        routes then limits what a publisher can execute.
        """
        if route is None:
            if command.receiver.instance_id == self._bridge.instance_id:
                return None
            why = f"is not pinned to instance {self._bridge.instance_id}"
        elif command.receiver.key == route:
            return None
        else:
            why = "arrived on the route of " + ".".join(route)
        self.route_rejections += 1
        self._bridge.rejected_messages += 1
        reason = f"command {command.id} for {command.receiver} {why}: rejected"
        self.bad_input_log.log(logging.WARNING, "misrouted", "%s", reason)
        return error_response(
            command,
            StatusCode.BAD_REQUEST,
            reason,
            is_handled_error=True,
            responder_instance_id=self._bridge.instance_id,
        )

    def expired(self, command: Command) -> bool:
        """Whether the invoker's deadline for ``command`` has passed (then nothing runs and
        nothing is answered: the invoker has its 504 already)."""
        if command.expires_at is None or now_ms() < command.expires_at:
            return False
        self.expired_commands += 1
        self.bad_input_log.log(
            logging.INFO,
            "expired",
            "command %s for %s expired %d ms ago: not started",
            command.id,
            command.receiver,
            now_ms() - command.expires_at,
        )
        return True

    async def handle_command(
        self, command: Command, *, route: tuple[str, str, str] | None
    ) -> CommandResponse | None:
        """Run the handler registered for ``route`` and return its response.

        ``route`` is where the transport received the command (see :meth:`route_mismatch`):
        a body that disagrees with it is answered 400 and must be settled (acked), never
        requeued. Returns None, and runs nothing, when the command's deadline has passed.
        Never raises: a missing handler is a 404, shutting down a 503 and any exception a
        500 (or the status a PuristaError carries).
        """
        mismatch = self.route_mismatch(command, route)
        if mismatch is not None:
            return mismatch
        if self.expired(command):
            return None
        reg = self._commands.get(command.receiver.key)
        if reg is None:
            return error_response(
                command,
                StatusCode.NOT_FOUND,
                f"no handler for command {command.receiver} on instance {self._bridge.instance_id}",
                responder_instance_id=self._bridge.instance_id,
            )
        if not self.accepting:
            return error_response(
                command,
                StatusCode.SERVICE_UNAVAILABLE,
                f"instance {self._bridge.instance_id} is shutting down",
                responder_instance_id=self._bridge.instance_id,
            )
        with self.inflight.track(), self.handlers.track():
            with (
                telemetry.span(
                    f"command {command.receiver}",
                    SpanKind.SERVER,
                    otp=command.otp,
                    attributes={"purista.correlation_id": command.correlation_id},
                )
                if command.otp or telemetry.tracing_configured()
                else telemetry.NO_SPAN
            ):
                if command.otp is None:  # a caller without tracing: this span starts the
                    otp = telemetry.inject_otp()  # trace its response and events carry on
                    if otp is not None:
                        command = command.model_copy(update={"otp": otp})
                try:
                    response = await reg.handler(command)
                except Exception as exc:
                    err = as_purista_error(exc)
                    if not err.is_handled:
                        self._bridge.log.exception("command %s failed", command.receiver)
                    response = err.to_response(command, self._bridge.instance_id)
        if response.sender.instance_id != self._bridge.instance_id:
            response = response.model_copy(
                update={
                    "sender": response.sender.model_copy(
                        update={"instance_id": self._bridge.instance_id}
                    )
                }
            )
        return response

    async def serve_command(
        self,
        command: Command,
        send_response: Callable[[CommandResponse], Awaitable[None]],
        *,
        route: tuple[str, str, str] | None,
    ) -> CommandResponse | None:
        """Handle ``command`` (received on ``route``, see :meth:`handle_command`), send its
        response and broadcast its success event, all counted as in flight, so that
        ``destroy`` waits for the response to leave. An expired command sends nothing.

        Transports should prefer this to calling :meth:`handle_command` and
        sending themselves.
        """
        with self.inflight.track():
            response = await self.handle_command(command, route=route)
            if response is None:
                return None
            await send_response(response)
            await self.after_response(response)
        return response

    async def after_response(self, response: CommandResponse) -> None:
        """Broadcast a success response that carries an event name to subscribers."""
        if isinstance(response, CommandSuccessResponse) and response.event_name:
            try:
                await self._bridge._publish(response)
            except Exception:
                self._bridge.log.exception("could not emit success event %s", response.event_name)

    def resolve_response(self, response: CommandResponse) -> bool:
        """Hand an arriving response to its waiting invocation (False if late)."""
        return self.pending.resolve(response)

    async def handle_subscription(
        self, reg: RegisteredSubscription, message: AnyMessage, attempt: int = 1
    ) -> DeliveryOutcome:
        """Run a subscription handler for one delivery and say what to do next.

        Handled errors ack (no redelivery); other errors retry per the failure
        policy and, once attempts are exhausted, the message is dead-lettered
        with its reason (emitted to ``dead_letter_target`` if one is set).
        """
        sub = reg.subscription
        seen = (sub.key, message.id)
        handled = self._handled.setdefault(sub.key, OrderedDict())
        if message.id in handled or seen in self._handling:
            # published twice with one id, or redelivered while (or after) it ran here
            self.duplicates_dropped += 1
            self._bridge.log.info(
                "subscription %s: duplicate of message %s dropped", sub.subscriber, message.id
            )
            return DeliveryOutcome(Disposition.ACK, reason="duplicate message id")
        self._handling.add(seen)
        try:
            outcome = await self._run_subscription(reg, message, attempt)
        finally:
            self._handling.discard(seen)
        if outcome.disposition is not Disposition.RETRY:
            handled[message.id] = None
            while len(handled) > DEDUPE_WINDOW:
                handled.popitem(last=False)
        return outcome

    async def _run_subscription(
        self, reg: RegisteredSubscription, message: AnyMessage, attempt: int
    ) -> DeliveryOutcome:
        sub = reg.subscription
        with self.inflight.track(), self.handlers.track():
            with (
                telemetry.span(
                    f"subscription {sub.subscriber}",
                    SpanKind.CONSUMER,
                    otp=message.otp,
                    attributes={"purista.message_id": message.id, "purista.attempt": attempt},
                )
                if message.otp or telemetry.tracing_configured()
                else telemetry.NO_SPAN
            ):
                try:
                    result = await reg.handler(message)
                except Exception as exc:
                    err = as_purista_error(exc)
                    if err.is_handled:
                        self._bridge.log.info(
                            "subscription %s: handled error, not retried: %s", sub.subscriber, err
                        )
                        self.emit_info_soon(
                            MessageType.INFO_SUBSCRIPTION_ERROR,
                            {
                                "subscription": str(sub.subscriber),
                                "messageId": message.id,
                                "status": err.status,
                                "message": err.message,
                                "handled": True,
                            },
                        )
                        return DeliveryOutcome(Disposition.ACK, reason=err.message)
                    reason = f"{type(exc).__name__}: {exc}"
                    if sub.failure.should_retry(attempt):
                        delay = sub.failure.delay_ms(attempt) / 1000
                        self._bridge.log.info(
                            "subscription %s: attempt %d of %d failed (%s), retry in %.3fs",
                            sub.subscriber,
                            attempt,
                            sub.failure.max_attempts,
                            reason,
                            delay,
                        )
                        return DeliveryOutcome(Disposition.RETRY, delay, reason)
                    await self.dead_letter(reg, message, attempt, reason)
                    return DeliveryOutcome(Disposition.DEAD_LETTER, reason=reason)
                if result is not None and sub.emit_event_name:
                    return await self._emit_chained(reg, message, result)
        return DeliveryOutcome(Disposition.ACK)

    async def _emit_chained(
        self, reg: RegisteredSubscription, message: AnyMessage, result: Any
    ) -> DeliveryOutcome:
        """Publish the handler's emitEventName event; retried on its own, never by running
        the handler again (its side effects happened). Exhausted: dead letter."""
        sub = reg.subscription
        event = self.chained_event(sub, message, result)
        attempt = 1
        while True:
            try:
                await self._bridge._publish(event)
                return DeliveryOutcome(Disposition.ACK)
            except Exception as exc:
                reason = (
                    f"the handler succeeded but emitting {sub.emit_event_name!r} failed: "
                    f"{type(exc).__name__}: {exc}"
                )
            if not sub.failure.should_retry(attempt) or self.destroyed:
                await self.dead_letter(reg, message, attempt, reason)
                return DeliveryOutcome(Disposition.DEAD_LETTER, reason=reason)
            self._bridge.log.info("subscription %s: %s; retrying the emit", sub.subscriber, reason)
            await asyncio.sleep(sub.failure.delay_ms(attempt) / 1000)
            attempt += 1

    async def dead_letter(
        self, reg: RegisteredSubscription, message: AnyMessage, attempts: int, reason: str
    ) -> None:
        """Emit the dead letter (if a target is set) and an infoSubscriptionError."""
        sub = reg.subscription
        self._bridge.log.warning(
            "subscription %s: message %s dead-lettered after %d attempt(s): %s",
            sub.subscriber,
            message.id,
            attempts,
            reason,
        )
        if sub.failure.dead_letter_target:
            letter = CustomMessage(
                sender=self.sender(sub.subscriber),
                event_name=sub.failure.dead_letter_target,
                trace_id=message.trace_id,
                principal_id=message.principal_id,
                tenant_id=message.tenant_id,
                correlation_id=message.id,
                payload={"reason": reason, "attempts": attempts, "message": to_wire(message)},
            )
            try:
                await self._bridge._publish_dead_letter(letter, reason)
            except Exception:
                self._bridge.log.exception("could not emit dead letter for %s", message.id)
        self.emit_info_soon(
            MessageType.INFO_SUBSCRIPTION_ERROR,
            {
                "subscription": str(sub.subscriber),
                "messageId": message.id,
                "reason": reason,
                "attempts": attempts,
                "handled": False,
                "deadLettered": True,
            },
        )

    def matching_subscriptions(self, message: AnyMessage) -> list[RegisteredSubscription]:
        """Registered subscriptions that ``message`` matches."""
        return [reg for reg in self._subscriptions.values() if reg.matches(message)]

    def spawn(self, coro: Any, name: str | None = None) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, keeping a reference until it ends."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._background.add(task)
        task.add_done_callback(self._task_done)
        return task

    def encode(self, message: AnyMessage) -> bytes:
        """Encode with this bridge's size limit (a message being sent by ``invoke`` or
        ``emit_message`` was encoded by their size check: those bytes are reused)."""
        held = self._encoded.get(id(message))
        if held is not None and held[0] is message:
            return held[1]
        return encode(message, max_bytes=self._bridge.max_message_bytes)

    def hold_encoded(self, message: AnyMessage) -> None:
        """Encode ``message`` now (raising MessageEncodeError) and keep its bytes for the
        transport's :meth:`encode` until :meth:`release_encoded`."""
        self._encoded[id(message)] = (
            message,
            encode(message, max_bytes=self._bridge.max_message_bytes),
        )

    def release_encoded(self, message: AnyMessage) -> None:
        """Forget the bytes kept by :meth:`hold_encoded`."""
        held = self._encoded.get(id(message))
        if held is not None and held[0] is message:
            del self._encoded[id(message)]

    @property
    def registered_commands(self) -> list[RegisteredCommand]:
        """Commands registered here (re-bound after a reconnect)."""
        return list(self._commands.values())

    @property
    def registered_subscriptions(self) -> list[RegisteredSubscription]:
        """Subscriptions registered here (re-bound after a reconnect)."""
        return list(self._subscriptions.values())

    async def rebind_all(self) -> None:
        """Bind every registered command and subscription again (after a reconnect)."""
        for cmd in self.registered_commands:
            await self._bridge._bind_command(cmd)
        for reg in self.registered_subscriptions:
            await self._bridge._bind_subscription(reg)

    def sender(self, address: Address) -> SenderAddress:
        return SenderAddress(
            service_name=address.service_name,
            service_version=address.service_version,
            service_target=address.service_target,
            instance_id=self._bridge.instance_id,
        )

    def chained_event(self, sub: Subscription, source: AnyMessage, result: Any) -> CustomMessage:
        return CustomMessage(
            sender=self.sender(sub.subscriber),
            event_name=sub.emit_event_name or "",
            trace_id=source.trace_id,
            correlation_id=source.correlation_id,
            principal_id=source.principal_id,
            tenant_id=source.tenant_id,
            otp=source.otp,
            payload=result,
        )

    def invoke_timed_out(self, correlation_id: str, description: str) -> None:
        self.emit_info_soon(
            MessageType.INFO_INVOKE_TIMEOUT,
            {"correlationId": correlation_id, "receiver": description},
        )

    def emit_info_soon(self, message_type: MessageType, payload: dict[str, Any]) -> None:
        if not self.started or self.destroyed:
            return
        if self.info_in_flight >= MAX_INFO_IN_FLIGHT:
            # a burst (of timeouts, say) during an outage must not pile up publishes
            self.info_dropped += 1
            return
        info = InfoMessage(
            message_type=message_type,
            sender=SenderAddress(
                service_name="eventBridge",
                service_version="1",
                service_target=self._bridge.name,
                instance_id=self._bridge.instance_id,
            ),
            payload=payload,
        )
        self.info_in_flight += 1

        async def _emit() -> None:
            try:
                await asyncio.wait_for(self._bridge._publish(info), INFO_PUBLISH_TIMEOUT_S)
            except Exception as exc:
                self.info_dropped += 1
                self._bridge.log.debug("could not emit %s: %s", message_type, exc)
            finally:
                self.info_in_flight -= 1

        try:
            self.spawn(_emit(), name=f"info-{message_type}")
        except RuntimeError:
            self.info_in_flight -= 1

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._bridge.log.error(
                "background task %s failed", task.get_name(), exc_info=task.exception()
            )

    async def acquire_send_slot(self, command: Command, ttl_s: float) -> None:
        """Take one of the bridge's ``max_sends_in_flight`` send slots, waiting in line; 504
        (nothing sent, an infoInvokeTimeout emitted) when none frees up within ``ttl_s``.

        A waiter costs one future and one timer (no task): ten thousand waiting callers
        keep the event loop free to answer each of them on time.
        """
        if self._free_slots is None:
            self._free_slots = self._bridge.max_sends_in_flight
        if self._free_slots > 0 and not self._slot_waiters:
            self._free_slots -= 1
            return
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        timer = loop.call_later(ttl_s, _expire_waiter, waiter)
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except TimeoutError:
            self.unsent_timeouts += 1
            self.invoke_timed_out(command.correlation_id, str(command.receiver))
            raise UnhandledError(
                f"invocation {command.receiver} timed out after {ttl_s:.3f}s: not sent "
                f"({self._bridge.max_sends_in_flight} sends in flight the whole time)",
                StatusCode.GATEWAY_TIMEOUT,
                trace_id=command.trace_id,
            ) from None
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.release_send_slot()  # handed a slot just as we were cancelled
            raise
        finally:
            timer.cancel()
            if not waiter.done() or waiter.cancelled() or waiter.exception() is not None:
                self._forget_waiter()

    def _forget_waiter(self) -> None:
        """Count a waiter that left the line; compact the line once most of it left."""
        self._gone_waiters += 1
        if self._gone_waiters * 2 > len(self._slot_waiters):
            self._slot_waiters = deque(w for w in self._slot_waiters if not w.done())
            self._gone_waiters = 0

    def release_send_slot(self) -> None:
        """Give back a slot taken by :meth:`acquire_send_slot` (to the next live waiter)."""
        while self._slot_waiters:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        assert self._free_slots is not None
        self._free_slots += 1

    async def send_within(self, send: Awaitable[None], ttl_s: float) -> None:
        """Await ``send`` for at most ``ttl_s``; TimeoutError after it, at once.

        Unlike ``asyncio.wait_for`` this does not wait for a send that is slow to cancel
        (a client library blocked on a frozen broker's full socket): the caller's deadline
        holds whatever the transport does; the cancelled send finishes in the background.

        The send's first step runs at once: most sends hand their bytes to the client's
        buffer and end without suspending, and then cost no timer (and no task where they
        can run in the caller's). Only a send that suspends continues under the deadline.
        On Python 3.12+ the first step runs in an eager task of its own; on 3.11 it runs in
        the caller's task only for a bridge declaring ``sends_run_in_caller`` (a library
        that binds a timeout to the current task there, as aiormq's publish does, would
        otherwise cancel the caller later), and every other send is a task.
        """
        if not inspect.iscoroutine(send):
            task: asyncio.Future[Any] = asyncio.ensure_future(send)
        elif _EAGER_TASKS:
            task = asyncio.Task(send, loop=asyncio.get_running_loop(), eager_start=True)
            if task.done():
                task.result()
                return
        elif self._bridge.sends_run_in_caller:
            try:
                waiting = send.send(None)
            except StopIteration:
                return  # done without suspending
            task = asyncio.get_running_loop().create_task(_continue(send, waiting))
        else:
            task = asyncio.get_running_loop().create_task(send)
        try:
            done, _ = await asyncio.wait({task}, timeout=ttl_s)
        except asyncio.CancelledError:
            task.cancel()
            raise
        if not done:
            task.cancel()
            self._abandoned_sends.add(task)
            task.add_done_callback(self._abandoned_done)
            raise TimeoutError
        task.result()

    def _abandoned_done(self, task: asyncio.Task[Any]) -> None:
        self._abandoned_sends.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a late failure of a send nobody waits for

    def require_running(self, trace_id: str | None = None) -> None:
        """Raise 503 (carrying ``trace_id``) unless the bridge is started and accepting work."""
        if self.destroyed and not self.started:
            raise BridgeNotRunningError(
                f"{self._bridge.name} bridge was destroyed; create a new one", trace_id=trace_id
            )
        if not self.started:
            raise BridgeNotRunningError(
                f"{self._bridge.name} bridge is not started", trace_id=trace_id
            )
        if not self.accepting:
            raise BridgeNotRunningError(
                f"{self._bridge.name} bridge is shutting down", trace_id=trace_id
            )


class EventBridgeBase(ABC):
    """Base class for event bridges; see the module docstring."""

    kind: ClassVar[Literal["event_bridge"]] = "event_bridge"
    name: ClassVar[str] = "base"
    capabilities: ClassVar[EventBridgeCapabilities] = EventBridgeCapabilities()
    #: the SPI object a transport calls; a subclass may extend :class:`BridgeCore`
    core_class: ClassVar[type[BridgeCore]] = BridgeCore
    #: invocations preparing and sending at once (see :meth:`invoke`)
    max_sends_in_flight: int = 32
    snake_cased_wire: ClassVar[bool] = False
    """The transport writes addresses snake-cased (PURISTA's NATS/MQTT): names that
    snake-case alike would share a subject, so registering both fails."""
    sends_run_in_caller: ClassVar[bool] = False
    """On Python 3.11, ``_send_command``'s first step may run in the invoker's task (no task
    per send): true only where nothing the send calls binds to the current task (no
    ``asyncio.timeout``, cancel scope or ``current_task()``) before it first suspends.
    Python 3.12+ runs that step in an eager task of its own whatever this says."""

    def __init__(
        self,
        *,
        instance_id: str | None = None,
        default_command_ttl_s: float = 30.0,
        drain_timeout_s: float = 10.0,
        max_message_bytes: int | None = DEFAULT_MAX_MESSAGE_BYTES,
        logger: logging.Logger | None = None,
    ) -> None:
        self.instance_id = instance_id or new_id()
        self.default_command_ttl_s = default_command_ttl_s
        self.drain_timeout_s = drain_timeout_s
        self.max_message_bytes = max_message_bytes
        self.log = logger or logging.getLogger(f"reference_services.bridge.{self.name}")
        self.rejected_messages = 0
        self.drain_timed_out = False
        self.core = self.core_class(self)

    # ----------------------------------------------------------------- public
    @property
    def pending_invocations(self) -> int:
        """Invocations waiting for a response (0 when nothing is in flight)."""
        return len(self.core.pending)

    @property
    def inflight(self) -> int:
        """Handlers running now."""
        return self.core.handlers.count

    async def start(self) -> None:
        """Connect and start accepting work. Idempotent."""
        if self.core.started:
            return
        if self.core.destroyed:
            raise BridgeNotRunningError(f"{self.name} bridge was destroyed; create a new one")
        await self._connect()
        self.core.started = True
        self.core.accepting = True

    async def destroy(self) -> None:
        """Stop intake, let in-flight handlers finish (up to ``drain_timeout_s``),
        reject pending invocations with 503 and close. Idempotent. Cancelled during the
        drain (a shutdown deadline ran out), it still rejects and closes, within
        ``CLOSE_AFTER_CUT_S``, before the cancellation goes on."""
        if self.core.destroyed:
            return
        self.core.destroyed = True
        self.core.accepting = False
        try:
            await self._drain()
        except asyncio.CancelledError:
            # The caller's deadline (one shared by every shutdown step) cut the drain short:
            # still reject the pending invocations and close, briefly, then let it go on.
            self.drain_timed_out = True
            self.log.warning("drain cut short: %d handler(s) running", self.core.inflight.count)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._finish_destroy(0.2), CLOSE_AFTER_CUT_S)
            raise
        await self._finish_destroy(min(2.0, max(self.drain_timeout_s, 0.1)))

    async def _drain(self) -> None:
        """Stop intake and let in-flight handlers finish (up to ``drain_timeout_s``)."""
        if not self.core.started:
            return
        try:
            await self._stop_intake()
        except Exception:
            self.log.exception("stopping intake failed")
        if not await self.core.inflight.wait_idle(self.drain_timeout_s):
            self.drain_timed_out = True
            self.log.warning(
                "%d handler(s) still running after the %.1fs drain timeout",
                self.core.inflight.count,
                self.drain_timeout_s,
            )

    async def _finish_destroy(self, background_timeout_s: float) -> None:
        """Reject pending invocations (503), end the background tasks, close."""
        self.core.pending.reject_all(
            BridgeNotRunningError(
                f"{self.name} bridge is shutting down", StatusCode.SERVICE_UNAVAILABLE
            )
        )
        await self.core.stop_background(background_timeout_s)
        if self.core.started:
            try:
                await self._close()
            finally:
                self.core.started = False

    async def is_ready(self) -> bool:
        """Started, accepting work and connected."""
        return self.core.started and self.core.accepting and await self._is_connected()

    async def is_healthy(self) -> bool:
        """Started and connected to the transport."""
        return self.core.started and await self._is_connected()

    async def emit_message(self, message: AnyMessage) -> None:
        """Publish a message to every matching subscription."""
        self.core.require_running()
        self._check_encodable(message)
        try:
            await self._publish(message)
        finally:
            self.core.release_encoded(message)

    async def invoke(self, command: Command, ttl_s: float | None = None) -> Any:
        """Send ``command`` and return the result payload, or raise the error the
        response carries; 504 when no response arrives within ``ttl_s``.

        At most ``max_sends_in_flight`` invocations prepare and send at once; the others
        wait for a slot, and one that gets none before its ttl ends 504 without sending:
        a burst costs its callers no more than their ttl, and nothing is sent late.
        """
        self.core.require_running(command.trace_id)
        ttl = self.default_command_ttl_s if ttl_s is None else ttl_s
        loop = asyncio.get_running_loop()
        started = loop.time()
        deadline = now_ms() + max(round(ttl * 1000), 1)
        await self.core.acquire_send_slot(command, ttl)
        holding = True
        try:
            ttl_left = max(ttl - (loop.time() - started), 0.001)
            update: dict[str, Any] = {}
            if command.sender.instance_id != self.instance_id:
                update["sender"] = command.sender.model_copy(
                    update={"instance_id": self.instance_id}
                )
            with (
                telemetry.span(
                    f"invoke {command.receiver}",
                    SpanKind.CLIENT,
                    attributes={"purista.correlation_id": command.correlation_id},
                )
                if telemetry.tracing_configured()
                else telemetry.NO_SPAN
            ):
                if command.otp is None:
                    otp = telemetry.inject_otp()
                    if otp is not None:
                        update["otp"] = otp
                if command.expires_at is None or command.expires_at > deadline:
                    update["expires_at"] = deadline
                # one copy with every change (none when nothing changes), dropped once sent:
                # a pending invocation keeps no copy of what its caller holds
                outgoing = command.model_copy(update=update) if update else command
                del update
                self._check_encodable(outgoing)
                pending = self.core.pending
                cid = command.correlation_id
                receiver, trace_id = command.receiver, command.trace_id
                # the caller's command is not kept while the response is awaited (a caller
                # that passes it inline, as the service context does, holds none either)
                del command
                try:
                    future = pending.add(cid, ttl_left, receiver, trace_id)
                except BaseException:
                    self.core.release_encoded(outgoing)
                    raise
                try:
                    await self.core.send_within(self._send_command(outgoing), ttl_left)
                except asyncio.CancelledError:
                    pending.discard(cid, future)  # the caller left: nobody waits now
                    raise
                except TimeoutError:
                    pending.discard(cid, future)
                    raise UnhandledError(
                        f"could not send command to {receiver} within {ttl:.3f}s",
                        StatusCode.GATEWAY_TIMEOUT,
                        trace_id=trace_id,
                    ) from None
                except PuristaError as exc:
                    pending.discard(cid, future)
                    if now_ms() >= deadline and exc.status == StatusCode.SERVICE_UNAVAILABLE:
                        # the send gave up because the ttl ran out: the caller's deadline
                        raise UnhandledError(
                            f"could not send command to {receiver} within "
                            f"{ttl:.3f}s: {exc.message}",
                            StatusCode.GATEWAY_TIMEOUT,
                            trace_id=trace_id,
                        ) from exc
                    if exc.trace_id is None:
                        exc.trace_id = trace_id
                    raise
                except Exception as exc:
                    pending.discard(cid, future)
                    raise UnhandledError(
                        f"could not send command to {receiver}: "
                        f"{type(exc).__name__}: {exc}",
                        StatusCode.SERVICE_UNAVAILABLE,
                        trace_id=trace_id,
                    ) from exc
                finally:
                    holding = False
                    self.core.release_encoded(outgoing)
                    self.core.release_send_slot()
                    del outgoing
                try:
                    response = await future
                except BaseException:  # cancelled while waiting, or timed out (gone already)
                    pending.discard(cid, future)
                    raise
        finally:
            if holding:
                self.core.release_send_slot()
        if isinstance(response, CommandErrorResponse):
            raise error_from_response(response)
        return response.payload

    async def register_command(
        self, address: Address, handler: CommandHandler, config: CommandConfig | None = None
    ) -> None:
        """Serve ``address`` with ``handler`` on this instance."""
        self.core.require_running()
        self._check_wire_names(
            "command", address, [r.address for r in self.core._commands.values()]
        )
        reg = RegisteredCommand(self._own(address), handler, config or CommandConfig())
        previous = self.core._commands.pop(address.key, None)
        if previous is not None:  # re-registering replaces the binding, never adds one
            await self._unbind_command(previous)
        self.core._commands[address.key] = reg
        await self._bind_command(reg)

    def _check_wire_names(self, kind: str, address: Address, registered: list[Address]) -> None:
        """Fail when ``address`` differs from a registered one but, snake-cased level by
        level as PURISTA writes subjects and topics, names the same (``snake_cased_wire``)."""
        if not self.snake_cased_wire:
            return
        mine = tuple(snake_case(part) for part in address.key)
        for other in registered:
            if other.key != address.key and tuple(snake_case(p) for p in other.key) == mine:
                raise NameCollisionError(
                    f"{kind} {'.'.join(address.key)!r} and the registered "
                    f"{'.'.join(other.key)!r} are the same on the wire "
                    f"({'.'.join(mine)!r}: PURISTA snake-cases every subject/topic level); "
                    "rename one of them"
                )

    async def unregister_command(self, address: Address) -> None:
        """Stop serving ``address``."""
        reg = self.core._commands.pop(address.key, None)
        if reg is not None and self.core.started:
            await self._unbind_command(reg)

    async def register_subscription(
        self, subscription: Subscription, handler: SubscriptionHandler
    ) -> None:
        """Deliver matching messages to ``handler`` per the subscription's hints."""
        self.core.require_running()
        if subscription.subscriber.instance_id != self.instance_id:
            subscription = replace(subscription, subscriber=self._own(subscription.subscriber))
        self._check_wire_names(
            "subscription",
            subscription.subscriber,
            [r.subscription.subscriber for r in self.core._subscriptions.values()],
        )
        reg = RegisteredSubscription(subscription, handler)
        previous = self.core._subscriptions.pop(subscription.key, None)
        if previous is not None:
            await self._unbind_subscription(previous)
        self.core._subscriptions[subscription.key] = reg
        await self._bind_subscription(reg)

    async def unregister_subscription(self, address: Address) -> None:
        """Stop delivering to the subscription at ``address``."""
        reg = self.core._subscriptions.pop(address.key, None)
        if reg is not None and self.core.started:
            await self._unbind_subscription(reg)

    # ---------------------------------------------------------------- helpers
    def _own(self, address: Address) -> Address:
        return address.model_copy(update={"instance_id": self.instance_id})

    def _check_encodable(self, message: AnyMessage) -> None:
        """400 unless ``message`` encodes within the size limit; its bytes are kept for the
        transport (the caller must ``core.release_encoded`` it)."""
        try:
            self.core.hold_encoded(message)
        except MessageEncodeError as exc:
            raise HandledError(str(exc), StatusCode.BAD_REQUEST) from exc

    # -------------------------------------------------------- transport hooks
    @abstractmethod
    async def _connect(self) -> None:
        """Open the connection (called once by ``start``)."""

    @abstractmethod
    async def _close(self) -> None:
        """Close the connection (called last by ``destroy``)."""

    @abstractmethod
    async def _is_connected(self) -> bool:
        """Whether the transport is connected now."""

    @abstractmethod
    async def _publish(self, message: AnyMessage) -> None:
        """Publish an event-like message (custom, info, success-with-event)."""

    @abstractmethod
    async def _send_command(self, command: Command) -> None:
        """Send a command; its response must reach :meth:`resolve_response`."""

    @abstractmethod
    async def _bind_command(self, reg: RegisteredCommand) -> None:
        """Start consuming a command; call :meth:`handle_command`, send the
        response, then :meth:`after_response`."""

    @abstractmethod
    async def _unbind_command(self, reg: RegisteredCommand) -> None: ...

    @abstractmethod
    async def _bind_subscription(self, reg: RegisteredSubscription) -> None:
        """Start consuming for a subscription; call :meth:`handle_subscription`
        and act on its outcome (ack, redeliver after delay, dead letter)."""

    @abstractmethod
    async def _unbind_subscription(self, reg: RegisteredSubscription) -> None: ...

    async def _publish_dead_letter(self, letter: CustomMessage, reason: str) -> None:
        """Publish a dead letter; a transport may override it to carry ``reason`` in a
        header (``x-purista-dead-letter-reason``). Default: :meth:`_publish`."""
        await self._publish(letter)

    async def _stop_intake(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Stop taking new commands and messages (first step of destroy)."""
