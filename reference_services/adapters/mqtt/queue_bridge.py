"""An MQTT-native queue bridge: jobs are QoS 1 messages, workers a shared subscription.

A job is published at QoS 1 on ``<prefix>/queue/<queue>/jobs``; every worker instance
subscribes to it through ``$share/puristaqueue/...``, so the broker hands each job to one
of them. The job stays unacknowledged in the worker's *session* (a persistent one, per
instance) while it is leased: ``ack`` sends the PUBACK, ``nack`` publishes the next
attempt (or the dead letter) and then sends the PUBACK. If the worker dies, the job is
still in its session and the broker resends it when that instance id reconnects.

What MQTT does not give, declared in :attr:`MqttQueueBridge.capabilities`: no lease
expiry (a lease lasts as long as the session), no delayed delivery, no priorities, no
order. Depth figures, leases, dead letters and idempotency keys are retained messages
that every instance folds into a view (:mod:`.queue_view`).

Routing notes: the broker picks a member of the shared subscription when a job is
published, whether it is leasing or not, and holds the job in that member's session. So
an instance that buffered a job for longer than ``handoff_after_s`` without leasing it
hands it back (publishes it again, then acknowledges its copy). An enqueue that no
subscription matches (PUBACK 0x10, nobody would get the job) makes the enqueuing instance
a member and publishes again: a job is never published into the void. Such a *passive*
member (it never leased from the queue) leaves again as soon as it holds jobs, handing
them to the workers; a job no other member would take stays in its session.

Leases are global: any instance may settle any lease. An instance that does not hold the
message forwards the operation to the holder named in the lease record (a request on
``<prefix>/queuectl/<holder>``), which settles it and answers.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt

from reference_services.adapters.mqtt.connection import (
    MqttConnection,
    MqttSettings,
    MqttUnavailableError,
    resolve_url,
)
from reference_services.adapters.mqtt.queue_view import (
    QueueView,
    dumps,
    job_from,
    key_level,
    queue_level,
)
from reference_services.adapters.mqtt.topics import validate_prefix
from reference_services.runtime.errors import PuristaError
from reference_services.runtime.ids import new_id, now_ms
from reference_services.runtime.queue import (
    DeadLetterJob,
    Job,
    LeaseExpiredError,
    LeaseInfo,
    NackOutcome,
    QueueMetrics,
)
from reference_services.runtime.spi.capabilities import QueueBridgeCapabilities, unsupported
from reference_services.runtime.spi.queue_base import EnqueueRequest, QueueBridgeBase

SHARE = "puristaqueue"
NO_MATCHING_SUBSCRIBERS = 0x10
_SID_VIEW, _SID_SYNC, _SID_JOBS = 1, 2, 3

log = logging.getLogger("reference_services.queue.mqtt")


def _copy(job: dict[str, Any]) -> str:
    """Which copy of a job a message is (each publish but a hand-back makes a new one)."""
    return f"{job['id']}:{job.get('copy', '')}"


@dataclass
class _Delivery:
    """A job message this instance holds unacknowledged (buffered or leased)."""

    job: dict[str, Any]
    mid: int
    generation: int
    arrived: float
    lease: dict[str, Any] | None = None
    handing_back: bool = False

    @property
    def free(self) -> bool:
        """Buffered: neither leased nor being handed back."""
        return self.lease is None and not self.handing_back


class MqttQueueBridge(QueueBridgeBase):
    """Queue bridge over MQTT 5 (Mosquitto); see the module docstring."""

    name = "mqtt"
    capabilities = QueueBridgeCapabilities(
        durable=unsupported(
            "a pending job waits in the session of the worker the broker routed it to: "
            "after a restart only that instance id gets it back, no other worker does"
        ),
        delayed_jobs=unsupported(
            "MQTT has no delayed delivery: a delayed job or retry waits in the memory of "
            "the process that enqueued or nacked it (lost if it dies, sent early on destroy)"
        ),
        priorities=unsupported("MQTT delivers in publish order; priority is stored, not used"),
        lease_recovery=unsupported(
            "MQTT has no lease expiry: a leased job stays in the worker's session until it "
            "settles; after a crash it comes back only when that instance id reconnects "
            "within the session expiry, never to another worker, and lease_ttl_ms is "
            "reported, not enforced"
        ),
        fifo_within_priority=unsupported(
            "a shared subscription spreads jobs over workers and hand-backs reorder them"
        ),
    )

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "purista",
        instance_id: str | None = None,
        client_id: str | None = None,
        keepalive_s: int = 10,
        connect_timeout_s: float = 10.0,
        op_timeout_s: float = 10.0,
        session_expiry_s: int = 3600,
        receive_maximum: int = 50,
        handoff_after_s: float = 0.3,
        drain_timeout_s: float = 10.0,
        **kwargs: Any,
    ) -> None:
        """Args:
        url: ``mqtt://[user:pass@]host:port``; default ``$MQTT_URL`` or localhost:1883.
        prefix: root topic level(s) of every queue topic.
        instance_id / client_id: the worker session is ``<client_id>-jobs``; a restarted
            instance reusing it gets its unacknowledged jobs back.
        session_expiry_s: how long the broker keeps a worker's session (and its jobs)
            while it is offline.
        receive_maximum: jobs the broker sends this instance before it settles some.
        handoff_after_s: a buffered job not leased within this time is handed back.
        """
        super().__init__(drain_timeout_s=drain_timeout_s, **kwargs)
        self.url = resolve_url(url)
        self.prefix = validate_prefix(prefix)
        self.instance_id = instance_id or new_id()
        self.client_id = client_id or f"{self.prefix.replace('/', '-')}-q-{self.instance_id}"
        self.root = f"{self.prefix}/queue"
        self.op_timeout_s = op_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.handoff_after_s = handoff_after_s
        self.session_expiry_s = session_expiry_s
        self._view_conn = self._connection(
            MqttSettings.from_url(self.url, keepalive_s=keepalive_s), f"{self.client_id}-view", 0
        )
        self._jobs_conn = self._connection(
            MqttSettings.from_url(
                self.url, keepalive_s=keepalive_s, receive_maximum=receive_maximum
            ),
            f"{self.client_id}-jobs",
            session_expiry_s,
        )
        self.view = QueueView()
        self._workers: dict[str, str] = {}  # queue -> share filter subscribed
        self._held: dict[str, dict[str, _Delivery]] = {}  # queue -> job id -> delivery
        self._settled: dict[str, None] = {}
        self._arrived = asyncio.Event()
        self._syncs: dict[str, asyncio.Future[None]] = {}
        self._sync_ids = itertools.count(1)
        self._key_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._retries: dict[str, int] = {}
        self._timers: set[asyncio.Task[Any]] = set()
        self._delayed: dict[asyncio.Task[Any], Callable[[], Awaitable[None]]] = {}
        self._rebalancer: asyncio.Task[None] | None = None
        self._replies: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._publishing: set[asyncio.Task[None]] = set()
        self._member_locks: dict[str, asyncio.Lock] = {}
        self._leasing: set[str] = set()  # queues this instance leased from
        self.handed_back = 0

    @classmethod
    def from_env(cls, **kwargs: Any) -> MqttQueueBridge:
        """Build from ``MQTT_URL`` and ``PURISTA_PREFIX`` (arguments win)."""
        kwargs.setdefault("url", os.environ.get("MQTT_URL"))
        kwargs.setdefault("prefix", os.environ.get("PURISTA_PREFIX", "purista"))
        return cls(**kwargs)

    def __repr__(self) -> str:  # the URL may carry a password: never shown
        return f"MqttQueueBridge(prefix={self.prefix!r}, client_id={self.client_id!r})"

    def _connection(self, settings: MqttSettings, client_id: str, expiry: int) -> MqttConnection:
        holder: list[MqttConnection] = []

        def on_message(message: mqtt.MQTTMessage, generation: int) -> None:
            self._on_message(holder[0], message, generation)

        def on_up(generation: int, session_present: bool) -> None:
            # every reconnect subscribes again: a broker restored from its persistence
            # file may report the session present without its shared subscriptions
            if self.state != "created":
                self._spawn(self._resubscribe(holder[0]))

        conn = MqttConnection(
            settings,
            client_id,
            session_expiry_s=expiry,
            on_message=on_message,
            on_up=on_up,
            on_down=lambda: None,
            log=log,
        )
        holder.append(conn)
        return conn

    # ---- topics -----------------------------------------------------------------------

    def _topic(self, queue: str, *rest: str) -> str:
        return "/".join((self.root, queue_level(queue), *rest))

    def _sync_topic(self, conn: MqttConnection) -> str:
        return f"{self.prefix}/queuesync/{conn.client_id}"

    def _share_filter(self, queue: str) -> str:
        return f"$share/{SHARE}/{self._topic(queue, 'jobs')}"

    # ---- life cycle -------------------------------------------------------------------

    async def _start_transport(self) -> None:
        try:
            await self._view_conn.start(self.connect_timeout_s)
            await self._subscribe_view()
            await self._jobs_conn.start(self.connect_timeout_s)
            await self._jobs_conn.subscribe(
                self._sync_topic(self._jobs_conn), _SID_SYNC, self.op_timeout_s, qos=0
            )
            await self._sync(self._view_conn)
        except BaseException:
            await asyncio.gather(self._view_conn.close(), self._jobs_conn.close())
            raise
        self._rebalancer = asyncio.get_running_loop().create_task(self._rebalance())

    async def _subscribe_view(self) -> None:
        conn = self._view_conn
        for kind in ("rec", "idem", "stats"):
            await conn.subscribe(f"{self.root}/+/{kind}/+", _SID_VIEW, self.op_timeout_s, qos=0)
        await conn.subscribe(self._sync_topic(conn), _SID_SYNC, self.op_timeout_s, qos=0)
        await conn.subscribe(self._ctl_topic(self.client_id), _SID_SYNC, self.op_timeout_s)

    async def _resubscribe(self, conn: MqttConnection) -> None:
        """After a reconnect: subscribe again (idempotent when the session kept them)."""
        try:
            if conn is self._view_conn:
                await self._subscribe_view()
            else:
                await conn.subscribe(self._sync_topic(conn), _SID_SYNC, self.op_timeout_s, qos=0)
                for share in list(self._workers.values()):
                    await conn.subscribe(share, _SID_JOBS, self.op_timeout_s)
        except MqttUnavailableError as exc:
            log.warning("%s: resubscribe failed: %s", self.client_id, exc)

    async def _interrupt_waits(self) -> None:
        self._wake()

    async def _destroy_transport(self) -> None:
        if self._rebalancer is not None:
            self._rebalancer.cancel()
        for task, send_now in list(self._delayed.items()):  # due early rather than lost
            task.cancel()
            try:
                await send_now()
            except MqttUnavailableError as exc:
                log.warning("%s: a delayed job could not be sent: %s", self.client_id, exc)
        try:
            await self._hand_back_all()
        finally:
            await asyncio.gather(
                self._jobs_conn.close(), self._view_conn.close(), return_exceptions=True
            )

    async def _hand_back_all(self) -> None:
        """Leave every shared subscription, then give each held job back to the other
        workers; a job no other worker would get stays in this instance's session."""
        if not self._jobs_conn.connected:
            return
        for share in list(self._workers.values()):
            try:
                await self._jobs_conn.unsubscribe(share, self.op_timeout_s)
            except MqttUnavailableError:
                return
        for queue, held in list(self._held.items()):
            for delivery in list(held.values()):
                if await self._give_back(queue, delivery, require_taker=True):
                    held.pop(delivery.job["id"], None)

    async def _transport_ok(self) -> bool:
        return self._view_conn.connected and self._jobs_conn.connected

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    # ---- messages (loop side) -----------------------------------------------------------

    def _on_message(self, conn: MqttConnection, message: mqtt.MQTTMessage, generation: int) -> None:
        topic = message.topic
        if topic == self._sync_topic(conn):
            fut = self._syncs.pop(message.payload.decode(errors="replace"), None)
            if fut is not None and not fut.done():
                fut.set_result(None)
            return
        if topic == self._ctl_topic(self.client_id):
            conn.ack(message.mid, generation)
            self._on_control(message.payload)
            return
        parts = topic[len(self.root) + 1 :].split("/")
        try:
            if conn is self._view_conn and len(parts) == 3:
                if parts[1] == "rec":
                    self.view.apply_record(parts[0], parts[2], message.payload)
                elif parts[1] == "idem":
                    self.view.apply_claim(message.payload, bool(message.retain))
                elif parts[1] == "stats":
                    self.view.apply_stats(parts[2], message.payload)
            elif conn is self._jobs_conn and len(parts) == 2 and parts[1] == "jobs":
                self._on_job(message, generation)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable message on %s: %s", self.client_id, topic, exc)

    def _on_control(self, payload: bytes) -> None:
        try:
            msg = json.loads(payload)
            if "op" in msg:
                self._spawn(self._serve(msg))
            else:
                fut = self._replies.pop(msg["token"], None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)
        except (ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable control message: %s", self.client_id, exc)

    def _on_job(self, message: mqtt.MQTTMessage, generation: int) -> None:
        try:
            job = json.loads(message.payload)
            job_id, queue = job["id"], job["queue"]
        except (ValueError, KeyError, TypeError) as exc:
            self._spawn(self._quarantine(message, generation, f"malformed job: {exc}"))
            return
        if _copy(job) in self._settled:  # a resend of a copy settled on an older connection
            self._jobs_conn.ack(message.mid, generation)
            return
        held = self._held.setdefault(queue, {})
        known = held.get(job_id)
        if known is not None and _copy(known.job) == _copy(job):
            # the broker resent this copy after a reconnect: settle through the new mid
            known.mid, known.generation = message.mid, generation
            return
        if known is not None:  # another copy of a job held here: keep one, drop this one
            log.warning("%s: a second copy of job %s; dropped", self.client_id, job_id)
            self._jobs_conn.ack(message.mid, generation)
            return
        held[job_id] = _Delivery(job, message.mid, generation, time.monotonic())
        self._wake()

    def _wake(self) -> None:
        arrived, self._arrived = self._arrived, asyncio.Event()
        arrived.set()

    async def _quarantine(self, message: mqtt.MQTTMessage, generation: int, reason: str) -> None:
        """A job message nothing can use: dead-lettered at once with its raw text."""
        queue_lvl = message.topic[len(self.root) + 1 :].split("/")[0]
        job = {
            "id": new_id(),
            "queue": queue_lvl,
            "payload": message.payload.decode(errors="replace"),
            "parameter": None,
            "headers": {},
            "attempt": 1,
            "max_attempts": 1,
            "enqueued_at_ms": now_ms(),
        }
        await self._put_record(
            job, "dead", dead={"reason": reason, "at_ms": now_ms(), "attempts": 0}
        )
        self._jobs_conn.ack(message.mid, generation)

    # ---- publishing -------------------------------------------------------------------

    async def _sync(self, conn: MqttConnection) -> None:
        """Wait until ``conn`` received everything the broker processed before now."""
        await self._published()
        token = f"{conn.client_id}:{next(self._sync_ids)}"
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._syncs[token] = fut
        try:
            await conn.publish(self._sync_topic(conn), token.encode(), None, self.op_timeout_s)
            await asyncio.wait_for(fut, self.op_timeout_s)
        except TimeoutError:
            raise MqttUnavailableError(
                f"{conn.client_id}: no sync echo within {self.op_timeout_s:.1f}s"
            ) from None
        finally:
            self._syncs.pop(token, None)

    async def _put_record(
        self, job: dict[str, Any], status: str, **parts: dict[str, Any] | None
    ) -> None:
        """:meth:`_send_record` (``lease``, ``dead``) after the record publishes under way."""
        await self._published()  # after the lease records still under way: broker order
        await self._send_record(job, status, **parts)

    async def _send_record(
        self,
        job: dict[str, Any],
        status: str,
        *,
        lease: dict[str, Any] | None = None,
        dead: dict[str, Any] | None = None,
    ) -> None:
        record = {"status": status, "job": job, "lease": lease, "dead": dead}
        topic = self._topic(job["queue"], "rec", job["id"])
        await self._view_conn.publish(topic, dumps(record), None, self.op_timeout_s, retain=True)

    async def _drop_record(self, queue: str, job_id: str) -> None:
        await self._published()
        topic = self._topic(queue, "rec", job_id)
        await self._view_conn.publish(topic, b"", None, self.op_timeout_s, retain=True)

    async def _publish_job(self, job: dict[str, Any]) -> None:
        """Publish a job; when no worker subscribes, this instance becomes one first."""
        queue = job["queue"]
        topic = self._topic(queue, "jobs")
        job = {**job, "copy": new_id()}
        code = await self._jobs_conn.publish(topic, dumps(job), None, self.op_timeout_s)
        if code == NO_MATCHING_SUBSCRIBERS:
            await self._join(queue)
            code = await self._jobs_conn.publish(topic, dumps(job), None, self.op_timeout_s)
            if code == NO_MATCHING_SUBSCRIBERS:
                raise MqttUnavailableError(f"no worker subscription took the job {job['id']}")

    async def _join(self, queue: str) -> None:
        """Become a member of ``queue``'s shared subscription."""
        async with self._membership(queue):
            if queue not in self._workers:
                share = self._share_filter(queue)
                await self._jobs_conn.subscribe(share, _SID_JOBS, self.op_timeout_s)
                self._workers[queue] = share

    def _membership(self, queue: str) -> asyncio.Lock:
        return self._member_locks.setdefault(queue, asyncio.Lock())

    async def _leave_passive(self, queue: str) -> None:
        """A member that joined only because nobody took its enqueue, and never leased:
        leave, hand its jobs to the workers; a job nobody else would take (0x10) stays
        here and the instance joins again (it is the last holder)."""
        async with self._membership(queue):
            share = self._workers.pop(queue, None)
            if share is None:
                return
            await self._jobs_conn.unsubscribe(share, self.op_timeout_s)
        kept = False
        held = self._held.get(queue, {})
        for job_id, delivery in list(held.items()):
            if delivery.free:
                held.pop(job_id, None)  # a copy that comes back here is a new delivery
                try:
                    given = await self._give_back(queue, delivery, require_taker=True)
                except MqttUnavailableError:
                    given = False
                if not given:
                    held.setdefault(job_id, delivery)
                    kept = True
        if kept:
            await self._join(queue)

    async def _give_back(self, queue: str, delivery: _Delivery, require_taker: bool) -> bool:
        """Publish a held job again and acknowledge this copy; False (nothing done) when
        ``require_taker`` and no other subscription would get it."""
        topic = self._topic(queue, "jobs")
        copy = {**delivery.job, "copy": new_id()}
        code = await self._jobs_conn.publish(topic, dumps(copy), None, self.op_timeout_s)
        if code == NO_MATCHING_SUBSCRIBERS and require_taker:
            return False
        self._jobs_conn.ack(delivery.mid, delivery.generation)
        self.handed_back += 1
        return True

    async def _rebalance(self) -> None:
        """Hand back buffered jobs this instance is not leasing (see the module docstring)."""
        tick = min(0.05, self.handoff_after_s / 2)
        while True:
            await asyncio.sleep(tick)
            cutoff = time.monotonic() - self.handoff_after_s
            for queue, held in list(self._held.items()):
                try:
                    if queue not in self._leasing:
                        if any(d.free for d in held.values()):
                            await self._leave_passive(queue)
                        continue
                    for job_id, delivery in list(held.items()):
                        if delivery.free and delivery.arrived < cutoff:
                            held.pop(job_id, None)
                            try:
                                await self._give_back(queue, delivery, require_taker=False)
                            except MqttUnavailableError:
                                held.setdefault(job_id, delivery)
                except MqttUnavailableError as exc:
                    log.warning("%s: hand-back on %s failed: %s", self.client_id, queue, exc)

    # ---- the queue contract -----------------------------------------------------------

    async def _enqueue(self, request: EnqueueRequest) -> str:
        key = request.idempotency_key
        if key is None:
            return await self._enqueue_new(request, new_id())
        lock = self._key_locks.setdefault((request.queue, key), asyncio.Lock())
        async with lock:
            await self._sync(self._view_conn)
            known = self.view.claimed(request.queue, key)
            if known is not None:
                return known
            job_id = new_id()
            topic = self._topic(request.queue, "idem", key_level(key))
            claim = {"queue": request.queue, "key": key, "job_id": job_id}
            await self._view_conn.publish(topic, dumps(claim), None, self.op_timeout_s, retain=True)
            await self._sync(self._view_conn)
            winner = self.view.claimed(request.queue, key)
            if winner != job_id:  # another instance claimed first: put its claim back
                restore = {**claim, "job_id": winner, "restore": True}
                await self._view_conn.publish(
                    topic, dumps(restore), None, self.op_timeout_s, retain=True
                )
                return str(winner)
            return await self._enqueue_new(request, job_id)

    async def _enqueue_new(self, request: EnqueueRequest, job_id: str) -> str:
        job = {
            "id": job_id,
            "queue": request.queue,
            "payload": request.payload,
            "parameter": request.parameter,
            "headers": request.headers,
            "attempt": 1,
            "max_attempts": request.max_attempts,
            "priority": request.priority,
            "lease_ttl_ms": request.lease_ttl_ms,
            "enqueued_at_ms": now_ms(),
            "idempotency_key": request.idempotency_key,
            "last_error": None,
        }
        await self._put_record(job, "pending")
        if request.delay_ms:
            self._later(request.delay_ms, lambda: self._publish_job(job))
        else:
            await self._publish_job(job)
        return job_id

    def _later(self, delay_ms: int, send: Callable[[], Awaitable[None]]) -> None:
        async def run() -> None:
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            self._delayed.pop(task, None)
            try:
                await send()
            except MqttUnavailableError as exc:
                log.warning("%s: a delayed job could not be sent: %s", self.client_id, exc)

        task = asyncio.get_running_loop().create_task(run())
        self._delayed[task] = send

    async def _lease(
        self, queue: str, batch: int, wait_ms: int, worker_id: str | None
    ) -> list[Job]:
        self._leasing.add(queue)
        await self._join(queue)
        deadline = time.monotonic() + wait_ms / 1000
        synced = False
        while True:
            arrived = self._arrived  # replaced (and set) on every arrival: no lost wake-up
            free = [d for d in self._held.get(queue, {}).values() if d.free]
            if free or not self.running:
                break
            if not synced and not wait_ms:  # a job routed here before arrives before the echo
                await self._sync(self._jobs_conn)
                synced = True
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(arrived.wait(), left)
            except TimeoutError:
                break
        out = []
        now = now_ms()
        for delivery in free[:batch]:
            ttl = int(delivery.job.get("lease_ttl_ms") or self.default_lease_ttl_ms)
            delivery.lease = {
                "lease_id": new_id(),
                "worker_id": worker_id,
                "leased_at_ms": now,
                "expires_at_ms": now + ttl,
                "holder": self.client_id,
            }
            out.append(delivery)
        # awaited: another instance's inspect_leases must see a lease once it is returned
        await self._published()
        await asyncio.gather(*(self._send_record(d.job, "leased", lease=d.lease) for d in out))
        return [job_from(d.job, d.lease) for d in out]

    def _track(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def _published(self) -> None:
        """Wait for the record publishes still under way (one connection: broker order)."""
        if self._publishing:
            results = await asyncio.gather(*list(self._publishing), return_exceptions=True)
            failed = [r for r in results if isinstance(r, BaseException)]
            if failed:
                log.warning(
                    "%s: %d record publish(es) failed: %s", self.client_id, len(failed), failed[0]
                )

    # A lease is settled by the instance whose session holds the message; any other
    # instance forwards the operation to it (the lease record names the holder).

    async def _extend_lease(self, job: Job, lease_ttl_ms: int | None) -> Job:
        if self._is_held(job):
            return await self._local_extend(job, lease_ttl_ms)
        value = await self._forward("extend", job, [lease_ttl_ms])
        return job_from(value["job"], value["lease"])

    async def _ack(self, job: Job) -> None:
        if self._is_held(job):
            return await self._local_ack(job)
        await self._forward("ack", job, [])

    async def _nack(self, job: Job, reason: str | None, delay_ms: int) -> NackOutcome:
        if self._is_held(job):
            return await self._local_nack(job, reason, delay_ms)
        outcome: NackOutcome = await self._forward("nack", job, [reason, delay_ms])
        return outcome

    async def _move_to_dead_letter(self, job: Job, reason: str) -> None:
        if self._is_held(job):
            return await self._local_dead(job, reason)
        await self._forward("dead", job, [reason])

    def _is_held(self, job: Job) -> bool:
        delivery = self._held.get(job.queue, {}).get(job.id)
        return delivery is not None and delivery.lease is not None

    async def _forward(self, op: str, job: Job, args: list[Any]) -> Any:
        await self._sync(self._view_conn)
        rec = self.view.record(job.queue, job.id) or {}
        lease = rec.get("lease") or {}
        holder = lease.get("holder")
        if rec.get("status") != "leased" or lease.get("lease_id") != job.lease_id or not holder:
            self._holding(job)  # raises the 409 naming the job
        token = f"{self.client_id}:{next(self._sync_ids)}"
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._replies[token] = fut
        request = {
            "op": op,
            "token": token,
            "reply_to": self.client_id,
            "job": {"id": job.id, "queue": job.queue, "lease_id": job.lease_id},
            "args": args,
        }
        try:
            await self._view_conn.publish(
                self._ctl_topic(holder), dumps(request), None, self.op_timeout_s
            )
            reply = await asyncio.wait_for(fut, self.op_timeout_s)
        except TimeoutError:
            raise MqttUnavailableError(
                f"job {job.id}: the instance holding its lease did not answer {op} "
                f"within {self.op_timeout_s:.1f}s"
            ) from None
        finally:
            self._replies.pop(token, None)
        if not reply.get("ok"):
            status = int(reply.get("status", 500))
            if status == 409:
                raise LeaseExpiredError(str(reply.get("message")))
            raise MqttUnavailableError(str(reply.get("message")), status)
        return reply.get("value")

    def _ctl_topic(self, client_id: str) -> str:
        return f"{self.prefix}/queuectl/{client_id}"

    async def _serve(self, request: dict[str, Any]) -> None:
        """Run a forwarded operation on a lease this instance holds and answer."""
        ref = request["job"]
        delivery = self._held.get(ref["queue"], {}).get(ref["id"])
        reply: dict[str, Any] = {"token": request["token"]}
        try:
            if delivery is None or delivery.lease is None:
                raise LeaseExpiredError(
                    f"job {ref['id']}: lease {ref['lease_id']} is not held by {self.client_id}"
                )
            job = job_from(delivery.job, {**delivery.lease, "lease_id": ref["lease_id"]})
            op, args = request["op"], request["args"]
            if op == "ack":
                await self._local_ack(job)
                value: Any = None
            elif op == "nack":
                value = await self._local_nack(job, args[0], int(args[1]))
            elif op == "dead":
                await self._local_dead(job, args[0])
                value = None
            else:
                extended = await self._local_extend(job, args[0])
                value = {"job": delivery.job, "lease": delivery.lease, "id": extended.id}
            reply.update(ok=True, value=value)
        except PuristaError as exc:
            reply.update(ok=False, status=exc.status, message=str(exc))
        await self._view_conn.publish(
            self._ctl_topic(request["reply_to"]), dumps(reply), None, self.op_timeout_s
        )

    def _holding(self, job: Job) -> _Delivery:
        delivery = self._held.get(job.queue, {}).get(job.id)
        if delivery is None or delivery.lease is None or delivery.lease["lease_id"] != job.lease_id:
            raise LeaseExpiredError(
                f"job {job.id}: lease {job.lease_id or '-'} is not held by this instance "
                "(settled already, or leased by another instance)"
            )
        return delivery

    def _mark_settled(self, delivery: _Delivery) -> None:
        self._settled[_copy(delivery.job)] = None
        while len(self._settled) > 10_000:
            self._settled.pop(next(iter(self._settled)))

    def _release(self, job: Job, delivery: _Delivery) -> None:
        self._held.get(job.queue, {}).pop(job.id, None)
        self._mark_settled(delivery)
        self._jobs_conn.ack(delivery.mid, delivery.generation)

    async def _local_extend(self, job: Job, lease_ttl_ms: int | None) -> Job:
        delivery = self._holding(job)
        assert delivery.lease is not None
        ttl = lease_ttl_ms or int(delivery.job.get("lease_ttl_ms") or self.default_lease_ttl_ms)
        delivery.lease = {**delivery.lease, "expires_at_ms": now_ms() + ttl}
        await self._put_record(delivery.job, "leased", lease=delivery.lease)
        return job_from(delivery.job, delivery.lease)

    async def _local_ack(self, job: Job) -> None:
        delivery = self._holding(job)
        await self._drop_record(job.queue, job.id)
        self._release(job, delivery)

    async def _local_nack(self, job: Job, reason: str | None, delay_ms: int) -> NackOutcome:
        delivery = self._holding(job)
        attempt = int(delivery.job["attempt"])
        if attempt >= int(delivery.job["max_attempts"]):
            await self._dead(job, delivery, reason or f"failed {attempt} time(s)", attempt)
            return "dead_letter"
        started = time.monotonic()
        retry = {**delivery.job, "attempt": attempt + 1, "last_error": reason}
        self._retries[job.queue] = self._retries.get(job.queue, 0) + 1
        stats = {"queue": job.queue, "retries": self._retries[job.queue]}
        await asyncio.gather(
            self._view_conn.publish(
                self._topic(job.queue, "stats", self.client_id.replace("/", "-")),
                dumps(stats),
                None,
                self.op_timeout_s,
                retain=True,
            ),
            self._put_record(retry, "pending"),
        )
        self._held.get(job.queue, {}).pop(job.id, None)
        self._mark_settled(delivery)

        async def send() -> None:
            await self._publish_job(retry)
            self._jobs_conn.ack(delivery.mid, delivery.generation)  # the old copy, after

        if delay_ms:  # the retry waits here, not in the session (see delayed_jobs)
            self._jobs_conn.ack(delivery.mid, delivery.generation)
            left_ms = delay_ms - int((time.monotonic() - started) * 1000)
            self._later(max(left_ms, 0), lambda: self._publish_job(retry))
        else:
            await send()
        return "retry"

    async def _dead(self, job: Job, delivery: _Delivery, reason: str, attempts: int) -> None:
        dead = {"reason": reason, "at_ms": now_ms(), "attempts": attempts}
        await self._put_record({**delivery.job, "last_error": reason}, "dead", dead=dead)
        self._release(job, delivery)

    async def _local_dead(self, job: Job, reason: str) -> None:
        delivery = self._holding(job)
        await self._dead(job, delivery, reason, int(delivery.job["attempt"]))

    async def _peek_dead_letter(self, queue: str, limit: int) -> list[DeadLetterJob]:
        await self._sync(self._view_conn)
        return self.view.dead_letters(queue, limit)

    async def _redrive_dead_letter(self, queue: str, job_ids: list[str] | None) -> int:
        await self._sync(self._view_conn)
        chosen = [
            r["job"]
            for r in self.view.records(queue, "dead")
            if job_ids is None or r["job"]["id"] in job_ids
        ]
        for job in chosen:
            fresh = {**job, "attempt": 1, "last_error": None}
            await self._put_record(fresh, "pending")
            await self._publish_job(fresh)
        return len(chosen)

    async def _purge_dead_letter(self, queue: str) -> int:
        await self._sync(self._view_conn)
        dead = self.view.records(queue, "dead")
        for rec in dead:
            await self._drop_record(queue, rec["job"]["id"])
        return len(dead)

    async def _inspect_leases(self, queue: str) -> list[LeaseInfo]:
        await self._sync(self._view_conn)
        return self.view.leases(queue)

    async def _metrics(self, queue: str) -> QueueMetrics:
        await self._sync(self._view_conn)
        now = now_ms()
        pending = self.view.records(queue, "pending")
        oldest = min((int(r["job"]["enqueued_at_ms"]) for r in pending), default=now)
        return QueueMetrics(
            pending=len(pending),
            inflight=len(self.view.records(queue, "leased")),
            dead_letter=len(self.view.records(queue, "dead")),
            retries=self.view.retries(queue),
            oldest_age_ms=max(now - oldest, 0),
        )
