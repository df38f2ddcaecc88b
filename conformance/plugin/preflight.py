"""Preflight: every backing service the selection needs is provided and probed once.

A refused or silent broker then ends the run in seconds with one line per service
(``nats: connection refused at 127.0.0.1:1``) instead of every check timing out.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from conformance.adapters import process_backend_services
from harness.errors import ServiceUnavailable
from harness.services.spec import SPECS
from reference_services.runtime.redact import redact_text

CONNECT_TIMEOUT_S = 3.0
PROBE_TIMEOUT_S = 5.0
# the harness' services are also pytest fixtures (harness_redis; redis is deprecated)
SERVICE_FIXTURES = {**{n: n for n in SPECS}, **{f"harness_{n}": n for n in SPECS}}
# the faults suite proxies every broker through Toxiproxy; its service processes share
# the process backend (queue and idempotency state)
FAULTS_EXTRA = ("toxiproxy", *process_backend_services())


def services_of(
    spec_services: Iterable[str], fixturenames: Iterable[str], faults: bool
) -> set[str]:
    """The services one check needs: its adapter's, the service fixtures it uses, faults' own."""
    out = set(spec_services) | {SERVICE_FIXTURES[f] for f in fixturenames if f in SERVICE_FIXTURES}
    if faults and out:
        out.update(FAULTS_EXTRA)
    return out


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return redact_text(text[0] if text else type(exc).__name__)


def _connect_problem(host: str, port: int) -> str | None:
    where = f"{host}:{port}"
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT_S):
            return None
    except ConnectionRefusedError:
        return f"connection refused at {where}"
    except TimeoutError:
        return f"no answer within {CONNECT_TIMEOUT_S:g}s at {where}"
    except OSError as exc:
        return f"{exc.strerror or type(exc).__name__} at {where}"


def check_service(name: str, get: Callable[[str], Any]) -> str | None:
    """None when ``name`` can be provided and answers a real round trip, else one line."""
    try:
        handle = get(name)
    except Exception as exc:
        reason = exc.reason if isinstance(exc, ServiceUnavailable) else _first_line(exc)
        return f"{name}: cannot be provided: {redact_text(reason)}"
    problem = _connect_problem(handle.host, handle.port)
    if problem:
        return f"{name}: {problem}"
    from harness.probes import PROBES, probe

    if name not in PROBES:
        return None
    try:
        probe(name, str(handle.url), PROBE_TIMEOUT_S)
    except Exception as exc:
        return (
            f"{name}: round trip failed at {handle.host}:{handle.port}: "
            f"{type(exc).__name__}: {_first_line(exc)}"
        )
    return None


def run(
    names: Iterable[str],
    get: Callable[[str], Any],
    on_done: Callable[[str, str | None, float], None] | None = None,
) -> tuple[dict[str, str], float]:
    """Check every service in parallel: ``({service: line} for the failures, seconds)``.

    ``on_done(name, problem or None, seconds)`` is called (from a worker thread) as each
    service is ready or failed, so the terminal can say so while the others still start.
    """
    names = sorted(set(names))
    started = time.monotonic()
    if not names:
        return {}, 0.0

    def one(name: str) -> str | None:
        line = check_service(name, get)
        if on_done is not None:
            on_done(name, line, time.monotonic() - started)
        return line

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        lines = dict(zip(names, pool.map(one, names), strict=True))
    return {n: line for n, line in lines.items() if line}, time.monotonic() - started
