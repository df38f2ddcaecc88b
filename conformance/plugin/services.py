"""Brokers for built-in adapters when the harness pytest plugin is not loaded."""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any

from conformance.adapters import ServiceUnavailable


class Services:
    """Brokers for built-in adapters when the harness pytest plugin is not loaded.

    Uses ``harness.services.ServiceSet`` (shared instances, started once) and
    starts the services the selected adapters need in the background at session
    start, so slow brokers boot while in-memory checks run.
    """

    def __init__(self, provider: str | None) -> None:
        self.provider_name = provider
        self._set: Any = None
        self._error = ""
        self._lock = threading.Lock()

    def _service_set(self) -> Any:
        with self._lock:
            if self._set is None and not self._error:
                try:
                    from harness.services import ServiceSet, select_provider

                    self._set = ServiceSet(select_provider(self.provider_name))
                except Exception as exc:
                    self._error = f"no service provider: {type(exc).__name__}: {exc}"
            return self._set

    @property
    def provider(self) -> str:
        """The provider's name (or ``none``)."""
        ss = self._set
        return str(getattr(ss.provider, "name", "unknown")) if ss is not None else "none"

    def provider_object(self) -> Any:
        """The harness provider (None when there is none)."""
        ss = self._service_set()
        return ss.provider if ss is not None else None

    def get(self, name: str) -> Any:
        """The shared handle of ``name`` (raises :class:`ServiceUnavailable`)."""
        ss = self._service_set()
        if ss is None:
            raise ServiceUnavailable(self._error)
        return ss.get(name)

    def prestart(self, names: set[str]) -> None:
        """Start ``names`` in background threads (errors surface on ``url``)."""
        if not names or self._service_set() is None:
            return
        for name in sorted(names):
            threading.Thread(target=self._try, args=(name,), daemon=True).start()

    def _try(self, name: str) -> None:
        with contextlib.suppress(Exception):
            self._set.get(name)

    def url(self, name: str) -> str:
        """The URL of the shared instance of ``name``."""
        env = os.environ.get(f"{name.upper()}_URL")
        ss = self._service_set()
        if ss is None:
            if env:
                return env
            raise ServiceUnavailable(self._error)
        try:
            return str(ss.get(name).url)
        except Exception as exc:
            raise ServiceUnavailable(f"{type(exc).__name__}: {exc}") from exc

    def fresh(self, name: str) -> Any:
        """A dedicated new instance of ``name``."""
        ss = self._service_set()
        if ss is None:
            raise ServiceUnavailable(self._error)
        return ss.fresh(name)

    def release(self, handle: Any) -> None:
        """Stop a dedicated instance."""
        if self._set is not None:
            self._set.release(handle)

    def close(self) -> None:
        """Stop what was started."""
        if self._set is not None:
            with contextlib.suppress(Exception):
                self._set.close()
