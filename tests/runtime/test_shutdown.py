"""Graceful shutdown with a real process and a real SIGTERM."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from reference_services.runtime.shutdown import destroy_in_order


def test_sigterm_while_handling_work_finishes_in_flight_and_exits_0(tmp_path: Path) -> None:
    log = tmp_path / "work.log"
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("sigterm_service.py")), str(log)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "READY"
        deadline = time.monotonic() + 10
        while log.read_text().count("started") < 5:
            assert time.monotonic() < deadline, "no work started"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    lines = log.read_text().split()
    started = {lines[i + 1] for i in range(0, len(lines), 2) if lines[i] == "started"}
    finished = {lines[i + 1] for i in range(0, len(lines), 2) if lines[i] == "finished"}
    assert code == 0
    assert len(started) >= 5
    assert started == finished, f"unfinished handlers: {sorted(started - finished)}"


class _Thing:
    def __init__(self, trail: list[str], name: str, delay: float = 0.0, fail: bool = False) -> None:
        self.trail, self.name, self.delay, self.fail = trail, name, delay, fail

    async def destroy(self) -> None:
        await asyncio.sleep(self.delay)
        if self.fail:
            raise RuntimeError(self.name)
        self.trail.append(self.name)


async def test_destroy_in_order_keeps_order_and_reports_errors_and_timeouts() -> None:
    trail: list[str] = []
    assert await destroy_in_order([_Thing(trail, "a"), _Thing(trail, "b")]) == 0
    assert trail == ["a", "b"]
    assert await destroy_in_order([_Thing(trail, "x", fail=True), _Thing(trail, "c")]) == 1
    assert trail[-1] == "c"
    assert await destroy_in_order([_Thing(trail, "slow", delay=5)], timeout_s=0.05) == 1


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGQUIT])
async def test_graceful_shutdown_reacts_to_each_signal(sig: signal.Signals) -> None:
    import os

    from reference_services.runtime.shutdown import graceful_shutdown

    trail: list[str] = []
    task = asyncio.create_task(graceful_shutdown([_Thing(trail, "svc")], timeout_s=2))
    await asyncio.sleep(0)
    os.kill(os.getpid(), sig)
    assert await asyncio.wait_for(task, 5) == 0
    assert trail == ["svc"]


class _SilentBroker:
    """A TCP listener that accepts connections and never says a word: a hanging connect."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = self.sock.accept()
                self.accepted.append(conn)

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


@pytest.mark.parametrize("bridge", ["nats", "amqp"])
def test_sigterm_while_the_broker_connect_hangs_exits_non_zero_within_the_timeout(
    tmp_path: Path, bridge: str
) -> None:
    broker = _SilentBroker()
    url = f"nats://127.0.0.1:{broker.port}" if bridge == "nats" else (
        f"amqp://guest:guest@127.0.0.1:{broker.port}/"
    )
    env = {
        **os.environ,
        "EVENT_BRIDGE": bridge,
        f"{bridge.upper()}_URL": url,
        "QUEUE_BRIDGE": "memory",
        "STORE": "memory",
        "SHUTDOWN_TIMEOUT_S": "5",
    }
    err = tmp_path / "stderr.log"
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reference_services.deploy", "monolith", "--service", "user"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env=env,
        )
    try:
        deadline = time.monotonic() + 20
        while not broker.accepted:  # the service is inside its connect now
            assert proc.poll() is None, f"exited early ({proc.returncode}): {err.read_text()}"
            assert time.monotonic() < deadline, "the service never connected to the broker"
            time.sleep(0.02)
        time.sleep(0.2)  # let the connect settle into waiting for the broker's greeting
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=15)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
        broker.close()
    assert proc.stdout is not None
    out = proc.stdout.read()
    log = err.read_text()
    assert code == 1, f"exit {code} (a negative code is death by the signal, no drain)\n{log}"
    assert took < 5, f"took {took:.2f}s, over the 5 s shutdown timeout"
    assert "shutdown requested by SIGTERM while starting" in log, log
    assert "STOPPED code=1" in out and "SIGTERM" in out, out


async def test_one_deadline_for_all_steps_and_every_step_destroyed_after_a_timeout() -> None:
    from reference_services.runtime.shutdown import destroy_all

    trail: list[str] = []
    steps = [
        _Thing(trail, "service"),
        _Thing(trail, "bridge", delay=30),
        _Thing(trail, "queue"),
        _Thing(trail, "broken", fail=True),
        _Thing(trail, "store"),
    ]
    loop = asyncio.get_running_loop()
    started = loop.time()
    result = await destroy_all(steps, timeout_s=2.0, grace_s=0.2)
    took = loop.time() - started
    assert trail == ["service", "queue", "store"], "steps after the timeout were not destroyed"
    assert result.code == 1
    assert result.timed_out == ["_Thing(bridge)"] and result.failed == ["_Thing(broken)"]
    assert "timed out" in result.summary() and "failed" in result.summary()
    assert took < 2.0, f"the shared deadline was exceeded: {took:.2f}s"
    assert took > 1.0, "the slow step did not get the time left for it"
