"""``python -m harness.reaper RUN_ID PID TEMP_DIR``: reap a run when its runner dies.

Started by :meth:`harness.run.Run.start_reaper` in its own session, without the run's
environment marker. It reads commands from stdin, a pipe only the runner holds:
``exit`` (the runner cleaned up itself, or keeps its services), ``hooks [json]``
(the reap hooks to call), ``reap``. End of file without ``exit`` means the runner
died (SIGKILL, a crash): kill every process of the run, call the hooks, remove the
temp dir. A poll of the runner's pid covers a pipe end leaked into a forked child.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sys
from pathlib import Path

from harness import procs
from harness.run import _pid_start, reap

POLL_S = 1.0


def main(argv: list[str]) -> int:
    """Wait for the runner's end; reap unless told not to."""
    run_id, pid, temp_dir = argv[0], int(argv[1]), Path(argv[2])
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # the runner's group gets these; we outlast it
    start = _pid_start(pid)
    hooks: list[str] = []
    buf = b""
    fd = sys.stdin.fileno()
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_S)
        if not ready:
            if procs.is_alive(pid) and _pid_start(pid) == start:
                continue
            break  # runner gone (its pipe end leaked somewhere)
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            cmd, _, arg = line.decode(errors="replace").partition(" ")
            if cmd == "exit":
                return 0
            if cmd == "hooks":
                hooks = json.loads(arg)
            if cmd == "reap":
                reap(run_id, temp_dir, hooks)
                return 0
    reap(run_id, temp_dir, hooks)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
