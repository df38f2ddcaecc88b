"""Every socket a local service listens on is bound to loopback (traffic stays on 127.0.0.0/8
and nothing a test starts is reachable from another machine)."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import pytest

from harness.services import SERVICE_NAMES, ServiceSet

_LISTEN = "0A"


def _address(hex_addr: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    raw = bytes.fromhex(hex_addr)
    if len(raw) == 4:
        return ipaddress.IPv4Address(raw[::-1])
    # /proc/net/tcp6 prints four host-order 32-bit words
    return ipaddress.IPv6Address(b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4)))


def _listening(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of each TCP socket in LISTEN state the processes hold."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    out = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != _LISTEN or fields[9] not in inodes:
                continue
            addr, port = fields[1].rsplit(":", 1)
            out.append((inodes[fields[9]], str(_address(addr)), int(port, 16)))
    return out


@pytest.mark.parametrize("name", SERVICE_NAMES)
def test_local_services_listen_on_loopback_only(harness_services: ServiceSet, name: str) -> None:
    if harness_services.provider.name != "local":
        pytest.skip("local provider only (containers publish their ports on 127.0.0.1)")
    handle = harness_services.get(name)  # the session's own (started once, shared)
    pids = handle.process_ids()
    assert pids, f"{name}: no process to inspect"
    sockets = _listening(pids)
    assert sockets, f"{name}: no listening socket found for {sorted(pids)}"
    exposed = [s for s in sockets if not ipaddress.ip_address(s[1]).is_loopback]
    assert not exposed, f"{name} listens beyond loopback (pid, address, port): {exposed}"
