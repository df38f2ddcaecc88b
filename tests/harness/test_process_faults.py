"""Generic process faults on any subprocess: SIGSTOP/SIGCONT, SIGTERM, SIGKILL by group."""

from __future__ import annotations

import signal
import subprocess
import sys

from harness_helpers import wait_until

from harness import procs
from harness.faults.process import frozen, sigkill, terminate, wait_exit

CHILD = "import subprocess, sys, time; subprocess.Popen(['sleep', '60']); time.sleep(60)"


def _spawn() -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", CHILD], start_new_session=True)


def test_frozen_stops_and_continues_the_whole_group() -> None:
    proc = _spawn()
    try:
        assert wait_until(lambda: len(procs.pids_in_group(proc.pid)) == 2, 10)
        group = procs.pids_in_group(proc.pid)
        with frozen(proc):
            assert wait_until(lambda: all(procs.process_state(p) == "T" for p in group), 5)
        assert wait_until(lambda: all(procs.process_state(p) != "T" for p in group), 5)
    finally:
        sigkill(proc)
        proc.wait(10)


def test_sigkill_takes_down_the_group() -> None:
    proc = _spawn()
    assert wait_until(lambda: len(procs.pids_in_group(proc.pid)) == 2, 10)
    group = procs.pids_in_group(proc.pid)
    sigkill(proc)
    assert wait_exit(proc, 10) == -signal.SIGKILL
    assert wait_until(lambda: not any(procs.is_alive(p) for p in group), 5)


def test_terminate_uses_sigterm_first() -> None:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    assert terminate(proc, grace=5) == -signal.SIGTERM


def test_terminate_by_pid() -> None:
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    assert terminate(proc.pid, grace=5) == 0  # a bare pid: gone, exit code unknown
    assert proc.wait(5) == -signal.SIGTERM
