"""Deliberately broken adapters: the conformance suite must fail each of them.

Each factory wraps a real adapter (the in-memory ones, or the NATS bridge for
reconnects) and breaks one promise. ``EXPECTED`` names the check that must
catch it. Used by ``test_broken_adapters.py`` through ``conformance run``.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from dataclasses import replace
from typing import Any

from conformance.adapters import AdapterContext
from reference_services.adapters.memory.event_bridge import DefaultEventBridge, MemoryHub
from reference_services.adapters.memory.queue_bridge import DefaultQueueBridge, MemoryQueueStore
from reference_services.adapters.memory.stores import DefaultStateStore, MemoryKV
from reference_services.runtime.ids import now_ms
from reference_services.runtime.messages import CustomMessage
from reference_services.runtime.spi.bridge_base import BridgeCore, DeliveryOutcome, Disposition
from reference_services.runtime.spi.capabilities import (
    YES,
    EventBridgeCapabilities,
    QueueBridgeCapabilities,
    unsupported,
)
from reference_services.runtime.spi.numbers import reject_unsafe_integers


def _hub(ctx: AdapterContext) -> MemoryHub:
    return ctx.shared.setdefault("memory_hub", MemoryHub())


class DropsOneInAHundred(DefaultEventBridge):
    """Silently drops every hundredth event it publishes."""

    name = "drops"
    _count = itertools.count(1)

    async def _publish(self, message: Any) -> None:
        if isinstance(message, CustomMessage) and next(self._count) % 100 == 50:
            return
        await super()._publish(message)


class Duplicates(DefaultEventBridge):
    """Publishes every twentieth event twice."""

    name = "duplicates"
    _count = itertools.count(1)

    async def _publish(self, message: Any) -> None:
        await super()._publish(message)
        if isinstance(message, CustomMessage) and next(self._count) % 20 == 0:
            await super()._publish(message)


class IgnoresTtl(DefaultEventBridge):
    """Ignores the ttl of invocations (waits the 30 s default instead)."""

    name = "ignores-ttl"

    async def invoke(self, command: Any, ttl_s: float | None = None) -> Any:
        return await super().invoke(command, None)


class _PastFilterCore(BridgeCore):
    def matching_subscriptions(self, message: Any) -> list[Any]:
        return [
            r
            for r in self.registered_subscriptions
            if r.subscription.event_name in (None, message.event_name)
            and (r.subscription.message_type in (None, message.message_type))
        ]


class PastFilter(DefaultEventBridge):
    """Matches subscriptions on the event name only: principal/tenant/sender filters leak."""

    name = "past-filter"
    core_class = _PastFilterCore


class _SharedToAllCore(BridgeCore):
    def matching_subscriptions(self, message: Any) -> list[Any]:
        regs = super().matching_subscriptions(message)
        return [replace(r, subscription=replace(r.subscription, shared=False)) for r in regs]


class SharedToAll(DefaultEventBridge):
    """Delivers shared subscriptions to every instance."""

    name = "shared-to-all"
    core_class = _SharedToAllCore


class _EmitsInHandlerCore(BridgeCore):
    async def _run_subscription(self, reg: Any, message: Any, attempt: int) -> Any:
        sub = reg.subscription
        if not sub.emit_event_name:
            return await super()._run_subscription(reg, message, attempt)

        async def handle_then_emit(msg: Any) -> None:
            result = await reg.handler(msg)
            if result is not None:
                await self._bridge._publish(self.chained_event(sub, msg, result))

        inner = replace(sub, emit_event_name=None)
        return await super()._run_subscription(
            replace(reg, subscription=inner, handler=handle_then_emit), message, attempt
        )


class EmitsInHandler(DefaultEventBridge):
    """Publishes a subscription's emitEventName event as part of its handler, so a failed
    emit counts as a failed handler: the delivery is retried and the handler runs again."""

    name = "emits-in-handler"
    core_class = _EmitsInHandlerCore


class _SilentTimeoutsCore(BridgeCore):
    def invoke_timed_out(self, correlation_id: str, description: str) -> None:
        return None


class SilentTimeouts(DefaultEventBridge):
    """Never reports an invocation that timed out (no infoInvokeTimeout)."""

    name = "silent-timeouts"
    core_class = _SilentTimeoutsCore


class KeepsServing(DefaultEventBridge):
    """unregister_command unbinds nothing: the instance goes on running the command."""

    name = "keeps-serving"

    async def unregister_command(self, address: Any) -> None:
        return None


class ReadyWhileDraining(DefaultEventBridge):
    """Reports ready as long as it is connected, draining included."""

    name = "ready-while-draining"

    async def is_ready(self) -> bool:
        return self.core.started and await self._is_connected()


class _LeaksInfoSlotsCore(BridgeCore):
    def emit_info_soon(self, message_type: Any, payload: Any) -> None:
        super().emit_info_soon(message_type, payload)
        self.info_in_flight += 1  # never given back: after 64 reports, nothing is reported


class LeaksInfoSlots(DefaultEventBridge):
    """Keeps an info message's in-flight slot after publishing it, so after its first 64
    info messages a bridge reports nothing more."""

    name = "leaks-info-slots"
    core_class = _LeaksInfoSlotsCore


class _UnboundedSendsCore(BridgeCore):
    async def acquire_send_slot(self, command: Any, ttl_s: float) -> None:
        return None

    def release_send_slot(self) -> None:
        return None


class UnboundedSends(DefaultEventBridge):
    """Ignores max_sends_in_flight: every invocation sends at once, however many sends are
    still in flight."""

    name = "unbounded-sends"
    core_class = _UnboundedSendsCore


class _AwaitsSendsCore(BridgeCore):
    async def send_within(self, send: Any, ttl_s: float) -> None:
        await send  # as long as the transport takes


class AwaitsSends(DefaultEventBridge):
    """Waits for a send however long it takes: a stuck send holds its caller past the ttl."""

    name = "awaits-sends"
    core_class = _AwaitsSendsCore


class _LosesTraceCore(BridgeCore):
    async def _run_subscription(self, reg: Any, message: Any, attempt: int) -> Any:
        untraced = message.model_copy(update={"otp": None})
        return await super()._run_subscription(reg, untraced, attempt)


class LosesTrace(DefaultEventBridge):
    """Runs subscription handlers outside the delivered message's trace context: what they
    invoke starts no trace or a new one."""

    name = "loses-trace"
    core_class = _LosesTraceCore


class UntracedSendErrors(DefaultEventBridge):
    """Re-raises the error of an invocation whose send failed without its trace id."""

    name = "untraced-send-errors"

    async def invoke(self, command: Any, ttl_s: float | None = None) -> Any:
        from reference_services.runtime.errors import PuristaError, UnhandledError

        try:
            return await super().invoke(command, ttl_s)
        except PuristaError as exc:
            if "could not send" in exc.message or "refused" in exc.message:
                raise UnhandledError(exc.message, exc.status) from exc
            raise


class ReadyAnswersNone(DefaultEventBridge):
    """Answers is_ready() with None (not False) before start."""

    name = "ready-answers-none"

    async def is_ready(self) -> Any:
        if not self.core.started:
            return None
        return await super().is_ready()


class _AcksEarlyCore(BridgeCore):
    async def handle_subscription(self, reg: Any, message: Any, attempt: int = 1) -> Any:
        parent = super().handle_subscription
        self.spawn(parent(reg, message, attempt))
        return DeliveryOutcome(Disposition.ACK)


class AcksEarly(DefaultEventBridge):
    """Acknowledges a delivery before the handler finished (so failures are never retried)."""

    name = "acks-early"
    core_class = _AcksEarlyCore


class SkipsDrain(DefaultEventBridge):
    """destroy() does not wait for in-flight handlers."""

    name = "skips-drain"

    def __init__(self, **kwargs: Any) -> None:
        kwargs["drain_timeout_s"] = 0.0
        super().__init__(**kwargs)


class _MangledCore(BridgeCore):
    def encode(self, message: Any) -> bytes:
        raw = super().encode(message)
        return raw.decode("utf-8").encode("ascii", "replace")


class MangledNonAscii(DefaultEventBridge):
    """Replaces every non-ASCII character on the wire with '?'."""

    name = "mangles"
    core_class = _MangledCore


class LeaksPending(DefaultEventBridge):
    """Keeps its own waiter per invocation and forgets to drop it when the invocation fails."""

    name = "leaks-pending"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._waiting: dict[str, Any] = {}

    async def invoke(self, command: Any, ttl_s: float | None = None) -> Any:
        self._waiting[command.correlation_id] = command
        result = await super().invoke(command, ttl_s)  # a timeout raises: the entry stays
        del self._waiting[command.correlation_id]
        return result

    @property
    def pending_invocations(self) -> int:
        return len(self._waiting)


class NoPendingCount(DefaultEventBridge):
    """Offers no pending_invocations (as an adapter not built on the bridge base)."""

    name = "no-pending-count"

    @property
    def pending_invocations(self) -> int:
        raise AttributeError("pending_invocations")


def drops(ctx: AdapterContext) -> Any:
    return DropsOneInAHundred(hub=_hub(ctx), **ctx.options)


def duplicates(ctx: AdapterContext) -> Any:
    return Duplicates(hub=_hub(ctx), **ctx.options)


def ignores_ttl(ctx: AdapterContext) -> Any:
    return IgnoresTtl(hub=_hub(ctx), **ctx.options)


def past_filter(ctx: AdapterContext) -> Any:
    return PastFilter(hub=_hub(ctx), **ctx.options)


def shared_to_all(ctx: AdapterContext) -> Any:
    return SharedToAll(hub=_hub(ctx), **ctx.options)


def acks_early(ctx: AdapterContext) -> Any:
    return AcksEarly(hub=_hub(ctx), **ctx.options)


def emits_in_handler(ctx: AdapterContext) -> Any:
    return EmitsInHandler(hub=_hub(ctx), **ctx.options)


def silent_timeouts(ctx: AdapterContext) -> Any:
    return SilentTimeouts(hub=_hub(ctx), **ctx.options)


def keeps_serving(ctx: AdapterContext) -> Any:
    return KeepsServing(hub=_hub(ctx), **ctx.options)


def ready_while_draining(ctx: AdapterContext) -> Any:
    return ReadyWhileDraining(hub=_hub(ctx), **ctx.options)


def leaks_info_slots(ctx: AdapterContext) -> Any:
    return LeaksInfoSlots(hub=_hub(ctx), **ctx.options)


def unbounded_sends(ctx: AdapterContext) -> Any:
    return UnboundedSends(hub=_hub(ctx), **ctx.options)


def awaits_sends(ctx: AdapterContext) -> Any:
    return AwaitsSends(hub=_hub(ctx), **ctx.options)


def loses_trace(ctx: AdapterContext) -> Any:
    return LosesTrace(hub=_hub(ctx), **ctx.options)


def untraced_send_errors(ctx: AdapterContext) -> Any:
    return UntracedSendErrors(hub=_hub(ctx), **ctx.options)


def ready_answers_none(ctx: AdapterContext) -> Any:
    return ReadyAnswersNone(hub=_hub(ctx), **ctx.options)


def skips_drain(ctx: AdapterContext) -> Any:
    return SkipsDrain(
        hub=_hub(ctx), **{k: v for k, v in ctx.options.items() if k != "drain_timeout_s"}
    )


def leaks_pending(ctx: AdapterContext) -> Any:
    return LeaksPending(hub=_hub(ctx), **ctx.options)


def no_pending_count(ctx: AdapterContext) -> Any:
    return NoPendingCount(hub=_hub(ctx), **ctx.options)


def mangles(ctx: AdapterContext) -> Any:
    return MangledNonAscii(hub=_hub(ctx), **ctx.options)


def never_reconnects(ctx: AdapterContext) -> Any:
    """The NATS bridge with the client's reconnects switched off after connecting."""
    from reference_services.adapters.nats.event_bridge import NatsBridge

    class NeverReconnects(NatsBridge):
        async def _connect(self) -> None:
            await super()._connect()
            assert self._nc is not None
            self._nc.options["allow_reconnect"] = False

    return NeverReconnects(url=ctx.url("nats"), prefix=ctx.prefix, **ctx.options)


class DoubleLease(DefaultQueueBridge):
    """Every seventh lease leaves the job leasable, so another worker leases it again."""

    name = "double-lease"
    _count = itertools.count(1)

    def _take(self, queue: str, batch: int, worker_id: str | None) -> Any:
        jobs, upcoming = super()._take(queue, batch, worker_id)
        for job in jobs:
            if next(self._count) % 7 == 0:
                self.store.queues[queue].jobs[job.id].lease_id = None
        return jobs, upcoming

    async def ack(self, job: Any) -> None:
        self.store.queues[job.queue].jobs.pop(job.id, None)


def double_lease(ctx: AdapterContext) -> Any:
    return DoubleLease(store=ctx.shared.setdefault("queue", MemoryQueueStore()), **ctx.options)


class NotAtomic(DefaultStateStore):
    """set_if_absent checks, yields to the loop, then writes: concurrent claims all win."""

    name = "not-atomic"

    async def _set_if_absent(self, name: str, raw_json: str, ttl_s: float | None) -> bool:
        if self.kv.get(name) is not None:
            return False
        await asyncio.sleep(0)
        self.kv.data[name] = (raw_json, None)
        return True


def not_atomic(ctx: AdapterContext) -> Any:
    return NotAtomic(kv=ctx.shared.setdefault("kv", MemoryKV()), **ctx.options)


class ConfigNotAtomic(NotAtomic):
    """A config store with the same broken set_if_absent (a config store's declared
    set_if_absent is checked too)."""

    name = "config-not-atomic"
    kind = "config_store"


def config_not_atomic(ctx: AdapterContext) -> Any:
    return ConfigNotAtomic(kv=ctx.shared.setdefault("config-kv", MemoryKV()), **ctx.options)


class Reorders(DefaultEventBridge):
    """Holds back one event in seven for a moment, so the next ones overtake it."""

    name = "reorders"
    _count = itertools.count(1)

    async def _publish(self, message: Any) -> None:
        if isinstance(message, CustomMessage) and next(self._count) % 7 == 0:
            parent = super()._publish

            async def later() -> None:
                await asyncio.sleep(0.02)
                await parent(message)

            self.core.spawn(later())
            return
        await super()._publish(message)


def reorders(ctx: AdapterContext) -> Any:
    return Reorders(hub=_hub(ctx), **ctx.options)


class QueueReorders(DefaultQueueBridge):
    """Leases the second-oldest job of the top priority before the oldest, once in seven."""

    name = "queue-reorders"
    _count = itertools.count(1)

    def _take(self, queue: str, batch: int, worker_id: str | None) -> Any:
        q = self.store.queues[queue]
        now = now_ms()
        if next(self._count) % 7 == 0:
            ready = sorted(
                (r for r in q.jobs.values() if r.lease_id is None and r.available_at_ms <= now),
                key=lambda r: (-r.priority, r.seq),
            )
            if len(ready) >= 2 and ready[0].priority == ready[1].priority:
                ready[0].seq, ready[1].seq = ready[1].seq, ready[0].seq
                ready[0].available_at_ms, ready[1].available_at_ms = (
                    ready[1].available_at_ms,
                    ready[0].available_at_ms,
                )
        return super()._take(queue, batch, worker_id)


def queue_reorders(ctx: AdapterContext) -> Any:
    return QueueReorders(store=ctx.shared.setdefault("queue", MemoryQueueStore()), **ctx.options)


class _FixedDelayCore(BridgeCore):
    async def handle_subscription(self, reg: Any, message: Any, attempt: int = 1) -> Any:
        outcome = await super().handle_subscription(reg, message, attempt)
        if outcome.disposition is Disposition.RETRY:
            return replace(outcome, delay_s=1.0)
        return outcome


class FixedRetryDelay(DefaultEventBridge):
    """Retries after a fixed second, whatever retry_delay_ms says."""

    name = "fixed-retry-delay"
    core_class = _FixedDelayCore


def fixed_retry_delay(ctx: AdapterContext) -> Any:
    return FixedRetryDelay(hub=_hub(ctx), **ctx.options)


class _ForgetfulRetryCore(BridgeCore):
    async def handle_subscription(self, reg: Any, message: Any, attempt: int = 1) -> Any:
        if attempt > 1:
            message = message.model_copy(update={"tenant_id": None, "principal_id": None})
        return await super().handle_subscription(reg, message, attempt)


class ForgetfulRetries(DefaultEventBridge):
    """Redelivered copies lose tenantId and principalId (first deliveries are intact)."""

    name = "forgetful-retries"
    core_class = _ForgetfulRetryCore


def forgetful_retries(ctx: AdapterContext) -> Any:
    return ForgetfulRetries(hub=_hub(ctx), **ctx.options)


class _ForgetfulDeadLetterCore(BridgeCore):
    async def dead_letter(self, reg: Any, message: Any, attempts: int, reason: str) -> None:
        stripped = message.model_copy(update={"tenant_id": None, "otp": None})
        await super().dead_letter(reg, stripped, attempts, reason)


class ForgetfulDeadLetters(DefaultEventBridge):
    """The dead letter's original message has lost its tenantId and otp."""

    name = "forgetful-dead-letters"
    core_class = _ForgetfulDeadLetterCore


def forgetful_dead_letters(ctx: AdapterContext) -> Any:
    return ForgetfulDeadLetters(hub=_hub(ctx), **ctx.options)


class TinyLimit(DefaultEventBridge):
    """Declares (and enforces) a 16 KiB message limit: too small for PURISTA messages."""

    name = "tiny-limit"
    capabilities = replace(DefaultEventBridge.capabilities, max_message_bytes=16 * 1024)

    def __init__(self, **kwargs: Any) -> None:
        kwargs["max_message_bytes"] = 16 * 1024
        super().__init__(**kwargs)


def tiny_limit(ctx: AdapterContext) -> Any:
    return TinyLimit(hub=_hub(ctx), **ctx.options)


class NackIgnoresDelay(DefaultQueueBridge):
    """nack(delay_ms=...) makes the job leasable at once."""

    name = "nack-ignores-delay"

    async def _nack(self, job: Any, reason: str | None, delay_ms: int) -> Any:
        return await super()._nack(job, reason, 0)


def nack_ignores_delay(ctx: AdapterContext) -> Any:
    return NackIgnoresDelay(store=ctx.shared.setdefault("queue", MemoryQueueStore()), **ctx.options)


class CapsDelays(DefaultQueueBridge):
    """Honours enqueue delays up to one second and caps longer ones at one second."""

    name = "caps-delays"

    async def _enqueue(self, request: Any) -> str:
        return await super()._enqueue(replace(request, delay_ms=min(request.delay_ms, 1000)))


def caps_delays(ctx: AdapterContext) -> Any:
    return CapsDelays(store=ctx.shared.setdefault("queue", MemoryQueueStore()), **ctx.options)


class BuiltInDefaults(DefaultQueueBridge):
    """Accepts default_max_attempts / default_lease_ttl_ms and uses the built-in ones."""

    name = "built-in-defaults"

    def __init__(self, store: MemoryQueueStore | None = None, **kwargs: Any) -> None:
        kwargs.pop("default_max_attempts", None)
        kwargs.pop("default_lease_ttl_ms", None)
        super().__init__(store, **kwargs)


def builtin_defaults(ctx: AdapterContext) -> Any:
    return BuiltInDefaults(store=ctx.shared.setdefault("queue", MemoryQueueStore()), **ctx.options)


class ExpiryNotARetry(DefaultQueueBridge):
    """Counts the retries of nacks but not the lease expiries that give a job back."""

    name = "expiry-not-a-retry"

    def _recover_expired(self, q: Any, now: int) -> None:
        before = q.retries
        super()._recover_expired(q, now)
        q.retries = before


def expiry_not_a_retry(ctx: AdapterContext) -> Any:
    return ExpiryNotARetry(store=ctx.shared.setdefault("queue", MemoryQueueStore()), **ctx.options)


class NotFenced(DefaultStateStore):
    """replace_if/remove_if only check that the key exists: a stale owner overwrites."""

    name = "not-fenced"

    async def _replace_if(
        self, name: str, version: str, raw_json: str, ttl_s: float | None, also: dict[str, str]
    ) -> str | None:
        if self.kv.get(name) is None:
            return None
        for key, raw in also.items():
            self.kv.put(key, raw)
        return self.kv.put(name, raw_json, ttl_s)

    async def _remove_if(self, name: str, version: str) -> bool:
        await self._remove(name)
        return True


def not_fenced(ctx: AdapterContext) -> Any:
    return NotFenced(kv=ctx.shared.setdefault("kv", MemoryKV()), **ctx.options)


class SecretNotFenced(NotFenced):
    """A secret store with the same unfenced replace_if/remove_if."""

    name = "secret-not-fenced"
    kind = "secret_store"


def secret_not_fenced(ctx: AdapterContext) -> Any:
    return SecretNotFenced(kv=ctx.shared.setdefault("secret-kv", MemoryKV()), **ctx.options)


class TornEffects(DefaultStateStore):
    """Declares atomic effects but writes the extra keys before checking the version."""

    name = "torn-effects"

    async def _replace_if(
        self, name: str, version: str, raw_json: str, ttl_s: float | None, also: dict[str, str]
    ) -> str | None:
        for key, raw in also.items():
            self.kv.put(key, raw)
        return await super()._replace_if(name, version, raw_json, ttl_s, {})


def torn_effects(ctx: AdapterContext) -> Any:
    return TornEffects(kv=ctx.shared.setdefault("kv", MemoryKV()), **ctx.options)


class ShortTtlsOnly(DefaultEventBridge):
    """Honours ttls under one second; a longer one is replaced by the 30 s default."""

    name = "short-ttls-only"

    async def invoke(self, command: Any, ttl_s: float | None = None) -> Any:
        return await super().invoke(command, ttl_s if ttl_s is not None and ttl_s < 1 else None)


def short_ttls_only(ctx: AdapterContext) -> Any:
    return ShortTtlsOnly(hub=_hub(ctx), **ctx.options)


def _as_doubles(value: Any) -> Any:
    """What a backend keeping numbers as doubles does to a JSON value."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(float(value))
    if isinstance(value, dict):
        return {k: _as_doubles(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_doubles(v) for v in value]
    return value


class RoundsBigInts(DefaultQueueBridge):
    """Keeps numbers as doubles: integers beyond 2**53 are silently rounded."""

    name = "rounds-big-ints"

    async def _enqueue(self, request: Any) -> str:
        return await super()._enqueue(
            replace(
                request,
                payload=_as_doubles(request.payload),
                parameter=_as_doubles(request.parameter),
            )
        )


def rounds_big_ints(ctx: AdapterContext) -> Any:
    return RoundsBigInts(store=ctx.shared.setdefault("queue", MemoryQueueStore()), **ctx.options)


class SafeIntegersQueue(RoundsBigInts):
    """Not broken: keeps numbers as doubles, declares ``numbers="safe_integers"`` and
    refuses at enqueue, naming the field, every integer a double would round."""

    name = "safe-integers"
    capabilities = replace(DefaultQueueBridge.capabilities, numbers="safe_integers")

    async def _enqueue(self, request: Any) -> str:
        reject_unsafe_integers(request.payload, "payload")
        reject_unsafe_integers(request.parameter, "parameter")
        return await super()._enqueue(request)


def safe_integers_queue(ctx: AdapterContext) -> Any:
    store = ctx.shared.setdefault("queue", MemoryQueueStore())
    return SafeIntegersQueue(store=store, **ctx.options)


class SafeIntegersUnchecked(RoundsBigInts):
    """Declares ``numbers="safe_integers"`` but refuses nothing: big integers come back
    rounded."""

    name = "safe-integers-unchecked"
    capabilities = replace(DefaultQueueBridge.capabilities, numbers="safe_integers")


def safe_integers_unchecked(ctx: AdapterContext) -> Any:
    return SafeIntegersUnchecked(
        store=ctx.shared.setdefault("queue", MemoryQueueStore()), **ctx.options
    )


class _ShortFloatsCore(BridgeCore):
    def encode(self, message: Any) -> bytes:
        raw = super().encode(message)
        return re.sub(rb"\d\.\d{12,}", lambda m: b"%.12g" % float(m.group()), raw)


class ShortFloats(DefaultEventBridge):
    """Writes floats with 12 significant digits on the wire."""

    name = "short-floats"
    core_class = _ShortFloatsCore


def short_floats(ctx: AdapterContext) -> Any:
    return ShortFloats(hub=_hub(ctx), **ctx.options)


class StoreRoundsBigInts(DefaultStateStore):
    """Keeps numbers as doubles, and says nothing: big integers come back rounded."""

    name = "store-rounds-big-ints"

    async def _set(self, name: str, raw_json: str) -> None:
        await super()._set(name, json.dumps(_as_doubles(json.loads(raw_json))))


def store_rounds_big_ints(ctx: AdapterContext) -> Any:
    return StoreRoundsBigInts(kv=ctx.shared.setdefault("kv", MemoryKV()), **ctx.options)


def volatile_redis_queue(ctx: AdapterContext) -> Any:
    """The Redis queue bridge, declaring durable, that wipes its queues whenever it starts
    (as a queue kept in a volatile place would lose them with a restart)."""
    from reference_services.adapters.redis.queue_bridge import RedisQueueBridge

    class VolatileRedisQueue(RedisQueueBridge):
        async def _start_transport(self) -> None:
            await super()._start_transport()
            keys = [k async for k in self._client.scan_iter(match=f"{self.prefix}*")]
            if keys:
                await self._client.delete(*keys)

    return VolatileRedisQueue(url=ctx.url("redis"), prefix=ctx.prefix, **ctx.options)


volatile_redis_queue.kind = "queue_bridge"  # type: ignore[attr-defined]
volatile_redis_queue.services = ("redis",)  # type: ignore[attr-defined]
volatile_redis_queue.capabilities = QueueBridgeCapabilities(  # type: ignore[attr-defined]
    fifo_within_priority=YES
)


def amqp_acks_early(ctx: AdapterContext) -> Any:
    """The AMQP bridge, still declaring manual ack, acking each delivery before its handler
    ran (so a crash mid-handler loses the message)."""
    from reference_services.adapters.amqp.event_bridge import AmqpBridge

    class AmqpAcksEarly(AmqpBridge):
        core_class = _AcksEarlyCore

    return AmqpAcksEarly(url=ctx.url("rabbitmq"), prefix=ctx.prefix, **ctx.options)


amqp_acks_early.kind = "event_bridge"  # type: ignore[attr-defined]
amqp_acks_early.services = ("rabbitmq",)  # type: ignore[attr-defined]
amqp_acks_early.capabilities = EventBridgeCapabilities(per_sender_order=YES)  # type: ignore[attr-defined]


def mqtt_trusts_attempt_header(ctx: AdapterContext) -> Any:
    """The MQTT bridge counting a delivery's attempts from the ``x-purista-retry-attempt``
    user property a publisher sent (so a forged header skips retries)."""
    import contextvars

    from reference_services.adapters.mqtt.event_bridge import MqttBridge
    from reference_services.runtime.spi.bridge_base import RETRY_ATTEMPT_HEADER

    first_attempt: contextvars.ContextVar[int] = contextvars.ContextVar("first", default=1)

    class TrustsAttemptHeader(MqttBridge):
        async def _serve_subscription(self, conn: Any, msg: Any, *args: Any) -> bool:
            props = dict(getattr(msg.properties, "UserProperty", None) or [])
            try:
                start = max(int(props.get(RETRY_ATTEMPT_HEADER, "1")), 1)
            except ValueError:
                start = 1
            token = first_attempt.set(start)
            try:
                return await super()._serve_subscription(conn, msg, *args)
            finally:
                first_attempt.reset(token)

        async def _run(self, reg: Any, message: Any) -> bool:
            attempt = first_attempt.get()
            while True:
                outcome = await self.core.handle_subscription(reg, message, attempt)
                if outcome.disposition is not Disposition.RETRY:
                    return True
                await asyncio.sleep(outcome.delay_s)
                attempt += 1

    return TrustsAttemptHeader(url=ctx.url("mosquitto"), prefix=ctx.prefix, **ctx.options)


mqtt_trusts_attempt_header.kind = "event_bridge"  # type: ignore[attr-defined]
mqtt_trusts_attempt_header.services = ("mosquitto",)  # type: ignore[attr-defined]
mqtt_trusts_attempt_header.capabilities = EventBridgeCapabilities()  # type: ignore[attr-defined]


def nats_keeps_commands(ctx: AdapterContext) -> Any:
    """The NATS bridge keeping a record of every command it invoked, never pruned (as its
    table of sent commands once was)."""
    from reference_services.adapters.nats.event_bridge import NatsBridge

    class KeepsCommands(NatsBridge):
        sent_log: dict[str, Any] = {}

        async def invoke(self, command: Any, ttl_s: float | None = None) -> Any:
            self.sent_log[command.correlation_id] = (command, self.core.encode(command))
            return await super().invoke(command, ttl_s)

    return KeepsCommands(url=ctx.url("nats"), prefix=ctx.prefix, **ctx.options)


nats_keeps_commands.kind = "event_bridge"  # type: ignore[attr-defined]
nats_keeps_commands.services = ("nats",)  # type: ignore[attr-defined]
nats_keeps_commands.capabilities = EventBridgeCapabilities()  # type: ignore[attr-defined]
nats_keeps_commands.fault_options = {  # type: ignore[attr-defined]
    "ping_interval_s": 1.0,
    "max_outstanding_pings": 2,
    "reconnect_time_wait_s": 0.2,
    "ack_wait_s": 3.0,
    "publish_timeout_s": 2.0,
}


# broken factory -> (the robustness check that must fail for it, what its message must say)
# (test_broken_robustness.py)
_FIRST_URL: dict[str, str] = {}


def nats_caches_its_url(ctx: AdapterContext) -> Any:
    """The NATS bridge connecting every instance to the first URL its context gave (a
    module-level connection setting): later instances never ask for theirs."""
    from reference_services.adapters.nats.event_bridge import NatsBridge

    if "nats" not in _FIRST_URL:
        _FIRST_URL["nats"] = ctx.url("nats")
    return NatsBridge(url=_FIRST_URL["nats"], prefix=ctx.prefix, **ctx.options)


def nats_ignores_its_url(ctx: AdapterContext) -> Any:
    """The NATS bridge asking its context for a URL every time but connecting to the first
    one it got: a check that stops "its" broker stops one the adapter does not use."""
    from reference_services.adapters.nats.event_bridge import NatsBridge

    url = _FIRST_URL.setdefault("nats-asked", ctx.url("nats"))
    return NatsBridge(url=url, prefix=ctx.prefix, **ctx.options)


for _factory in (nats_caches_its_url, nats_ignores_its_url):
    _factory.kind = "event_bridge"  # type: ignore[attr-defined]
    _factory.services = ("nats",)  # type: ignore[attr-defined]
    _factory.capabilities = EventBridgeCapabilities()  # type: ignore[attr-defined]
    _factory.fault_options = nats_keeps_commands.fault_options  # type: ignore[attr-defined]


EXPECTED_ROBUSTNESS: dict[str, tuple[str, str]] = {
    "mqtt_trusts_attempt_header": (
        "robustness.retry.forged_attempt_header",
        "whatever the header says",
    ),
    "nats_keeps_commands": ("robustness.burst.paused_broker", "MB kept"),
    "nats_caches_its_url": ("robustness.burst.paused_broker", "never asked their context"),
    "nats_ignores_its_url": ("robustness.burst.paused_broker", "while the broker was frozen"),
}


def amqp_forgets_dead_letters(ctx: AdapterContext) -> Any:
    """The AMQP bridge, still declaring native dead lettering, keeping no copy of a dead
    letter in its dead-letter queue."""
    from reference_services.adapters.amqp.event_bridge import AmqpBridge

    class AmqpForgetsDeadLetters(AmqpBridge):
        async def _dead_letter_native(self, *args: Any) -> bool:
            return True

    return AmqpForgetsDeadLetters(url=ctx.url("rabbitmq"), prefix=ctx.prefix, **ctx.options)


amqp_forgets_dead_letters.kind = "event_bridge"  # type: ignore[attr-defined]
amqp_forgets_dead_letters.services = ("rabbitmq",)  # type: ignore[attr-defined]
amqp_forgets_dead_letters.capabilities = EventBridgeCapabilities(  # type: ignore[attr-defined]
    native_dead_lettering=YES
)


# broken factory -> the named check that must fail for it
EXPECTED: dict[str, str] = {
    "drops": "event_bridge.subscriptions.fan_out",
    "duplicates": "event_bridge.subscriptions.shared_one_per_group",
    "ignores_ttl": "event_bridge.commands.timeout",
    "leaks_pending": "event_bridge.commands.timeout",
    "no_pending_count": "event_bridge.commands.late_response_ignored",
    "past_filter": "event_bridge.subscriptions.filter.principal",
    "shared_to_all": "event_bridge.subscriptions.shared_one_per_group",
    "acks_early": "event_bridge.failures.retry_transient",
    "emits_in_handler": "event_bridge.failures.chained_emit_dead_letter",
    "silent_timeouts": "event_bridge.commands.info_on_timeout",
    "keeps_serving": "event_bridge.commands.unregistered_not_served",
    "ready_while_draining": "event_bridge.lifecycle.destroy_drains",
    "leaks_info_slots": "event_bridge.failures.info_every_failure",
    "unbounded_sends": "event_bridge.commands.send_slots",
    "awaits_sends": "event_bridge.commands.slow_send_timeout",
    "loses_trace": "event_bridge.subscriptions.trace_continues",
    "untraced_send_errors": "event_bridge.commands.send_failure",
    "ready_answers_none": "event_bridge.lifecycle.ready_healthy",
    "skips_drain": "event_bridge.lifecycle.destroy_drains",
    "mangles": "event_bridge.fidelity.unicode",
    "never_reconnects": "event_bridge.lifecycle.reconnect",
    "double_lease": "queue_bridge.concurrent_workers",
    "not_atomic": "stores.set_if_absent_atomic",
    "config_not_atomic": "stores.set_if_absent_atomic",
    "secret_not_fenced": "stores.compare_and_set_fences",
    "reorders": "event_bridge.ordering.per_sender",
    "queue_reorders": "queue_bridge.ordering.fifo_within_priority",
    "fixed_retry_delay": "event_bridge.failures.delayed_retry",
    "forgetful_retries": "event_bridge.fidelity.redelivered",
    "forgetful_dead_letters": "event_bridge.fidelity.dead_letter_original",
    "tiny_limit": "event_bridge.fidelity.large_payload",
    "nack_ignores_delay": "queue_bridge.delays.nack",
    "caps_delays": "queue_bridge.delays.enqueue",
    "builtin_defaults": "queue_bridge.fidelity.defaults",
    "expiry_not_a_retry": "queue_bridge.metrics.lease_expiry_retries",
    "not_fenced": "stores.compare_and_set_fences",
    "torn_effects": "stores.atomic_effects",
    "short_ttls_only": "event_bridge.commands.timeout_range",
    "rounds_big_ints": "queue_bridge.fidelity.numbers",
    "safe_integers_unchecked": "queue_bridge.fidelity.numbers",
    "short_floats": "event_bridge.fidelity.numbers",
    "store_rounds_big_ints": "stores.numbers",
    "volatile_redis_queue": "queue_bridge.durable_restart",
    "amqp_acks_early": "event_bridge.failures.crash_mid_handler",
    "amqp_forgets_dead_letters": "event_bridge.failures.native_dead_letter_kept",
}


class Modest(DefaultEventBridge):
    """Not broken: declares shared commands unsupported although it delivers them correctly."""

    name = "modest"
    capabilities = replace(
        DefaultEventBridge.capabilities, shared_commands=unsupported("we did not test it")
    )


def modest(ctx: AdapterContext) -> Any:
    return Modest(hub=_hub(ctx), **ctx.options)
