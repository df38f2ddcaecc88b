"""Graceful shutdown with a real process and a real SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
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
