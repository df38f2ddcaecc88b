"""One paho-mqtt 2.x (MQTT 5) connection driven by the asyncio event loop.

paho's socket is read and written from the event loop (``add_reader`` /
``add_writer``, paho's ``on_socket_*`` hooks), its timers run from a supervisor
task that also reconnects with backoff, and only the blocking TCP connect runs
in a worker thread. There is no network thread: a round trip costs no thread
hand-overs (with one, a command on loopback took 3-6 ms and a third of its CPU
went to waking threads). Callbacks still reach the loop through ``_call``, in
order, whichever thread paho calls them on. Publishes wait for their PUBACK and
subscribes for their SUBACK (bounded by a timeout). Messages are acknowledged
manually (``manual_ack=True``) and only on the connection they arrived on: every
(re)connect bumps ``generation``, and an ack for an older generation is skipped
because the broker resends the message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlparse

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from reference_services.runtime.errors import StatusCode, UnhandledError

MessageCallback = Callable[[mqtt.MQTTMessage, int], None]
StateCallback = Callable[[int, bool], None]
DEFAULT_URL = "mqtt://127.0.0.1:1883"


def resolve_url(url: str | None) -> str:
    """``url``, else ``$MQTT_URL``, else the local broker's default port."""
    return url or os.environ.get("MQTT_URL") or DEFAULT_URL


def parse_url(url: str) -> dict[str, Any]:
    """``mqtt://user:pass@host:port`` (also ``tcp://``, ``mqtts://``, ``ssl://``) as settings."""
    parsed = urlparse(url if "://" in url else f"mqtt://{url}")
    tls = parsed.scheme in ("mqtts", "ssl", "tls")
    return {
        "host": parsed.hostname or "127.0.0.1",
        "port": parsed.port or (8883 if tls else 1883),
        "username": unquote(parsed.username) if parsed.username else None,
        "password": unquote(parsed.password) if parsed.password else None,
        "tls": tls,
    }


def _no_delay(_client: Any, _userdata: Any, sock: Any) -> None:
    """TCP_NODELAY on the broker socket: without it Nagle holds a small publish back until
    the previous one is acknowledged, and the peer's delayed ACK makes that ~40 ms, twice
    per round trip (a command took 88 ms on loopback)."""
    with contextlib.suppress(OSError, AttributeError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


@dataclass(frozen=True)
class MqttSettings:
    """Where and how to connect."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log or error
    tls: bool = False
    keepalive_s: int = 10
    reconnect_min_s: float = 0.5
    reconnect_max_s: float = 5.0
    receive_maximum: int = 100

    @classmethod
    def from_url(cls, url: str, **options: Any) -> MqttSettings:
        """Host, port, credentials and TLS from ``url``; the other settings from ``options``."""
        return cls(**parse_url(url), **options)


class MqttUnavailableError(UnhandledError):
    """The broker is not reachable or did not confirm in time (503)."""

    default_status = StatusCode.SERVICE_UNAVAILABLE


def _failed(code: Any) -> bool:
    if isinstance(code, ReasonCode):
        return code.is_failure
    return isinstance(code, int) and code >= 0x80


class MqttConnection:
    """A paho client with confirmations as awaitables; see the module docstring."""

    def __init__(
        self,
        settings: MqttSettings,
        client_id: str,
        *,
        session_expiry_s: int,
        on_message: MessageCallback,
        on_up: StateCallback,
        on_down: Callable[[], None],
        log: logging.Logger,
    ) -> None:
        self.settings = settings
        self.client_id = client_id
        self.session_expiry_s = session_expiry_s
        self.log = log
        self.generation = 0
        self._on_message_cb = on_message
        self._on_up_cb = on_up
        self._on_down_cb = on_down
        self._loop: asyncio.AbstractEventLoop | None = None
        self._acks: dict[int, asyncio.Future[Any]] = {}
        self._subacks: dict[int, asyncio.Future[Any]] = {}
        self._first: asyncio.Future[bool] | None = None
        self._down = threading.Event()
        self._net_lock = threading.Lock()
        self._closing = False
        self._loop_thread: int | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._lost = asyncio.Event()  # the socket closed: reconnect (after the backoff)
        self._connected_once = False
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        if settings.username is not None:
            client.username_pw_set(settings.username, settings.password)
        if settings.tls:
            client.tls_set()
        client.max_inflight_messages_set(100)
        client.on_socket_open = self._net_socket_open
        client.on_socket_close = self._net_socket_close
        client.on_socket_register_write = self._net_want_write
        client.on_socket_unregister_write = self._net_wrote
        client.on_connect = self._net_connect
        client.on_disconnect = self._net_disconnect
        client.on_message = self._net_message
        client.on_publish = self._net_publish
        client.on_subscribe = self._net_subscribe
        client.on_unsubscribe = self._net_subscribe
        self.client = client

    # ------------------------------------------------------------ lifecycle
    @property
    def connected(self) -> bool:
        """Whether the MQTT session is up now."""
        return self.client.is_connected()

    async def start(self, timeout_s: float) -> bool:
        """Connect (retrying until ``timeout_s``) and keep the connection up; returns whether
        a session was present."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._first = self._loop.create_future()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = self.session_expiry_s
        props.ReceiveMaximum = self.settings.receive_maximum
        self.client.connect_async(
            self.settings.host,
            self.settings.port,
            keepalive=self.settings.keepalive_s,
            clean_start=self.session_expiry_s == 0,
            properties=props,
        )
        self._supervisor = self._loop.create_task(
            self._supervise(), name=f"mqtt-{self.client_id}"
        )
        try:
            return await asyncio.wait_for(asyncio.shield(self._first), timeout_s)
        except TimeoutError:
            await self._stop_io()
            raise MqttUnavailableError(
                f"could not connect to mqtt://{self.settings.host}:{self.settings.port} "
                f"within {timeout_s:.1f}s"
            ) from None

    async def close(self, session_expiry_s: int | None = None, timeout_s: float = 5.0) -> None:
        """Disconnect (optionally changing the session expiry) and stop reconnecting."""
        self._closing = True
        if self.client.is_connected():
            props = None
            if session_expiry_s is not None and self.session_expiry_s:
                props = Properties(PacketTypes.DISCONNECT)
                props.SessionExpiryInterval = session_expiry_s
            self.client.disconnect(properties=props)
            await asyncio.to_thread(self._down.wait, timeout_s)
        await self._stop_io()
        for fut in [*self._acks.values(), *self._subacks.values()]:
            if not fut.done():
                fut.set_exception(MqttUnavailableError("connection closed"))

    async def _stop_io(self) -> None:
        self._closing = True
        task, self._supervisor = self._supervisor, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
        sock = self.client.socket()
        if sock is not None:
            self._unwatch(sock.fileno())
            with contextlib.suppress(OSError):
                sock.close()  # paho's socket: closed under it, as loop_stop's thread did

    async def _supervise(self) -> None:
        """Connect, reconnect after a loss (backoff from ``reconnect_min_s`` doubling up to
        ``reconnect_max_s``, reset once connected), and run paho's keep-alive timers."""
        delay = self.settings.reconnect_min_s
        while not self._closing:
            if self.client.socket() is None:
                if self._connected_once:
                    await asyncio.sleep(delay)
                    if self._closing:
                        return
                try:
                    self._lost.clear()
                    # the TCP (and TLS) connect blocks: off the loop; CONNECT is queued
                    await asyncio.to_thread(self.client.reconnect)
                except (OSError, ValueError) as exc:
                    self.log.debug("%s: connect failed: %r", self.client_id, exc)
                    self._connected_once = True  # from now on, wait before each attempt
                    delay = min(delay * 2, self.settings.reconnect_max_s)
                    continue
                if self.client.is_connected() or not self._connected_once:
                    delay = self.settings.reconnect_min_s
                self._connected_once = True
            self.client.loop_misc()
            if self.client.is_connected():
                delay = self.settings.reconnect_min_s
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), 1.0)

    # ---------------------------------------------------------- operations
    async def publish(
        self,
        topic: str,
        payload: bytes,
        properties: Properties | None,
        timeout_s: float,
        *,
        retain: bool = False,
    ) -> int:
        """Publish at QoS 1 and wait for the broker's PUBACK (a publisher confirm).

        Returns the PUBACK reason code: 0, or 0x10 when no subscription matched."""
        if not self.client.is_connected():
            raise MqttUnavailableError(f"not connected to the MQTT broker ({self.client_id})")
        loop = asyncio.get_running_loop()
        info = self.client.publish(topic, payload, qos=1, retain=retain, properties=properties)
        if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
            raise MqttUnavailableError(f"publish failed: {mqtt.error_string(info.rc)}")
        # The PUBACK callback is queued onto this loop, so it runs after this line.
        fut: asyncio.Future[Any] = loop.create_future()
        self._acks[info.mid] = fut
        try:
            code = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise MqttUnavailableError(
                f"no PUBACK for {topic} within {timeout_s:.1f}s (it may still be delivered)"
            ) from None
        finally:
            if self._acks.get(info.mid) is fut:
                del self._acks[info.mid]
        if _failed(code):
            raise MqttUnavailableError(f"broker refused publish to {topic}: {code}")
        return int(getattr(code, "value", code) or 0)

    async def subscribe(
        self, topic_filter: str, subscription_id: int, timeout_s: float, qos: int = 1
    ) -> None:
        """Subscribe (QoS 1 by default) with a subscription identifier; wait for the SUBACK."""
        props = Properties(PacketTypes.SUBSCRIBE)
        props.SubscriptionIdentifier = subscription_id
        rc, mid = self.client.subscribe(
            topic_filter, options=SubscribeOptions(qos=qos), properties=props
        )
        codes = await self._await_ack(rc, mid, f"subscribe {topic_filter}", timeout_s)
        if any(_failed(c) for c in codes):
            raise MqttUnavailableError(f"broker refused subscription {topic_filter}: {codes}")

    async def unsubscribe(self, topic_filter: str, timeout_s: float) -> None:
        """Unsubscribe and wait for the UNSUBACK."""
        rc, mid = self.client.unsubscribe(topic_filter)
        await self._await_ack(rc, mid, f"unsubscribe {topic_filter}", timeout_s)

    def ack(self, mid: int, generation: int) -> bool:
        """Send the PUBACK for ``mid`` if it arrived on the current connection."""
        if generation != self.generation or not self.client.is_connected():
            return False
        rc = self.client.ack(mid, 1)
        return rc == mqtt.MQTT_ERR_SUCCESS

    async def _await_ack(self, rc: int, mid: int | None, what: str, timeout_s: float) -> list[Any]:
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise MqttUnavailableError(f"{what} failed: {mqtt.error_string(rc)}")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._subacks[mid] = fut
        try:
            codes = await asyncio.wait_for(fut, timeout_s)
        except TimeoutError:
            raise MqttUnavailableError(f"{what}: no answer within {timeout_s:.1f}s") from None
        finally:
            if self._subacks.get(mid) is fut:
                del self._subacks[mid]
        return list(codes) if isinstance(codes, list | tuple) else [codes]

    # ----------------------------------- paho callbacks (loop or connect thread)
    def _call(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` on the loop, after what was handed over before (FIFO, any thread)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        try:
            if threading.get_ident() == self._loop_thread:
                loop.call_soon(fn, *args)
            else:
                loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass

    def _on_loop(self, fn: Callable[..., None], *args: Any) -> None:
        """Run ``fn`` now when on the loop's thread (a socket is (un)registered while its
        descriptor is still its own), else hand it over in order."""
        if threading.get_ident() == self._loop_thread:
            fn(*args)
        else:
            self._call(fn, *args)

    def _net_socket_open(self, client: Any, userdata: Any, sock: Any) -> None:
        _no_delay(client, userdata, sock)
        self._on_loop(self._watch, sock)

    def _net_socket_close(self, client: Any, userdata: Any, sock: Any) -> None:
        # paho calls this before it closes the socket
        fd = sock.fileno()
        self._on_loop(self._unwatch, fd)
        self._call(self._lost.set)

    def _net_want_write(self, client: Any, userdata: Any, sock: Any) -> None:
        self._on_loop(self._watch_write, sock)

    def _net_wrote(self, client: Any, userdata: Any, sock: Any) -> None:
        self._on_loop(self._unwatch_write, sock)

    def _watch(self, sock: Any) -> None:
        if self._closing:  # a connect that finished after close() gave up on it
            with contextlib.suppress(OSError):
                sock.close()
            return
        if self._loop is not None and sock is self.client.socket() and sock.fileno() != -1:
            self._loop.add_reader(sock, self._readable)

    def _watch_write(self, sock: Any) -> None:
        if self._loop is not None and sock is self.client.socket() and sock.fileno() != -1:
            self._loop.add_writer(sock, self._writable)

    def _unwatch_write(self, sock: Any) -> None:
        if self._loop is not None and sock.fileno() != -1:
            self._loop.remove_writer(sock)

    def _unwatch(self, fd: int) -> None:
        loop = self._loop
        if loop is None or loop.is_closed() or fd == -1:
            return
        with contextlib.suppress(ValueError, OSError):
            loop.remove_reader(fd)
            loop.remove_writer(fd)

    def _readable(self) -> None:
        self.client.loop_read()

    def _writable(self) -> None:
        self.client.loop_write()

    def _net_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any) -> None:
        if _failed(reason):
            self.log.warning("%s: connection refused: %s", self.client_id, reason)
            return
        self._down.clear()
        with self._net_lock:
            self.generation += 1
            generation = self.generation
        self._call(self._up, generation, bool(getattr(flags, "session_present", False)))

    def _net_disconnect(
        self, client: Any, userdata: Any, flags: Any, reason: Any, props: Any
    ) -> None:
        self._down.set()
        self._call(self._on_down_cb)
        if not self._closing:
            self.log.warning("%s: disconnected (%s); reconnecting", self.client_id, reason)

    def _net_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        self._call(self._on_message_cb, message, self.generation)

    def _net_publish(self, client: Any, userdata: Any, mid: int, reason: Any, props: Any) -> None:
        self._call(self._resolve, self._acks, mid, reason)

    def _net_subscribe(self, client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
        self._call(self._resolve, self._subacks, mid, codes)

    # --------------------------------------------------- loop-side handlers
    def _up(self, generation: int, session_present: bool) -> None:
        if self._first is not None and not self._first.done():
            self._first.set_result(session_present)
        self._on_up_cb(generation, session_present)

    @staticmethod
    def _resolve(table: dict[int, asyncio.Future[Any]], mid: int, value: Any) -> None:
        fut = table.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(value)
