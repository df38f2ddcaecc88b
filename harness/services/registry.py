"""ServiceSet: the session's services, each started lazily once, plus dedicated instances."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor

from harness.services.base import Provider, ServiceHandle
from harness.services.select import select_provider
from harness.services.spec import get_spec


class ServiceSet:
    """Shared services (`get`) and dedicated ones (`fresh`), all stopped by `close()`."""

    def __init__(self, provider: Provider | None = None) -> None:
        self.provider = provider or select_provider()
        self.start_times: dict[str, float] = {}
        self._shared: dict[str, ServiceHandle] = {}
        self._errors: dict[str, BaseException] = {}
        self._fresh: list[ServiceHandle] = []
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def _lock_for(self, name: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault(name, threading.Lock())

    def get(self, name: str) -> ServiceHandle:
        """The shared instance of a service, started on first use (a failure is remembered)."""
        get_spec(name)
        with self._lock_for(name):
            if name in self._shared:
                return self._shared[name]
            if name in self._errors:
                raise self._errors[name]
            started = time.monotonic()
            try:
                handle = self.provider.start(name)
            except Exception as exc:
                self._errors[name] = exc
                raise
            self.start_times[name] = time.monotonic() - started
            self._shared[name] = handle
            return handle

    def fresh(self, name: str) -> ServiceHandle:
        """A dedicated new instance (for tests that kill or pause a broker)."""
        handle = self.provider.start(name)
        with self._guard:
            self._fresh.append(handle)
        return handle

    def release(self, handle: ServiceHandle) -> None:
        """Stop a dedicated instance now."""
        with self._guard:
            if handle in self._fresh:
                self._fresh.remove(handle)
        handle.stop()

    def start_many(self, names: Iterable[str]) -> dict[str, ServiceHandle]:
        """Start several shared services in parallel threads; raises the first error."""
        names = list(dict.fromkeys(names))
        with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
            futures = {n: pool.submit(self.get, n) for n in names}
        return {n: f.result() for n, f in futures.items()}

    @property
    def running(self) -> dict[str, ServiceHandle]:
        """The shared instances started so far."""
        return dict(self._shared)

    def env(self) -> dict[str, str]:
        """URL environment variables of every started shared service."""
        out: dict[str, str] = {}
        for handle in self._shared.values():
            out.update(handle.env())
        return out

    def close(self, keep: bool = False) -> None:
        """Stop everything (with keep, shared instances are left running and detached)."""
        with self._guard:
            fresh, self._fresh = self._fresh, []
        handles = list(fresh)
        if keep:
            from harness import run

            run.current().keep_for_down()
            for handle in self._shared.values():
                detach = getattr(handle, "detach", None)
                if detach:
                    detach()
        else:
            handles += list(self._shared.values())
            self._shared.clear()
        with ThreadPoolExecutor(max_workers=max(1, len(handles))) as pool:
            for handle in handles:
                pool.submit(_quiet_stop, handle)

    def __enter__(self) -> ServiceSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _quiet_stop(handle: ServiceHandle) -> None:
    with contextlib.suppress(Exception):
        handle.stop()


def start_many(names: Iterable[str], provider: Provider | None = None) -> dict[str, ServiceHandle]:
    """Start new instances of several services in parallel (the caller stops them)."""
    prov = provider or select_provider()
    names = list(names)
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        futures = {n: pool.submit(prov.start, n) for n in names}
    results: dict[str, ServiceHandle] = {}
    error: BaseException | None = None
    for n, f in futures.items():
        try:
            results[n] = f.result()
        except BaseException as exc:
            error = error or exc
    if error is not None:
        for handle in results.values():
            _quiet_stop(handle)
        raise error
    return results
