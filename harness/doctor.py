"""`harness doctor`: which provider, and can each service start and do a round trip."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from harness.errors import ServiceUnavailable
from harness.probes import probe
from harness.services.base import Provider
from harness.services.spec import SERVICE_NAMES


def check_service(provider: Provider, name: str, timeout: float = 10.0) -> dict[str, Any]:
    """Start one service, probe it with a real client, stop it."""
    result: dict[str, Any] = {"ok": False, "version": "", "start_s": 0.0, "error": None}
    started = time.monotonic()
    try:
        handle = provider.start(name)
    except Exception as exc:
        result["start_s"] = round(time.monotonic() - started, 3)
        result["error"] = str(exc) if isinstance(exc, ServiceUnavailable) else repr(exc)
        return result
    result["start_s"] = round(time.monotonic() - started, 3)
    result["version"] = handle.version
    result["url"] = handle.url
    try:
        reported = probe(name, handle.url, timeout)
        if result["version"] in ("", "unknown"):
            result["version"] = reported
        result["ok"] = True
    except Exception as exc:
        result["error"] = f"round trip failed: {exc!r}"
    finally:
        try:
            handle.stop()
        except Exception as exc:
            result["ok"] = False
            result["error"] = f"stop failed: {exc!r}"
    return result


def run_doctor(provider: Provider, names: tuple[str, ...] = SERVICE_NAMES,
               parallel: bool = True) -> dict[str, Any]:
    """The doctor report: {"provider", "reason", "total_s", "services": {name: result}}."""
    started = time.monotonic()
    if parallel:
        with ThreadPoolExecutor(max_workers=len(names)) as pool:
            futures = {n: pool.submit(check_service, provider, n) for n in names}
        services = {n: f.result() for n, f in futures.items()}
    else:
        services = {n: check_service(provider, n) for n in names}
    return {
        "provider": provider.name,
        "reason": provider.reason,
        "lifecycle_faults": provider.supports_lifecycle_faults,
        "total_s": round(time.monotonic() - started, 3),
        "services": services,
    }
