"""Real client round trips against each service (used by `harness doctor` and tests).

Each probe returns the server's version as the server reports it.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from harness.faults.network import Toxiproxy


async def probe_rabbitmq(url: str, step_s: float = 10.0) -> str:
    """Publish to a temporary queue and get the message back (aio-pika)."""
    import aio_pika

    conn = await asyncio.wait_for(aio_pika.connect(url, timeout=step_s), step_s)
    try:
        channel = await conn.channel()
        queue = await channel.declare_queue(exclusive=True, auto_delete=True)
        body = uuid.uuid4().bytes
        await channel.default_exchange.publish(aio_pika.Message(body), routing_key=queue.name)
        deadline = asyncio.get_running_loop().time() + step_s
        while True:
            msg = await queue.get(no_ack=True, fail=False)
            if msg is not None:
                if msg.body != body:
                    raise AssertionError("rabbitmq returned a different body")
                break
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError("rabbitmq: message not back in time")
            await asyncio.sleep(0.02)
        props = conn.transport.connection.server_properties if conn.transport else {}
        version = props.get("version", "unknown") if props else "unknown"
        return version.decode() if isinstance(version, bytes) else str(version)
    finally:
        await conn.close()


async def probe_nats(url: str, step_s: float = 10.0) -> str:
    """Core pub/sub plus a JetStream stream publish and fetch (nats-py)."""
    import nats

    nc = await nats.connect(url, connect_timeout=step_s, max_reconnect_attempts=0,
                            allow_reconnect=False)
    try:
        subject = f"harness.probe.{uuid.uuid4().hex[:8]}"
        sub = await nc.subscribe(subject)
        await nc.publish(subject, b"ping")
        msg = await sub.next_msg(timeout=step_s)
        assert msg.data == b"ping"
        js = nc.jetstream()
        stream = f"HARNESS_PROBE_{uuid.uuid4().hex[:8]}"
        await js.add_stream(name=stream, subjects=[subject + ".js"])
        try:
            await js.publish(subject + ".js", b"js")
            psub = await js.pull_subscribe(subject + ".js", durable=None, stream=stream)
            msgs = await psub.fetch(1, timeout=step_s)
            assert msgs[0].data == b"js"
            await msgs[0].ack()
        finally:
            await js.delete_stream(stream)
        return nc._server_info.get("version", "unknown")
    finally:
        await nc.close()


async def probe_redis(url: str, step_s: float = 10.0) -> str:
    """SET then GET a temporary key (redis asyncio)."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(url, socket_timeout=step_s, socket_connect_timeout=step_s)
    try:
        key = f"harness:probe:{uuid.uuid4().hex}"
        await client.set(key, "v", ex=60)
        if await client.get(key) != b"v":
            raise AssertionError("redis returned a different value")
        await client.delete(key)
        info = await client.info("server")
        return str(info.get("redis_version", "unknown"))
    finally:
        await client.aclose()


def mqtt_round_trip(url: str, timeout: float = 10.0) -> str:
    """Subscribe, publish QoS 1 and receive it back (paho-mqtt, in its own thread)."""
    import paho.mqtt.client as mqtt

    parts = urlsplit(url)
    topic = f"harness/probe/{uuid.uuid4().hex[:8]}"
    subscribed, received, version = threading.Event(), threading.Event(), ["unknown"]
    client_id = f"probe-{uuid.uuid4().hex[:8]}"
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)

    def on_connect(c: mqtt.Client, _u: object, _f: object, rc: object, _p: object) -> None:
        c.subscribe([(topic, 1), ("$SYS/broker/version", 0)])

    def on_subscribe(c: mqtt.Client, *_args: object) -> None:
        subscribed.set()

    def on_message(c: mqtt.Client, _u: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic == topic and msg.payload == b"ping":
            received.set()
        elif msg.topic.startswith("$SYS"):
            version[0] = msg.payload.decode().rsplit(" ", 1)[-1]

    client.on_connect, client.on_subscribe, client.on_message = on_connect, on_subscribe, on_message
    client.connect(parts.hostname or "127.0.0.1", parts.port or 1883, keepalive=30)
    client.loop_start()
    try:
        if not subscribed.wait(timeout):
            raise TimeoutError("mqtt: no SUBACK")
        client.publish(topic, b"ping", qos=1)
        if not received.wait(timeout):
            raise TimeoutError("mqtt: message not back in time")
        return version[0]
    finally:
        client.disconnect()
        client.loop_stop()


async def probe_mosquitto(url: str, step_s: float = 10.0) -> str:
    return await asyncio.to_thread(mqtt_round_trip, url, step_s)


def toxiproxy_round_trip(url: str, timeout: float = 10.0) -> str:
    """GET /version, then create and delete a proxy."""
    server = Toxiproxy(url, timeout=timeout)
    version = server.version()
    api = urlsplit(url)
    name = f"harness_probe_{uuid.uuid4().hex[:8]}"
    proxy = server.create_proxy(name, f"{api.hostname}:{api.port}")
    try:
        if proxy.port <= 0:
            raise AssertionError("toxiproxy gave no port")
    finally:
        proxy.delete()
    return version


async def probe_toxiproxy(url: str, step_s: float = 10.0) -> str:
    return await asyncio.to_thread(toxiproxy_round_trip, url, step_s)


def _http(method: str, url: str, body: bytes | None, headers: dict[str, str],
          timeout: float) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def moto_round_trip(url: str, timeout: float = 10.0) -> str:
    """Create, read and delete a Secrets Manager secret over the AWS JSON protocol."""
    import json

    from harness.services.local_recipes import local_version

    name = f"harness-probe/{uuid.uuid4().hex[:8]}"
    value = uuid.uuid4().hex

    def call(target: str, payload: dict[str, object]) -> dict[str, object]:
        headers = {
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": f"secretsmanager.{target}",
            # moto reads the region from the credential scope; the key is a placeholder
            "Authorization": "AWS4-HMAC-SHA256 Credential=probe/20260101/us-east-1/"
            "secretsmanager/aws4_request, SignedHeaders=host, Signature=0",
        }
        status, data = _http("POST", url.rstrip("/") + "/", json.dumps(payload).encode(),
                             headers, timeout)
        if status != 200:
            raise AssertionError(f"moto: {target} answered {status}")
        return dict(json.loads(data or b"{}"))

    call("CreateSecret", {"Name": name, "SecretString": value})
    try:
        if call("GetSecretValue", {"SecretId": name}).get("SecretString") != value:
            raise AssertionError("moto returned a different secret")
    finally:
        call("DeleteSecret", {"SecretId": name, "ForceDeleteWithoutRecovery": True})
    return local_version("moto")


async def probe_moto(url: str, step_s: float = 10.0) -> str:
    return await asyncio.to_thread(moto_round_trip, url, step_s)


def dapr_round_trip(url: str, timeout: float = 10.0) -> str:
    """Save, get and delete a key in the sidecar's state store; the version from
    /v1.0/metadata."""
    import json

    from harness.services.local_recipes import DAPR_STATE_STORE

    base = url.rstrip("/") + "/v1.0"
    key = f"harness-probe-{uuid.uuid4().hex[:8]}"
    json_headers = {"Content-Type": "application/json"}
    status, _ = _http("POST", f"{base}/state/{DAPR_STATE_STORE}",
                      json.dumps([{"key": key, "value": "ping"}]).encode(), json_headers,
                      timeout)
    if status != 204:
        raise AssertionError(f"dapr: save answered {status}")
    status, data = _http("GET", f"{base}/state/{DAPR_STATE_STORE}/{key}", None, {}, timeout)
    if status != 200 or json.loads(data) != "ping":
        raise AssertionError(f"dapr: get answered {status}")
    _http("DELETE", f"{base}/state/{DAPR_STATE_STORE}/{key}", None, {}, timeout)
    status, data = _http("GET", f"{base}/metadata", None, {}, timeout)
    info = json.loads(data) if status == 200 else {}
    return str(info.get("runtimeVersion") or info.get("extended", {}).get("daprRuntimeVersion")
               or "unknown")


async def probe_dapr(url: str, step_s: float = 10.0) -> str:
    return await asyncio.to_thread(dapr_round_trip, url, step_s)


PROBES: dict[str, Callable[[str, float], Awaitable[str]]] = {
    "rabbitmq": probe_rabbitmq,
    "nats": probe_nats,
    "redis": probe_redis,
    "mosquitto": probe_mosquitto,
    "toxiproxy": probe_toxiproxy,
    "moto": probe_moto,
    "dapr": probe_dapr,
}


def probe(name: str, url: str, timeout: float = 10.0) -> str:
    """Run one probe synchronously (own event loop); returns the server version."""
    return asyncio.run(asyncio.wait_for(PROBES[name](url, timeout), timeout * 3))
