"""Process faults: crash and restart brokers, pause them, and signal any subprocess."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator

from harness import procs
from harness.services.base import ServiceHandle

Target = subprocess.Popen[bytes] | subprocess.Popen[str] | int


def crash_and_restart(handle: ServiceHandle) -> float:
    """SIGKILL a broker and start it again (same port, same data); returns seconds taken."""
    started = time.monotonic()
    handle.restart(kill=True)
    return time.monotonic() - started


def graceful_restart(handle: ServiceHandle) -> float:
    """Stop a broker cleanly and start it again; returns seconds taken."""
    started = time.monotonic()
    handle.restart(kill=False)
    return time.monotonic() - started


@contextlib.contextmanager
def paused(handle: ServiceHandle) -> Iterator[ServiceHandle]:
    """Freeze a broker inside the block (SIGSTOP/SIGCONT, or docker pause/unpause)."""
    handle.pause()
    try:
        yield handle
    finally:
        handle.resume()


def _pid(target: Target) -> int:
    return target if isinstance(target, int) else target.pid


def signal_group(target: Target, sig: int) -> None:
    """Send sig to the process group of target (a Popen or a pid); falls back to the pid."""
    pid = _pid(target)
    try:
        pgid = os.getpgid(pid)
    except ProcessLookupError:
        return
    with contextlib.suppress(ProcessLookupError):
        if pgid == os.getpgid(0):
            os.kill(pid, sig)  # never signal our own group
        else:
            os.killpg(pgid, sig)


def sigkill(target: Target) -> None:
    """Crash a process (and its group) with SIGKILL."""
    signal_group(target, signal.SIGKILL)


def sigterm(target: Target) -> None:
    """Ask a process (and its group) to shut down with SIGTERM."""
    signal_group(target, signal.SIGTERM)


def sigstop(target: Target) -> None:
    """Freeze a process (and its group)."""
    signal_group(target, signal.SIGSTOP)


def sigcont(target: Target) -> None:
    """Thaw a process (and its group)."""
    signal_group(target, signal.SIGCONT)


@contextlib.contextmanager
def frozen(target: Target) -> Iterator[None]:
    """SIGSTOP a process group inside the block, SIGCONT after."""
    sigstop(target)
    try:
        yield
    finally:
        sigcont(target)


def wait_exit(target: Target, timeout: float) -> int | None:
    """Wait until the process ends; its return code (Popen) or 0 (pid), None on timeout."""
    deadline = time.monotonic() + timeout
    if not isinstance(target, int):
        try:
            return target.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
    while time.monotonic() < deadline:
        if not procs.is_alive(target):
            return 0
        time.sleep(0.02)
    return None


def terminate(target: Target, grace: float = 10.0) -> int | None:
    """SIGTERM, wait up to grace seconds, then SIGKILL; returns the exit code if known."""
    sigterm(target)
    code = wait_exit(target, grace)
    if code is None:
        sigkill(target)
        code = wait_exit(target, 5.0)
    return code
