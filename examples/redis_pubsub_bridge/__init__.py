"""An out-of-tree event bridge checked by the conformance suite.

Run it through the suite from the repository root::

    conformance run --adapter examples.redis_pubsub_bridge:factory --quick
"""

from __future__ import annotations

from typing import Any

from conformance import AdapterContext

from .bridge import RedisPubSubBridge

__all__ = ["RedisPubSubBridge", "factory"]


def factory(ctx: AdapterContext) -> Any:
    """Build an unstarted bridge for one instance of a check.

    ``ctx.url("redis")`` starts (or finds) a Redis; ``ctx.prefix`` keeps every
    channel of this check apart; ``ctx.options`` carries what the check asks for
    (e.g. ``drain_timeout_s`` or ``instance_id``): pass them on.
    """
    return RedisPubSubBridge(url=ctx.url("redis"), prefix=ctx.prefix, **ctx.options)
