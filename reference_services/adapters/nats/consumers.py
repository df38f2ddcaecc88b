"""JetStream pull consumers behind NatsBridge subscriptions.

One :class:`JetStreamConsumer` feeds one subscription of one bridge: a fetch
loop pulls batches (bounded by ``max_inflight_per_subscription``), every
message is handled in its own task and settled only after the handler:
``ack``, ``nak(delay)`` for a retry, or a copy in the dead-letter stream
followed by ``term``. ``metadata.num_delivered`` is the attempt number, and
``in_progress`` keeps long handlers from being redelivered.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

from reference_services.adapters.nats import subjects
from reference_services.runtime.ids import new_id
from reference_services.runtime.spi.bridge_base import (
    DEAD_LETTER_REASON_HEADER,
    DeliveryOutcome,
    Disposition,
    RegisteredSubscription,
)

if TYPE_CHECKING:
    from reference_services.adapters.nats.event_bridge import NatsBridge

MAX_DELIVER_MARGIN = 3
"""Deliveries the server allows beyond ``max_attempts`` (redeliveries after a crash)."""

HEAL_INTERVAL_S = 5.0
"""How often an idle consumer checks that the server still has it."""

_MAX_BATCH = 16


class JetStreamConsumer:
    """A durable (shared or per-instance) or transient pull consumer for one subscription."""

    def __init__(self, bridge: NatsBridge, reg: RegisteredSubscription) -> None:
        sub = reg.subscription
        self.bridge = bridge
        self.key = sub.key
        self.filter_subject = subjects.subscription_filter(bridge.prefix, sub)
        self.per_instance = not sub.shared
        self.durable = sub.durable
        parts = ["sub", *sub.key, self.filter_subject, "durable" if sub.durable else "transient"]
        if self.per_instance:
            parts.append(bridge.instance_id)
        self.name = subjects.safe_name(*parts)
        self.config = self._config(reg)
        self.slots = asyncio.Semaphore(bridge.max_inflight_per_subscription)
        self.psub: JetStreamContext.PullSubscription | None = None
        self.task: asyncio.Task[None] | None = None
        self.active = False
        self._next_check = 0.0

    def _config(self, reg: RegisteredSubscription) -> ConsumerConfig:
        sub, bridge = reg.subscription, self.bridge
        config = ConsumerConfig(
            name=self.name,
            durable_name=self.name,
            description=f"PURISTA subscription {sub.subscriber}",
            deliver_policy=DeliverPolicy.NEW,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=bridge.ack_wait_s,
            max_deliver=sub.failure.max_attempts + MAX_DELIVER_MARGIN,
            # nats-server 2.9 allows one filter per consumer, inside one stream subject:
            # without a message type the consumer reads the whole stream and the
            # bridge acks what does not match
            filter_subject=self.filter_subject if sub.message_type is not None else None,
            max_ack_pending=max(1000, bridge.max_inflight_per_subscription * 4),
        )
        if not sub.durable:
            config.inactive_threshold = bridge.ephemeral_consumer_ttl_s
        elif self.per_instance:
            config.inactive_threshold = bridge.instance_consumer_ttl_s
        return config

    async def ensure(self) -> None:
        """Create the consumer on the server (idempotent; also after a broker restart)."""
        try:
            await self.bridge._jsc().add_consumer(self.bridge.stream, self.config)
        except nats.js.errors.BadRequestError as exc:
            # an existing durable consumer with another configuration: keep using it
            self.bridge.log.warning(
                "consumer %s exists with another configuration: %s", self.name, exc
            )

    async def start(self) -> None:
        """Bind a pull subscription and start fetching."""
        self.psub = await self.bridge._jsc().pull_subscribe_bind(
            self.name, stream=self.bridge.stream
        )
        self.active = True
        self.task = self.bridge.core.spawn(self._fetch_loop(), name=f"nats-fetch-{self.name}")

    async def stop(self) -> None:
        """Stop fetching and hand fetched-but-unstarted messages back at once."""
        self.active = False
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(BaseException):
                await self.task
        psub, self.psub = self.psub, None
        if psub is None:
            return
        with contextlib.suppress(Exception):
            await psub.unsubscribe()
        queue: asyncio.Queue[Msg] = psub._sub._pending_queue  # type: ignore[union-attr]
        while not queue.empty():
            msg = queue.get_nowait()
            if msg.reply and not JetStreamContext.is_status_msg(msg):
                with contextlib.suppress(Exception):
                    await msg.nak()

    async def delete(self) -> None:
        """Remove the consumer from the server (per-instance or transient ones)."""
        with contextlib.suppress(Exception):
            await self.bridge._jsc().delete_consumer(self.bridge.stream, self.name)

    async def _fetch_loop(self) -> None:
        bridge, backoff = self.bridge, 0.05
        while self.active and bridge.core.accepting:
            await self.slots.acquire()
            batch = 1
            while batch < _MAX_BATCH and not self.slots.locked():
                await self.slots.acquire()
                batch += 1
            msgs: list[Msg] = []
            try:
                nc = bridge._nc
                if nc is None or nc.is_closed:
                    return
                if not nc.is_connected or self.psub is None:
                    await asyncio.sleep(min(bridge.reconnect_time_wait_s, 0.5))
                    continue
                msgs = await self.psub.fetch(batch, timeout=bridge.fetch_timeout_s)
                backoff = 0.05
            except TimeoutError:
                await self._heal()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # consumer gone (re-created by resync), API errors
                bridge.log.debug("fetch from %s failed: %r", self.name, exc)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                for _ in range(batch - len(msgs)):
                    self.slots.release()
            for msg in msgs:
                task = bridge.core.spawn_tracked(self._deliver(msg), "nats-delivery")
                task.add_done_callback(lambda _t: self.slots.release())

    async def _heal(self) -> None:
        """Re-create the consumer if the server lost it (a pull from a missing consumer
        just times out); checked at most every ``HEAL_INTERVAL_S`` while idle."""
        loop = asyncio.get_running_loop()
        if loop.time() < self._next_check:
            return
        self._next_check = loop.time() + HEAL_INTERVAL_S
        try:
            await self.bridge._jsc().consumer_info(self.bridge.stream, self.name)
        except nats.js.errors.NotFoundError:
            self.bridge.log.warning("consumer %s disappeared; re-creating it", self.name)
            await self.ensure()
        except Exception as exc:
            self.bridge.log.debug("consumer check of %s failed: %r", self.name, exc)

    async def _deliver(self, msg: Msg) -> None:
        bridge = self.bridge
        reg = bridge.core.subscription(self.key)
        try:
            if reg is None or not self.active:
                await msg.nak()
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
            keepalive = bridge.core.spawn(self._keep_alive(msg), name="nats-in-progress")
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

    async def _keep_alive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(max(self.bridge.ack_wait_s / 3, 0.05))
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
