"""One-shot protocol checks: true only when the service itself answers its protocol.

An open TCP port proves nothing behind docker-proxy (it accepts while the broker inside is
down), so readiness is an AMQP connection opened, an MQTT CONNACK, a Redis PONG or a 2xx from
an HTTP health endpoint.
"""

from __future__ import annotations

import socket
import uuid

from harness.services.local_recipes import http_ok, redis_pong

__all__ = ["amqp_open", "http_ok", "mqtt_connack", "redis_pong"]


def amqp_open(host: str, port: int, user: str = "guest", password: str = "guest",
              timeout: float = 2.0) -> bool:
    """True when an AMQP 0-9-1 connection opens (Connection.Open-Ok) and closes again."""
    from pamqp import commands, frame, header
    from pamqp.exceptions import UnmarshalingException

    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            buf = b""

            def expect(kind: type) -> object:
                nonlocal buf
                while True:
                    try:
                        used, _channel, got = frame.unmarshal(buf)
                    except UnmarshalingException:
                        chunk = sock.recv(4096)
                        if not chunk:
                            raise ConnectionError("closed during the handshake") from None
                        buf += chunk
                        continue
                    buf = buf[used:]
                    if isinstance(got, kind):
                        return got
                    if isinstance(got, commands.Connection.Close):
                        raise ConnectionError(f"server closed: {got.reply_text}")

            sock.sendall(header.ProtocolHeader().marshal())
            expect(commands.Connection.Start)
            sock.sendall(frame.marshal(commands.Connection.StartOk(
                client_properties={"product": "harness-ready-probe"}, mechanism="PLAIN",
                response=f"\0{user}\0{password}", locale="en_US"), 0))
            tune = expect(commands.Connection.Tune)
            sock.sendall(frame.marshal(commands.Connection.TuneOk(
                channel_max=tune.channel_max, frame_max=tune.frame_max,  # type: ignore[attr-defined]
                heartbeat=0), 0))
            sock.sendall(frame.marshal(commands.Connection.Open(virtual_host="/"), 0))
            expect(commands.Connection.OpenOk)
            sock.sendall(frame.marshal(commands.Connection.Close(
                reply_code=200, reply_text="probe", class_id=0, method_id=0), 0))
            return True
    except (OSError, ValueError):
        return False


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def mqtt_connack(host: str, port: int, timeout: float = 2.0) -> bool:
    """True when an MQTT 3.1.1 CONNECT is answered by CONNACK with return code 0."""
    body = (_mqtt_string("MQTT") + bytes([4, 0x02]) + (30).to_bytes(2, "big")
            + _mqtt_string(f"ready-{uuid.uuid4().hex[:12]}"))
    packet = bytes([0x10, len(body)]) + body
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            sock.sendall(packet)
            reply = b""
            while len(reply) < 4:
                chunk = sock.recv(4 - len(reply))
                if not chunk:
                    return False
                reply += chunk
            ok = reply[0] == 0x20 and reply[1] == 2 and reply[3] == 0
            if ok:
                sock.sendall(b"\xe0\x00")  # DISCONNECT
            return ok
    except OSError:
        return False
