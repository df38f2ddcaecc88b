"""Idempotency: a side effect happens once per key, even when a message arrives twice.

A worker claims a key by creating a *pending* record (owner token, revision
0) with a ttl; the store returns the record's version. Every later write by
that owner — renewal, the *done* record, the release after a failure — is a
compare-and-set on the version it last wrote (``StoreBase.replace_if`` /
``remove_if``), so an owner whose claim expired and was taken over can never
touch its successor's record.

- The claim is renewed every ``renew_every_s`` (default a third of the ttl)
  while the effect runs, so a slow effect keeps its claim.
- A failing effect releases its claim (fenced) so that a retry can run it.
- A cancelled effect keeps its claim until the ttl ends: the effect may have
  happened, and a shutdown cancel must not cause a repeat on the next worker
  before the ttl.
- The result is checked encodable before anything is committed.
- Done records expire after ``done_ttl_s`` (default 24 h; ``None`` keeps them):
  a duplicate arriving later than that runs the effect again.

Two kinds of effect:

- :meth:`Idempotency.run_once` — an external effect (mail, HTTP call). It gets
  the key if it takes one argument, so it can be made idempotent downstream.
  **At-least-once window**: if the owner dies after the effect and before the
  done record is written (or loses its claim to a successor while the effect
  runs longer than the ttl despite renewal, e.g. a stalled process), the effect
  runs again on the next delivery.
- :meth:`Idempotency.run_atomic` — an effect whose outcome is writes to the
  same state store. The effect returns an :class:`Outcome`; its writes and the
  done record commit as one unit on stores declaring ``atomic_effects``, and a
  fenced-out owner's outcome is discarded, so the outcome is committed exactly
  once. On other stores the writes precede the done record (at least once).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from reference_services.runtime.errors import StatusCode, UnhandledError
from reference_services.runtime.ids import new_id
from reference_services.runtime.spi.protocols import StateStore
from reference_services.runtime.spi.store_base import StoreValueError, dump_value

T = TypeVar("T")
log = logging.getLogger("reference_services.idempotency")

DEFAULT_DONE_TTL_S = 24 * 3600.0


class IdempotencyConflict(UnhandledError):
    """Another worker holds the claim, or this worker lost it (409, retryable)."""

    default_status = StatusCode.CONFLICT


@dataclass(frozen=True)
class Outcome(Generic[T]):
    """What an atomic effect produced: its result and the state writes to commit."""

    result: T
    writes: Mapping[str, Any] = field(default_factory=dict)


class _Claim:
    """The version this owner last wrote, kept current by the renewal task."""

    def __init__(self, idem: Idempotency, name: str, token: str, version: str) -> None:
        self.idem = idem
        self.name = name
        self.token = token
        self.version = version
        self.rev = 0
        self.lost = False
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._renew(), name=f"renew {name}")

    async def _renew(self) -> None:
        every = self.idem.renew_every_s
        while not self.lost:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), every)
            if self._stop.is_set():
                return
            record = self.idem.pending_record(self.token, self.rev + 1)
            try:
                version = await self.idem.store.replace_if(
                    self.name, self.version, record, ttl_s=self.idem.claim_ttl_s
                )
            except Exception as exc:  # a blip: the next tick tries again, within the ttl
                log.warning("idempotency: renewing %s failed: %r", self.name, exc)
                continue
            if version is None:
                self.lost = True
                log.warning("idempotency: claim %s was lost while the effect ran", self.name)
                return
            self.version, self.rev = version, self.rev + 1

    async def stop(self) -> None:
        """Stop renewing; waits for a renewal in progress so ``version`` is current."""
        self._stop.set()
        await asyncio.shield(self._task)

    def abandon(self) -> None:
        """Stop renewing without waiting (cancellation): the claim then expires."""
        self._stop.set()


class Idempotency:
    """Run effects once per key, backed by a state store with ``compare_and_set``."""

    def __init__(
        self,
        store: StateStore,
        *,
        prefix: str = "idempotency",
        claim_ttl_s: float = 30.0,
        wait_s: float | None = None,
        poll_s: float = 0.05,
        renew_every_s: float | None = None,
        done_ttl_s: float | None = DEFAULT_DONE_TTL_S,
    ) -> None:
        if claim_ttl_s <= 0:
            raise ValueError(f"claim_ttl_s must be > 0, got {claim_ttl_s!r}")
        self.store = store
        self.prefix = prefix
        self.claim_ttl_s = claim_ttl_s
        self.wait_s = claim_ttl_s + 1 if wait_s is None else wait_s
        self.poll_s = poll_s
        if renew_every_s is not None and not 0 < renew_every_s < claim_ttl_s:
            raise ValueError(
                f"renew_every_s must be > 0 and below claim_ttl_s ({claim_ttl_s}), "
                f"got {renew_every_s!r}"
            )
        self._renew_every_s = renew_every_s
        self.done_ttl_s = done_ttl_s
        self.owner = new_id()

    @property
    def renew_every_s(self) -> float:
        """How often a running effect renews its claim (default: a third of the ttl,
        following ``claim_ttl_s`` when that is changed later)."""
        if self._renew_every_s is not None and self._renew_every_s < self.claim_ttl_s:
            return self._renew_every_s
        return self.claim_ttl_s / 3

    def _key(self, key: str) -> str:
        return f"{self.prefix}:{key}"

    def pending_record(self, token: str, rev: int) -> dict[str, Any]:
        """The record of a live claim."""
        return {"state": "pending", "owner": token, "rev": rev, "at": time.time()}

    async def run_once(
        self, key: str, effect: Callable[[], Awaitable[T]] | Callable[[str], Awaitable[T]]
    ) -> T:
        """Run the external ``effect`` unless it already ran for ``key``; its (recorded) result.

        ``effect`` is called with ``key`` if it takes a positional argument.
        """
        takes_key = _takes_argument(effect)

        async def call() -> Outcome[T]:
            result = await (effect(key) if takes_key else effect())  # type: ignore[call-arg]
            return Outcome(result)

        return await self._run(key, call, atomic=False)

    async def run_atomic(self, key: str, effect: Callable[[str], Awaitable[Outcome[T]]]) -> T:
        """Run ``effect(key)`` once; commit its :class:`Outcome` writes with the done record."""

        async def call() -> Outcome[T]:
            outcome = await effect(key)
            if not isinstance(outcome, Outcome):
                raise TypeError(f"an atomic effect returns Outcome, got {type(outcome).__name__}")
            return outcome

        return await self._run(key, call, atomic=True)

    @property
    def atomic(self) -> bool:
        """Whether the store commits an effect's writes and its done record as one unit."""
        caps = getattr(self.store, "capabilities", None)
        return bool(caps is not None and caps.supports("atomic_effects"))

    async def _claim(self, name: str, key: str, token: str) -> str | Outcome[Any]:
        """Our claim's version, or the recorded outcome of a finished effect."""
        deadline = time.monotonic() + self.wait_s
        while True:
            version = await self.store.create_versioned(
                name, self.pending_record(token, 0), ttl_s=self.claim_ttl_s
            )
            if version is not None:
                return version
            current = await self.store.get_versioned(name)
            if current is not None:
                finished = _finished(current.value)
                if finished is not None:
                    return finished
            if time.monotonic() >= deadline:
                raise IdempotencyConflict(f"effect {key!r} is claimed by another worker")
            await asyncio.sleep(self.poll_s)

    async def _run(self, key: str, call: Callable[[], Awaitable[Outcome[T]]], *, atomic: bool) -> T:
        name = self._key(key)
        token = new_id()
        got = await self._claim(name, key, token)
        if isinstance(got, Outcome):
            return got.result  # type: ignore[no-any-return]
        claim = _Claim(self, name, token, got)
        try:
            outcome = await call()
        except asyncio.CancelledError:
            claim.abandon()  # the effect may have happened: let the claim expire
            raise
        except Exception:
            await claim.stop()
            with contextlib.suppress(Exception):
                await self.store.remove_if(name, claim.version)
            raise
        await claim.stop()
        done = {"state": "done", "owner": token, "result": outcome.result}
        try:
            dump_value(name, done)
            for wkey, value in outcome.writes.items():
                dump_value(wkey, value)
        except StoreValueError as exc:
            await self._unstorable(name, claim.version, token, atomic, exc)
            raise
        together = atomic and self.atomic
        if outcome.writes and not together:
            for wkey, value in outcome.writes.items():  # at least once: writes, then done
                await self.store.set(wkey, value)
        writes = outcome.writes if together else None
        if await self._commit(name, claim.version, token, done, writes):
            return outcome.result
        current = await self.store.get_versioned(name)
        finished = _finished(current.value) if current is not None else None
        if finished is not None:  # a successor finished first; our outcome is discarded
            return finished.result  # type: ignore[no-any-return]
        raise IdempotencyConflict(f"effect {key!r}: the claim was lost while the effect ran")

    async def _commit(
        self,
        name: str,
        version: str,
        token: str,
        done: dict[str, Any],
        writes: Mapping[str, Any] | None,
    ) -> bool:
        store: Any = self.store
        if await store.replace_if(name, version, done, ttl_s=self.done_ttl_s, also=writes):
            return True
        # The claim expired. If nobody took it over, claim afresh and commit.
        fresh = await store.create_versioned(name, self.pending_record(token, 0), self.claim_ttl_s)
        if fresh is None:
            return False
        return bool(await store.replace_if(name, fresh, done, ttl_s=self.done_ttl_s, also=writes))

    async def _unstorable(
        self, name: str, version: str, token: str, atomic: bool, exc: StoreValueError
    ) -> None:
        store: Any = self.store
        if atomic:  # nothing was committed: the effect did not happen; release
            with contextlib.suppress(Exception):
                await store.remove_if(name, version)
            return
        # An external effect happened; record that it cannot be answered, never repeat it.
        failed = {"state": "failed", "owner": token, "error": str(exc)}
        await store.replace_if(name, version, failed, ttl_s=self.done_ttl_s)

    async def was_done(self, key: str) -> bool:
        """Whether the effect for ``key`` completed."""
        current = await self.store.get_versioned(self._key(key))
        return current is not None and _finished(current.value) is not None


def _finished(record: Any) -> Outcome[Any] | None:
    """The recorded outcome of a done record; raises for a failed one; None if pending."""
    if not isinstance(record, dict):
        return None
    if record.get("state") == "done":
        return Outcome(record.get("result"))
    if record.get("state") == "failed":
        error = record.get("error")
        raise StoreValueError(f"the effect ran but its result could not be stored: {error}")
    return None


def _takes_argument(fn: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(
        p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
        for p in params
    )
