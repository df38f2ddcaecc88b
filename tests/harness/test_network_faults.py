"""Every Toxiproxy toxic acts measurably on a real Redis connection and stops when removed."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

import pytest
from harness_helpers import read_reply, resp, round_trip, wait_until

from harness.faults.network import Proxy, Toxiproxy, ToxiproxyError
from harness.services import ServiceHandle

MakeProxy = Callable[..., Proxy]


@pytest.fixture
def proxy(harness_redis: ServiceHandle, proxied: MakeProxy) -> Proxy:
    return proxied(harness_redis)


def _baseline(proxy: Proxy) -> float:
    return min(round_trip(proxy.host, proxy.port) for _ in range(3))


def test_proxy_url_keeps_scheme_credentials_and_path(
    harness_rabbitmq: ServiceHandle, harness_redis: ServiceHandle, proxied: MakeProxy
) -> None:
    amqp = proxied(harness_rabbitmq)
    assert amqp.url == f"amqp://guest:guest@127.0.0.1:{amqp.port}/"
    assert amqp.port != harness_rabbitmq.port and amqp.upstream == harness_rabbitmq.address
    red = proxied(harness_redis, name="named_redis_proxy")
    assert red.name == "named_redis_proxy"
    assert red.url == f"redis://127.0.0.1:{red.port}/0"


def test_latency_adds_at_least_its_delay_and_stops_when_removed(proxy: Proxy) -> None:
    with proxy.latency(200):
        slow = round_trip(proxy.host, proxy.port)
    # the toxic holds the reply 200 ms: no round trip through it can be shorter (comparing
    # with base + 0.2 judged two separate round trips' jitter and failed by 0.3 ms)
    assert slow >= 0.2
    assert proxy.toxics() == []
    assert round_trip(proxy.host, proxy.port) < 0.2


def test_upstream_latency_with_jitter(proxy: Proxy) -> None:
    with proxy.latency(150, jitter=10, stream="upstream") as toxic:
        assert toxic.name in {t["name"] for t in proxy.toxics()}
        assert round_trip(proxy.host, proxy.port) >= 0.14
    assert round_trip(proxy.host, proxy.port) < 0.14


def test_toxicity_zero_never_applies(proxy: Proxy) -> None:
    with proxy.latency(500, toxicity=0.0):
        assert round_trip(proxy.host, proxy.port) < 0.5


async def test_async_context_manager(proxy: Proxy) -> None:
    import redis.asyncio as aioredis

    client = aioredis.from_url(proxy.url, socket_timeout=5)
    try:
        await client.ping()
        async with proxy.latency(200):
            started = time.monotonic()
            await client.ping()
            assert time.monotonic() - started >= 0.2
        started = time.monotonic()
        await client.ping()
        assert time.monotonic() - started < 0.2
    finally:
        await client.aclose()


def test_black_hole_stalls_until_removed(proxy: Proxy) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        with proxy.black_hole():
            sock.settimeout(0.5)
            sock.sendall(resp("PING"))
            with pytest.raises(TimeoutError):
                read_reply(sock)
    assert round_trip(proxy.host, proxy.port) < 0.2


def test_timeout_closes_after_delay(proxy: Proxy) -> None:
    with proxy.timeout(300):
        started = time.monotonic()
        with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
            sock.sendall(resp("PING"))
            with pytest.raises((ConnectionError, OSError)):
                read_reply(sock)
        assert time.monotonic() - started >= 0.29
    assert round_trip(proxy.host, proxy.port) < 0.2


def test_reset_peer_resets_the_connection(proxy: Proxy) -> None:
    with proxy.reset_peer():
        with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
            sock.sendall(resp("PING"))
            with pytest.raises(ConnectionResetError):
                read_reply(sock)
                read_reply(sock)
    assert round_trip(proxy.host, proxy.port) < 0.2


def test_down_refuses_connections_and_comes_back(proxy: Proxy) -> None:
    with proxy.down():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((proxy.host, proxy.port), timeout=2)
    assert round_trip(proxy.host, proxy.port) < 0.2


async def test_down_async(proxy: Proxy) -> None:
    async with proxy.down():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((proxy.host, proxy.port), timeout=2)
    assert round_trip(proxy.host, proxy.port) < 0.2


def _set_value(proxy: Proxy, key: str, size: int) -> None:
    with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
        sock.sendall(resp("SET", key, b"x" * size))
        assert read_reply(sock).startswith(b"+OK")


def test_bandwidth_slows_a_large_reply(proxy: Proxy, namespace: str) -> None:
    key, size = f"{namespace}:big", 100_000
    _set_value(proxy, key, size)
    base = round_trip(proxy.host, proxy.port, value_size=size, key=key)
    with proxy.bandwidth(200):  # 200 KB/s: 100 KB take about 0.5 s
        slow = round_trip(proxy.host, proxy.port, value_size=size, key=key)
    assert slow >= 0.4 > base
    assert round_trip(proxy.host, proxy.port, value_size=size, key=key) < 0.4


def test_slicer_delays_between_slices(proxy: Proxy, namespace: str) -> None:
    key, size = f"{namespace}:mid", 500
    _set_value(proxy, key, size)
    with proxy.slicer(average_size=10, size_variation=0, delay_us=10_000):  # ~50 slices x 10 ms
        slow = round_trip(proxy.host, proxy.port, value_size=size, key=key)
    assert slow >= 0.3
    assert round_trip(proxy.host, proxy.port, value_size=size, key=key) < 0.2


def test_limit_data_closes_after_n_bytes(proxy: Proxy, namespace: str) -> None:
    key, size = f"{namespace}:lim", 1000
    _set_value(proxy, key, size)
    with proxy.limit_data(100):
        with pytest.raises(ConnectionError):
            round_trip(proxy.host, proxy.port, value_size=size, key=key)
    round_trip(proxy.host, proxy.port, value_size=size, key=key)


def test_slow_close_delays_the_close(proxy: Proxy) -> None:
    def time_to_eof() -> float:
        with socket.create_connection((proxy.host, proxy.port), timeout=5) as sock:
            sock.sendall(resp("QUIT"))
            started = time.monotonic()
            while sock.recv(4096):
                pass
            return time.monotonic() - started

    with proxy.slow_close(400):
        assert time_to_eof() >= 0.35
    assert time_to_eof() < 0.3


def test_plain_add_remove_reset_and_errors(proxy: Proxy, toxiproxy_client: Toxiproxy) -> None:
    name = proxy.add_toxic("latency", {"latency": 300}, stream="upstream", name="lat_up")
    assert name == "lat_up"
    assert [t["name"] for t in proxy.toxics()] == ["lat_up"]
    assert round_trip(proxy.host, proxy.port) >= 0.3
    proxy.disable()
    proxy.reset()
    assert proxy.toxics() == [] and proxy.enabled
    assert round_trip(proxy.host, proxy.port) < 0.2
    with pytest.raises(ToxiproxyError) as err:
        proxy.remove_toxic("nope")
    assert err.value.status == 404
    assert proxy.name in toxiproxy_client.proxies()
    assert toxiproxy_client.get_proxy(proxy.name).port == proxy.port
    assert toxiproxy_client.version()


def test_request_timeout_against_unreachable_server() -> None:
    server = Toxiproxy("http://127.0.0.1:9", timeout=1.0)
    with pytest.raises(ToxiproxyError):
        server.version()


def test_proxy_delete_closes_listener(
    toxiproxy_client: Toxiproxy, harness_redis: ServiceHandle
) -> None:
    proxy = toxiproxy_client.proxied(harness_redis)
    assert round_trip(proxy.host, proxy.port) < 1
    proxy.delete()
    proxy.delete()  # idempotent

    def refused() -> bool:
        try:
            socket.create_connection((proxy.host, proxy.port), timeout=1).close()
        except ConnectionRefusedError:
            return True
        return False

    assert wait_until(refused, 5)
