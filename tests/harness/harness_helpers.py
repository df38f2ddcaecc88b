"""Small helpers for the harness tests: waits with deadlines, a raw Redis client."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable

from harness import procs


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, step: float = 0.02) -> bool:
    """Poll predicate until true or the deadline; returns the last result."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(step)


def alive(pids: set[int]) -> set[int]:
    """The pids still alive (not zombies)."""
    return {p for p in pids if procs.is_alive(p)}


def resp(*args: str | bytes) -> bytes:
    """A RESP command."""
    parts = [a.encode() if isinstance(a, str) else a for a in args]
    out = b"*%d\r\n" % len(parts)
    for p in parts:
        out += b"$%d\r\n%s\r\n" % (len(p), p)
    return out


def read_reply(sock: socket.socket, size: int | None = None) -> bytes:
    """Read a reply: a status line, or a bulk string of known size."""
    buf = b""
    want = None if size is None else size + len(str(size)) + 5
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed by peer")
        buf += chunk
        if want is None and buf.endswith(b"\r\n"):
            return buf
        if want is not None and len(buf) >= want:
            return buf


def round_trip(host: str, port: int, timeout: float = 5.0, value_size: int | None = None,
               key: str = "k") -> float:
    """Seconds for one connect + PING (or GET of a value of value_size bytes) + reply."""
    started = time.monotonic()
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.settimeout(timeout)
        if value_size is None:
            sock.sendall(resp("PING"))
            assert read_reply(sock).startswith(b"+PONG")
        else:
            sock.sendall(resp("GET", key))
            read_reply(sock, value_size)
    return time.monotonic() - started
