"""NatsBridge: the PURISTA event bridge over NATS (core request/reply + JetStream).

- Commands: core NATS request/reply. Every instance serving a command joins a
  queue group on the command's subject, so exactly one instance runs it; a
  command pinned to an instance goes to that instance's own subscription.
  Responses come back on a per-instance reply subject; when nobody serves the
  subject the server answers "no responders" and the invocation fails at once,
  with 503 by default: NATS cannot tell an unknown command from one whose every
  instance is cut off right now (``no_responders_status=404`` to choose 404).
- Events: published with JetStream (the publish ack is the publisher confirm,
  ``Nats-Msg-Id`` = message id deduplicates retried publishes) into one
  interest-retention stream per prefix that captures every message type but
  commands. A subscription that is durable or acknowledges manually reads
  through the JetStream push consumer PURISTA creates for it (shared: one
  durable consumer per subscriber group, PURISTA's queue group as deliver group,
  so PURISTA instances and ours share it; not shared: one per instance), acks
  after its handler, retries with ``nak(delay)``, counts attempts with
  ``num_delivered`` and, once dead-lettered, keeps a copy in a dead-letter
  stream and ``term``s the original (see :mod:`.consumers`).
  A non-durable auto-acknowledging subscription uses core NATS (at most once).
- Faults: nats-py reconnects by itself (forever once the first connect
  succeeded); afterwards the stream and every consumer are ensured again and
  every command and subscription re-bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import inspect
import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as CoreSubscription
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from reference_services.adapters.nats import subjects
from reference_services.adapters.nats.connection import NatsTimings, connect_nats
from reference_services.adapters.nats.consumers import JetStreamConsumer
from reference_services.runtime.codec import MessageDecodeError, MessageEncodeError, decode
from reference_services.runtime.errors import StatusCode, UnhandledError
from reference_services.runtime.ids import now_ms
from reference_services.runtime.messages import (
    Address,
    AnyMessage,
    Command,
    CommandErrorResponse,
    CommandResponse,
    CommandSuccessResponse,
    MessageType,
    SenderAddress,
    error_response,
)
from reference_services.runtime.purista_names import routing_headers
from reference_services.runtime.redact import redact_text, redact_url
from reference_services.runtime.spi.bridge_base import (
    BridgeNotRunningError,
    Disposition,
    EventBridgeBase,
    RegisteredCommand,
    RegisteredSubscription,
)
from reference_services.runtime.spi.capabilities import YES, EventBridgeCapabilities, unsupported
from reference_services.runtime.spi.log_throttle import LogThrottle

_NO_RESPONDERS = "503"
_HEADER_ROOM = 4096  # max_payload counts headers too (dead letters carry a reason header)


_PLAIN_TOKEN = re.compile(r"[A-Za-z0-9_-]{1,64}")


def _reply_token(correlation_id: str) -> str:
    """The last token of a command's reply subject: a plain id as it is (no snake-casing
    for a value that is new on every send), anything else escaped and marked with ``%``
    so that the two kinds never meet."""
    if _PLAIN_TOKEN.fullmatch(correlation_id):
        return correlation_id
    return "%" + subjects.token(correlation_id)


@dataclass(slots=True)
class _SentCommand:
    """What answering "no responders" takes of a sent command (an :class:`Answerable`): not
    the command, whose payload would stay held while its invoker waits."""

    id: str
    correlation_id: str | None
    sender: SenderAddress
    receiver: Address
    trace_id: str | None
    principal_id: str | None
    tenant_id: str | None
    otp: str | None
    expires_at: float

    @classmethod
    def of(cls, command: Command, expires_at: float) -> _SentCommand:
        return cls(command.id, command.correlation_id, command.sender, command.receiver,
                   command.trace_id, command.principal_id, command.tenant_id, command.otp,
                   expires_at)


@dataclass
class _CommandSubs:
    subs: list[CoreSubscription] = field(default_factory=list)


_WRONG_STREAM = 10060
"""JetStream's "expected stream does not match": another stream captures the subject."""


class NatsBridge(EventBridgeBase):
    """PURISTA event bridge over NATS; see the module docstring.

    Several bridges with the same ``url`` and ``prefix`` are several instances
    of one deployment.
    """
    #: nats-py's publish appends to its buffer; its only wait is ``wait_for`` on a future,
    #: which on 3.11 binds to no task
    sends_run_in_caller = True

    name = "nats"
    snake_cased_wire = True
    capabilities = EventBridgeCapabilities(
        delivery="at_least_once",
        durable_commands=unsupported(
            "commands use core NATS request/reply: a command in flight when the broker or the "
            "serving instance dies is lost and the caller gets 504 (or 503)"
        ),
        native_dead_lettering=YES,
        max_message_bytes=1024 * 1024,
        unknown_command_status=503,  # "no responders": no instance, or none reachable
        # one stream per deployment: a consumer sees messages in stream order
        per_sender_order=YES,
        duplicate_ids_dropped=YES,
        purista_wire=YES,
        purista_durable_wire=YES,
    )

    def __init__(
        self,
        url: str | None = None,
        *,
        prefix: str = "purista",
        instance_id: str | None = None,
        connect_timeout_s: float = 2.0,
        connect_attempts: int = 3,
        max_reconnect_attempts: int = -1,
        reconnect_time_wait_s: float = 0.5,
        max_reconnect_wait_s: float = 5.0,
        ping_interval_s: float = 10.0,
        max_outstanding_pings: int = 2,
        js_api_timeout_s: float = 5.0,
        publish_timeout_s: float = 2.0,
        publish_deadline_s: float = 10.0,
        command_connect_wait_s: float = 2.0,
        ack_wait_s: float = 30.0,
        fetch_timeout_s: float = 2.0,
        max_inflight_per_subscription: int = 32,
        max_ack_pending: int = 10,
        stream_max_age_s: float = 7 * 24 * 3600.0,
        dead_letter_max_age_s: float = 14 * 24 * 3600.0,
        duplicate_window_s: float = 120.0,
        instance_consumer_ttl_s: float = 3600.0,
        ephemeral_consumer_ttl_s: float = 60.0,
        no_responders_status: int = StatusCode.SERVICE_UNAVAILABLE,
        **kwargs: Any,
    ) -> None:
        super().__init__(instance_id=instance_id, **kwargs)
        self.url = url or os.environ.get("NATS_URL") or "nats://127.0.0.1:4222"
        self.prefix = prefix
        self.connect_timeout_s = connect_timeout_s
        self.connect_attempts = connect_attempts
        self.max_reconnect_attempts = max_reconnect_attempts
        self.reconnect_time_wait_s = reconnect_time_wait_s
        self.max_reconnect_wait_s = max_reconnect_wait_s
        self.ping_interval_s = ping_interval_s
        self.max_outstanding_pings = max_outstanding_pings
        self.js_api_timeout_s = js_api_timeout_s
        self.publish_timeout_s = publish_timeout_s
        self.publish_deadline_s = publish_deadline_s
        self.command_connect_wait_s = command_connect_wait_s
        self.ack_wait_s = ack_wait_s
        self.fetch_timeout_s = fetch_timeout_s
        self.max_inflight_per_subscription = max_inflight_per_subscription
        if max_ack_pending < 1:
            raise ValueError(f"max_ack_pending must be >= 1, got {max_ack_pending}")
        self.max_ack_pending = max_ack_pending
        self.stream_max_age_s = stream_max_age_s
        self.dead_letter_max_age_s = dead_letter_max_age_s
        self.duplicate_window_s = duplicate_window_s
        self.instance_consumer_ttl_s = instance_consumer_ttl_s
        self.ephemeral_consumer_ttl_s = ephemeral_consumer_ttl_s
        self.no_responders_status = int(no_responders_status)
        self.stream = subjects.stream_name(prefix)
        self._no_stream_log = LogThrottle(self.log)
        self.dead_letter_stream = subjects.dead_letter_stream_name(prefix)
        self._reply_prefix = subjects.reply_subject(prefix, self.instance_id)
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._reply_sub: CoreSubscription | None = None
        self._command_subs: dict[tuple[str, str, str], _CommandSubs] = {}
        self._core_subs: dict[tuple[str, str, str], CoreSubscription] = {}
        self._consumers: dict[tuple[str, str, str], JetStreamConsumer] = {}
        self._sent: dict[str, _SentCommand] = {}
        # (expiry, token) of every sent command, oldest first: pruning is O(log n) per send;
        # at most about twice the records in flight, and emptied once none is
        self._sent_expiry: list[tuple[float, str]] = []
        self._synced = asyncio.Event()
        self._resync_task: asyncio.Task[None] | None = None
        self.reconnects = 0
        self.native_dead_letters = 0

    @classmethod
    def from_env(cls, **overrides: Any) -> NatsBridge:
        """Build from ``NATS_URL`` and ``NATS_PREFIX`` (overrides win)."""
        options: dict[str, Any] = {"url": os.environ.get("NATS_URL")}
        if os.environ.get("NATS_PREFIX"):
            options["prefix"] = os.environ["NATS_PREFIX"]
        options.update(overrides)
        return cls(**options)

    # ------------------------------------------------------------ connection
    async def _connect(self) -> None:
        try:
            self._nc = await self._open()
            await self._setup(self._nc)
        except (nats.errors.Error, OSError, TimeoutError) as exc:
            raise BridgeNotRunningError(
                f"cannot start on NATS at {redact_url(self.url)} (JetStream enabled?): "
                f"{type(exc).__name__}: {redact_text(str(exc))}",
                StatusCode.SERVICE_UNAVAILABLE,
            ) from exc

    async def _open(self) -> Client:
        timings = NatsTimings(
            connect_timeout_s=self.connect_timeout_s,
            # a safety net only: nats-py gives up after connect_attempts first
            start_timeout_s=self.connect_attempts
            * (self.connect_timeout_s + self.max_reconnect_wait_s),
            ping_interval_s=self.ping_interval_s,
            max_outstanding_pings=self.max_outstanding_pings,
            reconnect_wait_s=self.reconnect_time_wait_s,
            op_timeout_s=self.js_api_timeout_s,
            connect_attempts=self.connect_attempts,
            max_reconnect_attempts=self.max_reconnect_attempts,
        )
        return await connect_nats(
            self.url,
            f"purista-{self.prefix}-{self.instance_id}",
            timings,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            error_cb=self._on_error,
            **self._backoff_option(),
        )

    async def _setup(self, nc: Client) -> None:
        self._js = nc.jetstream(timeout=self.js_api_timeout_s)
        limit = self.max_message_bytes
        room = nc.max_payload - _HEADER_ROOM if nc.max_payload else 0
        if room > 0 and (limit is None or limit > room):
            self.max_message_bytes = room  # the server's max_payload, headers left room
        try:
            await self._ensure_streams()
            self._reply_sub = await nc.subscribe(f"{self._reply_prefix}.*", cb=self._on_reply)
        except BaseException:
            await nc.close()
            raise
        self._synced.set()

    async def _close(self) -> None:
        if self._resync_task is not None:
            self._resync_task.cancel()
        nc = self._nc
        if nc is None or nc.is_closed:
            return
        with contextlib.suppress(Exception):
            await nc.flush(timeout=2)
        try:
            await nc.close()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if task is not None and task.cancelling():
                raise  # destroy itself is being cancelled
            # nats-py cancels its transport's pending close after a reconnect, and that
            # CancelledError escapes close() into a caller nobody cancelled
            self.log.debug("closing the connection: the client cancelled its own close")
        except Exception as exc:  # the broker may be gone already: closing must not fail
            self.log.debug("closing the connection failed: %r", exc)

    async def _is_connected(self) -> bool:
        nc = self._nc
        return nc is not None and nc.is_connected and self._synced.is_set()

    def _backoff_option(self) -> dict[str, Any]:
        """Exponential reconnect backoff where nats-py supports a server-choice hook."""
        if "reconnect_to_server_handler" in inspect.signature(Client.connect).parameters:
            return {"reconnect_to_server_handler": self._reconnect_delay}
        return {}  # older nats-py: a constant reconnect_time_wait

    def _reconnect_delay(self, servers: list[Any], _info: dict[str, Any]) -> tuple[Any, float]:
        """Exponential backoff with jitter between reconnect attempts (capped)."""
        attempts = min((getattr(s, "reconnects", 0) for s in servers), default=0)
        delay = min(self.reconnect_time_wait_s * 2 ** min(attempts, 16), self.max_reconnect_wait_s)
        return (servers[0] if servers else None), delay * random.uniform(0.8, 1.2)

    async def _on_disconnected(self) -> None:
        self._synced.clear()
        if not self.core.destroyed:
            self.log.warning("disconnected from %s", redact_url(self.url))

    async def _on_reconnected(self) -> None:
        self.reconnects += 1
        self.log.warning("reconnected to %s; re-registering", redact_url(self.url))
        if self._resync_task is None or self._resync_task.done():
            self._resync_task = self.core.spawn(self._resync(), name="nats-resync")

    async def _on_error(self, exc: Exception) -> None:
        self.log.debug("nats client error: %s: %s", type(exc).__name__, exc)

    async def _resync(self) -> None:
        """Ensure the streams and every registration again after a reconnect."""
        delay = 0.1
        while self.core.started and not self.core.destroyed and self._nc and not self._nc.is_closed:
            try:
                await self._ensure_streams()
                await self.core.rebind_all()
                if self._nc.is_connected:
                    self._synced.set()
                    return
            except Exception as exc:
                self.log.warning("re-registering after reconnect failed (%s); retrying", exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)

    async def _ensure_streams(self) -> None:
        js = self._jsc()
        await self._ensure_stream(
            js,
            StreamConfig(
                name=self.stream,
                description=f"PURISTA events of prefix {self.prefix}",
                subjects=subjects.stream_subjects(self.prefix),
                retention=RetentionPolicy.INTEREST,
                storage=StorageType.FILE,
                max_age=self.stream_max_age_s,
                duplicate_window=self.duplicate_window_s,
            ),
        )
        await self._ensure_stream(
            js,
            StreamConfig(
                name=self.dead_letter_stream,
                description=f"PURISTA dead letters of prefix {self.prefix}",
                subjects=[subjects.dead_letter_subject(self.prefix, ">")],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=self.dead_letter_max_age_s,
            ),
        )

    async def _ensure_stream(self, js: JetStreamContext, config: StreamConfig) -> None:
        try:
            await js.stream_info(config.name or "")
        except nats.js.errors.NotFoundError:
            try:
                await js.add_stream(config)
            except nats.js.errors.BadRequestError as exc:
                # created concurrently by another instance with another config: use it
                self.log.info("stream %s exists already (%s)", config.name, exc)

    async def _stream_for(self, subject: str) -> str:
        """The stream a consumer of ``subject`` reads: the one stream already capturing
        it (PURISTA's ``streams.find``; ours, or the per-filter stream of a PURISTA
        service that started first and so kept ours from being created), else ours."""
        names = await self._streams_holding(subject)
        if len(names) == 1:
            return names[0]
        if names or not await self._own_stream_missing():
            return self.stream
        # no stream holds the filter and ours cannot be made (another runtime's stream
        # overlaps it): make the per-filter stream PURISTA makes in that case
        name = subjects.purista_filter_stream_name(self.prefix, subject)
        try:
            await self._jsc().add_stream(StreamConfig(
                name=name, subjects=[subject], retention=RetentionPolicy.INTEREST,
                storage=StorageType.FILE,
            ))
        except nats.js.errors.BadRequestError as exc:
            names = await self._streams_holding(subject)  # made meanwhile by another one
            if len(names) != 1:
                raise UnhandledError(
                    f"no stream holds {subject}, and neither {self.stream} nor the "
                    f"per-filter stream {name} can be made: {exc.description}",
                    StatusCode.SERVICE_UNAVAILABLE,
                ) from exc
            return names[0]
        return name

    async def _streams_holding(self, subject: str) -> list[str]:
        """The streams whose subjects overlap ``subject`` (nats.js ``streams.find``), but
        this prefix's dead-letter stream."""
        js = self._jsc()
        found = await js._api_request(
            f"{js._prefix}.STREAM.NAMES",
            json.dumps({"subject": subject}).encode(),
            timeout=self.js_api_timeout_s,
        )
        return [n for n in found.get("streams") or [] if n != self.dead_letter_stream]

    async def _own_stream_missing(self) -> bool:
        """True only when the server says this prefix's event stream does not exist even
        after trying to make it (another stream's subjects overlap it); an unanswered
        question is not a missing stream."""
        with contextlib.suppress(Exception):
            await self._ensure_streams()
        try:
            await self._jsc().stream_info(self.stream)
        except nats.js.errors.NotFoundError:
            return True
        except Exception:
            return False
        return False

    async def _server_barrier(self, nc: Client) -> None:
        """Return once the server has processed everything sent so far (e.g. a SUB).

        nats-py 2.16's ``flush()`` writes its PING straight to the socket, ahead of
        commands still buffered for the flusher task, so the PONG can come back
        before a new subscription reached the server (a publish right after then
        misses it). Push the buffer out first, then ping.
        """
        push = getattr(nc, "_flush_pending", None)
        try:
            if push is not None:
                await push(force_flush=True)
            await nc.flush(timeout=self.js_api_timeout_s)
        except Exception as exc:
            self.log.debug("server barrier failed: %r", exc)

    def _jsc(self) -> JetStreamContext:
        if self._js is None:
            raise UnhandledError("nats bridge is not connected", StatusCode.SERVICE_UNAVAILABLE)
        return self._js

    def _client(self) -> Client:
        if self._nc is None or self._nc.is_closed:
            raise UnhandledError("nats connection is closed", StatusCode.SERVICE_UNAVAILABLE)
        return self._nc

    # ------------------------------------------------------------- publishing
    async def _publish(self, message: AnyMessage) -> None:
        data = self.core.encode(message)
        subject = subjects.message_subject(self.prefix, message)
        headers = routing_headers(message)
        if message.message_type is MessageType.COMMAND:
            await self._client().publish(subject, data, headers=headers)
            return
        await self._js_publish(subject, data, {**headers, "Nats-Msg-Id": message.id}, self.stream)

    async def _js_publish(
        self, subject: str, data: bytes, headers: dict[str, str], stream: str | None
    ) -> None:
        """Publish until the stream confirms, retrying (deduplicated) up to the deadline.
        A subject another stream captures (a PURISTA service's per-filter stream, made
        before ours could be) is published to that stream."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.publish_deadline_s
        delay = 0.05
        while True:
            nc = self._client()
            try:
                if not nc.is_connected:
                    raise nats.errors.ConnectionReconnectingError()
                await self._jsc().publish(
                    subject, data, self.publish_timeout_s, stream, dict(headers)
                )
                return
            except nats.js.errors.BadRequestError as exc:
                if exc.err_code != _WRONG_STREAM or stream is None:
                    raise
                stream = None
                continue
            except (nats.js.errors.NoStreamResponseError, nats.js.errors.NotFoundError):
                if await self._own_stream_missing():
                    # no stream captures the subject and ours cannot be made: nothing
                    # would confirm it; publish on core NATS, as PURISTA publishes events
                    self._no_stream_log.log(
                        logging.INFO, "no-stream",
                        "no stream captures %s (another stream keeps %s from being made): "
                        "published without a stream", subject, self.stream,
                    )
                    await nc.publish(subject, data, headers=dict(headers))
                    await self._server_barrier(nc)
                    return
                error: Exception = UnhandledError(f"no stream answers for {subject}")
            except (TimeoutError, nats.errors.Error, OSError) as exc:
                if isinstance(exc, nats.errors.ConnectionClosedError):
                    raise
                error = exc
            if loop.time() + delay > deadline:
                raise UnhandledError(
                    f"publish to {subject} not confirmed within {self.publish_deadline_s:.1f}s: "
                    f"{type(error).__name__}: {error}",
                    StatusCode.SERVICE_UNAVAILABLE,
                ) from error
            await asyncio.sleep(delay)
            delay = min(delay * 2, 1.0)

    # --------------------------------------------------------------- commands
    async def _send_command(self, command: Command) -> None:
        nc = self._client()
        if not nc.is_connected:
            try:
                await asyncio.wait_for(self._synced.wait(), self.command_connect_wait_s)
            except TimeoutError:
                raise UnhandledError(
                    f"nats is disconnected; cannot send command to {command.receiver}",
                    StatusCode.SERVICE_UNAVAILABLE,
                ) from None
        loop = asyncio.get_running_loop()
        now = loop.time()
        self._prune_sent(now)
        tok = _reply_token(command.correlation_id)
        # kept until its invoker gave up (the deadline it carries), plus a margin
        ttl_s = self.default_command_ttl_s
        if command.expires_at is not None:
            ttl_s = max((command.expires_at - now_ms()) / 1000, 0.0)
        expires_at = now + ttl_s + 1.0
        self._sent[tok] = _SentCommand.of(command, expires_at)
        heapq.heappush(self._sent_expiry, (expires_at, tok))
        subject = subjects.command_subject(self.prefix, command)
        try:
            await nc.publish(
                subject,
                self.core.encode(command),
                reply=f"{self._reply_prefix}.{tok}",
                headers=routing_headers(command),
            )
        except Exception:
            self._forget_sent(tok)
            raise

    def _prune_sent(self, now: float) -> None:
        """Drop the records of commands past their expiry (a send slow to cancel may record
        one after its invoke ended) and keep the heap in step with the records left."""
        if not self._sent:
            # nothing in flight: the heap's entries all belong to settled commands (a burst's
            # 10,000 would otherwise stay until the next send)
            self._sent_expiry.clear()
            return
        if len(self._sent_expiry) > 2 * len(self._sent) + 64:  # mostly settled: rebuild
            self._sent_expiry = [(s.expires_at, t) for t, s in self._sent.items()]
            heapq.heapify(self._sent_expiry)
        while self._sent_expiry and self._sent_expiry[0][0] < now:
            _, old = heapq.heappop(self._sent_expiry)
            entry = self._sent.get(old)
            if entry is not None and entry.expires_at < now:
                del self._sent[old]

    def _forget_sent(self, tok: str) -> None:
        """Drop a settled command's record: nothing stays per command once it settled."""
        self._sent.pop(tok, None)
        self._prune_sent(asyncio.get_running_loop().time())

    async def invoke(self, command: Command, ttl_s: float | None = None) -> Any:
        """See :meth:`EventBridgeBase.invoke`; what was kept to map "no responders" back to
        the command is dropped once the invocation ends."""
        token = _reply_token(command.correlation_id)
        call = super().invoke(command, ttl_s)
        del command  # not kept while the response is awaited (see the base's invoke)
        try:
            return await call
        finally:
            self._forget_sent(token)

    async def _on_reply(self, msg: Msg) -> None:
        tok = msg.subject.rsplit(".", 1)[-1]
        if msg.headers and msg.headers.get("Status") == _NO_RESPONDERS and not msg.data:
            sent = self._sent.get(tok)
            if sent is not None:
                self._forget_sent(tok)
                self.core.resolve_response(
                    error_response(
                        sent,
                        self.no_responders_status,
                        f"no instance of {sent.receiver} is reachable (NATS: no "
                        "responders): the command is unknown or every instance is down",
                        responder_instance_id="",
                    )
                )
            return
        response = self.core.decode_or_reject(msg.data, msg.subject)
        if isinstance(response, CommandSuccessResponse | CommandErrorResponse):
            self._forget_sent(tok)
            self.core.resolve_response(response)
        elif response is not None:
            self.log.warning("ignored a %s on the reply subject", response.message_type)

    async def _bind_command(self, reg: RegisteredCommand) -> None:
        key = reg.address.key
        if key in self._command_subs:
            return  # nats-py replays core subscriptions after a reconnect
        nc = self._client()
        group = subjects.queue_group(self.prefix, reg.address)
        entry = _CommandSubs()

        async def on_command(msg: Msg) -> None:
            # also while draining: handle_command answers 503 once destroy began
            self.core.spawn_tracked(self._serve_command(msg, key), "nats-command")

        entry.subs.append(
            await nc.subscribe(
                subjects.command_filter(self.prefix, reg.address, None),
                queue=group if reg.config.shared else "",
                cb=on_command,
            )
        )
        entry.subs.append(
            await nc.subscribe(
                subjects.command_filter(self.prefix, reg.address, self.instance_id),
                cb=on_command,
            )
        )
        self._command_subs[key] = entry
        await self._server_barrier(nc)

    async def _unbind_command(self, reg: RegisteredCommand) -> None:
        entry = self._command_subs.pop(reg.address.key, None)
        if entry is None:
            return
        for sub in entry.subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._nc is not None and self._nc.is_connected:
            await self._server_barrier(self._nc)

    async def _serve_command(self, msg: Msg, route: tuple[str, str, str]) -> None:
        """Serve a command received on the subject of ``route`` (never what the body says)."""
        command = self.core.decode_or_reject(msg.data, msg.subject)
        if not isinstance(command, Command):
            if command is not None:
                self.log.warning("ignored a %s on a command subject", command.message_type)
            return
        response: CommandResponse | None = await self.core.handle_command(command, route=route)
        if response is None:  # expired: the invoker has its 504 already
            return
        if msg.reply:
            try:
                data = self.core.encode(response)
            except MessageEncodeError as exc:
                data = self.core.encode(
                    error_response(
                        command,
                        StatusCode.INTERNAL_SERVER_ERROR,
                        f"response not encodable: {exc}",
                        responder_instance_id=self.instance_id,
                    )
                )
            try:
                await self._client().publish(msg.reply, data, headers=routing_headers(response))
            except Exception as exc:
                self.log.warning("could not send the response to %s: %s", command.receiver, exc)
        await self.core.after_response(response)

    # ---------------------------------------------------------- subscriptions
    @staticmethod
    def uses_jetstream(reg: RegisteredSubscription) -> bool:
        """Durable or manually acknowledged subscriptions read through JetStream."""
        return reg.subscription.durable or not reg.subscription.autoacknowledge

    async def _bind_subscription(self, reg: RegisteredSubscription) -> None:
        if self.uses_jetstream(reg):
            await self._bind_consumer(reg)
        else:
            await self._bind_core(reg)

    async def _unbind_subscription(self, reg: RegisteredSubscription) -> None:
        key = reg.subscription.key
        sub = self._core_subs.pop(key, None)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
            if self._nc is not None and self._nc.is_connected:
                await self._server_barrier(self._nc)
        consumer = self._consumers.pop(key, None)
        if consumer is not None:
            await consumer.stop()
            if consumer.per_instance:
                # shared consumers may serve other instances still: transient ones expire
                # by inactive_threshold, durable ones keep the group's backlog
                await consumer.delete()

    async def _stop_intake(self) -> None:
        """Stop consuming (keeping the reply subject), hand back unstarted JetStream
        messages, and wait for every dispatched delivery to settle (ack/response)."""
        subs = [sub for entry in self._command_subs.values() for sub in entry.subs]
        subs.extend(self._core_subs.values())
        self._command_subs.clear()
        self._core_subs.clear()
        await asyncio.gather(*(self._drain_sub(sub) for sub in subs))
        for consumer in list(self._consumers.values()):
            await consumer.stop()

    async def _drain_sub(self, sub: CoreSubscription) -> None:
        """Unsubscribe, but still dispatch what the server already sent us."""
        try:
            await asyncio.wait_for(sub.drain(), min(self.drain_timeout_s, 2.0))
        except Exception:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    # ---- core NATS (non-durable, auto-acknowledged: at most once)
    async def _bind_core(self, reg: RegisteredSubscription) -> None:
        key = reg.subscription.key
        if key in self._core_subs:
            return
        sub = reg.subscription
        group = subjects.queue_group(self.prefix, sub.subscriber) if sub.shared else ""

        async def on_message(msg: Msg) -> None:
            current = self.core.subscription(key)
            if current is not None:
                self.core.spawn_tracked(self._deliver_core(current, msg), "nats-event")

        nc = self._client()
        self._core_subs[key] = await nc.subscribe(
            subjects.subscription_filter(self.prefix, sub), queue=group, cb=on_message
        )
        await self._server_barrier(nc)

    async def _deliver_core(self, reg: RegisteredSubscription, msg: Msg) -> None:
        message = await self.core.decode_for_subscription(reg, msg.data, msg.subject)
        if message is None or not reg.matches(message):
            return
        await self._run_locally(reg, message, 1)

    async def _run_locally(
        self, reg: RegisteredSubscription, message: AnyMessage, attempt: int
    ) -> None:
        """Auto-acknowledged delivery: retries happen in this process (lost if it dies)."""
        while True:
            outcome = await self.core.handle_subscription(reg, message, attempt)
            if outcome.disposition is not Disposition.RETRY or not self.core.accepting:
                return
            await asyncio.sleep(outcome.delay_s)
            if not self.core.accepting:
                return
            attempt += 1

    # ---- JetStream push consumers (see .consumers)
    async def _bind_consumer(self, reg: RegisteredSubscription) -> None:
        consumer = JetStreamConsumer(self, reg)
        current = self._consumers.get(consumer.key)
        if current is not None and current.name == consumer.name and current.active:
            # re-bound after a reconnect: nats-py subscribed the deliver subject again;
            # the consumer exists again (or anew, maybe delivering elsewhere)
            await current.ensure()
            if current.deliver != current.bound_to:
                await current._subscribe()
            return
        await consumer.ensure()
        if current is not None:
            await current.stop()
        await consumer.start()
        self._consumers[consumer.key] = consumer

    # ---------------------------------------------------------------- helpers
    async def publish_raw(
        self,
        raw: bytes,
        subject: str | None = None,
        *,
        extra_headers: dict[str, str] | None = None,
    ) -> None:
        """Put raw bytes on the wire (tests of malformed input): on ``subject``, on the
        subject of the message ``raw`` encodes, or on a subject that each subscription
        registered here listens to; with ``extra_headers`` (added as a foreign publisher
        could) a decodable ``raw`` goes on the subject of the message it encodes."""
        nc = self._client()
        if subject is None and extra_headers:
            try:
                subject = subjects.message_subject(self.prefix, decode(raw, max_bytes=None))
            except MessageDecodeError:
                subject = None
        if subject is not None:
            targets = [subject]
        else:
            targets = []
            for reg in self.core.registered_subscriptions:
                sub = reg.subscription
                tail = subjects.subscription_filter(self.prefix, sub)[len(self.prefix) + 1 :]
                parts = tail.split(".")
                if sub.message_type is None:
                    parts[0] = subjects.token(MessageType.CUSTOM_MESSAGE)
                parts = [subjects.EMPTY if t == subjects.ANY else t for t in parts]
                targets.append(".".join([self.prefix, *parts]))
            targets = targets or [
                f"{self.prefix}.{subjects.token(MessageType.CUSTOM_MESSAGE)}"
                + f".{subjects.EMPTY}" * 11
            ]
        for target in dict.fromkeys(targets):
            if target.startswith(f"{self.prefix}.{subjects.token(MessageType.COMMAND)}."):
                await nc.publish(target, raw, headers=extra_headers)
            else:
                await self._jsc().publish(
                    target, raw, self.publish_timeout_s, headers=extra_headers
                )
        await nc.flush(timeout=self.js_api_timeout_s)

    async def publish_raw_command(self, raw: bytes, route: Address) -> None:
        """Tests only: put ``raw`` on the subject of the command at ``route``, as a
        publisher allowed on that subject could, whatever the body says."""
        probe = Command(
            sender=SenderAddress(
                service_name="probe", service_version="1", service_target="raw", instance_id="x"
            ),
            receiver=route,
        )
        nc = self._client()
        await nc.publish(subjects.message_subject(self.prefix, probe), raw)
        await nc.flush(timeout=self.js_api_timeout_s)

    async def dead_letters(self, limit: int = 100) -> list[tuple[dict[str, str], bytes]]:
        """Peek at the native dead letters of this prefix: ``(headers, data)`` pairs."""
        js = self._jsc()
        out: list[tuple[dict[str, str], bytes]] = []
        info = await js.stream_info(self.dead_letter_stream)
        first, last = info.state.first_seq, info.state.last_seq
        for seq in range(max(first, 1), last + 1):
            if len(out) >= limit:
                break
            try:
                raw = await js.get_msg(self.dead_letter_stream, seq)
            except nats.js.errors.NotFoundError:
                continue
            out.append((dict(raw.headers or {}), raw.data or b""))
        return out
