"""An out-of-tree state store checked by the conformance suite: SQLite, no broker.

Run it from the repository root::

    conformance run --adapter examples.sqlite_state_store:DESCRIPTOR --suite contract

The descriptor's ``create`` gives every instance of one check the same database file
(``ctx.shared``, as the instances of one deployment share a database), in a temporary
directory removed when the check's context goes.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from reference_services.runtime.spi import AdapterDescriptor

from .store import SqliteStateStore

__all__ = ["DESCRIPTOR", "SqliteStateStore"]


def _create(ctx: Any) -> SqliteStateStore:
    scratch = ctx.shared.setdefault("sqlite_dir", tempfile.TemporaryDirectory(prefix="sqlite-"))
    return SqliteStateStore(Path(scratch.name) / "state.db", prefix=ctx.prefix, **ctx.options)


DESCRIPTOR = AdapterDescriptor(
    name="sqlite",
    kind="state_store",
    reference="examples.sqlite_state_store.store:SqliteStateStore",
    create=_create,  # no harness service: the file is the backend
)
