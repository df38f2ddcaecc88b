"""Two event bridges for comparing runs: one correct, one that ignores command TTLs."""

from __future__ import annotations

from typing import Any

from broken_adapters import _hub, ignores_ttl

from conformance.adapters import AdapterContext
from reference_services.adapters.memory.event_bridge import DefaultEventBridge

__all__ = ["correct", "ignores_ttl"]


def correct(ctx: AdapterContext) -> Any:
    return DefaultEventBridge(hub=_hub(ctx), **ctx.options)
