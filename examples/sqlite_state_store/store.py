"""A PURISTA state store in one SQLite file: every store hook, nothing else.

One table ``kv(ns, name, value, version, expires_at_ms)``; ``ns`` is the prefix, so
several deployments (or conformance checks) share a file without seeing each other.

- Values are the JSON text the base class produced (``raw_json``), stored as is.
- A version is a fresh random id per write: a stale ``replace_if`` can never match a
  later write, even after a delete and a re-create of the same name.
- An expired row counts as absent everywhere; it is overwritten or deleted lazily.
- Each instance has its own connection, as separate processes would. Read-modify-write
  hooks run in one ``BEGIN IMMEDIATE`` transaction: SQLite's write lock makes them
  atomic across connections and processes (``set_if_absent`` under contention).
- sqlite3 blocks, so every call runs in a worker thread (``asyncio.to_thread``), one at
  a time per connection.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from reference_services.runtime.spi.capabilities import YES, StoreCapabilities
from reference_services.runtime.spi.store_base import StoreBase, Versioned, dump_value, load_value

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (
    ns TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    version TEXT NOT NULL,
    expires_at_ms INTEGER,
    PRIMARY KEY (ns, name)
)
"""
# the live row of a name (absent when expired)
LIVE = (
    "SELECT value, version FROM kv WHERE ns = ? AND name = ? "
    "AND (expires_at_ms IS NULL OR expires_at_ms > ?)"
)
UPSERT = (
    "INSERT INTO kv (ns, name, value, version, expires_at_ms) VALUES (?, ?, ?, ?, ?) "
    "ON CONFLICT (ns, name) DO UPDATE SET value = excluded.value, "
    "version = excluded.version, expires_at_ms = excluded.expires_at_ms"
)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _expiry(ttl_s: float | None) -> int | None:
    return _now_ms() + int(ttl_s * 1000) if ttl_s else None


class SqliteStateStore(StoreBase):
    """State store in an SQLite file (all operations enabled by default)."""

    kind = "state_store"
    name = "sqlite"
    capabilities = StoreCapabilities(
        durable=YES,  # a file; the suite's restart check needs a broker, so it skips
        compare_and_set=YES,
        atomic_effects=YES,
    )

    def __init__(
        self,
        path: str | Path,
        *,
        prefix: str = "purista",
        initial: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.path = Path(path)
        self.prefix = prefix
        self._initial = {key: dump_value(key, value) for key, value in (initial or {}).items()}
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()

    # ---- connection ----------------------------------------------------------------

    async def start(self) -> None:
        if self._db is None:
            self._db = await asyncio.to_thread(self._open)
            for key, raw in self._initial.items():  # PURISTA's initial config values
                await self._run(lambda db, k=key, r=raw: self._put(db, k, r, None), write=True)
        await super().start()

    def _open(self) -> sqlite3.Connection:
        # autocommit (isolation_level=None): transactions are the explicit BEGINs below
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")  # readers do not wait for a writer
        db.execute("PRAGMA synchronous=NORMAL")  # WAL: a crash of the process loses nothing
        db.execute(SCHEMA)
        return db

    async def destroy(self) -> None:
        await super().destroy()
        db, self._db = self._db, None
        if db is not None:
            await asyncio.to_thread(db.close)

    async def is_ready(self) -> bool:
        return self.started and await self._answers()

    async def is_healthy(self) -> bool:
        return self.started and await self._answers()

    async def _answers(self) -> bool:
        try:
            await self._run(lambda db: db.execute("SELECT 1").fetchone())
        except (sqlite3.Error, RuntimeError):
            return False
        return True

    async def _run(self, work: Callable[[sqlite3.Connection], T], *, write: bool = False) -> T:
        """``work(db)`` in a worker thread; inside ``BEGIN IMMEDIATE`` when ``write``."""

        def call() -> T:
            with self._lock:
                db = self._db
                if db is None:
                    raise RuntimeError(f"{self.kind} {self.name!r} is not started")
                if not write:
                    return work(db)
                db.execute("BEGIN IMMEDIATE")
                try:
                    result = work(db)
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
                return result

        return await asyncio.to_thread(call)

    def _live(self, db: sqlite3.Connection, name: str) -> tuple[str, str] | None:
        return db.execute(LIVE, (self.prefix, name, _now_ms())).fetchone()

    def _put(self, db: sqlite3.Connection, name: str, raw: str, expires: int | None) -> str:
        version = uuid.uuid4().hex
        db.execute(UPSERT, (self.prefix, name, raw, version, expires))
        return version

    # ---- the hooks StoreBase calls -------------------------------------------------

    async def _get(self, names: list[str]) -> dict[str, Any]:
        def read(db: sqlite3.Connection) -> dict[str, Any]:
            out = {}
            for name in names:
                row = self._live(db, name)
                out[name] = load_value(row[0]) if row else None
            return out

        return await self._run(read)

    async def _set(self, name: str, raw_json: str) -> None:
        await self._run(lambda db: self._put(db, name, raw_json, None), write=True)

    async def _remove(self, name: str) -> None:
        await self._run(
            lambda db: db.execute("DELETE FROM kv WHERE ns = ? AND name = ?", (self.prefix, name)),
            write=True,
        )

    async def _set_if_absent(self, name: str, raw_json: str, ttl_s: float | None) -> bool:
        return await self._create_versioned(name, raw_json, ttl_s) is not None

    async def _get_versioned(self, name: str) -> Versioned | None:
        row = await self._run(lambda db: self._live(db, name))
        return Versioned(load_value(row[0]), row[1]) if row else None

    async def _create_versioned(self, name: str, raw_json: str, ttl_s: float | None) -> str | None:
        def create(db: sqlite3.Connection) -> str | None:
            if self._live(db, name) is not None:
                return None
            return self._put(db, name, raw_json, _expiry(ttl_s))  # over an expired row too

        return await self._run(create, write=True)

    async def _replace_if(
        self, name: str, version: str, raw_json: str, ttl_s: float | None, also: dict[str, str]
    ) -> str | None:
        def replace(db: sqlite3.Connection) -> str | None:
            row = self._live(db, name)
            if row is None or row[1] != version:
                return None
            for key, raw in also.items():  # the same transaction: all or nothing
                self._put(db, key, raw, None)
            return self._put(db, name, raw_json, _expiry(ttl_s))

        return await self._run(replace, write=True)

    async def _remove_if(self, name: str, version: str) -> bool:
        def remove(db: sqlite3.Connection) -> bool:
            row = self._live(db, name)
            if row is None or row[1] != version:
                return False
            db.execute("DELETE FROM kv WHERE ns = ? AND name = ?", (self.prefix, name))
            return True

        return await self._run(remove, write=True)
