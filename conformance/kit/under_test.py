"""The adapter a check runs against: builds instances, records metrics, cleans up."""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import pytest

from conformance.adapters import AdapterContext, AdapterSpec, ServiceUnavailable
from conformance.kit.skips import no_lifecycle

log = logging.getLogger("conformance")

QUICK_FACTOR = 0.2


class AdapterUnderTest:
    """Instances of one adapter for one check, plus what the check records.

    ``await aut.new(**options)`` returns a started instance; every instance
    shares the check's prefix and shared dict, so several instances form one
    deployment. ``close()`` destroys whatever is still running.
    """

    def __init__(
        self,
        spec: AdapterSpec,
        ctx: AdapterContext,
        *,
        quick: bool = False,
        fresh: Callable[[str], Any] | None = None,
        release: Callable[[Any], None] | None = None,
        no_lifecycle: str = "",
    ) -> None:
        self.spec = spec
        self.no_lifecycle = no_lifecycle
        self._fresh = fresh
        self._release = release
        self.dedicated: dict[str, Any] = {}
        self.ctx = ctx
        self.quick = quick
        self.instances: list[Any] = []
        self.metrics: dict[str, Any] = {}
        self.observations: dict[str, Any] = {}
        self._destroyed: set[int] = set()

    @property
    def name(self) -> str:
        """The adapter's report name."""
        return self.spec.name

    @property
    def kind(self) -> str:
        """The adapter's kind."""
        return self.spec.kind

    @property
    def is_reference(self) -> bool:
        """Whether this is the in-memory reference model itself."""
        return self.spec.is_reference_model

    def supports(self, capability: str) -> bool:
        """Whether the adapter declares ``capability`` supported."""
        return self.spec.support(capability)[0]

    def n(self, full: int, minimum: int = 5) -> int:
        """A message count: ``full`` normally, scaled down with ``--quick``."""
        if not self.quick:
            return full
        return max(min(minimum, full), math.ceil(full * QUICK_FACTOR))

    def build(self, **options: Any) -> Any:
        """A new, unstarted instance (tracked for cleanup)."""
        ctx = self.ctx.for_instance(len(self.instances), options)
        obj = self.spec.factory(ctx)  # type: ignore[misc]
        got = getattr(obj, "kind", None)
        if got != self.spec.kind:
            raise AssertionError(f"factory returned kind {got!r}, expected {self.spec.kind!r}")
        self.instances.append(obj)
        return obj

    async def new(self, **options: Any) -> Any:
        """A new, started instance."""
        obj = self.build(**options)
        await asyncio.wait_for(obj.start(), 30)
        return obj

    async def destroy(self, obj: Any, timeout_s: float = 30) -> None:
        """Destroy one instance (once)."""
        if id(obj) in self._destroyed:
            return
        self._destroyed.add(id(obj))
        await asyncio.wait_for(obj.destroy(), timeout_s)

    async def inject_raw(self, bridge: Any, raw: bytes) -> bool:
        """Put raw bytes on the wire towards ``bridge``; False if the adapter has no hook."""
        if self.spec.inject_raw is None:
            return False
        result = self.spec.inject_raw(bridge, raw)
        if asyncio.iscoroutine(result):
            await result
        return True

    async def inject_each(self, bridge: Any, cases: Mapping[str, bytes]) -> list[str]:
        """Put each case's raw bytes on the wire towards ``bridge``; the names the transport
        took, in order (a refusal is recorded as metric ``refused_<name>``). Skips the check
        when the adapter has no raw-injection hook."""
        taken = []
        for name, raw in cases.items():
            try:
                if not await self.inject_raw(bridge, raw):
                    pytest.skip("the adapter offers no raw-injection hook (publish_raw)")
            except Exception as exc:  # refused by the transport: nothing to quarantine
                self.metric(f"refused_{name}", type(exc).__name__)
                continue
            taken.append(name)
        return taken

    def metric(self, key: str, value: Any) -> None:
        """Record a figure for the report."""
        self.metrics[key] = value

    def observe(self, key: str, value: Any) -> None:
        """Record an open behaviour (reported, not judged)."""
        self.observations[key] = value

    def isolate(self) -> dict[str, Any]:
        """Point instances built from now on at dedicated brokers (for checks that stop them).

        Returns the dict of service handles, filled as the factory asks for URLs.
        Skips the check when the provider cannot restart brokers (external URLs).
        """
        if self.no_lifecycle and self.spec.services:
            no_lifecycle(self.no_lifecycle)
        if self._fresh is None:
            raise ServiceUnavailable("no service provider for dedicated brokers")
        fresh = self._fresh

        def lookup(service: str) -> str:
            if service not in self.dedicated:
                self.dedicated[service] = fresh(service)
            return str(self.dedicated[service].url)

        self.ctx = replace(self.ctx, url_lookup=lookup)
        return self.dedicated

    async def close(self) -> None:
        """Destroy every instance still running; errors are logged, not raised."""
        for obj in reversed(self.instances):
            try:
                await self.destroy(obj, timeout_s=15)
            except Exception as exc:
                log.warning("destroying %s instance failed: %s", self.spec.label, exc)
        self.instances.clear()
        for handle in self.dedicated.values():
            if self._release is not None:
                try:
                    await asyncio.to_thread(self._release, handle)
                except Exception as exc:
                    log.warning("stopping a dedicated %s failed: %s", handle, exc)
        self.dedicated.clear()
