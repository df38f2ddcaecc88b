"""An out-of-tree queue bridge checked by the conformance suite: SQLite, no broker.

Run it from the repository root::

    conformance run --adapter examples.sqlite_queue_bridge:DESCRIPTOR --suite contract

The descriptor's ``create`` gives every instance of one check (the workers of one
deployment) the same database file through ``ctx.shared``, in a temporary directory
removed when the check's context goes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from reference_services.runtime.spi import AdapterDescriptor

from .bridge import SqliteQueueBridge

__all__ = ["DESCRIPTOR", "SqliteQueueBridge"]


def _create(ctx: Any) -> SqliteQueueBridge:
    scratch = ctx.shared.setdefault("sqlite_dir", tempfile.TemporaryDirectory(prefix="sqlite-"))
    return SqliteQueueBridge(Path(scratch.name) / "queue.db", prefix=ctx.prefix, **ctx.options)


DESCRIPTOR = AdapterDescriptor(
    name="sqlite",
    kind="queue_bridge",
    reference="examples.sqlite_queue_bridge.bridge:SqliteQueueBridge",
    create=_create,  # no harness service: the file is the backend
)
