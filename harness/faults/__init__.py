"""Fault injection: network faults through Toxiproxy, process faults by signals."""

from harness.faults.network import DownContext, Proxy, ToxicContext, Toxiproxy, ToxiproxyError
from harness.faults.process import (
    crash_and_restart,
    frozen,
    graceful_restart,
    paused,
    sigcont,
    sigkill,
    signal_group,
    sigstop,
    sigterm,
    terminate,
    wait_exit,
)

__all__ = [
    "DownContext",
    "Proxy",
    "ToxicContext",
    "Toxiproxy",
    "ToxiproxyError",
    "crash_and_restart",
    "frozen",
    "graceful_restart",
    "paused",
    "sigcont",
    "sigkill",
    "signal_group",
    "sigstop",
    "sigterm",
    "terminate",
    "wait_exit",
]
