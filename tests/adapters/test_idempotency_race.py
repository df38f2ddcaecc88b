"""Workers racing keys with slow effects, expiring claims, crashes and cancellations.

A Hypothesis state machine starts workers (N >= 3 per run) on a few keys, each
with an effect duration around the claim ttl and a fate: finish, crash before
or after the side effect (a crashed process writes nothing more), be cancelled
(the runtime's shutdown cancel), or stall (the whole process freezes for two
ttls: no renewal, then it wakes up and carries on). Real time, real stores:
memory, Redis and NATS KV.

Oracles, per key, after every worker ended and a last healthy delivery ran:
- atomic effects (``run_atomic``) on a store declaring ``atomic_effects``: the
  outcome is committed exactly once, and every worker that returned got the
  committed result;
- the same on a store that does not declare it: committed at least once, the
  duplicates counted;
- external effects (``run_once``): at least once, and at most one side effect
  by a worker that neither crashed, was cancelled nor stalled (renewal and
  fencing keep a slow healthy owner's claim; only the documented window repeats).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from adapter_helpers import NATS_FAST
from hypothesis import event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, rule, run_state_machine_as_test

from reference_services.adapters.memory.stores import DefaultStateStore
from reference_services.adapters.nats.kv_stores import NatsKVStateStore
from reference_services.adapters.redis.stores import RedisStateStore
from reference_services.runtime.idempotency import Idempotency, IdempotencyConflict, Outcome
from reference_services.runtime.ids import new_id

TTL = 0.4
KEYS = ("k0", "k1")
FATES = ("finish", "finish", "crash_before", "crash_after", "cancel", "stall")


class ProcessDied(BaseException):
    """Raised into a crashed worker's store calls: a dead process writes nothing."""


class Process:
    """One worker process's view of the store: it can stall (freeze) or die."""

    def __init__(self, store: Any, *, atomic: bool) -> None:
        self._store = store
        self.alive = True
        self.running = asyncio.Event()
        self.running.set()
        self.capabilities = store.capabilities
        if not atomic:
            self.capabilities = replace(store.capabilities, atomic_effects=_no_atomic())

    def __getattr__(self, name: str) -> Any:
        target = getattr(self._store, name)
        if not inspect.iscoroutinefunction(target):
            return target

        async def call(*args: Any, **kwargs: Any) -> Any:
            await self.running.wait()
            if not self.alive:
                raise ProcessDied()
            return await target(*args, **kwargs)

        return call

    async def gate(self) -> None:
        """Where the effect itself stops while the process is frozen."""
        await self.running.wait()
        if not self.alive:
            raise ProcessDied()


def _no_atomic() -> Any:
    from reference_services.runtime.spi.capabilities import unsupported

    return unsupported("hidden by the test")


@dataclass
class Worker:
    key: str
    fate: str
    attempt: str
    process: Process
    task: asyncio.Task[Any] | None = None
    side_effect_ran: bool = False
    returned: Any = None


class Race(RuleBasedStateMachine):
    """Subclassed per store and mode (see ``machine``)."""

    make_store: Callable[[str], Awaitable[Any]]
    mode: str  # "atomic", "atomic_undeclared", "external"

    def __init__(self) -> None:
        super().__init__()
        # The loop runs in its own thread so that time (and renewal) flows between steps.
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.prefix = f"race-{new_id()[:12]}"
        self.store = self._call(self.make_store(self.prefix))
        self.workers: list[Worker] = []
        self.effects: dict[str, list[str]] = {k: [] for k in KEYS}
        self.events: list[str] = []

    # --- the machine

    @initialize(fates=st.lists(st.sampled_from(FATES), min_size=3, max_size=3))
    def three_at_once(self, fates: list[str]) -> None:
        """N >= 3 concurrent workers on one key, from the start."""
        for fate in fates:
            self._start("k0", fate, TTL * 1.5)

    @rule(
        key=st.sampled_from(KEYS),
        fate=st.sampled_from(FATES),
        duration=st.floats(0.25 * TTL, 2.5 * TTL),
    )
    def start_worker(self, key: str, fate: str, duration: float) -> None:
        self._start(key, fate, duration)

    @rule(dt=st.floats(0.0, 1.5 * TTL))
    def let_time_pass(self, dt: float) -> None:
        time.sleep(dt)

    def teardown(self) -> None:
        try:
            self._call(self._finish_and_check(), timeout=90)
            for note in self.events:  # hypothesis.event must run on the test's thread
                event(note)
        finally:
            with contextlib.suppress(Exception):
                self._call(self.store.destroy())
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()

    def _call(self, coro: Awaitable[Any], timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)  # type: ignore[arg-type]

    # --- workers

    def _start(self, key: str, fate: str, duration: float) -> None:
        self._call(self._spawn(key, fate, duration))
        time.sleep(0.01)

    async def _spawn(self, key: str, fate: str, duration: float) -> None:
        worker = Worker(key, fate, new_id()[:10], Process(self.store, atomic=self.mode == "atomic"))
        worker.task = asyncio.create_task(self._work(worker, duration))
        self.workers.append(worker)

    async def _work(self, w: Worker, duration: float) -> None:
        idem = Idempotency(w.process, claim_ttl_s=TTL, poll_s=0.02, wait_s=4 * TTL)
        gap = 0.2 * TTL  # effect done, outcome not yet committed: the SIGKILL window
        fault: asyncio.Task[Any] | None = None
        if w.fate == "crash_before":
            fault = asyncio.create_task(self._crash(w, 0.5 * duration))
        elif w.fate == "crash_after":
            fault = asyncio.create_task(self._crash(w, duration + 0.5 * gap))
        elif w.fate == "cancel":
            fault = asyncio.create_task(self._cancel(w, 0.7 * (duration + gap)))
        elif w.fate == "stall":
            fault = asyncio.create_task(self._stall(w, 0.5 * duration, 2.5 * TTL))

        async def side_effect() -> None:
            await asyncio.sleep(duration)
            await w.process.gate()
            w.side_effect_ran = True
            self.effects[w.key].append(w.attempt)
            await asyncio.sleep(gap)
            await w.process.gate()

        async def external() -> str:
            await side_effect()
            return w.attempt

        async def atomic(key: str) -> Outcome[str]:
            await side_effect()
            return Outcome(w.attempt, {f"fx:{key}:{w.attempt}": w.attempt})

        try:
            if self.mode == "external":
                w.returned = await idem.run_once(w.key, external)
            else:
                w.returned = await idem.run_atomic(w.key, atomic)
        except (ProcessDied, asyncio.CancelledError, IdempotencyConflict):
            pass
        finally:
            if fault is not None and not fault.done():
                fault.cancel()

    async def _crash(self, w: Worker, at: float) -> None:
        await asyncio.sleep(at)
        w.process.alive = False
        assert w.task is not None
        w.task.cancel()

    async def _cancel(self, w: Worker, at: float) -> None:
        await asyncio.sleep(at)
        assert w.task is not None
        w.task.cancel()

    async def _stall(self, w: Worker, at: float, length: float) -> None:
        await asyncio.sleep(at)
        w.process.running.clear()
        await asyncio.sleep(length)
        w.process.running.set()

    # --- the oracle

    async def _finish_and_check(self) -> None:
        tasks = [w.task for w in self.workers if w.task is not None]
        _done, pending = await asyncio.wait(tasks, timeout=30)
        assert not pending, f"{len(pending)} workers still running after 30 s"
        used = sorted({w.key for w in self.workers})
        for key in used:  # one last healthy delivery per key completes anything left
            await self._spawn(key, "finish", 0.05)
        last = [w.task for w in self.workers[-len(used) :] if w.task is not None]
        await asyncio.wait(last, timeout=30)
        for key in used:
            await self._check(key)

    async def _check(self, key: str) -> None:
        workers = [w for w in self.workers if w.key == key]
        ran = self.effects[key]
        assert ran, f"{key}: the effect never ran"
        healthy = [w for w in workers if w.fate == "finish" and w.side_effect_ran]
        if self.mode == "external":
            assert len(healthy) <= 1, f"{key}: healthy workers repeated the effect: {ran}"
            self.events.append(f"external duplicates: {len(ran) - 1}")
            return
        committed = await self._committed(key, [w.attempt for w in workers])
        returned = {w.returned for w in workers if w.returned is not None}
        if self.mode == "atomic":
            assert len(committed) == 1, f"{key}: committed {committed} (side effects {ran})"
            assert returned == set(committed), f"{key}: results {returned}, committed {committed}"
        else:
            assert committed, f"{key}: nothing committed"
            self.events.append(f"undeclared-atomic duplicates: {len(committed) - 1}")

    async def _committed(self, key: str, attempts: list[str]) -> list[str]:
        names = [f"fx:{key}:{a}" for a in attempts]
        got = await self.store.get(*names)
        return [v for v in got.values() if v is not None]


def machine(make_store: Callable[[str], Awaitable[Any]], mode: str) -> type[Race]:
    return type(f"Race_{mode}", (Race,), {"make_store": staticmethod(make_store), "mode": mode})


RUN = settings(max_examples=10, stateful_step_count=6, deadline=None, database=None)
RUN_MEMORY = settings(RUN, max_examples=30)


async def _memory(prefix: str) -> Any:
    store = DefaultStateStore()
    await store.start()
    return store


def _redis_factory(url: str) -> Callable[[str], Awaitable[Any]]:
    async def make(prefix: str) -> Any:
        store = RedisStateStore(url, prefix=prefix)
        await store.start()
        return store

    return make


def _nats_factory(url: str) -> Callable[[str], Awaitable[Any]]:
    async def make(prefix: str) -> Any:
        store = NatsKVStateStore(url, prefix=prefix, timings=NATS_FAST)
        await store.start()
        return store

    return make


MODES = ("atomic", "atomic_undeclared", "external")


@pytest.mark.parametrize("mode", MODES)
def test_memory_store_race(mode: str) -> None:
    run_state_machine_as_test(machine(_memory, mode), settings=RUN_MEMORY)


@pytest.mark.parametrize("mode", MODES)
def test_redis_store_race(harness_redis: Any, mode: str) -> None:
    run_state_machine_as_test(machine(_redis_factory(harness_redis.url), mode), settings=RUN)


@pytest.mark.parametrize("mode", MODES)
def test_nats_kv_store_race(harness_nats: Any, mode: str) -> None:
    run_state_machine_as_test(machine(_nats_factory(harness_nats.url), mode), settings=RUN)

