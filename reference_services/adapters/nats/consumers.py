"""JetStream push consumers behind NatsBridge subscriptions, the way PURISTA makes them.

One :class:`JetStreamConsumer` feeds one subscription of one bridge through the
durable consumer PURISTA v3's NatsBridge creates for the same subscription, so a
PURISTA instance and ours can be members of one subscriber group:

- name ``subscription_<svc>_<ver>_<target>`` (``_<instance>`` when not shared), on the
  one stream that holds the filter, as PURISTA's ``streams.find(filter)`` picks it: ours
  (``<prefix>.<type>.>``), or the per-filter stream of a PURISTA service that started
  first (ours then overlaps it and cannot be created);
- a *push* consumer: deliver new, explicit ack, the bridge's ``ack_wait_s``,
  ``max_ack_pending`` (PURISTA's ``maxMessages``, 10), the subscription filter, at most
  ``max_attempts + 1`` deliveries; a shared one has PURISTA's queue group as deliver
  group, and every member (of either runtime) queue-subscribes its deliver subject, so
  the server hands each message to one of them;
- no idle heartbeats and no flow control: the server sends those to one member of a
  deliver group and nats.js refuses them for queue subscriptions;
- an existing consumer is attached to as it is, by nats.js's rules (its filter must be
  ours, its deliver group our queue group); one PURISTA made has a random inbox as
  deliver subject, one we make a subject derived from the names.

Every message is handled in its own task (at most ``max_inflight_per_subscription`` at
once) and settled only after the handler: ``ack``, ``nak(delay)`` for a retry, or a copy
in the dead-letter stream followed by ``term``. ``metadata.num_delivered`` is the attempt
number, and ``in_progress`` keeps long handlers from being redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as CoreSubscription
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, ConsumerInfo, DeliverPolicy

from reference_services.adapters.nats import subjects
from reference_services.runtime.errors import StatusCode, UnhandledError
from reference_services.runtime.ids import new_id
from reference_services.runtime.spi.bridge_base import (
    DEAD_LETTER_REASON_HEADER,
    DeliveryOutcome,
    Disposition,
    RegisteredSubscription,
)

if TYPE_CHECKING:
    from reference_services.adapters.nats.event_bridge import NatsBridge

MAX_DELIVER_MARGIN = 1
"""Deliveries the server allows beyond ``max_attempts``: PURISTA's ``maxAttempts + 1``
(one redelivery after a crash in the last attempt)."""

HEAL_INTERVAL_S = 5.0
"""How often an idle consumer checks that the server still has it, unchanged."""


class ConsumerMismatchError(UnhandledError):
    """The durable consumer of a subscription exists with a shape we cannot join."""

    default_status = StatusCode.CONFLICT


class JetStreamConsumer:
    """A durable (shared or per-instance) or transient push consumer for one subscription."""

    def __init__(self, bridge: NatsBridge, reg: RegisteredSubscription) -> None:
        sub = reg.subscription
        self.bridge = bridge
        self.key = sub.key
        self.filter_subject = subjects.subscription_filter(bridge.prefix, sub)
        # nats-server 2.9 allows one filter per consumer, inside one stream subject:
        # without a message type the consumer reads the whole stream and the bridge
        # acks what does not match
        self.consumer_filter = self.filter_subject if sub.message_type is not None else None
        #: the filter's tokens, to skip what it does not select before decoding (when the
        #: consumer reads the whole stream, each delivery is mostly someone else's event)
        self._filter_tokens = None if self.consumer_filter else self.filter_subject.split(".")
        self.per_instance = not sub.shared
        self.durable = sub.durable
        self.group = subjects.queue_group(bridge.prefix, sub.subscriber) if sub.shared else None
        self.name = subjects.purista_consumer_name(
            sub.subscriber, bridge.instance_id if self.per_instance else None
        )
        self.stream = bridge.stream
        self.config = self._config(reg)
        self.deliver = self.config.deliver_subject or ""
        self.ack_wait_s = bridge.ack_wait_s
        self.slots = asyncio.Semaphore(bridge.max_inflight_per_subscription)
        self.sub: CoreSubscription | None = None
        self.bound_to = ""
        self.task: asyncio.Task[None] | None = None
        self.active = False
        self._next_check = 0.0

    def _config(self, reg: RegisteredSubscription) -> ConsumerConfig:
        sub, bridge = reg.subscription, self.bridge
        config = ConsumerConfig(
            durable_name=self.name,
            deliver_subject=subjects.deliver_subject(self.stream, self.name),
            deliver_group=self.group,
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=bridge.ack_wait_s,
            max_ack_pending=bridge.max_ack_pending,
            filter_subject=self.consumer_filter,
            max_deliver=sub.failure.max_attempts + MAX_DELIVER_MARGIN,
        )
        # PURISTA keeps every consumer; we let the server drop the ones nobody comes back
        # to: transient ones, and a per-instance durable one whose instance is gone
        if not sub.durable:
            config.inactive_threshold = bridge.ephemeral_consumer_ttl_s
        elif self.per_instance:
            config.inactive_threshold = bridge.instance_consumer_ttl_s
        return config

    async def ensure(self) -> None:
        """Attach to the subscription's consumer, creating it when the server has none
        (idempotent; also after a broker restart). A consumer that exists with another
        filter or deliver group, or as a pull consumer, fails with
        :class:`ConsumerMismatchError`, as PURISTA's own registration fails."""
        js = self.bridge._jsc()
        stream = await self.bridge._stream_for(self.filter_subject)
        if stream != self.stream:
            self.stream = stream
            self.config.deliver_subject = subjects.deliver_subject(stream, self.name)
        info = await self._info(js)
        if info is None:
            try:
                info = await js.add_consumer(self.stream, self.config)
            except nats.js.errors.BadRequestError as exc:
                # created concurrently (by a PURISTA instance, say): attach to that one
                info = await self._info(js)
                if info is None:
                    raise ConsumerMismatchError(
                        f"cannot create consumer {self.name} on stream {self.stream}: {exc}"
                    ) from exc
        self._adopt(info)

    async def _info(self, js: JetStreamContext) -> ConsumerInfo | None:
        try:
            return await js.consumer_info(self.stream, self.name)
        except nats.js.errors.NotFoundError:
            return None

    def _adopt(self, info: ConsumerInfo) -> None:
        config = info.config
        where = f"consumer {self.name} on stream {self.stream}"
        if config.filter_subject and config.filter_subject != self.consumer_filter:
            raise ConsumerMismatchError(
                f"{where} filters {config.filter_subject!r}, this subscription "
                f"{self.consumer_filter or 'everything'!r}: another subscription of "
                f"{'/'.join(self.key)} uses it (delete it to change the filter)"
            )
        if (config.deliver_group or None) != self.group:
            raise ConsumerMismatchError(
                f"{where} has deliver group {config.deliver_group!r}, this subscription "
                f"needs {self.group!r}"
            )
        if not config.deliver_subject:
            raise ConsumerMismatchError(f"{where} is a pull consumer; PURISTA's are push")
        self.deliver = config.deliver_subject
        if config.ack_wait:
            self.ack_wait_s = float(config.ack_wait)

    async def start(self) -> None:
        """Subscribe to the deliver subject (in the deliver group) and start taking."""
        await self._subscribe()
        self.active = True
        self.task = self.bridge.core.spawn(self._intake_loop(), name=f"nats-intake-{self.name}")

    async def _subscribe(self) -> None:
        nc = self.bridge._client()
        old, self.sub = self.sub, await nc.subscribe(self.deliver, queue=self.group or "")
        self.bound_to = self.deliver
        await self.bridge._server_barrier(nc)
        if old is not None:
            await self._release(old)

    async def stop(self) -> None:
        """Stop taking and hand taken-but-unstarted messages back at once."""
        self.active = False
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        sub, self.sub = self.sub, None
        if sub is not None:
            await self._release(sub)

    @staticmethod
    async def _release(sub: CoreSubscription) -> None:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
        queue: asyncio.Queue[Msg] = sub._pending_queue
        while not queue.empty():
            msg = queue.get_nowait()
            if msg.reply and not JetStreamContext.is_status_msg(msg):
                with contextlib.suppress(Exception):
                    await msg.nak()

    async def delete(self) -> None:
        """Remove the consumer from the server (per-instance or transient ones)."""
        with contextlib.suppress(Exception):
            await self.bridge._jsc().delete_consumer(self.stream, self.name)

    async def _intake_loop(self) -> None:
        bridge, backoff = self.bridge, 0.05
        while self.active and bridge.core.accepting:
            await self.slots.acquire()
            msg: Msg | None = None
            try:
                nc = bridge._nc
                if nc is None or nc.is_closed:
                    return
                if not nc.is_connected or self.sub is None:
                    await asyncio.sleep(min(bridge.reconnect_time_wait_s, 0.5))
                    continue
                msg = await self.sub.next_msg(timeout=bridge.fetch_timeout_s)
                backoff = 0.05
            except nats.errors.TimeoutError:
                await self._heal()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # subscription replaced by _heal, connection closing
                bridge.log.debug("taking from %s failed: %r", self.name, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                if msg is None:
                    self.slots.release()
            if msg is None:
                continue
            if not msg.reply or JetStreamContext.is_status_msg(msg):
                self.slots.release()  # no heartbeats or flow control are asked for
                continue
            if self._filter_tokens is not None and not self._subject_selected(msg.subject):
                # not ours (as reg.matches would say after decoding it): settled here,
                # without a task
                self.slots.release()
                with contextlib.suppress(Exception):
                    await msg.ack()
                continue
            task = bridge.core.spawn_tracked(self._deliver(msg), "nats-delivery")
            task.add_done_callback(lambda _t: self.slots.release())

    async def _heal(self) -> None:
        """Re-create the consumer if the server lost it, and follow a new deliver subject
        (PURISTA re-created it with another inbox); checked at most every
        ``HEAL_INTERVAL_S`` while idle (a push consumer that is gone just stays quiet)."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_check:
            return
        self._next_check = loop.time() + HEAL_INTERVAL_S
        try:
            known = await self._info(self.bridge._jsc())
            if known is None:
                self.bridge.log.warning("consumer %s disappeared; re-creating it", self.name)
            await self.ensure()
            if self.deliver != self.bound_to and self.active:
                self.bridge.log.warning(
                    "consumer %s delivers to another subject now; following it", self.name
                )
                await self._subscribe()
        except Exception as exc:
            self.bridge.log.debug("consumer check of %s failed: %r", self.name, exc)

    async def _deliver(self, msg: Msg) -> None:
        bridge = self.bridge
        reg = bridge.core.subscription(self.key)
        try:
            if reg is None or not self.active:
                await msg.nak()
                return
            if self._filter_tokens is not None and not self._subject_selected(msg.subject):
                await msg.ack()  # not ours: as reg.matches would say after decoding it
                return
            message = await bridge.core.decode_for_subscription(reg, msg.data, msg.subject)
            if message is None:
                await self._keep_dead_letter(msg, "malformed message", 1)
                await msg.term()
                return
            if not reg.matches(message):
                await msg.ack()
                return
            if reg.subscription.autoacknowledge:
                await msg.ack()
                await bridge._run_locally(reg, message, 1)
                return
            attempt = msg.metadata.num_delivered
            keepalive = _KeepAlive(self, msg)
            try:
                outcome: DeliveryOutcome = await bridge.core.handle_subscription(
                    reg, message, attempt
                )
            finally:
                keepalive.cancel()
            if outcome.disposition is Disposition.ACK:
                await msg.ack()
            elif outcome.disposition is Disposition.RETRY:
                await msg.nak(delay=outcome.delay_s)
            else:
                await self._keep_dead_letter(msg, outcome.reason, attempt)
                await msg.term()
        except Exception as exc:
            # not settled: the server redelivers after ack_wait, nothing is lost
            bridge.log.warning("delivery on %s not settled: %r", self.name, exc)

    def _subject_selected(self, subject: str) -> bool:
        """Whether the subscription filter selects ``subject``; a subject of another layout
        (a foreign publisher's) counts as selected: its body decides."""
        want = self._filter_tokens
        got = subject.split(".")
        if want is None or len(got) != len(want):
            return True
        return all(w == subjects.ANY or w == g for w, g in zip(want, got, strict=True))

    async def _in_progress(self, msg: Msg) -> None:
        with contextlib.suppress(Exception):
            await msg.in_progress()

    async def _keep_dead_letter(self, msg: Msg, reason: str, attempts: int) -> None:
        """Keep the dead message in the dead-letter stream, with PURISTA's dead-letter
        headers (and the message's own subject and our consumer); then publish it where
        PURISTA puts dead letters (``<filter>.dead-letter``), for whoever reads those."""
        bridge = self.bridge
        reg = bridge.core.subscription(self.key)
        reason = " ".join(reason.split())[:1000] or "unknown"
        headers = {DEAD_LETTER_REASON_HEADER: reason}
        if reg is not None:
            headers.update(subjects.purista_dead_letter_headers(
                reason, attempts, self.filter_subject, reg.subscription.subscriber))
        headers["x-purista-original-subject"] = msg.subject
        headers["x-purista-consumer"] = self.name
        seq: int | None = None
        with contextlib.suppress(Exception):
            seq = msg.metadata.sequence.stream
        headers["Nats-Msg-Id"] = f"{self.name}:{seq}" if seq is not None else new_id()
        try:
            await bridge._js_publish(
                subjects.dead_letter_subject(bridge.prefix, self.name),
                msg.data,
                headers,
                bridge.dead_letter_stream,
            )
            bridge.native_dead_letters += 1
        except Exception as exc:
            bridge.log.error("could not keep the dead letter of %s: %s", msg.subject, exc)
        await self._publish_purista_dead_letter(msg, headers)

    async def _publish_purista_dead_letter(self, msg: Msg, headers: dict[str, str]) -> None:
        # Core publish: whichever stream holds the subject keeps it (ours covers it when
        # the subscription names a message type; PURISTA's own stream for it is an
        # Interest stream, which keeps a message only while some consumer reads it).
        with contextlib.suppress(Exception):
            await self.bridge._client().publish(
                subjects.purista_dead_letter_subject(self.filter_subject), msg.data,
                headers=headers,
            )


class _KeepAlive:
    """While a handler runs, tell the server every ``ack_wait_s / 3`` that the delivery is
    in progress: a timer (no task per delivery; one only when a signal is due)."""

    __slots__ = ("_consumer", "_msg", "_period", "_timer")

    def __init__(self, consumer: JetStreamConsumer, msg: Msg) -> None:
        self._consumer = consumer
        self._msg = msg
        self._period = max(consumer.ack_wait_s / 3, 0.05)
        self._timer: asyncio.TimerHandle | None = asyncio.get_running_loop().call_later(
            self._period, self._due
        )

    def _due(self) -> None:
        if self._timer is None:
            return
        consumer = self._consumer
        consumer.bridge.core.spawn(consumer._in_progress(self._msg), name="nats-in-progress")
        self._timer = asyncio.get_running_loop().call_later(self._period, self._due)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
