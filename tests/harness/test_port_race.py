"""A first start survives a port that another process takes between free_port() and the
broker's bind: the broker says so, the harness starts it again on freshly picked ports and
logs that; any other start failure still fails at once. The race is made to happen every
time: the picker hands out a port that a socket here has already bound."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from harness_helpers import round_trip

from harness.errors import ServiceStartError
from harness.services import local as local_mod
from harness.services import local_recipes, ready_probes
from harness.services.local import LocalHandle, LocalProvider

RETRY_NOTE = "retrying on freshly picked ports"


class TakenPicks:
    """free_port() whose picks number ``nth`` (1-based; all when None) are taken: bound
    here first (listening when ``listen``), so the broker cannot bind them."""

    def __init__(self, nth: set[int] | None, listen: bool) -> None:
        self.nth, self.listen = nth, listen
        self.picks: list[int] = []
        self.sockets: list[socket.socket] = []
        self._original = local_mod.free_port

    def __call__(self) -> int:
        port = self._original()
        self.picks.append(port)
        if self.nth is None or len(self.picks) in self.nth:
            sock = socket.socket()  # no SO_REUSEADDR: the broker's bind fails
            sock.bind(("127.0.0.1", port))
            if self.listen:
                sock.listen()
            self.sockets.append(sock)
        return port

    @property
    def taken(self) -> set[int]:
        return {s.getsockname()[1] for s in self.sockets}

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


@pytest.fixture
def take_picks(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., TakenPicks]]:
    made: list[TakenPicks] = []

    def make(nth: set[int] | None, listen: bool = False) -> TakenPicks:
        picks = TakenPicks(nth, listen)
        monkeypatch.setattr(local_mod, "free_port", picks)
        made.append(picks)
        return picks

    yield make
    for picks in made:
        picks.close()


def _local_or_skip(name: str) -> None:
    reason = LocalProvider().unavailable_reason(name)
    if reason:
        pytest.skip(f"local {name}: {reason}")


def _nats_pong(port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=5.0) as sock:
        sock.settimeout(5.0)
        reply = b""
        sock.sendall(b"CONNECT {\"verbose\":false}\r\nPING\r\n")
        while b"PONG" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                return False
            reply += chunk
        return reply.startswith(b"INFO ")


ANSWERS: dict[str, Callable[[LocalHandle], bool]] = {
    "rabbitmq": lambda h: ready_probes.amqp_open(h.host, h.port),
    "nats": lambda h: _nats_pong(h.port),
    "redis": lambda h: round_trip(h.host, h.port) > 0,
    "mosquitto": lambda h: ready_probes.mqtt_connack(h.host, h.port),
    "toxiproxy": lambda h: ready_probes.http_ok(f"http://{h.host}:{h.port}/version"),
}


def _assert_retried(handle: LocalHandle, picks: TakenPicks, caplog: pytest.LogCaptureFixture,
                    marker: str) -> None:
    assert picks.taken and not picks.taken & set(handle.ports.values()), (picks.taken,
                                                                           handle.ports)
    assert handle.is_running() and ANSWERS[handle.name](handle)
    notes = [r.getMessage() for r in caplog.records if RETRY_NOTE in r.getMessage()]
    assert len(notes) == 1, notes
    assert f"{handle.name}: start attempt 1 of 3 failed" in notes[0]
    assert all(str(port) in notes[0] for port in picks.taken), notes[0]
    assert handle.log_path is not None
    assert RETRY_NOTE in handle.log_path.read_text()
    failed = handle.log_path.with_suffix(".attempt1.log")
    assert marker in failed.read_text(errors="replace").lower()


@pytest.mark.parametrize(("nth", "listen", "marker"), [
    ({1}, False, "eaddrinuse"),
    ({2}, True, "dist_port_already_used"),  # its distribution port: a 120 s timeout before
], ids=["amqp-port-bound", "dist-port-listening"])
def test_rabbitmq_starts_again_on_fresh_ports_when_one_is_taken(
        take_picks: Callable[..., TakenPicks], caplog: pytest.LogCaptureFixture,
        nth: set[int], listen: bool, marker: str) -> None:
    _local_or_skip("rabbitmq")
    caplog.set_level(logging.WARNING, logger="harness.services")
    picks = take_picks(nth, listen)  # picks: 1 amqp, 2 distribution, 3 epmd
    handle = LocalProvider().start("rabbitmq")
    try:
        _assert_retried(handle, picks, caplog, marker)
    finally:
        handle.stop()


@pytest.mark.parametrize(("name", "nth", "listen"), [
    ("redis", {1}, False),
    ("nats", {1}, False),
    ("nats", {2}, True),  # the monitor port
    ("mosquitto", {1}, False),
    ("toxiproxy", {1}, False),  # keeps running without its API: not a 45 s timeout
])
def test_a_broker_starts_again_on_fresh_ports_when_one_is_taken(
        take_picks: Callable[..., TakenPicks], caplog: pytest.LogCaptureFixture,
        name: str, nth: set[int], listen: bool) -> None:
    _local_or_skip(name)
    caplog.set_level(logging.WARNING, logger="harness.services")
    picks = take_picks(nth, listen)
    handle = LocalProvider().start(name)
    try:
        _assert_retried(handle, picks, caplog, "address already in use")
    finally:
        handle.stop()


def test_ports_taken_on_every_attempt_fail_after_three(
        take_picks: Callable[..., TakenPicks], caplog: pytest.LogCaptureFixture) -> None:
    _local_or_skip("redis")
    caplog.set_level(logging.WARNING, logger="harness.services")
    picks = take_picks(None)
    with pytest.raises(ServiceStartError) as err:
        LocalProvider().start("redis")
    assert len(picks.picks) == 3
    assert "ports taken on each of 3 attempts" in str(err.value)
    assert "Address already in use" in str(err.value)  # the last attempt's log tail
    assert err.value.log_path and Path(err.value.log_path).is_file()
    assert len([r for r in caplog.records if RETRY_NOTE in r.getMessage()]) == 2


def test_a_start_failing_otherwise_is_not_retried(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    _local_or_skip("redis")
    caplog.set_level(logging.WARNING, logger="harness.services")
    calls = []

    def bad_config(d: Path, port: int, free_port: Callable[[], int]) -> local_recipes.Recipe:
        calls.append(port)
        recipe = local_recipes.redis(d, port, free_port)
        recipe.command.append("--no-such-directive")
        return recipe

    monkeypatch.setitem(local_mod.RECIPES, "redis", bad_config)
    with pytest.raises(ServiceStartError) as err:
        LocalProvider().start("redis")
    assert len(calls) == 1
    assert "ProcessExitedWithError" in str(err.value) and "no-such-directive" in str(err.value)
    assert not [r for r in caplog.records if RETRY_NOTE in r.getMessage()]
    # the log the error names is where it says
    assert err.value.log_path and "no-such-directive" in Path(err.value.log_path).read_text()


def test_xdist_workers_pick_from_disjoint_ports(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(local_mod, "_ports_given", set())
    shares = []
    for worker in ("gw0", "gw1", "gw2"):
        monkeypatch.setenv("PYTEST_XDIST_WORKER", worker)
        monkeypatch.setenv("PYTEST_XDIST_WORKER_COUNT", "3")
        local_mod._pickable_ports.cache_clear()
        shares.append(set(local_mod._pickable_ports()))
        assert {local_mod.free_port() % 3 for _ in range(20)} == {int(worker[2:])}
    local_mod._pickable_ports.cache_clear()
    assert not shares[0] & shares[1] and not shares[1] & shares[2] and len(shares[0]) > 1000
